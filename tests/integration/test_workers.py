"""`workers: N` (several poolproxy processes on one port) through real drivers.

- Clients of both protocols are spread over the workers; the workers' pools together keep to
  the configured pool_size, and the supervisor's /metrics sums the workers' counts exactly.
- A CancelRequest reaches the query it cancels whichever worker accepted it (forwarded).
- Console PAUSE/RESUME hold and release clients on every worker; SIGHUP re-splits a changed
  pool_size; SIGTERM lets a running transaction commit, /readyz turns 503, exit code 0.
- A worker killed with SIGKILL is replaced and new clients get in.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest

from tests.harness import (
    MariaDbServer,
    PgServer,
    ProxyProcess,
    make_config,
    mysql_listener,
    pg_listener,
)
from tests.harness.util import http_get, http_get_status, metric, wait_for

WORKERS = 2


def start(tmp_path: Any, *listeners: dict, **kwargs: Any) -> tuple[ProxyProcess, dict]:
    config = make_config(*listeners, admin_users=["app"], **kwargs)
    config["workers"] = WORKERS
    proxy = ProxyProcess(config, tmp_path / "proxy")
    proxy.start()
    assert wait_for(lambda: proxy.log_text().count("of 2 ready") == WORKERS, 15), proxy.log_tail()
    return proxy, config


@pytest.fixture
def stop_after() -> Iterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    yield started
    for proxy in started:
        proxy.stop()


def pg_connect(proxy: ProxyProcess, **kwargs: Any) -> psycopg.Connection[Any]:
    kwargs.setdefault("dbname", "app")
    return psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                           password="app-secret", connect_timeout=5, **kwargs)


def pools(proxy: ProxyProcess) -> list[dict[str, Any]]:
    return json.loads(http_get(proxy, "/pools"))


def workers_of(proxy: ProxyProcess) -> list[int]:
    assert proxy.pid is not None
    children = f"/proc/{proxy.pid}/task/{proxy.pid}/children"
    with open(children) as f:
        return [int(pid) for pid in f.read().split()]


def test_pg_clients_spread_over_workers_with_shared_limits(pg_server: PgServer, tmp_path: Any,
                                                           stop_after: list[ProxyProcess]) -> None:
    proxy, _ = start(tmp_path, pg_listener(pg_server, pool_size=10))
    stop_after.append(proxy)
    conns = [pg_connect(proxy) for _ in range(40)]
    try:
        for i, conn in enumerate(conns):
            with conn.transaction():
                conn.execute("SELECT %s", (i,))
        snap = pools(proxy)
        assert sorted(p["worker"] for p in snap) == [0, 1], snap
        assert sum(p["pool_size"] for p in snap) == 10
        assert all(p["clients"]["idle"] > 0 for p in snap), "a worker got no client"
        assert sum(p["clients"]["idle"] for p in snap) == 40
        assert metric(proxy, "poolproxy_transactions_total", database="app") == 40
        assert metric(proxy, "poolproxy_pool_size", database="app") == 10
        assert metric(proxy, "poolproxy_clients", database="app", state="idle") == 40
        assert http_get_status(proxy, "/readyz")[0] == 200
    finally:
        for conn in conns:
            conn.close()


def test_cancel_reaches_the_worker_that_runs_the_query(pg_server: PgServer, tmp_path: Any,
                                                       stop_after: list[ProxyProcess]) -> None:
    proxy, _ = start(tmp_path, pg_listener(pg_server, pool_size=60))
    stop_after.append(proxy)
    conns = [pg_connect(proxy) for _ in range(20)]
    outcome: list[str] = []

    def sleeper(conn: psycopg.Connection[Any]) -> None:
        timer = threading.Timer(0.7, conn.cancel)
        timer.start()
        try:
            conn.execute("SELECT pg_sleep(20)")
            outcome.append("finished")
        except psycopg.errors.QueryCanceled:
            outcome.append("cancelled")
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion message
            outcome.append(repr(exc))
        conn.rollback()

    try:
        threads = [threading.Thread(target=sleeper, args=(c,)) for c in conns]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert outcome == ["cancelled"] * 20, outcome
        assert time.monotonic() - started < 10
        assert "cancel request forwarded to worker" in proxy.log_text(), \
            "no cancel request landed on the other worker: forwarding untested"
    finally:
        for conn in conns:
            conn.close()


def test_mysql_through_workers(mariadb_server: MariaDbServer, tmp_path: Any,
                               stop_after: list[ProxyProcess]) -> None:
    proxy, _ = start(tmp_path, mysql_listener(mariadb_server, pool_size=6))
    stop_after.append(proxy)
    conns = [pymysql.connect(host="127.0.0.1", port=proxy.port("mysql"), user="app",
                             password="app-secret", database="app", connect_timeout=5,
                             autocommit=True)
             for _ in range(20)]
    try:
        for i, conn in enumerate(conns):
            with conn.cursor() as cur:
                cur.execute("SELECT %s", (i,))
                assert cur.fetchone() == (i,)
        snap = pools(proxy)
        assert {p["worker"] for p in snap} == {0, 1}, snap
        assert sum(p["pool_size"] for p in snap) == 6
        assert metric(proxy, "poolproxy_queries_total", database="app") >= 20
        assert metric(proxy, "poolproxy_clients", database="app") == 20
    finally:
        for conn in conns:
            conn.close()


def test_console_pause_and_resume_reach_every_worker(pg_server: PgServer, tmp_path: Any,
                                                     stop_after: list[ProxyProcess]) -> None:
    proxy, _ = start(tmp_path, pg_listener(pg_server, pool_size=20))
    stop_after.append(proxy)
    clients = [pg_connect(proxy, autocommit=True) for _ in range(12)]
    for conn in clients:
        conn.execute("SELECT 1")
    console = pg_connect(proxy, dbname="pgbouncer", autocommit=True)
    done: list[float] = []
    try:
        console.execute("PAUSE", prepare=False)
        paused_at = time.monotonic()

        def query(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT 1")
            done.append(time.monotonic())

        threads = [threading.Thread(target=query, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert not done, "a client ran a query while every worker was paused"
        snap = pools(proxy)
        assert all(p["paused"] for p in snap) and {p["worker"] for p in snap} == {0, 1}, snap
        console.execute("RESUME", prepare=False)
        for t in threads:
            t.join(10)
        assert len(done) == 12
        assert min(done) > paused_at + 1.0
    finally:
        console.close()
        for conn in clients:
            conn.close()


def test_sighup_resplits_pool_size_and_sigterm_drains(pg_server: PgServer, tmp_path: Any,
                                                      stop_after: list[ProxyProcess]) -> None:
    proxy, config = start(tmp_path, pg_listener(pg_server, pool_size=10))
    stop_after.append(proxy)
    conns = [pg_connect(proxy) for _ in range(10)]
    for conn in conns:
        conn.execute("SELECT 1")
        conn.commit()
    config["listeners"][0]["pool_size"] = 4
    proxy.reload(config)
    assert wait_for(lambda: sorted(p["pool_size"] for p in pools(proxy)) == [2, 2], 10), \
        pools(proxy)
    # A transaction in progress when SIGTERM arrives still commits.
    pg_server.execute("CREATE TABLE IF NOT EXISTS w_drain (n int)", dbname="app")
    pg_server.execute("GRANT ALL ON w_drain TO app", dbname="app")
    pg_server.execute("DELETE FROM w_drain", dbname="app")
    conn = conns[0]
    conn.execute("INSERT INTO w_drain VALUES (1)")
    proxy.send_signal(signal.SIGTERM)
    assert wait_for(lambda: http_get_status(proxy, "/readyz")[0] == 503, 5)
    time.sleep(0.5)
    conn.commit()
    for other in conns:
        other.close()
    assert proxy.wait(20) == 0, proxy.log_tail()
    assert pg_server.execute("SELECT count(*) FROM w_drain", dbname="app")[0][0] == 1


def test_a_killed_worker_is_replaced(pg_server: PgServer, tmp_path: Any,
                                     stop_after: list[ProxyProcess]) -> None:
    proxy, _ = start(tmp_path, pg_listener(pg_server, pool_size=10))
    stop_after.append(proxy)
    before = workers_of(proxy)
    assert len(before) == WORKERS
    os.kill(before[0], signal.SIGKILL)
    assert wait_for(lambda: len(set(workers_of(proxy)) - set(before)) == 1
                    and len(workers_of(proxy)) == WORKERS, 10), proxy.log_tail()
    assert wait_for(lambda: proxy.log_text().count("of 2 ready") == WORKERS + 1, 10)
    for _ in range(20):
        with pg_connect(proxy) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "exited with code" in proxy.log_text()
