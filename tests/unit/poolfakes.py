"""Fakes and helpers shared by the unit tests of proxy/pool.py and proxy/janitor.py.

test_pool.py and test_pool_lifecycle.py drive a real ``Pool`` with a fake clock (a mutable
float), fake server connections whose async ``health_check(timeout)`` the test scripts, a fake
async ``connect`` and fake waiters. Nothing here touches a socket or sleeps for real.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any

from proxy.config import PoolSettings
from proxy.errors import ProxyError
from proxy.pool import CloseReason, Pool, ServerState


class FakeClock:
    """A mutable float; ``clock.fn`` is the ``() -> float`` handed to the pool."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.fn: Callable[[], float] = lambda: self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeServer:
    """A server connection whose health check the test scripts.

    ``check_result`` is what ``health_check`` returns (an exception instance is raised); with
    ``check_gate`` set, the check first waits for that event (a check in flight)."""

    _next_id = 0

    def __init__(self, pool: Pool) -> None:
        FakeServer._next_id += 1
        self.id = FakeServer._next_id
        now = pool.clock()
        self.state = ServerState.LOGIN
        self.created_at = now
        self.last_used = now
        self.expires_at = pool.lifetime_deadline(now)
        self.closed_with: list[CloseReason] = []
        self.params = {"server_version": "17.0", "client_encoding": "UTF8"}
        self.check_result: Any = True
        self.check_gate: asyncio.Event | None = None
        self.checks: list[float] = []  # the timeout passed to each health_check call
        self.client: Any = None
        self.clean = True  # what reusable() answers (the pool's last guard)

    def reusable(self) -> bool:
        return self.clean

    async def health_check(self, timeout: float) -> bool:
        self.checks.append(timeout)
        if self.check_gate is not None:
            await self.check_gate.wait()
        if isinstance(self.check_result, BaseException):
            raise self.check_result
        return bool(self.check_result)

    def close(self, reason: CloseReason) -> None:
        self.closed_with.append(reason)
        self.state = ServerState.CLOSED

    def __repr__(self) -> str:
        return f"<FakeServer {self.id} {self.state.value}>"


class FakeConnect:
    """The pool's `connect` coroutine. Outcomes are consumed in order: an exception instance is
    raised, anything else (or an empty script) means "open a FakeServer". With ``gate`` set,
    every call first waits for the gate (an asyncio.Event) to open."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls = 0
        self.opened: list[FakeServer] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, pool: Pool) -> FakeServer:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, BaseException):
            raise outcome
        server = FakeServer(pool)
        server.state = ServerState.ACTIVE  # as a freshly logged-in server is
        self.opened.append(server)
        return server


class FakeWaiter:
    """A client waiting for a server: records what the pool hands it or fails it with."""

    def __init__(self, name: str = "w") -> None:
        self.name = name
        self.wait_started = -1.0
        self.servers: list[Any] = []
        self.errors: list[ProxyError] = []

    def on_server(self, server: Any) -> None:
        self.servers.append(server)

    def on_pool_error(self, exc: ProxyError) -> None:
        self.errors.append(exc)

    @property
    def server(self) -> Any:
        assert len(self.servers) == 1, f"{self.name} got {self.servers}"
        return self.servers[0]

    def __repr__(self) -> str:
        return f"<FakeWaiter {self.name}>"


def settings(**changes: Any) -> PoolSettings:
    return dataclasses.replace(PoolSettings(), **changes)


def make_pool(connect: FakeConnect | None = None, clock: FakeClock | None = None,
              **changes: Any) -> tuple[Pool, FakeConnect, FakeClock]:
    connect = connect or FakeConnect()
    clock = clock or FakeClock()
    pool = Pool("pg", "app", "app", settings(**changes), connect, clock.fn)
    return pool, connect, clock


async def settle(rounds: int = 8) -> None:
    """Let spawned tasks (opens, health checks) run to completion (they await nothing real)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro_fn())


async def fill_idle(pool: Pool, n: int) -> list[FakeServer]:
    """Open `n` servers through waiters and check them all in: they end up idle (in this order)."""
    waiters = [FakeWaiter(f"fill{i}") for i in range(n)]
    for w in waiters:
        assert pool.checkout(w) is None
    await settle()
    servers = [w.server for w in waiters]
    for s in servers:
        pool.checkin(s)
    assert list(pool.idle) == servers
    return servers
