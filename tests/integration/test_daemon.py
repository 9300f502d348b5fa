"""The daemon as a process: command line, graceful shutdown on SIGTERM, and the admin HTTP API.

- ``--version`` and ``--check`` (every example config validates; a broken one exits 1 naming the
  key path; no password is ever printed).
- SIGTERM drains: open transactions may finish (their COMMIT succeeds), new connections are
  refused, ``/readyz`` turns 503, idle clients get 57P01 at once, and the process exits 0 well
  within ``shutdown_timeout``; a second SIGTERM exits at once.
- ``/metrics`` counts exactly one transaction and one query per autocommit statement
  (PostgreSQL and MySQL), ``/pools`` shows clients and servers by state, other paths are 404.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy import __version__
from tests.harness import (
    MariaDbServer,
    PgServer,
    ProxyProcess,
    make_config,
    mysql_listener,
    pg_listener,
    run_cli,
)
from tests.harness.util import http_get_status

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIGS = sorted((REPO / "config").glob("*.yaml"))
SECRET = "Sup3r-s3cret-pw-Xq9"


# --------------------------------------------------------------------------- helpers


def pg_connect(proxy: ProxyProcess, **kwargs: Any) -> psycopg.Connection[Any]:
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                           password="app-secret", dbname="app", connect_timeout=5, **kwargs)


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


def sample_value(text: str, name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples(text)
             if n == name and all(lab.get(k) == val for k, val in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples in /metrics"
    return found[0]


def wait_exit(proxy: ProxyProcess, timeout: float) -> tuple[int, float]:
    """Wait for the proxy to exit by itself; (exit code, seconds it took)."""
    started = time.monotonic()
    rc = proxy.wait(timeout)
    return rc, time.monotonic() - started


@pytest.fixture(scope="module")
def drain_table(pg_server: PgServer) -> str:
    pg_server.execute("CREATE TABLE IF NOT EXISTS daemon_drain (id serial PRIMARY KEY, tag text)",
                      dbname="app")
    pg_server.execute("GRANT ALL ON daemon_drain TO app", dbname="app")
    pg_server.execute("GRANT ALL ON SEQUENCE daemon_drain_id_seq TO app", dbname="app")
    return "daemon_drain"


@pytest.fixture
def pg_proxy_fresh(pg_server: PgServer, proxy_factory: Any) -> Iterator[ProxyProcess]:
    """A proxy of its own (counters start at zero; the test may stop it)."""
    yield proxy_factory(make_config(
        pg_listener(pg_server, pool_size=3),
        defaults={"shutdown_timeout": "10s"}))


# --------------------------------------------------------------------------- command line


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"poolproxy {__version__}"


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_check_example_configs(path: Path) -> None:
    env = {"APP_DB_PASSWORD": SECRET, "ADMIN_DB_PASSWORD": SECRET + "-admin"}
    result = run_cli("-c", str(path), "--check", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "listener " in out and "user app" in out, out
    assert SECRET not in out + result.stderr, "--check printed a password"
    assert "change-me" not in out + result.stderr


def test_check_found_example_configs() -> None:
    assert {p.name for p in EXAMPLE_CONFIGS} >= {"poolproxy.yaml", "minimal.yaml"}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    return path


LISTENER_YAML = """\
listeners:
  - name: pg
    protocol: postgres
    listen: 127.0.0.1:6432
    server: {{host: 127.0.0.1, port: {port}}}
    users: [{{name: app, password: {password}}}]
"""


def test_check_bad_port_names_the_key_path(tmp_path: Path) -> None:
    path = _write(tmp_path, LISTENER_YAML.format(port=70000, password=SECRET))
    result = run_cli("-c", str(path), "--check")
    assert result.returncode == 1
    assert "listeners[0].server.port" in result.stderr, result.stderr
    assert "65535" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_check_unknown_key_names_the_key_path(tmp_path: Path) -> None:
    text = "defaults: {pool_sise: 3}\n" + LISTENER_YAML.format(port=5432, password=SECRET)
    result = run_cli("-c", str(_write(tmp_path, text)), "--check")
    assert result.returncode == 1
    assert "defaults.pool_sise" in result.stderr, result.stderr
    assert "unknown" in result.stderr.lower()


def test_check_unknown_listener_key(tmp_path: Path) -> None:
    text = LISTENER_YAML.format(port=5432, password=SECRET) + "    colour: blue\n"
    result = run_cli("-c", str(_write(tmp_path, text)), "--check")
    assert result.returncode == 1
    assert "listeners[0].colour" in result.stderr, result.stderr


# --------------------------------------------------------------------------- graceful shutdown


def test_sigterm_lets_open_transaction_commit_and_refuses_new_clients(
        pg_server: PgServer, pg_proxy_fresh: ProxyProcess, drain_table: str) -> None:
    proxy = pg_proxy_fresh
    tag = f"drain-{time.time_ns()}"
    assert http_get_status(proxy, "/healthz") == (200, "ok\n")
    assert http_get_status(proxy, "/readyz")[0] == 200
    conn = pg_connect(proxy, autocommit=False)
    try:
        conn.execute(f"INSERT INTO {drain_table} (tag) VALUES (%s)", (tag,))  # opens BEGIN
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        # /readyz turns 503 first thing in the drain.
        statuses = []
        while time.monotonic() - signalled < 0.5:
            try:
                statuses.append(http_get_status(proxy, "/readyz", timeout=0.5)[0])
            except OSError:
                statuses.append(-1)
            if statuses[-1] == 503:
                break
            time.sleep(0.01)
        assert 503 in statuses, f"/readyz during the drain: {statuses}"
        assert http_get_status(proxy, "/healthz")[0] == 200, "/healthz: the process still runs"
        # New clients are refused: connection refused, or a 57P01 error.
        with pytest.raises(psycopg.OperationalError) as refused:
            pg_connect(proxy).close()
        msg = str(refused.value)
        assert ("refused" in msg.lower() or "shutting down" in msg
                or getattr(refused.value, "sqlstate", None) == "57P01"), msg
        time.sleep(max(0.0, 1.0 - (time.monotonic() - signalled)))
        assert proxy.is_running(), "exited while a transaction was still open"
        conn.commit()
    finally:
        conn.close()
    rc, took = wait_exit(proxy, 10.0)
    assert rc == 0, proxy.log_tail()
    assert took < 5.0
    rows = pg_server.execute(f"SELECT count(*) FROM {drain_table} WHERE tag = %s", (tag,),
                             dbname="app")
    assert rows[0][0] == 1, "the transaction committed during the drain is not there"


def test_sigterm_exits_after_shutdown_timeout_with_transaction_open(
        pg_server: PgServer, proxy_factory: Any, drain_table: str) -> None:
    proxy = proxy_factory(make_config(pg_listener(pg_server, pool_size=2),
                                      defaults={"shutdown_timeout": "1500ms"}))
    tag = f"abandoned-{time.time_ns()}"
    conn = pg_connect(proxy, autocommit=False)
    try:
        conn.execute(f"INSERT INTO {drain_table} (tag) VALUES (%s)", (tag,))
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        rc = proxy.wait(10.0)
        took = time.monotonic() - signalled
        assert rc == 0, proxy.log_tail()
        assert 1.3 <= took < 4.0, f"exited after {took:.2f}s; shutdown_timeout is 1.5s"
        with pytest.raises(psycopg.OperationalError):
            conn.commit()
    finally:
        conn.close()
    assert "shutdown_timeout" in proxy.log_text()
    # The server rolled the abandoned transaction back.
    deadline = time.monotonic() + 5
    while pg_server.backend_count("app", "app") and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = pg_server.execute(f"SELECT count(*) FROM {drain_table} WHERE tag = %s", (tag,),
                             dbname="app")
    assert rows[0][0] == 0


def test_second_sigterm_exits_at_once(
        pg_server: PgServer, pg_proxy_fresh: ProxyProcess, drain_table: str) -> None:
    proxy = pg_proxy_fresh
    conn = pg_connect(proxy, autocommit=False)
    try:
        conn.execute(f"INSERT INTO {drain_table} (tag) VALUES ('second-signal')")
        proxy.send_signal(signal.SIGTERM)
        proxy.wait_for_log("draining", timeout=5)
        time.sleep(0.2)
        assert proxy.is_running(), "a transaction is open: the first SIGTERM must drain"
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(3.0)
        except subprocess.TimeoutExpired:
            pytest.fail("the second SIGTERM did not make the proxy exit")
        took = time.monotonic() - signalled
        assert took < 1.0, f"second SIGTERM: exit took {took:.2f}s"
    finally:
        conn.close()


def test_idle_client_is_disconnected_promptly_with_57p01(
        pg_proxy_fresh: ProxyProcess) -> None:
    proxy = pg_proxy_fresh
    conn = pg_connect(proxy)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        # The proxy writes its FATAL and closes: the socket becomes readable at once.
        readable, _, _ = select.select([conn.fileno()], [], [], 2.0)
        assert readable, "the idle client was not told within 2 s"
        assert time.monotonic() - signalled < 1.0
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("SELECT 1")
        exc = err.value
        assert exc.sqlstate == "57P01" or "shutting down" in str(exc), repr(exc)
    finally:
        conn.close()
    rc, took = wait_exit(proxy, 5.0)
    assert rc == 0
    assert took < 2.0


# --------------------------------------------------------------------------- admin HTTP


def test_metrics_count_pg_transactions_and_queries(pg_proxy_fresh: ProxyProcess) -> None:
    proxy = pg_proxy_fresh
    status, text = http_get_status(proxy, "/metrics")
    assert status == 200
    assert sample_value(text, "poolproxy_build_info", version=__version__) == 1.0
    with pg_connect(proxy) as conn:
        for i in range(10):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        _, text = http_get_status(proxy, "/metrics")
    labels = {"listener": "pg", "database": "app", "user": "app"}
    # psycopg at its defaults prepares the query at its 6th run (prepare_threshold 5) with a
    # round trip of its own (Parse + Sync) before the Bind/Execute: 11 sync points in all,
    # each one query and one (autocommit) transaction.
    assert sample_value(text, "poolproxy_transactions_total", **labels) == 11
    assert sample_value(text, "poolproxy_queries_total", **labels) == 11
    assert sample_value(text, "poolproxy_transaction_duration_seconds_count", **labels) == 11
    assert sample_value(text, "poolproxy_server_connections_opened_total", **labels) == 1
    assert sample_value(text, "poolproxy_client_connections_total", listener="pg",
                        result="accepted") == 1
    assert sample_value(text, "poolproxy_pool_size", **labels) == 3
    assert sample_value(text, "poolproxy_bytes_total", direction="client_to_server",
                        **labels) > 0
    assert_no_duplicate_samples(text)


def assert_no_duplicate_samples(text: str) -> None:
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for name, labels, _ in samples(text):
        key = (name, tuple(sorted(labels.items())))
        seen[key] = seen.get(key, 0) + 1
    dups = [k for k, n in seen.items() if n > 1]
    assert not dups, f"duplicate series in /metrics (Prometheus rejects the scrape): {dups[:5]}"


def test_pools_json_and_unknown_path(pg_proxy_fresh: ProxyProcess) -> None:
    proxy = pg_proxy_fresh
    status, body = http_get_status(proxy, "/pools")
    assert status == 200 and json.loads(body) == []
    idle = pg_connect(proxy)
    busy = pg_connect(proxy, autocommit=False)
    try:
        busy.execute("SELECT 1")  # transaction left open: holds a server
        idle.execute("SELECT 1")  # needs a second server, then gives it back
        status, body = http_get_status(proxy, "/pools")
        assert status == 200
        pools = json.loads(body)
        assert len(pools) == 1, pools
        pool = pools[0]
        assert (pool["listener"], pool["database"], pool["user"]) == ("pg", "app", "app")
        assert pool["clients"] == {"active": 1, "waiting": 0, "idle": 1}, pool
        assert pool["servers"]["active"] == 1 and pool["servers"]["idle"] == 1, pool
        assert pool["waiters"] == 0 and pool["pool_size"] == 3
        busy.commit()
        pool = json.loads(http_get_status(proxy, "/pools")[1])[0]
        assert pool["clients"] == {"active": 0, "waiting": 0, "idle": 2}, pool
        assert pool["servers"]["active"] == 0 and pool["servers"]["idle"] == 2, pool
    finally:
        idle.close()
        busy.close()
    assert http_get_status(proxy, "/nope")[0] == 404
    assert http_get_status(proxy, "/metrics/extra")[0] == 404


def test_metrics_count_mysql_transactions_and_queries(
        mariadb_server: MariaDbServer, proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(mysql_listener(mariadb_server, pool_size=2)))
    conn = pymysql.connect(host="127.0.0.1", port=proxy.port("mysql"), user="app",
                           password="app-secret", database="app", autocommit=True,
                           connect_timeout=5)
    labels = {"listener": "mysql", "database": "app", "user": "app"}
    try:
        # PyMySQL sends its own SET NAMES at connect: count from after the login.
        _, before = http_get_status(proxy, "/metrics")
        xacts = sample_value(before, "poolproxy_transactions_total", **labels)
        queries = sample_value(before, "poolproxy_queries_total", **labels)
        assert xacts <= 1 and queries <= 1
        with conn.cursor() as cur:
            for i in range(10):
                cur.execute("SELECT %s", (i,))
                assert cur.fetchone() == (i,)
        _, text = http_get_status(proxy, "/metrics")
    finally:
        conn.close()
    assert sample_value(text, "poolproxy_transactions_total", **labels) - xacts == 10
    assert sample_value(text, "poolproxy_queries_total", **labels) - queries == 10
    assert_no_duplicate_samples(text)


def test_metrics_no_duplicate_series_for_mysql_pool_variants(
        mariadb_server: MariaDbServer, proxy_factory: Any) -> None:
    """Two clients of one (database, user) that differ in CLIENT_FOUND_ROWS get separate pools
    internally; /metrics must still expose one series per (listener, database, user)."""
    from pymysql.constants import CLIENT

    proxy = proxy_factory(make_config(mysql_listener(mariadb_server, pool_size=2)))
    conns = [pymysql.connect(host="127.0.0.1", port=proxy.port("mysql"), user="app",
                             password="app-secret", database="app", autocommit=True,
                             connect_timeout=5, client_flag=flag)
             for flag in (0, CLIENT.FOUND_ROWS)]
    try:
        for conn in conns:
            with conn.cursor() as cur:
                for _ in range(3):
                    cur.execute("SELECT 1")
        _, text = http_get_status(proxy, "/metrics")
    finally:
        for conn in conns:
            conn.close()
    assert_no_duplicate_samples(text)
    labels = {"listener": "mysql", "database": "app", "user": "app"}
    # 3 queries per client, plus PyMySQL's SET NAMES at connect.
    assert sample_value(text, "poolproxy_transactions_total", **labels) in (6, 8)


def test_metrics_count_prepared_statements_of_an_unpinned_client(
        pg_proxy_fresh: ProxyProcess) -> None:
    """psycopg prepares a query it ran 5 times (its default prepare_threshold: a named
    prepared statement). In transaction mode that no longer pins the client to its server
    (poolproxy renames the statement and prepares it on whichever server the client gets):
    no pin is counted, and the statement, its server-side Parse and its executions are."""
    proxy = pg_proxy_fresh
    with pg_connect(proxy) as conn:
        for i in range(10):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        _, text = http_get_status(proxy, "/metrics")
    labels = {"listener": "pg", "database": "app", "user": "app"}
    pins = {(n, lab.get("reason")): v for n, lab, v in samples(text)
            if n in ("poolproxy_client_pins_total", "poolproxy_clients_pinned")}
    assert not any(pins.values()), f"the client was pinned: {pins}"
    assert sample_value(text, "poolproxy_prepared_statements_total", side="client",
                        **labels) == 1
    assert sample_value(text, "poolproxy_prepared_statements_total", side="server",
                        **labels) == 1
    # Runs 6 to 10 execute the prepared statement.
    assert sample_value(text, "poolproxy_prepared_statement_executions_total", **labels) == 5
    # Its transactions still happen and are counted: the 10 statements and the Parse + Sync.
    assert sample_value(text, "poolproxy_queries_total", **labels) == 11
    assert sample_value(text, "poolproxy_transactions_total", **labels) == 11


def test_readyz_and_healthz_when_running(pg_proxy_fresh: ProxyProcess) -> None:
    assert http_get_status(pg_proxy_fresh, "/healthz") == (200, "ok\n")
    assert http_get_status(pg_proxy_fresh, "/readyz") == (200, "ready\n")


def test_listener_port_refuses_after_exit(pg_proxy_fresh: ProxyProcess) -> None:
    proxy = pg_proxy_fresh
    port = proxy.port("pg")
    proxy.send_signal(signal.SIGTERM)
    rc, _ = wait_exit(proxy, 5.0)
    assert rc == 0
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_sighup_keeps_the_daemon_and_its_clients(pg_proxy_fresh: ProxyProcess) -> None:
    """SIGHUP means "reload the config": it must not end the process (the default
    action of an unhandled SIGHUP) nor drop a connected client."""
    proxy = pg_proxy_fresh
    with pg_connect(proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        if not proxy.is_running():
            pytest.fail(f"SIGHUP ended the proxy (exit code {proxy.wait(1.0)}; -1 = killed by SIGHUP)")
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert http_get_status(proxy, "/readyz")[0] == 200
