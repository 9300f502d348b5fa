"""The PgBouncer-compatible admin console (issue 5, Must show 2), through psycopg and psql.

- Every SHOW returns PgBouncer's column names (poolproxy may add a trailing ``listener``) and
  values that agree with what the clients are doing; pools of both protocols are listed.
- SHOW STATS counts the workload's transactions and queries exactly.
- PAUSE returns only once the running transaction has committed and holds new queries until
  RESUME; RELOAD re-reads the file (no SIGHUP) and applies a changed pool_size.
- Only admin_users get in (28000 otherwise); a bad command is a clean error and the session
  goes on; SHUTDOWN makes the process exit 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pymysql
import pytest
import yaml

from proxy import __version__
from tests.harness import (
    MariaDbServer,
    PgServer,
    ProxyProcess,
    make_config,
    mysql_listener,
    pg_listener,
)
from tests.harness.util import http_get

POOLS_COLUMNS = ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
                 "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
                 "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us",
                 "pool_mode"]
#: PgBouncer 1.23's SHOW STATS columns, in its order.
STATS_COLUMNS = ["database", "total_server_assignment_count", "total_xact_count",
                 "total_query_count", "total_received", "total_sent", "total_xact_time",
                 "total_query_time", "total_wait_time", "total_client_parse_count",
                 "total_server_parse_count", "total_bind_count", "avg_server_assignment_count",
                 "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time",
                 "avg_query_time", "avg_wait_time", "avg_client_parse_count",
                 "avg_server_parse_count", "avg_bind_count"]
CONN_COLUMNS = ["type", "user", "database", "state", "addr", "port", "local_addr", "local_port",
                "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr", "link",
                "remote_pid", "tls", "application_name", "prepared_statements"]
DATABASES_COLUMNS = ["name", "host", "port", "database", "force_user", "pool_size",
                     "min_pool_size", "reserve_pool", "pool_mode", "max_connections",
                     "current_connections", "paused", "disabled"]


# --------------------------------------------------------------------------- helpers


def console(proxy: ProxyProcess, dbname: str = "pgbouncer", user: str = "app",
            password: str = "app-secret") -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user=user,
                           password=password, dbname=dbname, autocommit=True, connect_timeout=5)


def run(conn: psycopg.Connection[Any], sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """One console command over the simple query protocol: (column names, rows)."""
    cur = conn.execute(sql, prepare=False)  # type: ignore[call-overload]
    if cur.description is None:
        return [], []
    return [d.name for d in cur.description], list(cur.fetchall())


def show(conn: psycopg.Connection[Any], what: str) -> list[dict[str, Any]]:
    cols, rows = run(conn, f"SHOW {what}")
    return [dict(zip(cols, row, strict=True)) for row in rows]


def pg_connect(proxy: ProxyProcess, **kwargs: Any) -> psycopg.Connection[Any]:
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                           password="app-secret", dbname="app", connect_timeout=5, **kwargs)


def pools_json(proxy: ProxyProcess) -> list[dict[str, Any]]:
    return json.loads(http_get(proxy, "/pools", timeout=3))


def local_port(conn: psycopg.Connection[Any]) -> int:
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        return sock.getsockname()[1]
    finally:
        sock.close()


def write_config(proxy: ProxyProcess, config: dict[str, Any]) -> None:
    """Rewrite the proxy's config file without signalling it (RELOAD is the trigger)."""
    tmp = proxy.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, proxy.config_path)


class Background:
    """Runs `fn` in a thread; records when it finished and what it returned or raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # reported by the test
            self.error = exc
        self.finished_at = time.monotonic()

    def join(self, timeout: float) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "still blocked"
        if self.error is not None:
            raise self.error
        return self.result


# --------------------------------------------------------------------------- SHOW


@pytest.fixture(scope="module")
def both_proxy(pg_server: PgServer, mariadb_server: MariaDbServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """PostgreSQL listener (database app) and MySQL listener (clients use database app2, so
    SHOW STATS rows per database stay apart)."""
    config = make_config(pg_listener(pg_server, pool_size=3),
                         mysql_listener(mariadb_server, pool_size=2),
                         admin_users=["app"], defaults={"pool_size": 4})
    proc = ProxyProcess(config, tmp_path_factory.mktemp("console_proxy"))
    proc.start()
    yield proc
    proc.stop()


def mysql_connect(proxy: ProxyProcess) -> Any:
    return pymysql.connect(host="127.0.0.1", port=proxy.port("mysql"), user="app",
                           password="app-secret", database="app2", autocommit=True,
                           connect_timeout=5, read_timeout=20)


def test_show_columns_and_values_for_both_protocols(
        pg_server: PgServer, both_proxy: ProxyProcess) -> None:
    proxy = both_proxy
    pg = pg_connect(proxy, autocommit=False, application_name="console-test")
    my = mysql_connect(proxy)
    admin = console(proxy)
    try:
        row = pg.execute("SELECT pg_backend_pid()").fetchone()  # transaction open
        assert row is not None
        backend_pid = row[0]
        with my.cursor() as cur:
            my.begin()
            cur.execute("SELECT CONNECTION_ID()")
            mysql_thread = cur.fetchone()[0]  # transaction open

        # SHOW POOLS
        cols, _ = run(admin, "SHOW POOLS")
        assert cols[:len(POOLS_COLUMNS)] == POOLS_COLUMNS, cols
        assert cols[len(POOLS_COLUMNS):] in ([], ["listener"]), cols
        pools = {r["listener"]: r for r in show(admin, "POOLS")}
        assert set(pools) == {"pg", "mysql"}, pools
        pgp, myp = pools["pg"], pools["mysql"]
        assert (pgp["database"], pgp["user"], pgp["pool_mode"]) == ("app", "app", "transaction")
        assert (myp["database"], myp["user"], myp["pool_mode"]) == ("app2", "app", "transaction")
        assert (pgp["cl_active"], pgp["cl_waiting"], pgp["sv_active"]) == (1, 0, 1), pgp
        assert (myp["cl_active"], myp["cl_waiting"], myp["sv_active"]) == (1, 0, 1), myp
        assert pgp["maxwait"] == pgp["maxwait_us"] == 0

        # SHOW SERVERS: the pg server the client holds is the backend it runs on, linked to it.
        cols, _ = run(admin, "SHOW SERVERS")
        assert cols[:len(CONN_COLUMNS)] == CONN_COLUMNS, cols
        assert cols[len(CONN_COLUMNS):] in ([], ["listener"]), cols
        servers = show(admin, "SERVERS")
        assert {s["type"] for s in servers} == {"S"}
        pg_active = [s for s in servers if s.get("listener", "pg") == "pg"
                     and s["state"] == "active"]
        assert [s["remote_pid"] for s in pg_active] == [backend_pid], servers
        assert pg_active[0]["port"] == pg_server.port and pg_active[0]["user"] == "app"
        my_active = [s for s in servers if s.get("listener") == "mysql" and s["state"] == "active"]
        assert [s["remote_pid"] for s in my_active] == [mysql_thread], servers
        assert my_active[0]["database"] == "app2"

        # SHOW CLIENTS: our pg client, found by its port and application_name.
        cols, _ = run(admin, "SHOW CLIENTS")
        assert cols[:len(CONN_COLUMNS)] == CONN_COLUMNS, cols
        assert cols[len(CONN_COLUMNS):] in ([], ["listener"]), cols
        clients = show(admin, "CLIENTS")
        assert {c["type"] for c in clients} == {"C"}
        mine = [c for c in clients if c["port"] == local_port(pg)]
        assert len(mine) == 1, clients
        me = mine[0]
        assert (me["user"], me["database"], me["state"], me["addr"]) == (
            "app", "app", "active", "127.0.0.1"), me
        assert me["application_name"] == "console-test", me
        assert me["link"] == pg_active[0]["ptr"] and pg_active[0]["link"] == me["ptr"], (
            me, pg_active)
        assert any(c["database"] in ("pgbouncer", "poolproxy") for c in clients), (
            "the console session itself is a client too")
        assert any(c.get("listener") == "mysql" and c["database"] == "app2" for c in clients)

        # SHOW DATABASES
        cols, _ = run(admin, "SHOW DATABASES")
        assert cols[:len(DATABASES_COLUMNS)] == DATABASES_COLUMNS, cols
        assert cols[len(DATABASES_COLUMNS):] in ([], ["listener"]), cols
        dbs = show(admin, "DATABASES")
        pg_db = [d for d in dbs if d.get("listener", "pg") == "pg"]
        assert len(pg_db) == 1, dbs
        assert (pg_db[0]["name"], pg_db[0]["host"], pg_db[0]["port"]) == (
            "*", pg_server.host, pg_server.port)
        assert pg_db[0]["pool_size"] == 3 and pg_db[0]["pool_mode"] == "transaction"
        assert pg_db[0]["current_connections"] >= 1 and pg_db[0]["paused"] == 0
        assert any(d.get("listener") == "mysql" and d["pool_size"] == 2 for d in dbs), dbs

        # SHOW CONFIG: the defaults (pool_size 4 in the file), one row per key.
        cols, rows = run(admin, "SHOW CONFIG")
        assert cols == ["key", "value", "default", "changeable"], cols
        keys = [r[0] for r in rows]
        assert len(keys) == len(set(keys)), keys
        config = dict((r[0], r[1]) for r in rows)
        assert config["pool_size"] == "4" and config["pool_mode"] == "transaction", config
        assert config["admin_users"] == "app"

        # SHOW VERSION
        cols, rows = run(admin, "SHOW VERSION")
        assert cols == ["version"] and rows == [(f"poolproxy {__version__}",)]
    finally:
        pg.close()
        my.close()
        admin.close()


def test_show_stats_counts_the_workload(both_proxy: ProxyProcess) -> None:
    proxy = both_proxy
    with console(proxy) as admin:
        cols, _ = run(admin, "SHOW STATS")
        # PgBouncer's columns, then poolproxy's trailing listener (stats are per listener).
        assert cols == [*STATS_COLUMNS, "listener"], cols
        pg = pg_connect(proxy, autocommit=False)
        my = mysql_connect(proxy)
        try:
            before = {r["database"]: r for r in show(admin, "STATS")}
            for i in range(6):  # BEGIN; SELECT; SELECT; COMMIT: 1 transaction, 4 queries
                pg.execute("SELECT %s::int", (i,))
                pg.execute("SELECT 'x'")
                pg.commit()
            pg.autocommit = True
            for i in range(5):  # 1 transaction, 1 query each
                pg.execute("SELECT %s::int", (i,))
            with my.cursor() as cur:
                for i in range(7):
                    cur.execute("SELECT %s", (i,))
                my.begin()
                cur.execute("SELECT 1")
                my.commit()
            after = {r["database"]: r for r in show(admin, "STATS")}
        finally:
            pg.close()
            my.close()

    def delta(db: str, col: str) -> int:
        return after[db][col] - before.get(db, dict.fromkeys(STATS_COLUMNS, 0))[col]

    assert delta("app", "total_xact_count") == 11
    # psycopg at its defaults prepares both queries at their 6th run (prepare_threshold 5),
    # inside a transaction, with a Parse + Sync round trip of its own: 2 more queries.
    assert pg.prepare_threshold == 5
    assert delta("app", "total_query_count") == 6 * 4 + 5 + 2
    assert delta("app", "total_client_parse_count") == 2
    assert 2 <= delta("app", "total_server_parse_count") <= 4  # once per server used
    # The prepared executions: SELECT %s::int at its runs 6 to 11, SELECT 'x' at its 6th.
    assert delta("app", "total_bind_count") == 6 + 1
    assert delta("app2", "total_xact_count") == 8
    assert delta("app2", "total_query_count") == 7 + 3
    assert delta("app", "total_received") > 0 and delta("app", "total_sent") > 0
    assert delta("app", "total_xact_time") > 0
    assert after["app"]["avg_xact_time"] > 0


def test_psql_against_the_console(both_proxy: ProxyProcess) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql not installed")
    env = dict(os.environ, PGPASSWORD="app-secret", PGCONNECT_TIMEOUT="5")
    base = [psql, "-X", "-h", "127.0.0.1", "-p", str(both_proxy.port("pg")), "-U", "app",
            "-d", "pgbouncer", "-A", "-F", "|"]
    out = subprocess.run([*base, "-c", "SHOW POOLS"], env=env, capture_output=True,
                         text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0].split("|")
    assert header[:len(POOLS_COLUMNS)] == POOLS_COLUMNS, out.stdout
    out = subprocess.run([*base, "-t", "-c", "SHOW VERSION"], env=env, capture_output=True,
                         text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.strip() == f"poolproxy {__version__}", out


# --------------------------------------------------------------------------- PAUSE / RESUME


def test_pause_waits_for_the_running_transaction_and_holds_new_queries(
        pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(pg_listener(pg_server, pool_size=2,
                                                  databases={"app": {}}), admin_users=["app"]))
    admin = console(proxy)
    observer = console(proxy)
    busy = pg_connect(proxy, autocommit=False)
    late: psycopg.Connection[Any] | None = None
    try:
        busy.execute("SELECT 1")  # a transaction is open
        pause = Background(lambda: run(admin, "PAUSE app"))
        time.sleep(0.5)
        assert pause.finished_at is None, "PAUSE returned while a transaction was still open"
        busy.execute("SELECT 2")  # the running transaction goes on during the pause
        committed = time.monotonic()
        busy.commit()
        pause.join(5)
        assert pause.finished_at is not None
        assert committed <= pause.finished_at < committed + 1.0, (
            f"PAUSE returned {pause.finished_at - committed:+.2f}s after the COMMIT")
        dbs = {d["name"]: d for d in show(observer, "DATABASES")}
        assert dbs["app"]["paused"] == 1, dbs

        # A client connecting during the pause logs in, but its query waits for RESUME.
        late = pg_connect(proxy)
        query = Background(lambda: late.execute("SELECT 42").fetchone())  # type: ignore[union-attr]
        time.sleep(0.7)
        assert query.finished_at is None, "a query ran while the database was paused"
        pools = {r.get("listener", "pg"): r for r in show(observer, "POOLS")}
        assert pools["pg"]["cl_waiting"] == 1, pools
        assert pools_json(proxy)[0]["paused"] is True
        resumed = time.monotonic()
        assert run(admin, "RESUME app") == ([], [])
        assert query.join(5) == (42,)
        assert query.finished_at is not None and query.finished_at - resumed < 1.0
        dbs = {d["name"]: d for d in show(observer, "DATABASES")}
        assert dbs["app"]["paused"] == 0, dbs
        assert busy.execute("SELECT 3").fetchone() == (3,)
    finally:
        for conn in (admin, observer, busy, late):
            if conn is not None:
                conn.close()


def test_pause_all_shows_paused_and_resume_all(pg_server: PgServer,
                                               proxy_factory: Any) -> None:
    """PAUSE with no database holds every pool; SHOW DATABASES says so for the "*" entry."""
    proxy = proxy_factory(make_config(pg_listener(pg_server, pool_size=2), admin_users=["app"]))
    admin = console(proxy)
    client = pg_connect(proxy)
    try:
        assert client.execute("SELECT 1").fetchone() == (1,)
        run(admin, "PAUSE")
        query = Background(lambda: client.execute("SELECT 2").fetchone())
        time.sleep(0.5)
        assert query.finished_at is None, "a query ran during PAUSE"
        dbs = show(admin, "DATABASES")
        assert [d["paused"] for d in dbs] == [1], dbs
        run(admin, "RESUME")
        assert query.join(5) == (2,)
    finally:
        admin.close()
        client.close()


def test_pause_unknown_database_is_an_error(pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(pg_listener(pg_server), admin_users=["app"]))
    with console(proxy) as admin:
        with pytest.raises(psycopg.Error) as err:
            run(admin, "PAUSE nosuchdb")
        assert err.value.sqlstate == "3D000", err.value
        assert run(admin, "SHOW VERSION")[1] == [(f"poolproxy {__version__}",)]


# --------------------------------------------------------------------------- RELOAD


def test_reload_applies_a_changed_pool_size(pg_server: PgServer, proxy_factory: Any) -> None:
    config = make_config(pg_listener(pg_server), admin_users=["app"], defaults={"pool_size": 3})
    proxy = proxy_factory(config)
    admin = console(proxy)
    first = pg_connect(proxy, autocommit=False)
    second = pg_connect(proxy, autocommit=False)
    try:
        first.execute("SELECT 1")
        second.execute("SELECT 1")  # two transactions at once: pool_size 3 allows it
        first.commit()
        second.commit()
        assert pools_json(proxy)[0]["pool_size"] == 3
        new = json.loads(json.dumps(config))
        new["defaults"]["pool_size"] = 1
        write_config(proxy, new)
        since = len(proxy.log_text())
        assert run(admin, "RELOAD") == ([], [])
        proxy.wait_for_log("configuration reloaded", 5, since)
        config_rows = {r["key"]: r["value"] for r in show(admin, "CONFIG")}
        assert config_rows["pool_size"] == "1", config_rows
        assert [d["pool_size"] for d in show(admin, "DATABASES")] == [1]
        assert pools_json(proxy)[0]["pool_size"] == 1
        # ...and it is enforced: the second transaction now waits for the first.
        first.execute("SELECT 1")
        blocked = Background(lambda: second.execute("SELECT 2").fetchone())
        time.sleep(0.5)
        assert blocked.finished_at is None, "pool_size 1 let two transactions run at once"
        first.commit()
        assert blocked.join(5) == (2,)
        second.commit()
        # A broken file: RELOAD fails cleanly, the running config stays, the session goes on.
        broken = json.loads(json.dumps(new))
        broken["defaults"]["pool_sise"] = 2
        write_config(proxy, broken)
        since = len(proxy.log_text())
        with pytest.raises(psycopg.Error) as err:
            run(admin, "RELOAD")
        assert "RELOAD failed" in str(err.value)
        assert "defaults.pool_sise" in proxy.wait_for_log(r"reload rejected.*", 5, since).group(0)
        assert {r["key"]: r["value"] for r in show(admin, "CONFIG")}["pool_size"] == "1"
        assert first.execute("SELECT 5").fetchone() == (5,)
    finally:
        for conn in (admin, first, second):
            conn.close()


# --------------------------------------------------------------------------- access, errors


def test_non_admin_user_is_refused(pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(pg_listener(pg_server), admin_users=["app"]))
    port = proxy.port("pg")

    async def attempt(user: str, password: str, database: str) -> str | None:
        try:
            conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user,
                                         password=password, database=database, timeout=5)
        except asyncpg.PostgresError as exc:
            return exc.sqlstate
        await conn.close()
        return None

    async def main() -> list[str | None]:
        return [await attempt("app2", "app2-secret", "pgbouncer"),
                await attempt("app2", "app2-secret", "poolproxy"),
                await attempt("app", "wrong-password", "pgbouncer")]

    assert asyncio.run(main()) == ["28000", "28000", "28P01"]
    with pytest.raises(psycopg.OperationalError) as err:
        console(proxy, user="app2", password="app2-secret")
    assert "admin" in str(err.value), err.value
    # The admin user is welcome under both names.
    for dbname in ("pgbouncer", "poolproxy"):
        with console(proxy, dbname=dbname) as admin:
            assert run(admin, "SHOW VERSION")[1] == [(f"poolproxy {__version__}",)]


def test_unknown_command_is_a_clean_error(pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(pg_listener(pg_server), admin_users=["app"]))
    with console(proxy) as admin:
        for bad in ("FROBNICATE", "SHOW NONSENSE", "SHOW"):
            with pytest.raises(psycopg.Error) as err:
                run(admin, bad)
            assert err.value.sqlstate == "42601", (bad, err.value)
            assert "unknown" in str(err.value).lower()
            assert run(admin, "SHOW VERSION")[1] == [(f"poolproxy {__version__}",)]
        # Lower case and a trailing semicolon work, as in psql.
        assert run(admin, "show version;")[1] == [(f"poolproxy {__version__}",)]
    assert proxy.is_running()


def test_shutdown_makes_the_proxy_exit_0(pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(pg_listener(pg_server), admin_users=["app"]))
    port = proxy.port("pg")
    client = pg_connect(proxy)
    admin = console(proxy)
    try:
        assert client.execute("SELECT 1").fetchone() == (1,)
        try:
            run(admin, "SHUTDOWN")
        except psycopg.OperationalError:
            pass  # the console session may be closed before its reply is read
        rc = proxy.wait(10)
        assert rc == 0, proxy.log_tail()
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")
    finally:
        client.close()
        admin.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
