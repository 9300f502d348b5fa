"""Server pools: `pool.py` keeps the state (idle servers, waiters, limits, counters), `janitor.py`
runs the periodic maintenance. The names other packages use are re-exported here."""

from .pool import (
    BUCKETS,
    C_ACTIVE,
    C_CLOSED,
    C_IDLE,
    C_LOGIN,
    C_WAITING,
    CLOSE_CATEGORIES,
    S_ACTIVE,
    S_CLOSED,
    S_IDLE,
    S_LOGIN,
    ClientState,
    Clock,
    CloseReason,
    Pool,
    ServerState,
)

__all__ = [
    "BUCKETS", "CLOSE_CATEGORIES", "C_ACTIVE", "C_CLOSED", "C_IDLE", "C_LOGIN", "C_WAITING",
    "S_ACTIVE", "S_CLOSED", "S_IDLE", "S_LOGIN", "ClientState", "Clock", "CloseReason", "Pool", "ServerState",
]
