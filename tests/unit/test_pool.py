"""Unit tests for proxy/pool.py and proxy/janitor.py: fake clock, fake servers, fake connect
(shared with test_pool_lifecycle.py in poolfakes.py).

Nothing here touches a socket. Time is a mutable float behind a lambda, so timeouts are tested
by moving the clock, not by sleeping. Tests that need the pool to open connections (it spawns
asyncio tasks) run inside ``asyncio.run``; the one test of the login retry uses a real clock
with a short ``server_login_retry``, because that retry is an ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from typing import Any

import pytest

from proxy.errors import QueryWaitTimeout, ServerLoginError, ServerUnavailable
from proxy.pool import BUCKETS, CloseReason, Pool, ServerState
from proxy.pool.janitor import Janitor
from tests.unit.poolfakes import (
    FakeConnect,
    FakeWaiter,
    fill_idle,
    make_pool,
    run,
    settings,
    settle,
)

# --------------------------------------------------------------------------- checkout / checkin


def test_checkout_returns_idle_server_immediately_lifo() -> None:
    async def main() -> None:
        pool, connect, _ = make_pool(pool_size=3)
        a, b, c = await fill_idle(pool, 3)
        assert connect.calls == 3
        w = FakeWaiter()
        got = pool.checkout(w)
        assert got is c, "the most recently returned server (hot) comes first"
        assert got.state is ServerState.ACTIVE
        assert got in pool.active and got not in pool.idle
        assert w.servers == [] and w.errors == []  # returned, not called back
        assert pool.checkout(FakeWaiter()) is b
        assert pool.checkout(FakeWaiter()) is a
        assert connect.calls == 3, "no connection opened while idle ones existed"
    run(main)


def test_waiters_are_served_fifo() -> None:
    async def main() -> None:
        pool, connect, _ = make_pool(pool_size=1)
        (server,) = await fill_idle(pool, 1)
        assert pool.checkout(FakeWaiter("holder")) is server
        waiters = [FakeWaiter(f"w{i}") for i in range(4)]
        for w in waiters:
            assert pool.checkout(w) is None
        assert list(pool.waiters) == waiters
        for i in range(4):
            pool.checkin(server)
            served = [w for w in waiters if w.servers]
            assert served == waiters[:i + 1], "first come, first served"
            assert waiters[i].server is server
        pool.checkin(server)
        assert list(pool.idle) == [server] and not pool.waiters
        assert connect.calls == 1
    run(main)


@pytest.mark.parametrize("why", ["owes_a_reply", "still_linked"])
def test_checkin_never_hands_out_a_server_that_is_not_clean(why: str) -> None:
    """The pool's last guard: a server that owes a reply (or is still linked to a client) is
    closed, and the waiter gets a new connection instead of the last client's leftovers."""
    async def main() -> None:
        pool, connect, _ = make_pool(pool_size=1)
        (server,) = await fill_idle(pool, 1)
        assert pool.checkout(FakeWaiter("holder")) is server
        waiter = FakeWaiter()
        assert pool.checkout(waiter) is None
        if why == "owes_a_reply":
            server.clean = False
        else:
            server.client = object()
        pool.checkin(server)
        assert server.closed_with == [CloseReason.NOT_CLEAN]
        await settle()
        assert waiter.server is not None and waiter.server is not server
        assert connect.calls == 2
    run(main)


def test_waiter_is_served_on_checkin_without_opening() -> None:
    async def main() -> None:
        pool, connect, _ = make_pool(pool_size=1)
        (server,) = await fill_idle(pool, 1)
        assert pool.checkout(FakeWaiter()) is server
        w = FakeWaiter()
        assert pool.checkout(w) is None
        await settle()
        assert connect.calls == 1, "pool full: no second connection"
        assert w.servers == []
        pool.checkin(server)
        assert w.server is server
        assert server.state is ServerState.ACTIVE and server in pool.active
        assert not pool.idle and not pool.waiters
    run(main)


def test_pool_size_is_never_exceeded_counting_opening_connections() -> None:
    async def main() -> None:
        connect = FakeConnect()
        connect.gate = asyncio.Event()
        pool, _, _ = make_pool(connect, pool_size=2)
        waiters = [FakeWaiter(f"w{i}") for i in range(5)]
        for w in waiters:
            assert pool.checkout(w) is None
            assert pool.total <= 2
        await settle()
        assert pool.opening == 2 and connect.calls == 2, "connections being opened count"
        assert pool.total == 2
        connect.gate.set()
        await settle()
        assert pool.opening == 0 and connect.calls == 2
        assert len(pool.active) == 2 and pool.total == 2
        assert [bool(w.servers) for w in waiters] == [True, True, False, False, False]
        # Returning servers serves the rest, still without opening more.
        for _ in range(3):
            server = next(w for w in waiters if w.servers and w.servers[-1] in pool.active)
            pool.checkin(server.servers[-1])
            await settle()
            assert pool.total <= 2
        assert all(w.servers for w in waiters)
        assert connect.calls == 2
        assert max(pool.total, len(connect.opened)) == 2
    run(main)


def test_cancel_wait_removes_the_waiter() -> None:
    async def main() -> None:
        pool, _, _ = make_pool(pool_size=1)
        (server,) = await fill_idle(pool, 1)
        assert pool.checkout(FakeWaiter()) is server
        gone, stays = FakeWaiter("gone"), FakeWaiter("stays")
        pool.checkout(gone)
        pool.checkout(stays)
        pool.cancel_wait(gone)
        assert list(pool.waiters) == [stays]
        pool.cancel_wait(gone)  # twice: harmless
        pool.checkin(server)
        assert gone.servers == [] and gone.errors == []
        assert stays.server is server
    run(main)


def test_checkin_closed_server_is_not_parked() -> None:
    async def main() -> None:
        pool, connect, _ = make_pool(pool_size=1)
        (server,) = await fill_idle(pool, 1)
        assert pool.checkout(FakeWaiter()) is server
        w = FakeWaiter()
        pool.checkout(w)
        server.state = ServerState.CLOSED  # died while the client held it
        pool.checkin(server)
        assert server not in pool.idle and server not in pool.active
        await settle()
        assert connect.calls == 2, "a replacement is opened for the waiter"
        assert w.server is connect.opened[-1] and w.server is not server
    run(main)


def test_renew_closes_idle_now_and_busy_servers_when_they_come_back() -> None:
    async def main() -> None:
        pool, connect, _ = make_pool(pool_size=3)
        idle, busy, _third = await fill_idle(pool, 3)
        assert pool.checkout(FakeWaiter()) is _third
        assert pool.checkout(FakeWaiter()) is busy
        pool.renew()
        assert idle.closed_with == [CloseReason.CONFIG_RELOAD] and not pool.idle
        assert busy.closed_with == [] and _third.closed_with == []
        pool.checkin(busy)  # clean, but from before the renewal: closed, never parked
        assert busy.closed_with == [CloseReason.CONFIG_RELOAD]
        assert busy not in pool.idle and busy not in pool.active
        (fresh,) = await fill_idle(pool, 1)
        assert pool.checkout(FakeWaiter()) is fresh
        pool.checkin(fresh)  # opened after the renewal: kept
        assert fresh in pool.idle and fresh.closed_with == []
        assert pool.stats.closed == {"config_reload": 2}
    run(main)


def test_adopt_joins_the_pool_within_its_size() -> None:
    async def main() -> None:
        pool, connect, _ = make_pool(pool_size=1)
        outside = await connect(pool)
        pool.adopt(outside)
        assert list(pool.idle) == [outside] and pool.stats.opened == 1
        w = FakeWaiter()
        assert pool.checkout(w) is outside  # an adopted server serves like any other
        extra = await connect(pool)
        pool.adopt(extra)  # no room: closed
        assert extra.closed_with == [CloseReason.POOL_LIMIT] and pool.total == 1
    run(main)


# --------------------------------------------------------------------------- lifetime


def test_checkin_past_lifetime_closes_without_waiters() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=2, server_lifetime=100.0,
                                         server_lifetime_jitter=0.0)
        (server,) = await fill_idle(pool, 1)
        assert server.expires_at == server.created_at + 100.0
        assert pool.checkout(FakeWaiter()) is server
        clock.advance(100.0)
        pool.checkin(server)
        assert server.closed_with == [CloseReason.LIFETIME]
        assert server not in pool.idle and server not in pool.active
        assert pool.stats.closed == {"lifetime": 1}
        await settle()
        assert connect.calls == 1, "nobody waits: no replacement"
    run(main)


def test_checkin_past_lifetime_opens_replacement_for_waiters() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=1, server_lifetime=100.0,
                                         server_lifetime_jitter=0.0)
        (server,) = await fill_idle(pool, 1)
        assert pool.checkout(FakeWaiter()) is server
        w = FakeWaiter()
        pool.checkout(w)
        clock.advance(99.0)
        pool.checkin(server)  # not yet expired: handed over
        assert w.server is server and server.closed_with == []
        w2 = FakeWaiter()
        pool.checkout(w2)
        clock.advance(1.0)
        pool.checkin(server)  # now exactly at expires_at
        assert server.closed_with == [CloseReason.LIFETIME]
        assert w2.servers == []
        await settle()
        assert connect.calls == 2
        assert w2.server is connect.opened[-1] and w2.server is not server
    run(main)


def test_lifetime_deadline_without_jitter_is_exact() -> None:
    pool, _, _ = make_pool(server_lifetime=3600.0, server_lifetime_jitter=0.0)
    assert {pool.lifetime_deadline(50.0) for _ in range(20)} == {3650.0}


def test_lifetime_deadline_jitter_spreads_within_bounds() -> None:
    pool, _, _ = make_pool(server_lifetime=3600.0, server_lifetime_jitter=0.1)
    deadlines = [pool.lifetime_deadline(50.0) - 50.0 for _ in range(200)]
    assert all(0.9 * 3600.0 <= d <= 3600.0 for d in deadlines), (min(deadlines), max(deadlines))
    assert len(set(deadlines)) > 1, "jitter must spread the deadlines"
    # Spread over the interval, not bunched at one end.
    assert min(deadlines) < 0.95 * 3600.0 < max(deadlines)


def test_lifetime_zero_means_no_limit() -> None:
    pool, _, _ = make_pool(server_lifetime=0.0)
    assert pool.lifetime_deadline(10.0) == float("inf")


# --------------------------------------------------------------------------- janitor


def test_janitor_query_wait_timeout_only_after_the_timeout() -> None:
    async def main() -> None:
        connect = FakeConnect()
        connect.gate = asyncio.Event()  # the server never comes
        pool, _, clock = make_pool(connect, pool_size=1, query_wait_timeout=5.0)
        janitor = Janitor(lambda: [pool], clock.fn)
        first = FakeWaiter("first")
        pool.checkout(first)
        clock.advance(2.0)
        second = FakeWaiter("second")
        pool.checkout(second)
        clock.advance(2.999)
        janitor.tick()
        assert first.errors == [] and second.errors == []
        clock.advance(0.001)  # first has waited exactly 5 s
        janitor.tick()
        assert len(first.errors) == 1 and second.errors == []
        exc = first.errors[0]
        assert isinstance(exc, QueryWaitTimeout)
        assert exc.sqlstate == "57014"
        assert "query_wait_timeout" in exc.message
        assert list(pool.waiters) == [second]
        janitor.tick(clock.now + 2.0)  # an explicit `now` wins over the clock
        assert len(second.errors) == 1 and isinstance(second.errors[0], QueryWaitTimeout)
        assert not pool.waiters
        assert first.servers == [] and second.servers == []
    run(main)


def test_query_wait_timeout_says_why_when_no_server_could_be_opened() -> None:
    async def main() -> None:
        down = ServerUnavailable("cannot connect to server /run/db/.s.PGSQL.5432: [Errno 2] No "
                                 "such file or directory", hint="is the database running?")
        connect = FakeConnect(*[down] * 50)
        pool, _, clock = make_pool(connect, pool_size=1, query_wait_timeout=5.0,
                                   server_login_retry=1.0)
        w = FakeWaiter()
        pool.checkout(w)
        await settle()
        assert connect.calls >= 1 and w.errors == []  # it waits: the database may come back
        Janitor(lambda: [pool], clock.fn).tick(clock.now + 5.0)
        (exc,) = w.errors
        assert isinstance(exc, QueryWaitTimeout)
        assert exc.message.startswith("query_wait_timeout: no server connection became free")
        assert "opening a server connection failed: cannot connect to server /run/db/" in exc.message
        assert exc.hint == "is the database running?"
    run(main)


def test_janitor_query_wait_timeout_zero_is_off() -> None:
    async def main() -> None:
        connect = FakeConnect()
        connect.gate = asyncio.Event()
        pool, _, clock = make_pool(connect, pool_size=1, query_wait_timeout=0.0)
        w = FakeWaiter()
        pool.checkout(w)
        Janitor(lambda: [pool], clock.fn).tick(clock.now + 1e6)
        assert w.errors == [] and list(pool.waiters) == [w]
    run(main)


def test_janitor_reaps_idle_servers_but_keeps_min_pool_size() -> None:
    async def main() -> None:
        pool, _, clock = make_pool(pool_size=4, min_pool_size=1, server_idle_timeout=60.0,
                                   server_lifetime=0.0)
        servers = await fill_idle(pool, 4)
        janitor = Janitor(lambda: [pool], clock.fn)
        # Coldest first in the deque: each later one was used 10 s after the previous one.
        for i, s in enumerate(servers):
            s.last_used = clock.now + 10.0 * i
        clock.advance(59.0)
        janitor.tick()
        assert all(s.closed_with == [] for s in servers), "nothing idle for 60 s yet"
        clock.advance(1.0)  # servers[0] idle exactly 60 s
        janitor.tick()
        assert servers[0].closed_with == [CloseReason.IDLE_TIMEOUT]
        assert list(pool.idle) == servers[1:]
        clock.advance(1000.0)  # everything is idle long enough now
        janitor.tick()
        assert [s.closed_with for s in servers[1:]] == [
            [CloseReason.IDLE_TIMEOUT], [CloseReason.IDLE_TIMEOUT], []]
        assert list(pool.idle) == [servers[3]], "min_pool_size keeps the hottest one"
        assert pool.stats.closed == {"idle_timeout": 3}
    run(main)


def test_janitor_reap_counts_active_servers_toward_min_pool_size() -> None:
    async def main() -> None:
        pool, _, clock = make_pool(pool_size=3, min_pool_size=2, server_idle_timeout=10.0)
        a, b, c = await fill_idle(pool, 3)
        assert pool.checkout(FakeWaiter()) is c
        clock.advance(100.0)
        Janitor(lambda: [pool], clock.fn).tick()
        assert a.closed_with == [CloseReason.IDLE_TIMEOUT] and b.closed_with == []
        assert pool.total == 2
    run(main)


def test_janitor_closes_idle_servers_past_their_lifetime() -> None:
    async def main() -> None:
        pool, _, clock = make_pool(pool_size=2, server_idle_timeout=0.0, server_lifetime=30.0,
                                   server_lifetime_jitter=0.0)
        a, b = await fill_idle(pool, 2)
        b.expires_at = clock.now + 60.0
        clock.advance(30.0)
        Janitor(lambda: [pool], clock.fn).tick()
        assert a.closed_with == [CloseReason.LIFETIME] and b.closed_with == []
        assert list(pool.idle) == [b]
    run(main)


# --------------------------------------------------------------------------- stats


def test_stats_wait_histogram_counts_every_checkout() -> None:
    async def main() -> None:
        pool, connect, clock = make_pool(pool_size=1)
        st = pool.stats
        w0 = FakeWaiter()
        pool.checkout(w0)  # waits for the open (no clock movement: a 0 s wait)
        await settle()
        server = w0.server
        holder_checkouts = 1
        w1 = FakeWaiter()
        pool.checkout(w1)
        clock.advance(0.2)
        pool.checkin(server)  # w1 waited 0.2 s
        holder_checkouts += 1
        pool.checkin(server)
        for _ in range(3):  # immediate checkouts from idle
            assert pool.checkout(FakeWaiter()) is server
            pool.checkin(server)
            holder_checkouts += 1
        assert st.wait_count == holder_checkouts == 5
        assert sum(st.wait_hist) == 5
        assert st.wait_hist[bisect_left(BUCKETS, 0.2)] == 1
        assert st.wait_time_total == pytest.approx(0.2)
        assert st.opened == 1 and connect.calls == 1
    run(main)


def test_stats_transaction_done_histogram() -> None:
    pool, _, _ = make_pool()
    st = pool.stats
    for duration in (0.0005, 0.003, 0.003, 2.0, 100.0):
        pool.transaction_done(duration)
    assert st.transactions == 5
    assert st.xact_time_total == pytest.approx(102.0065)
    assert sum(st.xact_hist) == 5
    assert st.xact_hist[bisect_left(BUCKETS, 0.0005)] == 1
    assert st.xact_hist[bisect_left(BUCKETS, 0.003)] == 2
    assert st.xact_hist[bisect_left(BUCKETS, 2.0)] == 1
    assert st.xact_hist[-1] == 1, "beyond the last bucket goes to +Inf"


def test_stats_closed_by_reason() -> None:
    async def main() -> None:
        pool, _, clock = make_pool(pool_size=4, server_idle_timeout=10.0, server_lifetime=50.0,
                                   server_lifetime_jitter=0.0)
        a, b, c, d = await fill_idle(pool, 4)
        pool.remove_idle(a, CloseReason.SERVER_CLOSED)
        assert pool.checkout(FakeWaiter()) is d
        pool.discard(d, CloseReason.CLIENT_ABORT)
        assert pool.checkout(FakeWaiter()) is c
        clock.advance(50.0)
        pool.checkin(c)  # expired
        Janitor(lambda: [pool], clock.fn).tick()  # b idle for 50 s
        assert pool.stats.closed == {"server_closed": 1, "client_abort": 1, "lifetime": 1,
                                     "idle_timeout": 1}
        assert [s.closed_with for s in (a, b, c, d)] == [
            [CloseReason.SERVER_CLOSED], [CloseReason.IDLE_TIMEOUT], [CloseReason.LIFETIME],
            [CloseReason.CLIENT_ABORT]]
        assert pool.total == 0
        assert {r.value for r in CloseReason} >= set(pool.stats.closed)
    run(main)


def test_discard_of_an_already_closed_server_counts_once() -> None:
    async def main() -> None:
        pool, _, _ = make_pool(pool_size=1)
        (server,) = await fill_idle(pool, 1)
        assert pool.checkout(FakeWaiter()) is server
        server.state = ServerState.CLOSED  # the connection died by itself
        pool.discard(server, CloseReason.SERVER_CLOSED)
        assert server.closed_with == [], "not closed a second time"
        assert pool.stats.closed == {"server_closed": 1}
        assert pool.total == 0
    run(main)


# --------------------------------------------------------------------------- login failures


def test_server_login_error_fails_all_waiters_at_once() -> None:
    async def main() -> None:
        refused = ServerLoginError('password authentication failed for user "app"',
                                   sqlstate="28P01")
        pool, connect, clock = make_pool(FakeConnect(refused), pool_size=1,
                                         server_login_retry=5.0)
        waiters = [FakeWaiter(f"w{i}") for i in range(3)]
        for w in waiters:
            pool.checkout(w)
        await settle()
        assert connect.calls == 1
        for w in waiters:
            assert w.errors == [refused] and w.servers == []
        assert not pool.waiters and pool.opening == 0
        # Within server_login_retry a new client fails fast, without another login attempt.
        late = FakeWaiter("late")
        assert pool.checkout(late) is None
        assert late.errors == [refused]
        await settle()
        assert connect.calls == 1
        # After the retry delay, the pool tries again (and this time the login works).
        clock.advance(5.0)
        again = FakeWaiter("again")
        pool.checkout(again)
        await settle()
        assert connect.calls == 2
        assert again.server is connect.opened[-1] and again.errors == []
        assert pool.last_login_error is None
    run(main)


def test_failed_open_is_retried_even_when_a_concurrent_open_succeeds() -> None:
    """pool_size 2, two waiters, two opens at once: one fails (ServerUnavailable), one works.
    The second waiter must not be stranded until someone checks a server in: the pool has room,
    so it retries after server_login_retry."""
    retry = 0.05

    async def main() -> None:
        down = ServerUnavailable("connection refused")
        connect = FakeConnect(down)
        pool = Pool("pg", "app", "app", settings(pool_size=2, server_login_retry=retry),
                    connect, time.monotonic)
        waiters = [FakeWaiter(f"w{i}") for i in range(2)]
        for w in waiters:
            pool.checkout(w)
        started = time.monotonic()
        await settle()
        # Both attempts were started together; the first failed, the second succeeded.
        failures = [w for w in waiters if w.errors]
        assert failures == [], "an unreachable server does not fail waiters"
        assert waiters[0].servers, "the open that worked serves the first waiter"
        assert connect.calls >= 2
        # Nobody checks a server in: the pool itself must open the second connection.
        deadline = started + 2.0
        while not waiters[1].servers and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert waiters[1].errors == []
        assert waiters[1].server is connect.opened[-1], (
            f"second waiter stranded: {connect.calls} connect calls, opening={pool.opening}, "
            f"total={pool.total} < pool_size=2")
        assert connect.calls == 3 and len(connect.opened) == 2
        assert pool.last_login_error is None and pool.opening == 0
    run(main)


def test_server_unavailable_keeps_waiters_and_retries_after_login_retry() -> None:
    """pool_size 1: the attempts fail; the waiter stays and is served by a later retry."""
    retry = 0.05

    async def main() -> None:
        connect = FakeConnect(ServerUnavailable("connection refused"),
                              ServerUnavailable("connection refused"))
        pool = Pool("pg", "app", "app", settings(pool_size=1, server_login_retry=retry),
                    connect, time.monotonic)
        w = FakeWaiter()
        pool.checkout(w)
        started = time.monotonic()
        await settle()
        assert connect.calls == 1 and w.errors == [] and list(pool.waiters) == [w]
        await asyncio.sleep(retry / 3)
        assert connect.calls == 1, "no retry before server_login_retry"
        assert w.errors == [] and list(pool.waiters) == [w]
        deadline = time.monotonic() + 2.0
        while not w.servers and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert w.errors == []
        assert w.server is connect.opened[-1]
        assert connect.calls == 3
        assert time.monotonic() - started >= 2 * retry * 0.9, "two retries, each after a delay"
        assert pool.last_login_error is None
    run(main)


# --------------------------------------------------------------------------- snapshot


def test_snapshot_fields() -> None:
    async def main() -> None:
        connect = FakeConnect()
        pool, _, clock = make_pool(connect, pool_size=3, pool_mode="transaction")
        a, b = await fill_idle(pool, 2)
        assert pool.checkout(FakeWaiter()) is b
        connect.gate = asyncio.Event()  # the next open hangs: one server in login
        held_a = FakeWaiter()
        assert pool.checkout(held_a) is a
        w1 = FakeWaiter()
        w2 = FakeWaiter()
        pool.checkout(w1)
        clock.advance(1.5)
        pool.checkout(w2)
        clock.advance(0.5)
        await settle()
        pool.clients = 7
        pool.transaction_done(0.01)
        snap = pool.snapshot()
        assert snap == {
            "listener": "pg", "database": "app", "user": "app",
            "pool_mode": "transaction", "pool_size": 3,
            "servers": {"active": 2, "idle": 0, "login": 1, "testing": 0},
            "idle_timeout": 600.0,
            "db_idle_limit": None,
            "waiters": 2,
            "max_wait": pytest.approx(2.0),
            "clients": 7,
            "transactions": 1,
            "prepared_statements": {"distinct": 0, "on_servers": 0},
            "tasks": 1,
            "paused": False,
        }
        connect.gate.set()
        await settle()
        assert w1.server is connect.opened[-1]
        snap = pool.snapshot()
        assert snap["servers"] == {"active": 3, "idle": 0, "login": 0, "testing": 0}
        assert snap["waiters"] == 1 and snap["max_wait"] == pytest.approx(0.5)
    run(main)


def test_snapshot_of_an_empty_pool() -> None:
    pool, _, _ = make_pool(pool_mode="session", pool_size=5)
    snap = pool.snapshot()
    assert snap["servers"] == {"active": 0, "idle": 0, "login": 0, "testing": 0}
    assert snap["waiters"] == 0 and snap["max_wait"] == 0.0
    assert snap["pool_mode"] == "session" and snap["pool_size"] == 5


def test_close_all_closes_everything_and_refuses_new_servers() -> None:
    async def main() -> None:
        pool, connect, _ = make_pool(pool_size=2)
        a, b = await fill_idle(pool, 2)
        assert pool.checkout(FakeWaiter()) is b
        pool.close_all(CloseReason.SHUTDOWN)
        assert a.closed_with == [CloseReason.SHUTDOWN] and b.closed_with == [CloseReason.SHUTDOWN]
        assert pool.total == 0
        w = FakeWaiter()
        pool.checkout(w)
        await settle()
        assert connect.calls == 2, "a closed pool opens nothing"
    run(main)


def test_a_broken_waiter_does_not_lose_the_server() -> None:
    class Broken(FakeWaiter):
        def on_server(self, server: Any) -> None:
            raise RuntimeError("client went away")

    async def main() -> None:
        pool, _, _ = make_pool(pool_size=1)
        (server,) = await fill_idle(pool, 1)
        assert pool.checkout(FakeWaiter()) is server
        broken, ok = Broken("broken"), FakeWaiter("ok")
        pool.checkout(broken)
        pool.checkout(ok)
        pool.checkin(server)
        assert ok.server is server and server in pool.active
        pool.checkin(server)
        pool.checkout(Broken("broken2"))  # idle server, no waiters: returned directly
        assert server in pool.active
        pool.checkin(server)
        assert list(pool.idle) == [server]
    run(main)
