"""Unit tests for the server lifecycle in proxy/pool.py and proxy/janitor.py (issue 4).

Health checks before reuse (server_check_delay), the idle timeout aligned below the database's
own idle limit, min_pool_size top-up, the reserve pool, max_db_connections (the pool's
``db_has_room`` hook), spread lifetime renewal, and the janitor's client timeouts.

Same style as test_pool.py: a fake clock (a mutable float), fake servers whose async
``health_check(timeout)`` the test controls, a fake async ``connect``. Nothing sleeps for real;
tests in which the pool spawns tasks run inside ``asyncio.run``. The fakes shared with
test_pool.py are in poolfakes.py; the janitor's fake clients are here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from proxy.errors import ProxyError
from proxy.pool import ClientState, CloseReason, Pool, ServerState
from proxy.pool.janitor import Janitor
from tests.unit.poolfakes import (
    FakeClock,
    FakeServer,
    FakeWaiter,
    fill_idle,
    make_pool,
    run,
    settle,
)

# --------------------------------------------------------------------------- fakes


class FakeClient:
    """What the janitor reads of a client session; ``fail`` records the error."""

    def __init__(self, pool: Pool | None, state: ClientState, idle_since: float,
                 pending: int = 0, name: str = "c") -> None:
        self.pool = pool
        self.state = state
        self.idle_since = idle_since
        self.pending = pending
        self.name = name
        self.errors: list[ProxyError] = []
        self.reasons: list[Any] = []

    def fail(self, exc: ProxyError, *args: Any, **kwargs: Any) -> None:
        self.errors.append(exc)

    def timed_out(self, reason: Any, exc: ProxyError) -> None:
        self.reasons.append(reason)
        self.fail(exc)

    def __repr__(self) -> str:
        return f"<FakeClient {self.name} {self.state.value}>"


def janitor_for(pool: Pool, clock: FakeClock, clients: list[FakeClient] | None = None) -> Janitor:
    return Janitor(lambda: [pool], clock.fn, clients=lambda: clients or [])


def closed_by(servers: list[FakeServer], reason: CloseReason) -> list[FakeServer]:
    return [s for s in servers if reason in s.closed_with]


# --------------------------------------------------------------------------- server_check_delay


def test_server_idle_longer_than_check_delay_is_tested_then_handed_out() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=2, server_check_delay=30.0,
                                         server_connect_timeout=4.0, server_lifetime=0.0)
        (server,) = await fill_idle(pool, 1)
        clock.advance(31.0)
        server.check_gate = asyncio.Event()  # the check is in flight until the gate opens
        w = FakeWaiter()
        assert pool.checkout(w) is None, "a stale server is not handed out unchecked"
        await settle()
        assert server.state is ServerState.TESTING
        assert server in pool.testing and server not in pool.idle and server not in pool.active
        assert w.servers == [] and w.errors == []
        assert pool.total == 1, "a server being tested counts toward the pool"
        snap = pool.snapshot()
        assert snap["servers"] == {"active": 0, "idle": 0, "login": 0, "testing": 1}
        assert connect.calls == 1, "no new connection while the check may still succeed"
        assert server.checks == [4.0], "one check, bounded by server_connect_timeout"

        server.check_gate.set()
        await settle()
        assert w.server is server
        assert server.state is ServerState.ACTIVE and server in pool.active
        assert not pool.testing and not pool.waiters
        assert server.closed_with == [] and pool.stats.closed == {}
        assert pool.snapshot()["servers"] == {"active": 1, "idle": 0, "login": 0, "testing": 0}
        assert connect.calls == 1
        assert server.last_used == clock.now, "a passed check counts as use"
        # Returned and taken again at once: recently used, so no second check.
        pool.checkin(server)
        assert pool.checkout(FakeWaiter()) is server
        assert server.checks == [4.0]
        assert not pool.driver.tasks, "no task left behind"
    run(main)


@pytest.mark.parametrize("outcome", [False, ConnectionResetError("reset by peer"),
                                     TimeoutError("no reply")],
                         ids=["false", "raises", "timeout"])
def test_failed_health_check_closes_server_and_waiter_gets_a_new_one(outcome: Any) -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=1, server_check_delay=30.0,
                                         server_lifetime=0.0)
        (server,) = await fill_idle(pool, 1)
        clock.advance(60.0)
        server.check_result = outcome
        w = FakeWaiter()
        assert pool.checkout(w) is None
        await settle()
        assert server.closed_with == [CloseReason.CHECK_FAILED]
        assert pool.stats.closed == {"check_failed": 1}
        assert server not in pool.idle and server not in pool.active
        assert not pool.testing
        assert connect.calls == 2, "a replacement is opened for the waiter"
        assert w.errors == []
        assert w.server is connect.opened[-1] and w.server is not server
        assert w.server.state is ServerState.ACTIVE
        assert pool.total == 1
        assert pool.snapshot()["servers"] == {"active": 1, "idle": 0, "login": 0, "testing": 0}
    run(main)


def test_server_idle_less_than_check_delay_is_handed_out_without_check() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=2, server_check_delay=30.0,
                                         server_lifetime=0.0)
        (server,) = await fill_idle(pool, 1)
        clock.advance(29.0)
        w = FakeWaiter()
        assert pool.checkout(w) is server
        assert server.state is ServerState.ACTIVE and server in pool.active
        assert server.checks == [] and not pool.testing
        await settle()
        assert server.checks == [] and connect.calls == 1
    run(main)


def test_check_delay_zero_disables_health_checks() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=2, server_check_delay=0.0,
                                         server_idle_timeout=0.0, server_lifetime=0.0)
        (server,) = await fill_idle(pool, 1)
        clock.advance(100_000.0)
        assert pool.checkout(FakeWaiter()) is server
        await settle()
        assert server.checks == [] and not pool.testing and connect.calls == 1
    run(main)


def test_server_under_test_goes_to_exactly_one_client() -> None:
    """A second client arriving during a check is served too, and no server is handed to two
    clients; the pool never exceeds pool_size (the tested server counts)."""

    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=2, server_check_delay=30.0,
                                         server_lifetime=0.0)
        (server,) = await fill_idle(pool, 1)
        clock.advance(31.0)
        server.check_gate = asyncio.Event()
        a, b = FakeWaiter("a"), FakeWaiter("b")
        assert pool.checkout(a) is None
        assert pool.checkout(b) is None
        await settle()
        assert pool.total <= 2
        server.check_gate.set()
        await settle()
        assert a.errors == [] and b.errors == []
        assert a.server is not b.server
        assert {a.server, b.server} <= set(pool.active)
        assert server in (a.server, b.server)
        assert connect.calls == 2 and pool.total == 2 and not pool.waiters
    run(main)


def test_close_all_during_health_check_closes_the_server_once() -> None:
    async def main() -> None:
        pool, _, clock = make_pool(pool_size=1, server_check_delay=30.0, server_lifetime=0.0)
        (server,) = await fill_idle(pool, 1)
        clock.advance(31.0)
        server.check_gate = asyncio.Event()
        pool.checkout(FakeWaiter())
        await settle()
        pool.close_all(CloseReason.SHUTDOWN)
        server.check_gate.set()
        await settle()
        assert server.closed_with == [CloseReason.SHUTDOWN]
        assert not pool.testing and pool.total == 0 and not pool.driver.tasks
    run(main)


# --------------------------------------------------------------------------- align_idle_limit


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "poolproxy.pool" and r.levelno >= logging.WARNING]


def test_align_idle_limit_caps_idle_timeout_below_database_limit_and_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    pool, _, clock = make_pool(server_idle_timeout=600.0)
    assert pool.idle_timeout == 600.0
    pool.align_idle_limit(3.0, "wait_timeout")
    effective = pool.idle_timeout
    assert 0 < effective < 3.0
    # Reaped within one janitor period after the timeout: still before the database does it.
    assert effective + janitor_for(pool, clock).period < 3.0
    assert pool.db_idle_limit == 3.0
    snap = pool.snapshot()
    assert snap["idle_timeout"] == effective and snap["db_idle_limit"] == 3.0
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    assert "wait_timeout" in warnings[0].getMessage()
    pool.align_idle_limit(3.0, "wait_timeout")  # e.g. a second server of the pool
    assert pool.idle_timeout == effective
    assert len(_warnings(caplog)) == 1, "the alignment warning is logged once"


@pytest.mark.parametrize("limit", [1.0, 2.0, 3.0, 5.0, 60.0, 28800.0])
def test_aligned_idle_timeout_is_always_below_the_limit(limit: float) -> None:
    pool, _, _ = make_pool(server_idle_timeout=100_000.0)
    pool.align_idle_limit(limit, "wait_timeout")
    assert 0 < pool.idle_timeout < limit


def test_align_idle_limit_applies_when_idle_timeout_is_off(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    pool, _, _ = make_pool(server_idle_timeout=0.0)
    pool.align_idle_limit(3.0, "idle_session_timeout")
    assert 0 < pool.idle_timeout < 3.0
    assert len(_warnings(caplog)) == 1


def test_align_idle_limit_keeps_a_configured_timeout_already_safe(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    pool, _, _ = make_pool(server_idle_timeout=1.0)
    pool.align_idle_limit(3.0, "wait_timeout")
    assert pool.idle_timeout == 1.0
    assert _warnings(caplog) == []


@pytest.mark.parametrize("limit", [0.0, -1.0])
def test_align_idle_limit_ignores_no_limit(caplog: pytest.LogCaptureFixture,
                                           limit: float) -> None:
    caplog.set_level(logging.INFO)
    pool, _, _ = make_pool(server_idle_timeout=600.0)
    pool.align_idle_limit(limit, "wait_timeout")
    assert pool.idle_timeout == 600.0
    assert pool.db_idle_limit is None
    assert _warnings(caplog) == []


def test_reap_idle_uses_the_aligned_idle_timeout() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=3, server_idle_timeout=600.0,
                                         server_lifetime=0.0, server_check_delay=0.0)
        pool.align_idle_limit(3.0, "wait_timeout")
        timeout = pool.idle_timeout
        a, b = await fill_idle(pool, 2)
        janitor = janitor_for(pool, clock)
        clock.advance(timeout * 0.9)
        janitor.tick()
        assert a.closed_with == [] and b.closed_with == [], "not idle long enough yet"
        b.last_used = clock.now  # b was used just now
        clock.advance(timeout * 0.2)  # a: idle 1.1 x timeout, still under the database's 3 s
        assert clock.now - a.last_used < 3.0
        janitor.tick()
        assert a.closed_with == [CloseReason.IDLE_TIMEOUT] and b.closed_with == []
        assert list(pool.idle) == [b]
        clock.advance(timeout)
        janitor.tick()
        assert b.closed_with == [CloseReason.IDLE_TIMEOUT]
        assert pool.total == 0 and pool.stats.closed == {"idle_timeout": 2}
        # The next client gets a fresh connection, never a reaped one.
        w = FakeWaiter()
        pool.checkout(w)
        await settle()
        assert w.server is connect.opened[-1] and w.server not in (a, b)
    run(main)


# --------------------------------------------------------------------------- min_pool_size


def test_janitor_tops_up_to_min_pool_size() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=5, min_pool_size=3)
        janitor = janitor_for(pool, clock)
        assert connect.calls == 0
        janitor.tick()
        assert pool.opening == 3 and pool.total == 3
        janitor.tick()  # the opens are still in flight: they count
        assert pool.opening == 3
        await settle()
        assert connect.calls == 3
        assert len(pool.idle) == 3 and pool.opening == 0 and pool.total == 3
        assert not pool.waiters
        for _ in range(3):
            clock.advance(0.25)
            janitor.tick()
        await settle()
        assert connect.calls == 3 and pool.total == 3
    run(main)


def test_janitor_reopens_to_min_pool_size_after_a_discard() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=5, min_pool_size=3)
        janitor = janitor_for(pool, clock)
        janitor.tick()
        await settle()
        gone = pool.idle[0]
        pool.remove_idle(gone, CloseReason.SERVER_CLOSED)
        assert pool.total == 2
        janitor.tick()
        await settle()
        assert connect.calls == 4 and pool.total == 3 and len(pool.idle) == 3
        assert gone not in pool.idle
    run(main)


def test_min_pool_size_counts_active_servers() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=5, min_pool_size=3, server_check_delay=0.0)
        janitor = janitor_for(pool, clock)
        janitor.tick()
        await settle()
        held = [pool.checkout(FakeWaiter()) for _ in range(2)]
        assert all(s is not None for s in held)
        assert len(pool.active) == 2 and len(pool.idle) == 1
        janitor.tick()
        await settle()
        assert connect.calls == 3 and pool.total == 3, "two busy + one idle is min_pool_size"
        pool.checkout(FakeWaiter())  # all three busy now
        janitor.tick()
        await settle()
        assert connect.calls == 3 and pool.total == 3, "busy servers count toward min"
    run(main)


def test_min_pool_size_top_up_respects_db_has_room() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=5, min_pool_size=2)
        room = [False]
        pool.db_has_room = lambda: room[0]
        janitor = janitor_for(pool, clock)
        janitor.tick()
        await settle()
        assert connect.calls == 0 and pool.total == 0
        room[0] = True
        janitor.tick()
        await settle()
        assert connect.calls == 2 and pool.total == 2
    run(main)


# --------------------------------------------------------------------------- reserve pool


def test_reserve_pool_opens_only_after_reserve_pool_timeout() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=1, reserve_pool_size=2,
                                         reserve_pool_timeout=5.0, query_wait_timeout=0.0,
                                         server_check_delay=0.0)
        janitor = janitor_for(pool, clock)
        holder = FakeWaiter("holder")
        pool.checkout(holder)
        await settle()
        busy = holder.server
        waiters = [FakeWaiter(f"w{i}") for i in range(4)]
        for w in waiters:
            assert pool.checkout(w) is None
        await settle()
        assert connect.calls == 1, "no reserve before reserve_pool_timeout"
        assert pool.limit == 1
        clock.advance(4.9)
        janitor.tick()
        await settle()
        assert connect.calls == 1 and all(not w.servers for w in waiters)
        clock.advance(0.1)  # the first waiter has waited reserve_pool_timeout
        assert pool.limit == 3
        janitor.tick()
        await settle()
        assert connect.calls == 3, "the reserve is opened, and no more than the reserve"
        assert pool.total == 3
        assert [bool(w.servers) for w in waiters] == [True, True, False, False]
        for _ in range(4):
            clock.advance(0.25)
            janitor.tick()
            await settle()
            assert connect.calls == 3 and pool.total <= 3
        # The remaining waiters are served by returned servers, not by more connections.
        pool.checkin(busy)
        pool.checkin(waiters[0].server)
        await settle()
        assert all(w.errors == [] and len(w.servers) == 1 for w in waiters)
        assert connect.calls == 3 and pool.total <= 3
    run(main)


def test_no_reserve_pool_means_no_extra_server() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=1, reserve_pool_size=0,
                                         reserve_pool_timeout=5.0, query_wait_timeout=0.0)
        janitor = janitor_for(pool, clock)
        pool.checkout(FakeWaiter("holder"))
        await settle()
        w = FakeWaiter()
        pool.checkout(w)
        clock.advance(1000.0)
        janitor.tick()
        await settle()
        assert connect.calls == 1 and w.servers == [] and pool.total == 1
    run(main)


# --------------------------------------------------------------------------- max_db_connections


def test_db_has_room_false_blocks_opening_until_it_is_true() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=5, query_wait_timeout=0.0)
        room = [False]
        pool.db_has_room = lambda: room[0]
        janitor = janitor_for(pool, clock)
        w = FakeWaiter()
        assert pool.checkout(w) is None
        await settle()
        janitor.tick()
        await settle()
        assert connect.calls == 0 and pool.total == 0 and w.servers == []
        assert w.errors == [], "no room is a wait, not an error"
        room[0] = True
        clock.advance(0.25)
        janitor.tick()
        await settle()
        assert connect.calls == 1
        assert w.server is connect.opened[0]
    run(main)


def test_db_has_room_is_asked_before_each_open() -> None:
    """A cap of one connection for the database: three waiters still open only one."""

    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=5, query_wait_timeout=0.0)
        pool.db_has_room = lambda: pool.total < 1
        janitor = janitor_for(pool, clock)
        waiters = [FakeWaiter(f"w{i}") for i in range(3)]
        for w in waiters:
            pool.checkout(w)
        janitor.tick()
        await settle()
        assert connect.calls == 1 and pool.total == 1
        assert [bool(w.servers) for w in waiters] == [True, False, False]
        pool.checkin(waiters[0].server)
        assert waiters[1].server is connect.opened[0]
    run(main)


# --------------------------------------------------------------------------- lifetime spreading


@pytest.mark.parametrize("pool_size", [4, 16, 40])
def test_reap_renews_at_most_a_budget_of_expired_servers_per_tick(pool_size: int) -> None:
    async def main() -> None:
        budget = max(1, pool_size // 8)
        pool, _, clock = make_pool(pool_size=pool_size, server_lifetime=100.0,
                                   server_lifetime_jitter=0.0, server_idle_timeout=0.0,
                                   server_check_delay=0.0)
        servers = await fill_idle(pool, pool_size)
        clock.advance(150.0)
        assert all(clock.now >= s.expires_at for s in servers)
        pool.reap_idle(clock.now)
        closed = closed_by(servers, CloseReason.LIFETIME)
        assert 1 <= len(closed) <= budget
        assert all(s.closed_with == [CloseReason.LIFETIME] for s in closed)
        assert len(pool.idle) == pool_size - len(closed)
    run(main)


def test_expired_checkins_beyond_the_budget_are_kept_until_the_next_tick() -> None:
    async def main() -> None:
        pool, _, clock = make_pool(pool_size=16, server_lifetime=100.0,
                                   server_lifetime_jitter=0.0, server_idle_timeout=0.0,
                                   server_check_delay=0.0)
        janitor = janitor_for(pool, clock)
        servers = await fill_idle(pool, 16)
        for _ in range(16):
            assert pool.checkout(FakeWaiter()) is not None
        assert len(pool.active) == 16
        clock.advance(150.0)  # all expired, all busy
        janitor.tick()
        assert all(s.closed_with == [] for s in servers), "busy servers are not closed"
        for s in servers:
            pool.checkin(s)
        first = closed_by(servers, CloseReason.LIFETIME)
        assert 1 <= len(first) <= 2, "at most pool_size // 8 lifetime closes per period"
        kept = [s for s in servers if s not in first]
        assert all(s.state is ServerState.IDLE and s in pool.idle for s in kept)
        assert pool.total == 16 - len(first)
        clock.advance(0.25)
        janitor.tick()
        second = closed_by(servers, CloseReason.LIFETIME)
        assert len(first) < len(second) <= len(first) + 2, "the next period renews a few more"
    run(main)


def test_lifetime_renewal_is_spread_over_ticks_under_load() -> None:
    """16 expired servers under steady load: every period at most pool_size // 8 are renewed,
    clients never get a closed server, and eventually all of them are replaced."""

    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=16, server_lifetime=100.0,
                                         server_lifetime_jitter=0.0, server_idle_timeout=0.0,
                                         server_check_delay=0.0, query_wait_timeout=0.0)
        janitor = janitor_for(pool, clock)
        originals = await fill_idle(pool, 16)
        clock.advance(150.0)
        per_period: list[int] = []
        for _ in range(40):
            before = pool.stats.closed.get("lifetime", 0)
            janitor.tick()
            # Steady load: 12 clients each run one transaction during the period.
            waiters = [FakeWaiter(f"c{i}") for i in range(12)]
            got = []
            for w in waiters:
                server = pool.checkout(w)
                if server is not None:
                    got.append(server)
            await settle()
            got += [s for w in waiters for s in w.servers]
            assert len(got) == 12 and all(w.errors == [] for w in waiters)
            assert all(s.state is ServerState.ACTIVE for s in got), "never a closed server"
            assert len(set(got)) == 12
            for s in got:
                pool.checkin(s)
            per_period.append(pool.stats.closed.get("lifetime", 0) - before)
            assert pool.total <= 16
            clock.advance(0.25)
            if all(s.closed_with for s in originals):
                break
        assert all(s.closed_with == [CloseReason.LIFETIME] for s in originals), (
            f"not all expired servers renewed: {per_period}")
        assert max(per_period) <= 2, per_period
        assert len(per_period) >= 16 // 2, "renewals are spread over several periods"
        assert not pool.driver.tasks
        assert connect.calls >= 16
    run(main)


# --------------------------------------------------------------------------- client timeouts


def test_client_idle_timeout_closes_idle_client_after_the_timeout() -> None:
    pool, _, clock = make_pool(client_idle_timeout=60.0, idle_transaction_timeout=0.0)
    idle = FakeClient(pool, ClientState.IDLE, clock.now, name="idle")
    in_xact = FakeClient(pool, ClientState.ACTIVE, clock.now, name="in_xact")
    janitor = janitor_for(pool, clock, [idle, in_xact])
    clock.advance(59.9)
    janitor.tick()
    assert idle.errors == []
    clock.advance(0.1)
    janitor.tick()
    assert len(idle.errors) == 1
    exc = idle.errors[0]
    assert isinstance(exc, ProxyError)
    assert exc.sqlstate == "57P05"
    assert "client_idle_timeout" in exc.message
    assert in_xact.errors == [], "client_idle_timeout is for clients between transactions"


def test_idle_transaction_timeout_closes_idle_in_transaction_client() -> None:
    pool, _, clock = make_pool(client_idle_timeout=0.0, idle_transaction_timeout=10.0)
    stuck = FakeClient(pool, ClientState.ACTIVE, clock.now, pending=0, name="stuck")
    running = FakeClient(pool, ClientState.ACTIVE, clock.now, pending=1, name="running")
    idle = FakeClient(pool, ClientState.IDLE, clock.now, name="idle")
    janitor = janitor_for(pool, clock, [stuck, running, idle])
    clock.advance(9.9)
    janitor.tick()
    assert stuck.errors == []
    clock.advance(0.1)
    janitor.tick()
    assert len(stuck.errors) == 1
    exc = stuck.errors[0]
    assert isinstance(exc, ProxyError)
    assert exc.sqlstate == "25P03"
    assert "idle_transaction_timeout" in exc.message
    clock.advance(1000.0)
    janitor.tick()
    assert running.errors == [], "a query is running: the transaction is not idle"
    assert idle.errors == [], "idle_transaction_timeout is not client_idle_timeout"


def test_client_timeouts_zero_are_off() -> None:
    pool, _, clock = make_pool(client_idle_timeout=0.0, idle_transaction_timeout=0.0)
    clients = [FakeClient(pool, ClientState.IDLE, clock.now, name="idle"),
               FakeClient(pool, ClientState.ACTIVE, clock.now, pending=0, name="in_xact")]
    janitor = janitor_for(pool, clock, clients)
    clock.advance(1e6)
    janitor.tick()
    assert all(c.errors == [] for c in clients)


def test_client_timeouts_ignore_clients_not_logged_in_or_waiting() -> None:
    pool, _, clock = make_pool(client_idle_timeout=5.0, idle_transaction_timeout=5.0,
                               query_wait_timeout=0.0)
    clients = [
        FakeClient(pool, ClientState.IDLE, 0.0, name="idle_since_0"),
        FakeClient(pool, ClientState.ACTIVE, 0.0, pending=0, name="active_since_0"),
        FakeClient(pool, ClientState.LOGIN, 0.0, name="login"),
        FakeClient(None, ClientState.IDLE, clock.now, name="no_pool"),
        FakeClient(pool, ClientState.WAITING, clock.now, pending=1, name="waiting"),
    ]
    janitor = janitor_for(pool, clock, clients)
    clock.advance(1e6)
    janitor.tick()
    assert [c.name for c in clients if c.errors] == []


def test_client_timeouts_use_each_clients_own_pool_settings() -> None:
    strict, _, clock = make_pool(client_idle_timeout=5.0)
    lax, _, _ = make_pool(clock=clock, client_idle_timeout=0.0)
    a = FakeClient(strict, ClientState.IDLE, clock.now, name="strict")
    b = FakeClient(lax, ClientState.IDLE, clock.now, name="lax")
    janitor = Janitor(lambda: [strict, lax], clock.fn, clients=lambda: [a, b])
    clock.advance(10.0)
    janitor.tick()
    assert len(a.errors) == 1 and a.errors[0].sqlstate == "57P05"
    assert b.errors == []
