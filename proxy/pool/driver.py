"""The I/O a pool asks for: open server connections, health-check idle ones, retry after a
failed login. The only part of a pool that starts tasks or sleeps; it reports back to the pool
(`opened`, `open_failed`, `check_done`), which decides."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from ..config import PoolSettings
from ..errors import ProxyError

log = logging.getLogger("poolproxy.pool")


class Checkable(Protocol):
    async def health_check(self, timeout: float) -> bool: ...


class DrivenPool(Protocol):
    """What the driver reports to (pool.Pool)."""

    settings: PoolSettings

    def opened(self, server: Any, now: float | None = None) -> None: ...

    def open_failed(self, exc: ProxyError, now: float | None = None) -> None: ...

    def open_crashed(self, exc: Exception) -> None: ...

    def check_done(self, server: Any, ok: bool, now: float | None = None) -> None: ...

    def wake(self) -> None: ...


class PoolDriver:
    """Runs one pool's opens, checks and retry timers as asyncio tasks."""

    __slots__ = ("pool", "connect", "_tasks")

    def __init__(self, pool: DrivenPool, connect: Callable[[Any], Awaitable[Any]]) -> None:
        self.pool = pool
        self.connect = connect
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def tasks(self) -> int:
        return len(self._tasks)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def open(self) -> None:
        """Open and log in one server connection (the pool counted it in `opening`)."""
        self._spawn(self._open())

    async def _open(self) -> None:
        pool = self.pool
        try:
            server = await self.connect(pool)
        except ProxyError as exc:
            pool.open_failed(exc)
            return
        except Exception as exc:
            log.exception("%r: unexpected error opening server connection", pool)
            pool.open_crashed(exc)
            return
        pool.opened(server)

    def check(self, server: Checkable) -> None:
        """Health-check an idle server before the pool hands it out."""
        self._spawn(self._check(server))

    async def _check(self, server: Checkable) -> None:
        try:
            ok = await server.health_check(self.pool.settings.server_connect_timeout)
        except Exception:
            ok = False
        self.pool.check_done(server, ok)

    def retry_after(self, delay: float) -> None:
        """Ask the pool to open again once `delay` (server_login_retry) has passed."""
        self._spawn(self._retry(delay))

    async def _retry(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.pool.wake()

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
