"""Server connection lifecycle against a real PostgreSQL (issue 4, PostgreSQL side).

Fault and lifecycle tests through a running poolproxy:

- idle reaping (`server_idle_timeout`) down to `min_pool_size`, and `min_pool_size` top-up;
- `server_lifetime` renewals spread over janitor periods, invisible to clients under load;
- alignment below the database's own `idle_session_timeout` (one warning, effective value);
- backends killed between transactions (idle watch, health check, transparent retry) and in the
  middle of one (the server's own SQLSTATE as an ERROR, and the same client connection goes on);
- a PostgreSQL restart under load (50 asyncpg clients);
- `query_wait_timeout`, `idle_transaction_timeout`, `client_idle_timeout`,
  `max_db_connections`, `reserve_pool_size`, `server_login_retry`;
- no leaks: after each fault test the proxy's own /pools snapshot shows nothing in flight and
  as many idle servers as PostgreSQL has backends for the pool.

Every test uses a database of its own, so server-side counts (pg_stat_activity) only see it.
Tests that change server-wide state (restart) use a PostgreSQL of their own. To put a dead
server in front of a client deterministically, some tests freeze a backend or poolproxy with
SIGSTOP, or kill poolproxy's end of a server socket with `ss -K` (skipped where impossible).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.harness import PgServer, ProxyProcess, make_config, pg_listener
from tests.harness.pgraw import error_fields, message, simple_query, trust_login
from tests.harness.util import http_get, metric, wait_for

PASSWORDS = {"app": "app-secret", "app2": "app2-secret"}
JANITOR_PERIOD = 0.25
#: Scheduling/backend-exit latency allowed on top of a timeout plus one janitor period.
SLACK = 0.75


# --------------------------------------------------------------------------- helpers


def ensure_db(pg: PgServer, name: str, users: tuple[str, ...] = ("app",)) -> str:
    """A database of the test's own (owner app) with table lc_t(id, n) holding row (1, 0)."""
    if not pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)):
        pg.execute(f'CREATE DATABASE "{name}" OWNER app')
    for user in users:
        pg.execute(f'GRANT ALL ON DATABASE "{name}" TO {user}')
    pg.execute("CREATE TABLE IF NOT EXISTS lc_t (id int PRIMARY KEY, n int NOT NULL)", dbname=name)
    pg.execute(f"GRANT ALL ON lc_t TO {', '.join(users)}", dbname=name)
    pg.execute("INSERT INTO lc_t VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = 0", dbname=name)
    return name


def connect(proxy: ProxyProcess, db: str, user: str = "app", password: str | None = None,
            autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user=user,
                           password=password or PASSWORDS[user], dbname=db,
                           autocommit=autocommit, connect_timeout=10, **kwargs)


async def aconnect(proxy: ProxyProcess, db: str, user: str = "app") -> asyncpg.Connection:
    return await asyncpg.connect(host="127.0.0.1", port=proxy.port("pg"), user=user,
                                 password=PASSWORDS[user], database=db, timeout=15)


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


class Observer:
    """A superuser connection of its own that looks at pg_stat_activity."""

    def __init__(self, pg: PgServer) -> None:
        self.conn = psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=10)

    def _where(self, db: str, user: str | None, state: str | None) -> tuple[str, list[Any]]:
        sql = ("FROM pg_stat_activity WHERE backend_type = 'client backend'"
               " AND pid <> pg_backend_pid() AND datname = %s")
        params: list[Any] = [db]
        if user is not None:
            sql += " AND usename = %s"
            params.append(user)
        if state is not None:
            sql += " AND state = %s"
            params.append(state)
        return sql, params

    def count(self, db: str, user: str | None = "app", state: str | None = None) -> int:
        where, params = self._where(db, user, state)
        row = self.conn.execute("SELECT count(*) " + where, params).fetchone()
        assert row is not None
        return int(row[0])

    def pids(self, db: str, user: str | None = "app") -> set[int]:
        where, params = self._where(db, user, None)
        return {int(r[0]) for r in self.conn.execute("SELECT pid " + where, params).fetchall()}

    def oldest_age(self, db: str, user: str = "app") -> float:
        where, params = self._where(db, user, None)
        row = self.conn.execute(
            "SELECT coalesce(extract(epoch FROM max(now() - backend_start)), 0) " + where,
            params).fetchone()
        assert row is not None
        return float(row[0])

    def terminate(self, pids: set[int]) -> None:
        for pid in pids:
            self.conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def observer(pg_server: PgServer) -> Iterator[Observer]:
    obs = Observer(pg_server)
    yield obs
    obs.close()


def lc_value(pg: PgServer, db: str) -> int:
    return int(pg.execute("SELECT n FROM lc_t WHERE id = 1", dbname=db)[0][0])


def closed(proxy: ProxyProcess, db: str, reason: str, user: str = "app") -> int:
    return int(metric(proxy, "poolproxy_server_connections_closed_total", database=db,
                      user=user, reason=reason))


def pools(proxy: ProxyProcess) -> list[dict[str, Any]]:
    return json.loads(http_get(proxy, "/pools"))


def pool_of(proxy: ProxyProcess, db: str, user: str = "app") -> dict[str, Any]:
    found = [p for p in pools(proxy) if p["database"] == db and p["user"] == user]
    assert found, f"no pool {db}/{user} in /pools: {pools(proxy)}"
    return found[0]


def assert_no_leaks(proxy: ProxyProcess, expected_idle: Callable[[str, str], int],
                    timeout: float = 5.0) -> None:
    """Every pool settles: nothing active, logging in, testing or waiting, no background task,
    and exactly `expected_idle(database, user)` idle servers."""
    problems: list[str] = []

    def settled() -> bool:
        problems.clear()
        for p in pools(proxy):
            servers = p["servers"]
            where = f"{p['database']}/{p['user']}"
            for state in ("active", "login", "testing"):
                if servers[state]:
                    problems.append(f"{where}: {servers[state]} server(s) {state}")
            for key in ("waiters", "tasks", "listener_tasks"):
                if p[key]:
                    problems.append(f"{where}: {key}={p[key]}")
            want = expected_idle(p["database"], p["user"])
            if servers["idle"] != want:
                problems.append(f"{where}: {servers['idle']} idle server(s), expected {want}")
        return not problems

    assert wait_for(settled, timeout, 0.1), f"pool snapshot not clean: {problems}"


def run_concurrently(funcs: list[Callable[[], Any]], timeout: float = 30.0) -> list[Any]:
    """Run each function in a thread of its own; their results or the exceptions they raised."""
    with ThreadPoolExecutor(len(funcs)) as pool:
        futures = [pool.submit(f) for f in funcs]
        out: list[Any] = []
        for fut in futures:
            try:
                out.append(fut.result(timeout))
            except Exception as exc:
                out.append(exc)
        return out


def burst(conns: list[psycopg.Connection[Any]], *statements: str) -> list[Any]:
    """One transaction on every connection at the same time (each holds its server for 0.3 s,
    so each needs a server of its own, then runs `statements`); the server pid each one used,
    or the exception it raised."""

    def one(conn: psycopg.Connection[Any]) -> int:
        conn.execute("SELECT pg_sleep(0.3)")
        for sql in statements:
            conn.execute(sql)
        pid = backend_pid(conn)
        conn.commit()
        return pid

    return run_concurrently([partial(one, c) for c in conns])


def errors_of(results: list[Any]) -> list[Exception]:
    return [r for r in results if isinstance(r, Exception)]


def close_all(conns: list[psycopg.Connection[Any]]) -> None:
    for conn in conns:
        try:
            conn.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- 1. idle reaping


def test_idle_servers_reaped_to_zero(pg_server: PgServer, proxy_factory: Any,
                                     observer: Observer) -> None:
    db = ensure_db(pg_server, "lc_idle0")
    proxy = proxy_factory(make_config(pg_listener(
        pg_server, pool_size=5, min_pool_size=0, server_idle_timeout="2s")))
    conns = [connect(proxy, db) for _ in range(5)]
    try:
        results = burst(conns)
        t_end = time.monotonic()
        assert not errors_of(results), results
        assert observer.count(db) == 5
        # Not before the timeout: the clients are connected, the servers merely idle.
        time.sleep(max(0.0, t_end + 1.5 - time.monotonic()))
        assert observer.count(db) == 5, "idle servers closed well before server_idle_timeout"
        assert wait_for(lambda: observer.count(db) == 0, 5.0), "idle servers never reaped"
        elapsed = time.monotonic() - t_end
        assert elapsed <= 2.0 + JANITOR_PERIOD + SLACK, f"reaped after {elapsed:.2f}s"
        assert closed(proxy, db, "idle_timeout") == 5
        # The connected clients still work: a new server is opened for them.
        assert not errors_of(burst(conns[:2]))
        assert_no_leaks(proxy, lambda d, u: observer.count(d, u))
    finally:
        close_all(conns)


def test_idle_servers_reaped_down_to_min_pool_size(pg_server: PgServer, proxy_factory: Any,
                                                   observer: Observer) -> None:
    db = ensure_db(pg_server, "lc_idle2")
    proxy = proxy_factory(make_config(pg_listener(
        pg_server, pool_size=5, min_pool_size=2, server_idle_timeout="2s")))
    conns = [connect(proxy, db) for _ in range(5)]
    try:
        results = burst(conns)
        t_end = time.monotonic()
        assert not errors_of(results), results
        assert observer.count(db) == 5
        assert wait_for(lambda: observer.count(db) <= 2, 5.0), "idle servers never reaped"
        elapsed = time.monotonic() - t_end
        assert elapsed <= 2.0 + JANITOR_PERIOD + SLACK, f"reaped after {elapsed:.2f}s"
        kept = observer.pids(db)
        assert len(kept) == 2, f"expected min_pool_size=2 servers, PostgreSQL has {len(kept)}"
        # They stay (longer than another idle timeout), and they are the same two: no churn.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert observer.pids(db) == kept
            time.sleep(0.1)
        assert closed(proxy, db, "idle_timeout") == 3
        assert pool_of(proxy, db)["servers"]["idle"] == 2
        assert_no_leaks(proxy, lambda d, u: 2)
    finally:
        close_all(conns)


def test_min_pool_size_top_up(pg_server: PgServer, proxy_factory: Any,
                              observer: Observer) -> None:
    db = ensure_db(pg_server, "lc_minpool")
    proxy = proxy_factory(make_config(pg_listener(
        pg_server, pool_size=5, min_pool_size=3, server_idle_timeout="2s")))
    conn = connect(proxy, db)  # a login creates the pool; no query at all
    try:
        assert wait_for(lambda: observer.count(db) == 3, 2.0), \
            f"min_pool_size=3 not reached: {observer.count(db)} server(s)"
        first = observer.pids(db)
        # Re-opened after the database drops them (and never more than min_pool_size).
        observer.terminate(first)
        assert wait_for(lambda: len(observer.pids(db) - first) == 3, 3.0), \
            f"min_pool_size not restored after the servers died: {observer.pids(db)}"
        time.sleep(0.5)
        assert observer.count(db) == 3
        assert_no_leaks(proxy, lambda d, u: 3)
        conn.execute("SELECT 1")
        conn.commit()
    finally:
        conn.close()


# --------------------------------------------------------------------------- 2. lifetime


_CLOSE_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*closing \(lifetime\)", re.M)


def _log_times(text: str) -> list[float]:
    out = []
    for stamp, ms in _CLOSE_LINE.findall(text):
        t = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
        out.append(t + int(ms) / 1000.0)
    return sorted(out)


def test_lifetime_renewals_are_spread_and_invisible(pg_server: PgServer, proxy_factory: Any,
                                                   observer: Observer) -> None:
    db = ensure_db(pg_server, "lc_life")
    proxy = proxy_factory(make_config(pg_listener(
        pg_server, pool_size=10, server_lifetime="3s")))
    errors: list[str] = []
    transactions = 0
    samples: list[tuple[float, int]] = []

    def sample_metrics(stop: threading.Event) -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), closed(proxy, db, "lifetime")))
            stop.wait(JANITOR_PERIOD)

    async def main() -> None:
        nonlocal transactions
        conns = [await aconnect(proxy, db) for _ in range(20)]
        stop_at = time.monotonic() + 10.0

        async def client(conn: asyncpg.Connection) -> None:
            nonlocal transactions
            while time.monotonic() < stop_at:
                try:
                    async with conn.transaction():
                        await conn.fetchval("SELECT 1")
                    transactions += 1
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.01)

        try:
            await asyncio.gather(*(client(c) for c in conns))
        finally:
            for c in conns:
                await c.close()

    stop = threading.Event()
    sampler = threading.Thread(target=sample_metrics, args=(stop,), daemon=True)
    sampler.start()
    try:
        asyncio.run(main())
        oldest = observer.oldest_age(db)
    finally:
        stop.set()
        sampler.join(10)

    assert not errors, f"{len(errors)} client error(s), e.g. {errors[:3]}"
    assert transactions > 1000
    total = closed(proxy, db, "lifetime")
    # 10 servers living <= 3s over 10s: each is renewed a few times.
    assert total >= 10, f"only {total} lifetime closes"
    # Spread: a few per janitor period at most, by the metrics sampled every 0.25 s ...
    deltas = [(b[1] - a[1], b[0] - a[0]) for a, b in zip(samples, samples[1:], strict=False)]
    burstiest = max(d for d, dt in deltas if dt <= 2 * JANITOR_PERIOD)
    assert burstiest <= 3, \
        f"{burstiest} lifetime closes within one sample interval: {[d for d, _ in deltas]}"
    # ... and by the close times in the proxy's log, in any 0.25 s window.
    times = _log_times(proxy.log_text())
    assert len(times) == total
    window = max(sum(1 for u in times if t <= u < t + JANITOR_PERIOD) for t in times)
    assert window <= 3, f"{window} lifetime closes within {JANITOR_PERIOD}s"
    # Every server is renewed in time, even when all 10 expire together (one per period).
    assert oldest <= 3.0 + 10 * JANITOR_PERIOD + 1.5, \
        f"a server lived {oldest:.1f}s with server_lifetime=3s"
    assert_no_leaks(proxy, lambda d, u: observer.count(d, u))


# --------------------------------------------------------------------------- 3. alignment


@pytest.fixture
def idle_session_db(pg_server: PgServer) -> Iterator[str]:
    """A database where PostgreSQL closes app's sessions after 3 s idle (only there)."""
    db = ensure_db(pg_server, "lc_align")
    pg_server.execute(f"ALTER ROLE app IN DATABASE {db} SET idle_session_timeout = '3s'")
    yield db
    pg_server.execute(f"ALTER ROLE app IN DATABASE {db} RESET idle_session_timeout")


def test_idle_limit_aligned_below_idle_session_timeout(pg_server: PgServer, proxy_factory: Any,
                                                      idle_session_db: str) -> None:
    db = idle_session_db
    proxy = proxy_factory(make_config(pg_listener(pg_server)))  # poolproxy defaults
    conns = [connect(proxy, db) for _ in range(3)]
    errors: list[str] = []
    try:
        def rounds(conn: psycopg.Connection[Any]) -> None:
            for i in range(5):
                if i:
                    time.sleep(4.0)  # longer than the server's idle_session_timeout
                try:
                    conn.execute("UPDATE lc_t SET n = n + 1 WHERE id = 1")
                    conn.commit()
                except psycopg.Error as exc:
                    errors.append(f"round {i}: {type(exc).__name__}: {exc}")
                    conn.rollback()

        run_concurrently([partial(rounds, c) for c in conns], timeout=60)
        assert not errors, errors
        assert lc_value(pg_server, db) == 15
        snap = pool_of(proxy, db)
        assert snap["db_idle_limit"] == pytest.approx(3.0)
        assert 0 < snap["idle_timeout"] < 3.0, snap
        warnings = [line for line in proxy.log_text().splitlines()
                    if " WARNING " in line and "idle_session_timeout" in line]
        assert len(warnings) == 1, warnings
        # poolproxy closed its idle servers itself, before PostgreSQL did.
        assert closed(proxy, db, "idle_timeout") >= 3
        assert closed(proxy, db, "server_error") == 0
        assert_no_leaks(proxy, lambda d, u: 0)
    finally:
        close_all(conns)


def test_effective_idle_timeout_exported_as_gauge(pg_server: PgServer, proxy_factory: Any,
                                                 idle_session_db: str) -> None:
    proxy = proxy_factory(make_config(pg_listener(pg_server)))
    with connect(proxy, idle_session_db) as conn:
        conn.execute("SELECT 1")
        conn.commit()
        idle_timeout = pool_of(proxy, idle_session_db)["idle_timeout"]
        assert idle_timeout < 3.0
        gauge = metric(proxy, "poolproxy_server_idle_timeout", database=idle_session_db,
                       user="app")
        assert gauge == pytest.approx(idle_timeout), \
            "poolproxy_server_idle_timeout shows the configured value, not the effective one"


# --------------------------------------------------------------------------- 4. killed backends


@pytest.mark.parametrize("check_delay", ["30s", 0], ids=["health-check", "no-health-check"])
def test_backends_terminated_between_transactions(pg_server: PgServer, proxy_factory: Any,
                                                  observer: Observer, check_delay: Any) -> None:
    db = ensure_db(pg_server, f"lc_kill_{'check' if check_delay else 'nocheck'}")
    proxy = proxy_factory(make_config(pg_listener(pg_server, pool_size=5,
                                                  server_check_delay=check_delay)))
    conns = [connect(proxy, db) for _ in range(5)]
    try:
        results = burst(conns)
        assert not errors_of(results), results
        for round_ in range(2):
            victims = observer.pids(db)
            assert len(victims) == 5
            observer.terminate(victims)  # every client is between transactions
            assert wait_for(partial(lambda v: not observer.pids(db) & v, victims), 5.0)
            results = burst(conns, "UPDATE lc_t SET n = n + 1 WHERE id = 1")
            # (every transaction ran exactly once: n counts them)
            assert not errors_of(results), f"round {round_}: {errors_of(results)}"
            assert not set(results) & victims
        assert lc_value(pg_server, db) == 10
        assert closed(proxy, db, "server_error") == 10
        assert_no_leaks(proxy, lambda d, u: observer.count(d, u))
    finally:
        close_all(conns)


def _frozen_backend_scenario(proxy: ProxyProcess, db: str, observer: Observer) -> Any:
    """A pooled server whose backend was terminated but has not acted on it yet (SIGSTOP):
    the proxy cannot have noticed, so the client's next transaction starts on a dead server.
    Returns the client's (new pid, victim pid) or the exception its transaction raised."""
    conn = connect(proxy, db)
    try:
        victim = backend_pid(conn)
        conn.commit()
        time.sleep(0.3)  # idle longer than server_check_delay (when it is on)
        os.kill(victim, signal.SIGSTOP)
        try:
            observer.terminate({victim})
            outcome: list[Any] = []

            def transaction() -> None:
                try:
                    conn.execute("UPDATE lc_t SET n = n + 1 WHERE id = 1")
                    outcome.append(backend_pid(conn))
                    conn.commit()
                except Exception as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=transaction, daemon=True)
            thread.start()
            time.sleep(0.3)  # the request reached the frozen backend (or the health check did)
        finally:
            os.kill(victim, signal.SIGCONT)
        thread.join(15)
        assert outcome, "the client's transaction never finished"
        assert wait_for(lambda: victim not in observer.pids(db), 5.0)
        if isinstance(outcome[0], Exception):
            return outcome[0]
        # The same client connection goes on normally afterwards.
        conn.execute("SELECT 1")
        conn.commit()
        return outcome[0], victim
    finally:
        conn.close()


def test_health_check_replaces_a_dead_server(pg_server: PgServer, proxy_factory: Any,
                                             observer: Observer) -> None:
    db = ensure_db(pg_server, "lc_check")
    proxy = proxy_factory(make_config(pg_listener(pg_server, server_check_delay="200ms")))
    result = _frozen_backend_scenario(proxy, db, observer)
    assert not isinstance(result, Exception), f"client saw: {type(result).__name__}: {result}"
    new_pid, victim = result
    assert new_pid != victim
    assert lc_value(pg_server, db) == 1
    assert closed(proxy, db, "check_failed") == 1
    assert_no_leaks(proxy, lambda d, u: observer.count(d, u))


def test_transparent_retry_when_the_server_was_terminated(pg_server: PgServer,
                                                          proxy_factory: Any,
                                                          observer: Observer) -> None:
    """The backend answers the client's first message with FATAL 57P01 (it was terminated
    while pooled) and closes: nothing of the request ran, so the proxy must replay it."""
    db = ensure_db(pg_server, "lc_retry")
    # No health check: the dead server reaches the client's request; the proxy must replay it.
    proxy = proxy_factory(make_config(pg_listener(pg_server, server_check_delay=0)))
    result = _frozen_backend_scenario(proxy, db, observer)
    assert not isinstance(result, Exception), (
        f"client between transactions saw: {type(result).__name__}: {result} "
        f"(sqlstate {getattr(result, 'sqlstate', None)})")
    new_pid, victim = result
    assert new_pid != victim
    assert lc_value(pg_server, db) == 1  # replayed exactly once
    assert_no_leaks(proxy, lambda d, u: observer.count(d, u))


def _drop_connection(pg: PgServer, observer: Observer, pid: int) -> None:
    """Kill poolproxy's TCP socket of the server connection to backend `pid` (ss -K): the
    connection ends without a word from PostgreSQL, as after a network failure."""
    row = observer.conn.execute("SELECT client_port FROM pg_stat_activity WHERE pid = %s",
                                (pid,)).fetchone()
    assert row is not None
    try:
        done = subprocess.run(["ss", "-K", "-t", f"( sport = :{row[0]} and dport = :{pg.port} )"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot kill a socket with ss -K: {exc}")
    if done.returncode != 0 or f":{row[0]} " not in done.stdout:
        pytest.skip(f"cannot kill a socket with ss -K: {done.stdout} {done.stderr}")


def test_transparent_retry_when_the_connection_dropped(pg_server: PgServer, proxy_factory: Any,
                                                       observer: Observer) -> None:
    """The pooled connection is gone without a FATAL (network): poolproxy finds out when it
    forwards the client's first message, and replays it on a new server."""
    db = ensure_db(pg_server, "lc_retry_drop")
    proxy = proxy_factory(make_config(pg_listener(pg_server, server_check_delay=0)))
    assert proxy.pid is not None
    conn = connect(proxy, db)
    try:
        victim = backend_pid(conn)
        conn.commit()
        outcome: list[Any] = []

        def transaction() -> None:
            try:
                conn.execute("UPDATE lc_t SET n = n + 1 WHERE id = 1")
                outcome.append(backend_pid(conn))
                conn.commit()
            except Exception as exc:
                outcome.append(exc)

        thread = threading.Thread(target=transaction, daemon=True)
        # Frozen, poolproxy sees the client's request before it sees the connection is gone.
        os.kill(proxy.pid, signal.SIGSTOP)
        try:
            thread.start()
            time.sleep(0.3)
            _drop_connection(pg_server, observer, victim)
            time.sleep(0.1)
        finally:
            os.kill(proxy.pid, signal.SIGCONT)
        thread.join(15)
        assert outcome, "the client's transaction never finished"
        assert not isinstance(outcome[0], Exception), \
            f"client between transactions saw: {type(outcome[0]).__name__}: {outcome[0]}"
        assert outcome[0] != victim
        assert lc_value(pg_server, db) == 1  # replayed exactly once
        proxy.wait_for_log(r"server connection was dead; retrying", timeout=2)
        assert_no_leaks(proxy, lambda d, u: observer.count(d, u))
    finally:
        conn.close()


def test_backend_killed_mid_transaction(pg_server: PgServer, proxy_factory: Any,
                                        observer: Observer) -> None:
    db = ensure_db(pg_server, "lc_midtx")
    proxy = proxy_factory(make_config(pg_listener(pg_server, pool_size=2)))
    conn = connect(proxy, db)
    try:
        conn.execute("UPDATE lc_t SET n = n + 1 WHERE id = 1")
        victim = backend_pid(conn)
        observer.terminate({victim})  # the client is idle inside its transaction
        assert wait_for(lambda: victim not in observer.pids(db), 5.0)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT 1")
        lost = info.value
        conn.rollback()
        assert not conn.closed
        # The same client connection: a new transaction on a new server.
        conn.execute("UPDATE lc_t SET n = n + 10 WHERE id = 1")
        assert backend_pid(conn) != victim
        conn.commit()
        assert lc_value(pg_server, db) == 10  # the first update died with its server

        # Killed in the middle of a query: an error for that query, then business as usual.
        conn.execute("SELECT 1")
        victim = backend_pid(conn)
        killer = threading.Timer(0.3, observer.terminate, args=({victim},))
        killer.start()
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT pg_sleep(10)")
        killer.join()
        conn.rollback()
        conn.execute("UPDATE lc_t SET n = n + 100 WHERE id = 1")
        conn.commit()
        assert lc_value(pg_server, db) == 110
        assert_no_leaks(proxy, lambda d, u: observer.count(d, u))
        # The error the client got for its dead transaction is the server's own reason
        # (terminated by pg_terminate_backend), as an ERROR: the client's connection stayed.
        assert lost.sqlstate == "57P01", \
            f"{type(lost).__name__} {lost.sqlstate} ({lost.diag.severity}): {lost}"
        assert lost.diag.severity == "ERROR"
        assert "continues on a new server connection" in (lost.diag.message_hint or "")
    finally:
        conn.close()


def test_backend_killed_mid_transaction_asyncpg(pg_server: PgServer, proxy_factory: Any,
                                                observer: Observer) -> None:
    """asyncpg is strict about the protocol: a message it did not ask for breaks it."""
    db = ensure_db(pg_server, "lc_midtx_apg")
    proxy = proxy_factory(make_config(pg_listener(pg_server, pool_size=2)))

    async def main() -> None:
        conn = await aconnect(proxy, db)
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("UPDATE lc_t SET n = n + 1 WHERE id = 1")
            victim = await conn.fetchval("SELECT pg_backend_pid()")
            observer.terminate({victim})  # idle inside its transaction
            # The application's event loop runs on meanwhile (asyncpg reads what arrives).
            for _ in range(100):
                await asyncio.sleep(0.05)
                if victim not in observer.pids(db):
                    break
            await asyncio.sleep(0.2)
            with pytest.raises(Exception) as info:
                await conn.fetchval("SELECT 1")
            exc = info.value
            assert not conn.is_closed(), f"connection closed by {type(exc).__name__}: {exc}"
            # The server's own reason, so asyncpg raises its AdminShutdownError class.
            assert getattr(exc, "sqlstate", None) == "57P01", f"{type(exc).__name__}: {exc}"
            await tx.rollback()
            async with conn.transaction():
                await conn.execute("UPDATE lc_t SET n = n + 10 WHERE id = 1")
                assert await conn.fetchval("SELECT pg_backend_pid()") != victim
        finally:
            await conn.close()

    asyncio.run(main())
    assert lc_value(pg_server, db) == 10
    assert_no_leaks(proxy, lambda d, u: observer.count(d, u))


def test_backend_killed_while_a_flushed_request_waits(pg_server: PgServer, proxy_factory: Any,
                                                     observer: Observer) -> None:
    """The backend dies while the client's extended-protocol request ends in Flush, not Sync
    (asyncpg prepares that way): no ReadyForQuery is owed, but an answer is. The client gets
    the server's 57P01 as an ERROR at once, ReadyForQuery for its Sync, and goes on (it used to
    wait forever)."""
    db = ensure_db(pg_server, "lc_flushed")
    proxy = proxy_factory(make_config(pg_listener(pg_server, auth={"type": "trust"})))
    raw = trust_login(proxy.port("pg"), user="app", database=db)
    try:
        assert simple_query(raw, "BEGIN")[-1] == (b"Z", b"T")
        rows = [body for t, body in simple_query(raw, "SELECT pg_backend_pid()") if t == b"D"]
        pid = int(rows[0][6:])  # DataRow: int16 column count, int32 length, text value
        sql = b"SELECT pg_sleep(30)"
        raw.send(message(b"P", b"\x00" + sql + b"\x00\x00\x00")
                 + message(b"B", b"\x00\x00" + b"\x00\x00" * 3)
                 + message(b"H")  # PostgreSQL sends what it buffered before running Execute
                 + message(b"E", b"\x00\x00\x00\x00\x00")
                 + message(b"H"))
        assert [t for t, _ in raw.read_until(b"2")] == [b"1", b"2"]
        time.sleep(0.2)  # pg_sleep runs
        observer.terminate({pid})
        msgs = raw.read_until(b"EZ")  # within Raw's 5 s timeout, without a Sync from us
        assert [t for t, _ in msgs] == [b"E"], msgs
        assert error_fields(msgs[0][1])["C"] == "57P01"  # the server's own reason
        assert error_fields(msgs[0][1])["S"] == "ERROR"
        raw.send(message(b"S"))
        assert raw.read_until(b"Z")[-1] == (b"Z", b"I")
        assert simple_query(raw, "SELECT 1")[-1] == (b"Z", b"I")
        rows = [body for t, body in simple_query(raw, "SELECT pg_backend_pid()") if t == b"D"]
        assert int(rows[0][6:]) != pid
    finally:
        raw.close()
    assert wait_for(lambda: pid not in observer.pids(db), 5.0)
    assert_no_leaks(proxy, lambda d, u: observer.count(d, u))


# --------------------------------------------------------------------------- 5. restart


def test_server_restart_under_load(proxy_factory: Any, servers_basedir: Path) -> None:
    # A PostgreSQL of its own, outside pytest's temp dirs (which concurrent pytest runs prune).
    pg = PgServer.create(servers_basedir)
    try:
        _restart_under_load(pg, proxy_factory)
    finally:
        pg.stop("immediate")


def _restart_under_load(pg: PgServer, proxy_factory: Any) -> None:
    db = ensure_db(pg, "lc_restart")
    proxy = proxy_factory(make_config(pg_listener(pg, pool_size=20)))
    #: (start, end, error or None) of every transaction
    records: list[tuple[float, float, str | None]] = []
    times: dict[str, float] = {}

    def restart(t0: float) -> None:
        time.sleep(max(0.0, t0 + 4.0 - time.monotonic()))
        times["stop"] = time.monotonic()
        pg.stop("fast")
        times["stopped"] = time.monotonic()
        time.sleep(1.5)
        times["start"] = time.monotonic()
        pg.start()  # returns once PostgreSQL accepts connections
        times["back"] = time.monotonic()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        restarted = loop.run_in_executor(None, restart, t0)

        async def client() -> None:
            conn: asyncpg.Connection | None = None
            while "back" not in times or time.monotonic() < times["back"] + 6.0:
                start = time.monotonic()
                try:
                    if conn is None:
                        conn = await aconnect(proxy, db)
                    async with conn.transaction():
                        await conn.fetchval("SELECT 1")
                    records.append((start, time.monotonic(), None))
                except Exception as exc:
                    records.append((start, time.monotonic(), f"{type(exc).__name__}: {exc}"))
                    if conn is not None:
                        conn.terminate()  # what an application does after a connection error
                        conn = None
                    await asyncio.sleep(0.05)
            if conn is not None:
                await conn.close()

        await asyncio.gather(*(client() for _ in range(50)), restarted)

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    except TimeoutError:
        stuck = "\n".join(f"{k}: {v:.1f}" for k, v in times.items())
        raise AssertionError(f"clients stuck after the restart ({stuck}); pools: "
                             f"{http_get(proxy, '/pools').decode()}\n{proxy.log_path}") from None
    assert proxy.is_running(), "poolproxy died during the database restart"
    assert http_get(proxy, "/healthz") == b"ok\n"
    stop, back = times["stop"], times["back"]
    ok = [r for r in records if r[2] is None]
    errs = [r for r in records if r[2] is not None]
    before = [r for r in errs if r[1] < stop]
    assert not before, f"errors before the restart: {before[:3]}"
    late = [r for r in errs if r[0] > back + 2.0]
    assert not late, (f"{len(late)} error(s) more than 2 s after PostgreSQL accepted connections "
                      f"again (at {back - stop:.1f}s after the stop), e.g. {late[:3]}")
    first_ok = min((r[1] for r in ok if r[0] >= times["stopped"]), default=None)
    assert first_ok is not None, "no transaction succeeded after the restart"
    assert first_ok <= back + 2.0, f"first success {first_ok - back:.2f}s after PostgreSQL was back"
    end = max(r[1] for r in records)
    recent = [r for r in ok if r[1] >= end - 3.0]
    early = [r for r in ok if r[1] < stop]
    assert recent, "no successful transaction in the last 3 s"
    rate_after = len(recent) / 3.0
    rate_before = len(early) / max(stop - min(r[0] for r in records), 0.1)
    assert rate_after >= 0.3 * rate_before, \
        f"throughput did not recover: {rate_after:.0f}/s after vs {rate_before:.0f}/s before"
    problems: list[str] = []
    observer = Observer(pg)
    try:
        assert_no_leaks(proxy, lambda d, u: observer.count(d, u))
    except AssertionError as exc:
        problems.append(f"leak after the restart: {exc}")
    finally:
        observer.close()
    # Errors only for transactions in flight when the database went away: one that starts
    # while it is down waits for a server (query_wait_timeout is 30 s) and runs once it is back.
    not_in_flight = [r for r in errs if r[0] > times["stopped"] + 0.1]
    if not_in_flight:
        kinds = Counter(r[2] for r in not_in_flight)
        problems.append(
            f"{len(not_in_flight)} of {len(errs)} errors hit transactions that started after "
            f"PostgreSQL had stopped ({times['stopped'] - stop:.2f}s after the stop began; back "
            f"at {back - stop:.2f}s; last such error at "
            f"{max(r[1] for r in not_in_flight) - stop:.2f}s): {kinds.most_common(3)}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- 6. settings


def test_query_wait_timeout(pg_server: PgServer, proxy_factory: Any) -> None:
    db = ensure_db(pg_server, "lc_qwait")
    proxy = proxy_factory(make_config(pg_listener(pg_server, pool_size=1,
                                                  query_wait_timeout="1s")))
    holder = connect(proxy, db)
    waiter = connect(proxy, db, autocommit=True)
    try:
        holder.execute("SELECT 1")  # holds the only server: a transaction is open
        outcome: list[Any] = []

        def wait() -> None:
            t = time.monotonic()
            try:
                waiter.execute("SELECT 1")
                outcome.append(("ok", time.monotonic() - t))
            except psycopg.Error as exc:
                outcome.append((exc, time.monotonic() - t))

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        thread.join(5)
        assert outcome, "query_wait_timeout ignored: still waiting after 5 s"
        result, elapsed = outcome[0]
        assert isinstance(result, psycopg.Error), "got a server although the pool was busy"
        assert result.sqlstate == "57014", f"{result.sqlstate}: {result}"
        assert 0.9 <= elapsed <= 1.0 + 0.5, f"error after {elapsed:.2f}s"
        holder.commit()
        assert_no_leaks(proxy, lambda d, u: 1)
    finally:
        holder.close()
        waiter.close()


def test_idle_transaction_timeout(pg_server: PgServer, proxy_factory: Any,
                                  observer: Observer) -> None:
    db = ensure_db(pg_server, "lc_idletx")
    proxy = proxy_factory(make_config(pg_listener(pg_server, idle_transaction_timeout="1s")))
    conn = connect(proxy, db)
    # Keeps the database in use, so its idle server stays for the checks at the end.
    bystander = connect(proxy, db, autocommit=True)
    try:
        # Under the timeout: nothing happens.
        conn.execute("UPDATE lc_t SET n = n + 1 WHERE id = 1")
        pid = backend_pid(conn)
        time.sleep(0.5)
        conn.execute("SELECT 1")
        conn.commit()
        assert lc_value(pg_server, db) == 1
        # Over it: the client is closed, its transaction rolled back.
        conn.execute("UPDATE lc_t SET n = n + 100 WHERE id = 1")
        t = time.monotonic()
        assert observer.count(db, state="idle in transaction") == 1
        assert wait_for(lambda: observer.count(db, state="idle in transaction") == 0, 4.0), \
            "idle_transaction_timeout ignored: the transaction is still open"
        elapsed = time.monotonic() - t
        assert 0.9 <= elapsed <= 1.0 + JANITOR_PERIOD + SLACK, f"closed after {elapsed:.2f}s"
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT 1")
        assert "idle_transaction_timeout" in str(info.value), str(info.value)
        assert lc_value(pg_server, db) == 1
        # The server was rolled back and kept, not thrown away.
        assert observer.pids(db) == {pid}
        assert_no_leaks(proxy, lambda d, u: 1)
        with connect(proxy, db) as other:
            assert backend_pid(other) == pid
    finally:
        conn.close()
        bystander.close()


def test_client_idle_timeout(pg_server: PgServer, proxy_factory: Any) -> None:
    db = ensure_db(pg_server, "lc_clidle")
    proxy = proxy_factory(make_config(pg_listener(pg_server, client_idle_timeout="1s")))
    conn = connect(proxy, db, autocommit=True)
    try:
        # A client that keeps working is not idle.
        for _ in range(5):
            conn.execute("SELECT 1")
            time.sleep(0.4)
        conn.execute("SELECT 1")
        t = time.monotonic()

        def connected() -> int:
            return sum(pool_of(proxy, db)["clients"].values())

        assert connected() == 1
        assert wait_for(lambda: connected() == 0, 4.0), "client_idle_timeout ignored"
        elapsed = time.monotonic() - t
        assert 0.9 <= elapsed <= 1.0 + JANITOR_PERIOD + SLACK, f"closed after {elapsed:.2f}s"
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        obs = Observer(pg_server)
        try:
            assert_no_leaks(proxy, lambda d, u: obs.count(d, u))
        finally:
            obs.close()
    finally:
        conn.close()


def test_max_db_connections(pg_server: PgServer, proxy_factory: Any) -> None:
    db = ensure_db(pg_server, "lc_maxdb", users=("app", "app2"))
    proxy = proxy_factory(make_config(pg_listener(
        pg_server, pool_size=5, max_db_connections=2, query_wait_timeout="20s")))
    counts: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        obs = Observer(pg_server)
        try:
            while not stop.is_set():
                counts.append(obs.count(db, user=None))
        finally:
            obs.close()

    def client(user: str) -> int:
        with connect(proxy, db, user=user) as conn:
            for _ in range(10):
                conn.execute("SELECT pg_sleep(0.02)")
                conn.commit()
        return 10

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results = run_concurrently([partial(client, u) for u in ["app", "app2"] * 5],
                                   timeout=60)
    finally:
        stop.set()
        sampler.join(10)
    assert not errors_of(results), errors_of(results)
    assert len(counts) > 50
    assert max(counts) <= 2, f"max_db_connections=2 but PostgreSQL saw {max(counts)} backends"
    assert max(counts) == 2
    for user in ("app", "app2"):
        assert metric(proxy, "poolproxy_transactions_total", database=db, user=user) == 50
    obs = Observer(pg_server)
    try:
        assert_no_leaks(proxy, lambda d, u: obs.count(d, u))
        assert obs.count(db, user=None) <= 2
    finally:
        obs.close()


def test_reserve_pool(pg_server: PgServer, proxy_factory: Any, observer: Observer) -> None:
    db = ensure_db(pg_server, "lc_reserve")
    proxy = proxy_factory(make_config(pg_listener(
        pg_server, pool_size=1, reserve_pool_size=1, reserve_pool_timeout="500ms",
        query_wait_timeout="10s")))
    holder = connect(proxy, db)
    other = connect(proxy, db)
    try:
        holder_pid = backend_pid(holder)  # a transaction stays open: the pool is full
        t = time.monotonic()
        other_pid = backend_pid(other)  # gets a reserve server instead of waiting for holder
        elapsed = time.monotonic() - t
        assert observer.count(db) == 2
        assert other_pid != holder_pid
        assert 0.4 <= elapsed <= 0.5 + JANITOR_PERIOD + SLACK, f"served after {elapsed:.2f}s"
        other.commit()
        holder.commit()
        assert observer.count(db) <= 2
        assert_no_leaks(proxy, lambda d, u: observer.count(d, u))
    finally:
        holder.close()
        other.close()


def test_reserve_connection_closed_when_back_under_pool_size(
        pg_server: PgServer, proxy_factory: Any, observer: Observer) -> None:
    """A server returned while the pool is over its limit and nobody waits is closed
    (Pool.checkin's pool_limit rule), so a reserve connection does not outlive its need."""
    db = ensure_db(pg_server, "lc_reserve_trim")
    proxy = proxy_factory(make_config(pg_listener(
        pg_server, pool_size=1, reserve_pool_size=1, reserve_pool_timeout="300ms",
        query_wait_timeout="10s")))
    holder = connect(proxy, db)
    other = connect(proxy, db)
    try:
        backend_pid(holder)
        backend_pid(other)  # served from the reserve
        assert observer.count(db) == 2
        other.commit()  # nobody waits, the pool holds pool_size + 1: this one goes
        ok = wait_for(lambda: observer.count(db) == 1, 2.0)
        snap = pool_of(proxy, db)
        holder.commit()
        assert ok, (f"pool_size=1 but {observer.count(db)} servers stay open after the reserve "
                    f"client finished (pool snapshot: {snap['servers']}, pool_limit closes: "
                    f"{closed(proxy, db, 'pool_limit')})")
        assert closed(proxy, db, "pool_limit") == 1
        assert_no_leaks(proxy, lambda d, u: 1)
    finally:
        holder.close()
        other.close()


def _auth_failures(pg: PgServer, offset: int) -> int:
    return pg.log_text()[offset:].count('password authentication failed for user "app"')


def test_server_login_retry_fails_clients_fast(pg_server: PgServer, proxy_factory: Any) -> None:
    db = ensure_db(pg_server, "lc_badpw")
    bad = "not-the-password"
    proxy = proxy_factory(make_config(pg_listener(
        pg_server, users=[{"name": "app", "password": bad}], server_login_retry="2s",
        query_wait_timeout="10s")))
    offset = len(pg_server.log_text())

    def attempt() -> float:
        t = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            connect(proxy, db, password=bad).close()
        elapsed = time.monotonic() - t
        assert "password authentication failed" in str(info.value), str(info.value)
        assert elapsed < 1.0, f"failed after {elapsed:.2f}s"
        return elapsed

    for _ in range(5):
        attempt()
    # Within server_login_retry, the server's error is repeated, not retried per client.
    assert wait_for(lambda: _auth_failures(pg_server, offset) >= 1, 2.0)
    assert _auth_failures(pg_server, offset) == 1
    time.sleep(2.2)
    attempt()  # after server_login_retry: tried again (and failed again)
    assert wait_for(lambda: _auth_failures(pg_server, offset) == 2, 2.0)
    assert metric(proxy, "poolproxy_client_connections_total", result="auth_failed") == 6
    assert_no_leaks(proxy, lambda d, u: 0)
