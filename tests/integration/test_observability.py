"""Observability through a running proxy: exact counts in /metrics, gauges that agree with /pools
and SHOW POOLS, close reasons, and SIGHUP reload under load (issue 5, Must show 1 and 3).

What poolproxy counts (read from proxy/postgres/server.py, proxy/mysql/client.py, proxy/pool.py):

- PostgreSQL: one *query* per ReadyForQuery forwarded to a client (our own internal queries such
  as parameter sync or health checks are swallowed and not counted); one *transaction* per
  release decision (ReadyForQuery 'I' with nothing owed), also for a client pinned to its server.
  So psycopg's ``BEGIN; SELECT; SELECT; COMMIT`` (BEGIN and COMMIT are simple queries, each
  parametrised SELECT is Parse/Bind/Execute/Sync) is 4 queries and 1 transaction.
- MySQL: one query per complete response; one transaction per response that leaves the server
  outside a transaction (``SERVER_STATUS_IN_TRANS`` clear). ``BEGIN; SELECT; SELECT; COMMIT`` in
  autocommit mode is again 4 queries and 1 transaction.
- Bytes: every chunk forwarded client->server / server->client while a server is linked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pymysql
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import (
    MariaDbServer,
    PgServer,
    ProxyProcess,
    make_config,
    mysql_listener,
    pg_listener,
)
from tests.harness.util import http_get_status, wait_for

PG_LABELS = {"listener": "pg", "database": "app", "user": "app"}
REASONS = ("idle_timeout", "lifetime", "check_failed", "server_error", "client_abort",
           "config_reload", "shutdown", "pool_limit")


# --------------------------------------------------------------------------- helpers


def scrape(proxy: ProxyProcess) -> str:
    status, text = http_get_status(proxy, "/metrics", timeout=3.0)
    assert status == 200, text
    assert_unique_series(text)
    return text


def pools_json(proxy: ProxyProcess) -> list[dict[str, Any]]:
    status, body = http_get_status(proxy, "/pools", timeout=3.0)
    assert status == 200, body
    return json.loads(body)


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels` (fails on 0 or 2+ matches)."""
    found = [v for n, lab, v in samples(text)
             if n == name and all(lab.get(k) == val for k, val in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples in /metrics"
    return found[0]


def assert_unique_series(text: str) -> None:
    """Prometheus rejects a scrape with a repeated series: check both the raw lines and the
    parsed (name, label set) pairs."""
    raw: dict[str, int] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series = line.rsplit(" ", 1)[0]
            raw[series] = raw.get(series, 0) + 1
    dup_lines = [k for k, n in raw.items() if n > 1]
    assert not dup_lines, f"duplicate series lines in /metrics: {dup_lines[:5]}"
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for name, labels, _ in samples(text):
        key = (name, tuple(sorted(labels.items())))
        seen[key] = seen.get(key, 0) + 1
    dups = [k for k, n in seen.items() if n > 1]
    assert not dups, f"duplicate series in /metrics: {dups[:5]}"


def closed_counts(text: str, listener: str, database: str = "app",
                  user: str = "app") -> dict[str, float]:
    return {reason: value(text, "poolproxy_server_connections_closed_total", listener=listener,
                          database=database, user=user, reason=reason)
            for reason in REASONS}


def pg_connect(proxy: ProxyProcess, listener: str = "pg", user: str = "app",
               password: str | None = None, dbname: str = "app",
               **kwargs: Any) -> psycopg.Connection[Any]:
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(host="127.0.0.1", port=proxy.port(listener), user=user,
                           password=password or f"{user}-secret", dbname=dbname,
                           connect_timeout=5, **kwargs)


def console(proxy: ProxyProcess) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                           password="app-secret", dbname="pgbouncer", autocommit=True,
                           connect_timeout=5)


def show(conn: psycopg.Connection[Any], what: str) -> list[dict[str, Any]]:
    cur = conn.execute(f"SHOW {what}", prepare=False)
    assert cur.description is not None
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    if not wait_for(check, timeout):
        pytest.fail(f"timed out after {timeout}s waiting for: {what}")


def scalar(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def backend_alive(pg: PgServer, pid: int) -> bool:
    return bool(pg.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))[0][0])


def mysql_connect(proxy: ProxyProcess, password: str = "app-secret") -> Any:
    return pymysql.connect(host="127.0.0.1", port=proxy.port("mysql"), user="app",
                           password=password, database="app", autocommit=True,
                           connect_timeout=5, read_timeout=20)


PAYLOAD_LEN = 4000
N_XACTS = 25
N_AUTOCOMMIT = 10


# --------------------------------------------------------------------------- exact counts


def test_pg_workload_counts_exactly(pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(pg_listener(pg_server, pool_size=2)))
    first = scrape(proxy)
    assert value(first, "poolproxy_client_connections_total", listener="pg",
                 result="accepted") == 0
    assert value(first, "poolproxy_client_connections_total", listener="pg",
                 result="auth_failed") == 0

    with pytest.raises(psycopg.OperationalError):
        pg_connect(proxy, password="wrong-password").close()
    after_bad = scrape(proxy)
    assert value(after_bad, "poolproxy_client_connections_total", listener="pg",
                 result="auth_failed") == 1
    assert value(after_bad, "poolproxy_client_connections_total", listener="pg",
                 result="accepted") == 0

    payload = "x" * PAYLOAD_LEN
    xact_conn = pg_connect(proxy, autocommit=False)
    auto_conn = pg_connect(proxy)
    idle_conn = pg_connect(proxy)
    try:
        before = scrape(proxy)
        assert value(before, "poolproxy_client_connections_total", listener="pg",
                     result="accepted") == 3
        for i in range(N_XACTS):
            # BEGIN (simple), 2 extended-protocol SELECTs, COMMIT: 4 ReadyForQuery, 1 release.
            row = xact_conn.execute("SELECT %s::text, %s::int", (payload, i)).fetchone()
            assert row == (payload, i)
            assert xact_conn.execute("SELECT length(%s::text)",
                                     (payload,)).fetchone() == (PAYLOAD_LEN,)
            xact_conn.commit()
        for i in range(N_AUTOCOMMIT):
            assert auto_conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        after = scrape(proxy)
    finally:
        for conn in (xact_conn, auto_conn, idle_conn):
            conn.close()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # psycopg at its defaults prepares each of the 3 queries at its 6th run (prepare_threshold
    # 5) with a Parse + Sync round trip of its own: 3 more queries, and auto_conn's (in
    # autocommit) a transaction of its own too.
    threshold = auto_conn.prepare_threshold
    assert threshold is not None and threshold < N_AUTOCOMMIT < N_XACTS
    xacts = N_XACTS + N_AUTOCOMMIT + 1
    queries = 4 * N_XACTS + N_AUTOCOMMIT + 3
    assert delta("poolproxy_transactions_total", **PG_LABELS) == xacts
    assert delta("poolproxy_queries_total", **PG_LABELS) == queries
    assert delta("poolproxy_prepared_statements_total", side="client", **PG_LABELS) == 3
    # Each one prepared on a server connection at least once, at most once on each of the 2.
    assert 3 <= delta("poolproxy_prepared_statements_total", side="server", **PG_LABELS) <= 6
    assert delta("poolproxy_prepared_statement_executions_total", **PG_LABELS) == \
        2 * (N_XACTS - threshold) + (N_AUTOCOMMIT - threshold)
    assert delta("poolproxy_transaction_duration_seconds_count", **PG_LABELS) == xacts
    assert delta("poolproxy_transaction_duration_seconds_sum", **PG_LABELS) > 0
    # Every transaction got a server (immediately or after a wait): one wait observation each.
    assert delta("poolproxy_client_wait_seconds_count", **PG_LABELS) == xacts
    sent = 2 * N_XACTS * PAYLOAD_LEN
    received = N_XACTS * PAYLOAD_LEN
    c2s = delta("poolproxy_bytes_total", direction="client_to_server", **PG_LABELS)
    s2c = delta("poolproxy_bytes_total", direction="server_to_client", **PG_LABELS)
    # At least the payloads; protocol framing is well under 200 bytes a query.
    assert sent <= c2s <= sent + 200 * queries, c2s
    assert received <= s2c <= received + 200 * queries, s2c
    assert value(after, "poolproxy_server_connections_opened_total", **PG_LABELS) <= 2
    assert value(after, "poolproxy_client_connections_total", listener="pg",
                 result="accepted") == 3
    assert value(after, "poolproxy_client_connections_total", listener="pg",
                 result="auth_failed") == 1
    assert value(after, "poolproxy_client_connections_total", listener="pg",
                 result="protocol_error") == 0
    assert value(after, "poolproxy_pool_size", **PG_LABELS) == 2


def test_mysql_workload_counts_exactly(mariadb_server: MariaDbServer,
                                       proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(mysql_listener(mariadb_server, pool_size=2)))
    labels = {"listener": "mysql", "database": "app", "user": "app"}
    with pytest.raises(pymysql.err.OperationalError) as refused:
        mysql_connect(proxy, password="wrong-password").close()
    assert refused.value.args[0] == 1045
    payload = "y" * PAYLOAD_LEN
    conn = mysql_connect(proxy)
    auto = mysql_connect(proxy)
    try:
        # PyMySQL sends its own statements at connect: count from after the logins.
        before = scrape(proxy)
        with conn.cursor() as cur:
            for i in range(N_XACTS):
                conn.begin()
                cur.execute("SELECT %s, %s", (payload, i))
                assert cur.fetchone() == (payload, i)
                cur.execute("SELECT LENGTH(%s)", (payload,))
                assert cur.fetchone() == (PAYLOAD_LEN,)
                conn.commit()
        with auto.cursor() as cur:
            for i in range(N_AUTOCOMMIT):
                cur.execute("SELECT %s", (i,))
                assert cur.fetchone() == (i,)
        after = scrape(proxy)
        pools = [p for p in pools_json(proxy) if p["listener"] == "mysql"]
    finally:
        conn.close()
        auto.close()

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    xacts = N_XACTS + N_AUTOCOMMIT
    queries = 4 * N_XACTS + N_AUTOCOMMIT
    assert delta("poolproxy_transactions_total") == xacts
    assert delta("poolproxy_queries_total") == queries
    assert delta("poolproxy_transaction_duration_seconds_count") == xacts
    sent = 2 * N_XACTS * PAYLOAD_LEN
    received = N_XACTS * PAYLOAD_LEN
    c2s = delta("poolproxy_bytes_total", direction="client_to_server")
    s2c = delta("poolproxy_bytes_total", direction="server_to_client")
    assert sent <= c2s <= sent + 200 * queries, c2s
    assert received <= s2c <= received + 300 * queries, s2c
    assert value(after, "poolproxy_client_connections_total", listener="mysql",
                 result="accepted") == 2
    assert value(after, "poolproxy_client_connections_total", listener="mysql",
                 result="auth_failed") == 1
    # Both clients idle between transactions; the gauges agree with /pools.
    assert value(after, "poolproxy_clients", state="idle", **labels) == 2
    assert value(after, "poolproxy_clients", state="active", **labels) == 0
    assert sum(p["clients"]["idle"] for p in pools) == 2
    assert value(after, "poolproxy_servers", state="idle", **labels) == sum(
        p["servers"]["idle"] for p in pools)
    assert value(after, "poolproxy_servers", state="active", **labels) == 0


# --------------------------------------------------------------------------- gauges


def _state_views(proxy: ProxyProcess, admin: psycopg.Connection[Any]) -> dict[str, Any]:
    text = scrape(proxy)
    pools = [p for p in pools_json(proxy) if p["listener"] == "pg"]
    rows = [r for r in show(admin, "POOLS") if r["listener"] == "pg"]
    assert len(pools) == 1 and len(rows) == 1, (pools, rows)
    return {
        "metrics_clients": {s: value(text, "poolproxy_clients", state=s, **PG_LABELS)
                            for s in ("active", "waiting", "idle")},
        "metrics_servers": {s: value(text, "poolproxy_servers", state=s, **PG_LABELS)
                            for s in ("active", "idle", "login", "testing")},
        "metrics_max_wait": value(text, "poolproxy_max_wait_seconds", **PG_LABELS),
        "pool": pools[0],
        "show": rows[0],
    }


def test_state_gauges_match_pools_json_and_show_pools(pg_server: PgServer,
                                                      proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(pg_listener(pg_server, pool_size=1), admin_users=["app"]))
    idle = pg_connect(proxy)
    busy = pg_connect(proxy, autocommit=False)
    waiter = pg_connect(proxy)
    admin = console(proxy)
    result: dict[str, Any] = {}
    thread: threading.Thread | None = None
    try:
        assert idle.execute("SELECT 1").fetchone() == (1,)
        assert waiter.execute("SELECT 1").fetchone() == (1,)
        busy.execute("SELECT 1")  # BEGIN ... left open: holds the only server

        def run() -> None:
            try:
                result["row"] = waiter.execute("SELECT 2").fetchone()
            except Exception as exc:  # reported by the assertions below
                result["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        wait_until(lambda: pools_json(proxy)[0]["waiters"] == 1, 5, "a waiting client")
        time.sleep(0.05)
        views = _state_views(proxy, admin)
        assert views["metrics_clients"] == {"active": 1, "waiting": 1, "idle": 1}, views
        assert views["metrics_servers"] == {"active": 1, "idle": 0, "login": 0,
                                            "testing": 0}, views
        pool = views["pool"]
        assert pool["clients"] == {"active": 1, "waiting": 1, "idle": 1}, pool
        assert pool["servers"] == {"active": 1, "idle": 0, "login": 0, "testing": 0}, pool
        assert pool["waiters"] == 1
        row = views["show"]
        # PgBouncer's cl_active counts clients linked to a server or idle (not waiting).
        assert (row["cl_active"], row["cl_waiting"]) == (2, 1), row
        assert (row["sv_active"], row["sv_idle"], row["sv_login"], row["sv_tested"]) == (
            1, 0, 0, 0), row
        assert (row["database"], row["user"], row["pool_mode"]) == ("app", "app", "transaction")
        show_wait = row["maxwait"] + row["maxwait_us"] / 1e6
        assert 0 < show_wait < 5 and 0 < views["metrics_max_wait"] < 5, views
        assert abs(show_wait - views["metrics_max_wait"]) < 1.0, views

        busy.commit()
        thread.join(5)
        assert not thread.is_alive() and result == {"row": (2,)}, result
        views = _state_views(proxy, admin)
        assert views["metrics_clients"] == {"active": 0, "waiting": 0, "idle": 3}, views
        assert views["metrics_servers"] == {"active": 0, "idle": 1, "login": 0,
                                            "testing": 0}, views
        assert views["pool"]["clients"] == {"active": 0, "waiting": 0, "idle": 3}
        assert views["pool"]["servers"]["idle"] == 1 and views["pool"]["waiters"] == 0
        row = views["show"]
        assert (row["cl_active"], row["cl_waiting"], row["sv_active"], row["sv_idle"]) == (
            3, 0, 0, 1), row
        assert views["metrics_max_wait"] == 0 and row["maxwait"] == row["maxwait_us"] == 0
    finally:
        for conn in (idle, busy, waiter, admin):
            conn.close()
        if thread is not None:
            thread.join(5)


# --------------------------------------------------------------------------- close reasons


@pytest.fixture(scope="module")
def reasons_proxy(pg_server: PgServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One listener per close reason, so each test reads its own counters."""
    config = make_config(
        pg_listener(pg_server, name="idle", pool_size=2, server_idle_timeout="1s"),
        pg_listener(pg_server, name="life", pool_size=2, server_lifetime="1s",
                    server_lifetime_jitter=0),
        pg_listener(pg_server, name="check", pool_size=2, server_check_delay="500ms",
                    server_connect_timeout="1s"),
        pg_listener(pg_server, name="err", pool_size=2),
        pg_listener(pg_server, name="abort", pool_size=2),
    )
    proc = ProxyProcess(config, tmp_path_factory.mktemp("reasons_proxy"))
    proc.start()
    yield proc
    proc.stop()


def _assert_only(proxy: ProxyProcess, listener: str, before: dict[str, float], reason: str,
                 timeout: float) -> dict[str, float]:
    """Wait until `reason` moved by one; then no other reason may have moved."""
    after: dict[str, float] = {}

    def moved() -> bool:
        after.update(closed_counts(scrape(proxy), listener))
        return after[reason] - before[reason] >= 1

    wait_until(moved, timeout, f"closed_total{{reason={reason!r}}} on listener {listener}")
    time.sleep(0.3)  # anything else that was going to move would have by now
    after = closed_counts(scrape(proxy), listener)
    deltas = {r: after[r] - before[r] for r in REASONS}
    assert deltas == {r: (1 if r == reason else 0) for r in REASONS}, deltas
    return after


def test_closed_reason_idle_timeout(pg_server: PgServer, reasons_proxy: ProxyProcess) -> None:
    proxy = reasons_proxy
    with pg_connect(proxy, "idle") as conn:
        before = closed_counts(scrape(proxy), "idle")
        pid = scalar(conn, "SELECT pg_backend_pid()")
        _assert_only(proxy, "idle", before, "idle_timeout", 4)
        wait_until(lambda: not backend_alive(pg_server, pid), 3, "the reaped backend to exit")
        text = scrape(proxy)
        assert value(text, "poolproxy_servers", listener="idle", database="app", user="app",
                     state="idle") == 0
        # The client stays connected and gets a new server.
        assert scalar(conn, "SELECT pg_backend_pid()") != pid


def test_closed_reason_lifetime(pg_server: PgServer, reasons_proxy: ProxyProcess) -> None:
    proxy = reasons_proxy
    with pg_connect(proxy, "life") as conn:
        before = closed_counts(scrape(proxy), "life")
        pid = scalar(conn, "SELECT pg_backend_pid()")
        _assert_only(proxy, "life", before, "lifetime", 4)
        wait_until(lambda: not backend_alive(pg_server, pid), 3, "the aged backend to exit")
        assert scalar(conn, "SELECT pg_backend_pid()") != pid


def test_closed_reason_server_error_on_terminated_idle_backend(
        pg_server: PgServer, reasons_proxy: ProxyProcess) -> None:
    proxy = reasons_proxy
    with pg_connect(proxy, "err") as conn:
        pid = scalar(conn, "SELECT pg_backend_pid()")
        before = closed_counts(scrape(proxy), "err")
        pg_server.execute("SELECT pg_terminate_backend(%s)", (pid,))
        _assert_only(proxy, "err", before, "server_error", 4)
        # The client never sees it: its next query runs on a new server.
        new_pid = scalar(conn, "SELECT pg_backend_pid()")
        assert new_pid != pid


def test_closed_reason_check_failed_on_unresponsive_idle_backend(
        pg_server: PgServer, reasons_proxy: ProxyProcess) -> None:
    """A backend that stops answering while idle in the pool (SIGSTOP: no FATAL, no EOF) is
    caught by the health check before reuse (server_check_delay 0.5s, check timeout 1s)."""
    proxy = reasons_proxy
    with pg_connect(proxy, "check") as conn:
        pid = scalar(conn, "SELECT pg_backend_pid()")
        before = closed_counts(scrape(proxy), "check")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(0.7)
            started = time.monotonic()
            new_pid = scalar(conn, "SELECT pg_backend_pid()")
            took = time.monotonic() - started
            assert new_pid != pid
            # The client is not held for the whole check: a waiter gets a new connection if
            # the pool has room (the janitor opens one for waiters), at worst when it fails.
            assert took < 3.0, f"query took {took:.2f}s (the check times out after 1s)"
            _assert_only(proxy, "check", before, "check_failed", 3)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: not backend_alive(pg_server, pid), 3, "the stopped backend to exit")


def test_closed_reason_client_abort(pg_server: PgServer, reasons_proxy: ProxyProcess) -> None:
    proxy = reasons_proxy
    conn = pg_connect(proxy, "abort")
    try:
        pid = scalar(conn, "SELECT pg_backend_pid()")
        before = closed_counts(scrape(proxy), "abort")
        conn.pgconn.send_query(b"SELECT pg_sleep(10)")
        conn.pgconn.flush()
        wait_until(lambda: bool(pg_server.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
            (pid,))[0][0]), 3, "the query to run")
        # The client goes away without a Terminate (killed): shut its socket down.
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        aborted = time.monotonic()
        _assert_only(proxy, "abort", before, "client_abort", 3)
        # The proxy cancels the orphaned query and closes its server: the backend ends long
        # before pg_sleep(10) would have.
        wait_until(lambda: not backend_alive(pg_server, pid), 4, "the orphaned backend to exit")
        assert time.monotonic() - aborted < 5
    finally:
        conn.close()


# --------------------------------------------------------------------------- SIGHUP under load


N_CLIENTS = 50


def _config_for_reload(pg_server: PgServer, listen: str | None, admin: dict[str, Any] | None,
                       pool_size: int, idle_timeout: str) -> dict[str, Any]:
    listener = pg_listener(pg_server)
    if listen is not None:
        listener["listen"] = listen
    config = make_config(listener, admin_users=["app"],
                         defaults={"pool_size": pool_size, "server_idle_timeout": idle_timeout})
    if admin is not None:
        config["admin"] = admin
    return config


def test_sighup_under_load_then_broken_file(pg_server: PgServer, proxy_factory: Any) -> None:
    config = _config_for_reload(pg_server, None, None, 5, "10m")
    proxy = proxy_factory(config)
    listen = config["listeners"][0]["listen"]
    port = proxy.port("pg")
    labels = {"listener": "pg", "database": "app2", "user": "app2"}
    errors: list[BaseException] = []
    done = [0] * N_CLIENTS
    phase = {"stop": False}
    marks: dict[str, Any] = {}
    go = asyncio.Event()
    go.set()
    busy = [False] * N_CLIENTS

    async def client(i: int) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user="app2",
                                     password="app2-secret", database="app2", timeout=10)
        try:
            while not phase["stop"]:
                await go.wait()
                busy[i] = True
                try:
                    async with conn.transaction():
                        assert await conn.fetchval("SELECT $1::int", i) == i
                        await conn.execute("SELECT pg_sleep(0.002)")
                    done[i] += 1
                except Exception as exc:  # every error fails the test
                    errors.append(exc)
                    await asyncio.sleep(0.05)
                finally:
                    busy[i] = False
        finally:
            await conn.close()

    async def quiescent_scrape() -> tuple[str, int]:
        """Scrape while no transaction is in flight, so the counter and `done` agree."""
        go.clear()
        try:
            while any(busy):
                await asyncio.sleep(0.005)
            return await blocking(lambda: scrape(proxy)), sum(done)
        finally:
            go.set()

    def blocking(fn: Callable[[], Any]) -> Any:
        return asyncio.get_running_loop().run_in_executor(None, fn)

    async def progress_after(what: str) -> None:
        """Every client completes at least one more transaction."""
        start = list(done)
        deadline = time.monotonic() + 10
        while any(d <= s for d, s in zip(done, start, strict=True)):
            if time.monotonic() > deadline:
                stuck = sum(1 for d, s in zip(done, start, strict=True) if d <= s)
                pytest.fail(f"{stuck} clients made no progress after {what}")
            await asyncio.sleep(0.05)

    async def main() -> None:
        tasks = [asyncio.ensure_future(client(i)) for i in range(N_CLIENTS)]
        try:
            await asyncio.sleep(1.0)
            await progress_after("start")
            assert await blocking(lambda: pg_server.backend_count("app2", "app2")) == 5
            marks["before"], marks["done_before"] = await quiescent_scrape()
            # Reload: pool_size 5 -> 2, server_idle_timeout 10m -> 30s.
            new = _config_for_reload(pg_server, listen, config["admin"], 2, "30s")
            since = len(proxy.log_text())
            proxy.reload(new)
            await blocking(lambda: proxy.wait_for_log("configuration reloaded", 5, since))
            reloaded = time.monotonic()
            counts: list[int] = []
            while time.monotonic() - reloaded < 5:
                counts.append(await blocking(lambda: pg_server.backend_count("app2", "app2")))
                if counts[-1] <= 2:
                    break
                await asyncio.sleep(0.1)
            marks["drop"] = (counts, time.monotonic() - reloaded)
            await progress_after("the reload")
            # A broken file: rejected, old config kept, still serving.
            broken = _config_for_reload(pg_server, listen, config["admin"], 2, "30s")
            broken["defaults"]["pool_sise"] = 3
            since = len(proxy.log_text())
            proxy.reload(broken)
            marks["broken_log"] = await blocking(
                lambda: proxy.wait_for_log(r"reload rejected.*", 5, since).group(0))
            await progress_after("the broken reload")
            marks["backends_end"] = await blocking(
                lambda: pg_server.backend_count("app2", "app2"))
        finally:
            phase["stop"] = True
            await asyncio.gather(*tasks, return_exceptions=True)
        marks["after"] = await blocking(lambda: scrape(proxy))
        marks["done_after"] = sum(done)

    asyncio.run(main())
    assert not errors, f"{len(errors)} client errors, first: {errors[0]!r}"
    counts, took = marks["drop"]
    assert counts and counts[-1] <= 2, (
        f"server connections after pool_size 5 -> 2: {counts} over {took:.1f}s")
    assert marks["backends_end"] <= 2
    assert "defaults.pool_sise" in marks["broken_log"], marks["broken_log"]
    pools = [p for p in pools_json(proxy) if p["user"] == "app2"]
    assert len(pools) == 1 and pools[0]["pool_size"] == 2, pools
    assert pools[0]["idle_timeout"] == 30, pools
    text = marks["after"]
    assert value(text, "poolproxy_pool_size", **labels) == 2
    assert value(text, "poolproxy_server_idle_timeout", **labels) == 30
    # Every transaction the clients completed between the two scrapes, and no other, counted.
    assert (value(text, "poolproxy_transactions_total", **labels)
            - value(marks["before"], "poolproxy_transactions_total", **labels)
            == marks["done_after"] - marks["done_before"])
    closed = {r: value(text, "poolproxy_server_connections_closed_total", reason=r, **labels)
              - value(marks["before"], "poolproxy_server_connections_closed_total", reason=r,
                      **labels) for r in REASONS}
    assert closed["config_reload"] + closed["pool_limit"] >= 3, closed
    assert closed["server_error"] == closed["client_abort"] == closed["check_failed"] == 0
    with console(proxy) as admin:
        config_rows = {r["key"]: r["value"] for r in show(admin, "CONFIG")}
        assert config_rows["pool_size"] == "2", config_rows
        assert config_rows["server_idle_timeout"] == "30s", config_rows
    assert proxy.is_running()
