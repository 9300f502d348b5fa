"""Protocol-agnostic server pool per (listener, database, user): idle servers, FIFO waiters, limits.

Pure state: the pool never parses bytes, never sleeps and starts no task. Sessions check
servers out and in; the pool decides which server a waiter gets, when a connection should be
opened or health-checked (its `PoolDriver`, driver.py, does that I/O and reports back) and when
a returned server is too old to keep. Every decision takes `now` from the caller (or the
injected clock), so tests of the timeouts need not sleep.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..config import PoolSettings
from ..errors import ProxyError, QueryWaitTimeout, ServerLoginError
from .driver import PoolDriver

log = logging.getLogger("poolproxy.pool")


class ServerState(enum.Enum):
    LOGIN = "login"
    IDLE = "idle"
    ACTIVE = "active"
    TESTING = "testing"
    CLOSED = "closed"


class ClientState(enum.Enum):
    LOGIN = "login"
    IDLE = "idle"
    WAITING = "waiting"
    ACTIVE = "active"
    CLOSED = "closed"


#: The members as module constants for the per-query paths: in Python 3.11 every
#: `ClientState.X` goes through EnumType.__getattr__, about 9x the cost of a global load.
C_LOGIN, C_IDLE, C_WAITING, C_ACTIVE, C_CLOSED = ClientState
S_LOGIN, S_IDLE, S_ACTIVE, S_TESTING, S_CLOSED = ServerState


class CloseReason(enum.Enum):
    """Why a server connection was closed, one member per cause; the value is the log text
    and the `cause` label, `category` the `reason` label of the closed-connections metric (a
    fixed set of eight)."""

    IDLE_TIMEOUT = "idle_timeout"  # idle longer than server_idle_timeout (or the db's limit)
    NO_CLIENTS = "no_clients"  # a "*" database without clients (so DROP DATABASE works)
    LIFETIME = "lifetime"  # older than server_lifetime
    CHECK_FAILED = "check_failed"  # the health check before reuse failed
    SERVER_FATAL = "server_fatal"  # the server said it is going away (FATAL, ERR 1927, ...)
    SERVER_CLOSED = "server_closed"  # the connection ended without a word from the server
    SERVER_PROTOCOL_ERROR = "server_protocol_error"  # the server sent invalid data
    UNSOLICITED = "unsolicited_data"  # an idle server sent something
    LOGIN_FAILED = "login_failed"  # logging in to the server failed or timed out
    RESET_FAILED = "reset_failed"  # ROLLBACK / DISCARD ALL / COM_RESET_CONNECTION failed
    SYNC_FAILED = "session_sync_failed"  # restoring a client's session state failed
    CLIENT_ABORT = "client_abort"  # its client left in the middle of a request
    NOT_CLEAN = "not_clean"  # checked in owing a reply or inside a transaction (a bug)
    CANCEL_UNCONFIRMED = "cancel_unconfirmed"  # a cancel for it may still arrive
    CONFIG_RELOAD = "config_reload"
    SHUTDOWN = "shutdown"
    POOL_LIMIT = "pool_limit"  # over pool_size / max_db_connections after a change

    @property
    def category(self) -> str:
        return _CATEGORY.get(self, self.value)


_CATEGORY = {
    CloseReason.NO_CLIENTS: "idle_timeout",
    CloseReason.SERVER_FATAL: "server_error", CloseReason.SERVER_CLOSED: "server_error",
    CloseReason.SERVER_PROTOCOL_ERROR: "server_error", CloseReason.UNSOLICITED: "server_error",
    CloseReason.LOGIN_FAILED: "server_error", CloseReason.RESET_FAILED: "server_error",
    CloseReason.SYNC_FAILED: "server_error", CloseReason.NOT_CLEAN: "client_abort",
    CloseReason.CANCEL_UNCONFIRMED: "client_abort",
}
#: The `reason` label values of poolproxy_server_connections_closed_total.
CLOSE_CATEGORIES = ("idle_timeout", "lifetime", "check_failed", "server_error", "client_abort",
                    "config_reload", "shutdown", "pool_limit")


class PooledServer(Protocol):
    """What the pool needs of a server connection (core.session.ServerSession)."""

    state: ServerState
    created_at: float
    last_used: float
    expires_at: float
    client: Any

    def close(self, reason: CloseReason) -> None: ...

    def reusable(self) -> bool: ...

    async def health_check(self, timeout: float) -> bool: ...


class Waiter(Protocol):
    """A client waiting for a server: the pool calls exactly one of the two methods."""

    wait_started: float

    def on_server(self, server: Any) -> None: ...

    def on_pool_error(self, exc: ProxyError) -> None: ...


Clock = Callable[[], float]

#: How long a "*"-matched database keeps idle servers once its last client has left. Below
#: PostgreSQL's 5 s wait in DROP DATABASE, so dropping a database right after use works.
NO_CLIENT_GRACE = 2.0


#: Histogram bucket upper bounds (seconds): sub-millisecond waits up to multi-second ones.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PoolStats:
    """Plain integer counters bumped on the hot path; the metrics collector reads them.

    Histograms are a list of per-bucket counts (not cumulative) plus a sum, filled with one
    bisect and one increment per observation."""

    __slots__ = ("transactions", "queries", "bytes_in", "bytes_out", "wait_time_total",
                 "wait_count", "xact_time_total", "opened", "closed", "wait_hist", "xact_hist",
                 "client_parses", "server_parses", "binds")

    def __init__(self) -> None:
        self.wait_hist = [0] * (len(BUCKETS) + 1)
        self.xact_hist = [0] * (len(BUCKETS) + 1)
        self.transactions = 0
        self.queries = 0
        self.bytes_in = 0  # client -> server
        self.bytes_out = 0  # server -> client
        self.wait_time_total = 0.0
        self.wait_count = 0
        self.xact_time_total = 0.0
        self.opened = 0
        self.closed: dict[str, int] = {}
        #: Prepared statements: prepared by clients, prepared on servers (a client's statement
        #: prepared again on another server counts again), and executions bound.
        self.client_parses = 0
        self.server_parses = 0
        self.binds = 0


class Pool:
    """Server connections of one (listener, database, user)."""

    def __init__(self, listener: str, database: str, user: str, settings: PoolSettings,
                 connect: Callable[[Pool], Awaitable[Any]], clock: Clock = time.monotonic) -> None:
        self.listener = listener
        self.database = database
        self.user = user
        self.settings = settings
        self.clock = clock
        self.driver = PoolDriver(self, connect)
        self.idle: deque[PooledServer] = deque()  # LIFO: hot servers stay hot, cold ones age out
        self.active: set[PooledServer] = set()
        self.waiters: deque[Waiter] = deque()
        self.opening = 0
        self.clients = 0  # logged-in clients of this pool
        self.stats = PoolStats()
        #: ParameterStatus values of the first server, sent to clients at login (PostgreSQL).
        self.server_params: dict[str, str] | None = None
        self.last_login_error: ProxyError | None = None
        self.last_login_error_at = 0.0
        self.paused = False
        self.closed = False
        #: Protocol-specific split of the pool (MySQL: capability flags, charset); None for PG.
        self.variant: Any = None
        #: What the protocol shares between the pool's sessions (PostgreSQL: its prepared
        #: statement registry); the pool itself never looks at it.
        self.protocol_state: Any = None
        self.testing: set[PooledServer] = set()
        #: Set by the listener: True while max_db_connections leaves room for one more.
        self.db_has_room: Callable[[], bool] = lambda: True
        #: server_idle_timeout lowered below the database's own idle limit (None: as configured).
        #: A database reached through "*": when no client uses it for NO_CLIENT_GRACE, its idle
        #: servers close, so that DROP DATABASE works (Django's test runner needs it).
        self.auto = False
        self.clients_gone_at = 0.0
        self.idle_timeout_cap: float | None = None
        self.db_idle_limit: float | None = None
        #: The database's own idle limit was asked for (on the pool's first connection).
        self.idle_limit_checked = False
        self._lifetime_budget = max(1, settings.pool_size // 8)
        #: Busy servers that `renew()` retired: closed when they come back.
        self._retired: set[PooledServer] = set()
        #: Why the pool was closed (shutdown, or gone from the config): what late check-ins
        #: are closed with.
        self.closed_with = CloseReason.SHUTDOWN

    # ------------------------------------------------------------------ accounting
    @property
    def total(self) -> int:
        return len(self.idle) + len(self.active) + len(self.testing) + self.opening

    @property
    def limit(self) -> int:
        """pool_size, plus reserve_pool_size while a client has waited reserve_pool_timeout."""
        settings = self.settings
        if settings.reserve_pool_size and self.waiters and (
                self.clock() - self.waiters[0].wait_started >= settings.reserve_pool_timeout):
            return settings.pool_size + settings.reserve_pool_size
        return settings.pool_size

    @property
    def idle_timeout(self) -> float:
        """The server_idle_timeout in force (capped below the database's own idle limit)."""
        configured = self.settings.server_idle_timeout
        cap = self.idle_timeout_cap
        if cap is None:
            return configured
        return cap if configured <= 0 else min(configured, cap)

    def align_idle_limit(self, limit: float, what: str) -> None:
        """The database closes idle sessions after `limit` seconds (MySQL wait_timeout,
        PostgreSQL idle_session_timeout): close ours safely before it does."""
        if limit <= 0:
            return
        self.db_idle_limit = limit
        configured = self.settings.server_idle_timeout
        safe = max(0.5, min(limit * 0.75, limit - 1.0))
        if configured <= 0 or configured > safe:
            if self.idle_timeout_cap is None:
                log.warning("%r: the database closes idle connections after %gs (%s) but "
                            "server_idle_timeout is %s; using %.3gs so poolproxy closes them first",
                            self, limit, what, f"{configured:g}s" if configured > 0 else "off",
                            safe)
            self.idle_timeout_cap = safe

    def __repr__(self) -> str:
        return f"<Pool {self.listener}/{self.database}/{self.user}>"

    # ------------------------------------------------------------------ checkout / checkin
    def checkout(self, waiter: Waiter, now: float | None = None) -> Any | None:
        """Return an idle server at once, or queue `waiter` (FIFO) and return None.

        A server idle longer than server_check_delay is health-checked first (the waiter gets
        it, or a replacement, when the check is done), so a connection the database dropped
        while it sat in the pool never reaches a client."""
        if now is None:
            now = self.clock()
        if self.idle and not self.waiters and not self.paused:
            server = self.idle.pop()
            delay = self.settings.server_check_delay
            if delay > 0 and now - server.last_used > delay:
                waiter.wait_started = now
                self.waiters.append(waiter)
                server.state = S_TESTING
                self.testing.add(server)
                self.driver.check(server)
                return None
            server.state = S_ACTIVE
            self.active.add(server)
            self.stats.wait_count += 1
            self.stats.wait_hist[0] += 1
            return server
        waiter.wait_started = now
        self.waiters.append(waiter)
        self._maybe_open(now)
        return None

    def check_done(self, server: PooledServer, ok: bool, now: float | None = None) -> None:
        """The driver's health check of `server` finished."""
        self.testing.discard(server)
        if ok and server.state is not S_CLOSED and not self.closed \
                and not (self._retired and server in self._retired):
            server.last_used = self.clock() if now is None else now
            self._hand_out(server, now)
            return
        log.info("%r: health check failed; replacing the connection", server)
        self._close(server, CloseReason.CHECK_FAILED)
        self._maybe_open(now)

    def cancel_wait(self, waiter: Waiter) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    def checkin(self, server: PooledServer, now: float | None = None) -> None:
        """A server is clean again: hand it to the first waiter or park it idle. `now`: the
        caller's reading of the pool clock, if it has one."""
        self.active.discard(server)
        if now is None:
            now = self.clock()
        if server.state is S_CLOSED:
            self._retired.discard(server)
            self._maybe_open(now)
            return
        if server.client is not None or not server.reusable():
            # A bug upstream, never a reason to hand one client's leftovers to another.
            log.error("%r: checked in while not clean (linked, in a transaction or owing a "
                      "reply); closing it", server)
            self._close(server, CloseReason.NOT_CLEAN)
            self._maybe_open(now)
            return
        server.last_used = now
        if self.closed:
            self._close(server, self.closed_with)
            return
        if self._retired and server in self._retired:
            self._close(server, CloseReason.CONFIG_RELOAD)
            self._maybe_open(now)
            return
        if now >= server.expires_at and self._lifetime_budget > 0:
            # At most a few lifetime closes per janitor period, so a pool opened all at once
            # is renewed gradually; an expired server stays in use until its turn.
            self._lifetime_budget -= 1
            self._close(server, CloseReason.LIFETIME)
            self._maybe_open(now)
            self.top_up(now)
            return
        if self.total >= self.limit:
            # Over the limit counting this server (pool_size lowered by a reload): shrink even
            # under load; the waiters get the servers that remain.
            self._close(server, CloseReason.POOL_LIMIT)
            return
        self._hand_out(server, now)

    def resume(self, now: float | None = None) -> None:
        """End a PAUSE: serve the clients that queued meanwhile."""
        self.paused = False
        while self.idle and self.waiters:
            self._hand_out(self.idle.pop(), now)
        self._maybe_open(now)

    def renew(self, now: float | None = None) -> None:
        """Replace every server (how they connect changed, e.g. server_tls, on reload): idle
        ones close now, busy and tested ones when they come back, so the pool never mixes
        old and new connections."""
        while self.idle:
            self._close(self.idle.popleft(), CloseReason.CONFIG_RELOAD)
        self._retired.update(self.active)
        self._retired.update(self.testing)
        self._maybe_open(now)

    def adopt(self, server: PooledServer, now: float | None = None) -> None:
        """A server opened outside the driver (passthrough's check of a client's password)
        joins the pool, or is closed when the pool has no room for it."""
        if self.closed or self.total >= self.limit:
            self._close(server, CloseReason.POOL_LIMIT)
            return
        self.opening += 1
        self.opened(server, now)

    def reconfigured(self, now: float | None = None) -> None:
        """Settings changed (reload): trim idle servers over a smaller pool_size now, open
        for waiters if it grew; busy servers over the limit close when they come back."""
        while self.idle and self.total > self.limit:
            self._close(self.idle.popleft(), CloseReason.CONFIG_RELOAD)
        self._maybe_open(now)

    def transaction_done(self, duration: float) -> None:
        stats = self.stats
        stats.transactions += 1
        stats.xact_time_total += duration
        stats.xact_hist[bisect_left(BUCKETS, duration)] += 1

    def discard(self, server: PooledServer, reason: CloseReason,
                now: float | None = None) -> None:
        """Remove a server (active or idle) that must not be reused."""
        self.active.discard(server)
        try:
            self.idle.remove(server)
        except ValueError:
            pass
        if server.state is not S_CLOSED:
            self._close(server, reason)
        else:
            self._retired.discard(server)
            self._count_close(reason)
        self._maybe_open(now)

    def _hand_out(self, server: PooledServer, now: float | None = None) -> None:
        waiters = self.waiters
        while waiters and not self.paused:
            waiter = waiters.popleft()
            server.state = S_ACTIVE
            self.active.add(server)
            waited = (self.clock() if now is None else now) - waiter.wait_started
            stats = self.stats
            stats.wait_time_total += waited
            stats.wait_count += 1
            stats.wait_hist[bisect_left(BUCKETS, waited)] += 1
            try:
                waiter.on_server(server)
            except Exception:  # a broken waiter must not lose the server
                log.exception("%r: waiter failed to take a server", self)
                if server in self.active and server.state is S_ACTIVE:
                    self.active.discard(server)
                    continue
            return
        server.state = S_IDLE
        self.idle.append(server)

    def _close(self, server: PooledServer, reason: CloseReason) -> None:
        self._retired.discard(server)
        self._count_close(reason)
        server.close(reason)

    def _count_close(self, reason: CloseReason) -> None:
        closed = self.stats.closed
        closed[reason.value] = closed.get(reason.value, 0) + 1

    # ------------------------------------------------------------------ opening
    def lifetime_deadline(self, now: float) -> float:
        """Creation time + lifetime shortened by a random part of the jitter, so a pool
        opened all at once does not expire all at once."""
        lifetime = self.settings.server_lifetime
        if lifetime <= 0:
            return float("inf")
        jitter = self.settings.server_lifetime_jitter
        return now + lifetime * (1.0 - jitter * random.random())

    def _maybe_open(self, now: float | None = None) -> None:
        if self.closed or self.paused:
            return
        while len(self.waiters) > self.opening and self.total < self.limit:
            if self._login_backoff(now) or not self.db_has_room():
                return
            self.opening += 1
            self.driver.open()

    def top_up(self, now: float | None = None) -> None:
        """Keep min_pool_size servers open (also re-opened after reaping or failures)."""
        if self.closed or self.paused:
            return
        while self.total < self.settings.min_pool_size:
            if self._login_backoff(now) or not self.db_has_room():
                return
            self.opening += 1
            self.driver.open()

    def _login_backoff(self, now: float | None = None) -> bool:
        """True while a recent login failure says not to retry yet (server_login_retry)."""
        if self.last_login_error is None:
            return False
        if now is None:
            now = self.clock()
        if now - self.last_login_error_at < self.settings.server_login_retry:
            if isinstance(self.last_login_error, ServerLoginError):
                # The server refused us (bad password, no such database): fail fast.
                self._fail_waiters(self.last_login_error)
            elif not self.opening:
                self.driver.retry_after(self.settings.server_login_retry)
            return True
        return False

    def wake(self) -> None:
        """server_login_retry has passed: open for the waiters if they still need it."""
        self._maybe_open()

    def opened(self, server: PooledServer, now: float | None = None) -> None:
        """The driver logged a new server connection in."""
        self.opening -= 1
        if self.last_login_error is not None:
            log.info("%r: server connections work again", self)
            self.last_login_error = None
        self.stats.opened += 1
        params = getattr(server, "params", None)
        if self.server_params is None and params is not None:
            self.server_params = dict(params)
        self._hand_out(server, now)
        # A concurrent open may have failed and backed off while this one was in flight.
        self._maybe_open(now)

    def open_failed(self, exc: ProxyError, now: float | None = None) -> None:
        """The driver could not open a server connection."""
        self.opening -= 1
        # One warning per outage, not one per retry; recovery is logged once too.
        if self.last_login_error is None:
            log.warning("%r: cannot open server connection: %s", self, exc.message)
        else:
            log.debug("%r: still cannot open server connection: %s", self, exc.message)
        self.last_login_error = exc
        self.last_login_error_at = self.clock() if now is None else now
        if isinstance(exc, ServerLoginError):
            self._fail_waiters(exc)
        else:
            self._maybe_open(now)

    def open_crashed(self, exc: Exception) -> None:
        """A bug, not a server problem, while opening: keep the pool usable."""
        self.opening -= 1
        self._fail_waiters(ProxyError(f"internal error opening server connection: {exc}"))

    def _fail_waiters(self, exc: ProxyError) -> None:
        waiters, self.waiters = self.waiters, deque()
        for waiter in waiters:
            waiter.on_pool_error(exc)

    # ------------------------------------------------------------------ maintenance
    def expire_waiters(self, now: float) -> None:
        timeout = self.settings.query_wait_timeout
        if timeout <= 0:
            return
        while self.waiters and now - self.waiters[0].wait_started >= timeout:
            waiter = self.waiters.popleft()
            message = f"query_wait_timeout: no server connection became free within {timeout:g}s"
            hint = "raise pool_size or query_wait_timeout, or shorten transactions"
            error = self.last_login_error
            if error is not None:  # not busy servers: none could be opened
                message += f"; opening a server connection failed: {error.message}"
                hint = error.hint or "is the database running and reachable from poolproxy?"
            waiter.on_pool_error(QueryWaitTimeout(message, hint=hint))

    def reap_idle(self, now: float) -> None:
        """Close servers idle longer than the idle timeout (oldest first, keeping min_pool_size)
        and spread lifetime renewals: a budget of a few per janitor period."""
        self._lifetime_budget = max(1, self.settings.pool_size // 8)
        timeout = self.idle_timeout
        min_size = self.settings.min_pool_size
        for server in list(self.idle):
            if timeout > 0 and now - server.last_used >= timeout and self.total > min_size:
                self.idle.remove(server)
                self._close(server, CloseReason.IDLE_TIMEOUT)
            elif now >= server.expires_at and self._lifetime_budget > 0:
                self._lifetime_budget -= 1
                self.idle.remove(server)
                self._close(server, CloseReason.LIFETIME)
        while self.idle and self.total > self.limit:
            self._close(self.idle.popleft(), CloseReason.POOL_LIMIT)
        if self.auto and not self.clients and not self.waiters and self.clients_gone_at \
                and now - self.clients_gone_at >= NO_CLIENT_GRACE:
            while self.idle:
                self._close(self.idle.popleft(), CloseReason.NO_CLIENTS)
            return
        self.top_up(now)
        if self.waiters:
            self._maybe_open(now)  # reserve_pool_timeout may have passed

    def remove_idle(self, server: PooledServer, reason: CloseReason) -> None:
        """An idle server died or misbehaved (EOF, unsolicited error)."""
        try:
            self.idle.remove(server)
        except ValueError:
            pass
        self.discard(server, reason)

    def close_all(self, reason: CloseReason) -> None:
        self.closed = True
        self.closed_with = reason
        while self.idle:
            self._close(self.idle.pop(), reason)
        for server in list(self.testing):
            self._close(server, reason)
        self.testing.clear()
        for server in list(self.active):
            self._close(server, reason)
        self.active.clear()
        self.driver.stop()

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "listener": self.listener, "database": self.database, "user": self.user,
            "pool_mode": self.settings.pool_mode, "pool_size": self.settings.pool_size,
            "servers": {"active": len(self.active), "idle": len(self.idle), "login": self.opening,
                        "testing": len(self.testing)},
            "idle_timeout": self.idle_timeout,
            "db_idle_limit": self.db_idle_limit,
            "waiters": len(self.waiters),
            "max_wait": (now - self.waiters[0].wait_started) if self.waiters else 0.0,
            "clients": self.clients,
            "transactions": self.stats.transactions,
            "prepared_statements": dict(zip(("distinct", "on_servers"),
                                            self.protocol_state.counts(), strict=True))
            if self.protocol_state is not None else {"distinct": 0, "on_servers": 0},
            "tasks": self.driver.tasks,
            "paused": self.paused,
        }
