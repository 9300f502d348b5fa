"""Periodic pool maintenance over an injected clock: waiter timeouts, idle and lifetime reaping.

`Janitor.tick(now)` does one pass and is what unit tests call with a fake clock; `run()` calls it
a few times a second in the daemon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..core.reasons import DisconnectReason
from ..core.session import ClientSession
from ..errors import ProxyError
from .pool import ClientState, Pool

log = logging.getLogger("poolproxy.janitor")


class Janitor:
    def __init__(self, pools: Callable[[], Iterable[Pool]], clock: Callable[[], float],
                 period: float = 0.25,
                 clients: Callable[[], Iterable[ClientSession[Any]]] = lambda: ()) -> None:
        self.pools = pools
        self.clients = clients
        self.clock = clock
        self.period = period

    def tick(self, now: float | None = None) -> None:
        if now is None:
            now = self.clock()
        for pool in list(self.pools()):
            pool.expire_waiters(now)
            pool.reap_idle(now)
        for client in list(self.clients()):
            self._client_timeouts(client, now)

    @staticmethod
    def _client_timeouts(client: ClientSession[Any], now: float) -> None:
        """Close clients idle too long, between transactions or inside one (the latter's
        server is rolled back and reused by the normal disconnect path)."""
        pool = client.pool
        if pool is None or client.idle_since <= 0:
            return
        settings = pool.settings
        idle = now - client.idle_since
        if client.state is ClientState.IDLE:
            timeout = settings.client_idle_timeout
            if 0 < timeout <= idle:
                log.info("%r: closing: idle for %.1fs (client_idle_timeout)", client, idle)
                client.timed_out(DisconnectReason.IDLE_TIMEOUT, ProxyError(
                    f"client_idle_timeout: connection idle for more than {timeout:g}s",
                    sqlstate="57P05", mysql_errno=4031, hint="reconnect"))
        elif client.state is ClientState.ACTIVE and client.pending <= 0:
            timeout = settings.idle_transaction_timeout
            if 0 < timeout <= idle:
                log.info("%r: closing: idle in transaction for %.1fs (idle_transaction_timeout)",
                         client, idle)
                client.timed_out(DisconnectReason.IDLE_TRANSACTION_TIMEOUT, ProxyError(
                    f"idle_transaction_timeout: transaction idle for more than {timeout:g}s; "
                    "it was rolled back", sqlstate="25P03", mysql_errno=4031,
                    hint="commit or roll back promptly, or raise idle_transaction_timeout"))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                self.tick()
            except Exception:
                log.exception("janitor pass failed")
