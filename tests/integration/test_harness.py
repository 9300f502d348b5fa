"""Tests of the test harness itself, against real PostgreSQL and MariaDB (no proxy needed),
plus ProxyProcess against a stand-in program and, when it exists, the real proxy."""

from __future__ import annotations

import signal
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from tests.harness import (
    MariaDbServer,
    PgServer,
    ProxyProcess,
    free_port,
    make_config,
    mysql_listener,
    pg_listener,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

EXPECTED_HBA = [
    ("local", ["all"], ["all"], None, "trust"),
    ("host", ["all"], ["postgres"], "127.0.0.1", "trust"),
    ("host", ["all"], ["app_md5"], "127.0.0.1", "md5"),
    ("host", ["all"], ["app_trust"], "127.0.0.1", "trust"),
    ("host", ["all"], ["all"], "127.0.0.1", "scram-sha-256"),
]


def test_free_port_never_repeats_and_is_bindable() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------- PostgreSQL


def test_pg_hba_and_settings(pg_server: PgServer) -> None:
    rules = pg_server.execute(
        "SELECT type, database, user_name, address, auth_method FROM pg_hba_file_rules"
        " ORDER BY line_number")
    assert [tuple(r) for r in rules] == EXPECTED_HBA
    settings = dict(pg_server.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN"
        " ('max_connections', 'fsync', 'listen_addresses', 'port', 'server_encoding')"))
    assert settings == {
        "max_connections": "400", "fsync": "off", "listen_addresses": "127.0.0.1",
        "port": str(pg_server.port), "server_encoding": "UTF8",
    }
    assert pg_server.port != 5432


def test_pg_scram_login(pg_server: PgServer) -> None:
    stored = pg_server.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    assert stored[0][0].startswith("SCRAM-SHA-256$")
    with psycopg.connect(pg_server.dsn("app", "app-secret", "app")) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "app", "app")
        # The owner of app may create tables, and (for Django's test runner) databases.
        assert conn.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = 'app'"
                            ).fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.dsn("app", "wrong", "app"))
    with psycopg.connect(pg_server.dsn("app2", "app2-secret", "app2")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app2",)


def test_pg_md5_login(pg_server: PgServer) -> None:
    stored = pg_server.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'app_md5'")
    assert stored[0][0].startswith("md5")
    with psycopg.connect(pg_server.dsn("app_md5", "md5-secret", "app")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app_md5",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.dsn("app_md5", "wrong", "app"))


def test_pg_trust_login_and_schema_grants(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn("app_trust", dbname="app"), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app_trust",)
        conn.execute("CREATE TABLE harness_trust_check (id int)")
        conn.execute("DROP TABLE harness_trust_check")


def test_pg_backend_count(pg_server: PgServer) -> None:
    before = pg_server.backend_count("app")
    conns = [psycopg.connect(pg_server.dsn("app", "app-secret", "app")) for _ in range(3)]
    try:
        assert pg_server.backend_count("app") == before + 3
        assert pg_server.backend_count("app", "app") == before + 3
        assert pg_server.backend_count("app", "postgres") == 0
    finally:
        for conn in conns:
            conn.close()
    assert pg_server.wait_backend_count("app", before) == before
    assert pg_server.backend_count("postgres") == 0  # our own connection is not counted


def test_pg_create_with_settings_in_pytest_tmpdir_and_restart(tmp_path: Path) -> None:
    # tmp_path is a 0700 root-owned pytest dir: create() must still work as the server user.
    server = PgServer.create(tmp_path, settings={"idle_session_timeout": "1h"})
    try:
        assert server.datadir.is_relative_to(tmp_path)
        assert server.execute("SHOW idle_session_timeout") == [("1h",)]
        conn = psycopg.connect(server.dsn("app", "app-secret", "app"), autocommit=True)
        pid_before = conn.info.backend_pid
        server.restart()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
        with psycopg.connect(server.dsn("app", "app-secret", "app")) as conn2:
            assert conn2.execute("SELECT 1").fetchone() == (1,)
            assert conn2.info.backend_pid != pid_before
        server.stop()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.dsn(), connect_timeout=2)
    finally:
        server.stop("immediate")


# --------------------------------------------------------------------------- MariaDB


def test_mariadb_logins(mariadb_server: MariaDbServer) -> None:
    assert mariadb_server.port != 3306
    plugins = dict(mariadb_server.execute(
        "SELECT User, plugin FROM mysql.user WHERE User IN ('app', 'app2') AND Host = '%'"))
    assert plugins == {"app": "mysql_native_password", "app2": "mysql_native_password"}
    conn = pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="app",
                           password="app-secret", database="app")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), DATABASE(), @@character_set_server")
            assert cur.fetchone() == ("app@%", "app", "utf8mb4")
            # What Django's test runner does.
            cur.execute("CREATE DATABASE test_app")
            cur.execute("CREATE TABLE test_app.t (id int)")
            cur.execute("DROP DATABASE test_app")
    finally:
        conn.close()
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="app",
                        password="wrong", database="app")
    assert excinfo.value.args[0] == 1045
    conn = pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="app2",
                           password="app2-secret", database="app2")
    conn.close()
    assert mariadb_server.execute("SELECT CURRENT_USER()") == [("root@127.0.0.1",)]


def test_mariadb_connection_count(mariadb_server: MariaDbServer) -> None:
    before = mariadb_server.connection_count("app")
    conns = [pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="app",
                             password="app-secret", database="app") for _ in range(3)]
    try:
        assert mariadb_server.connection_count("app") == before + 3
    finally:
        for conn in conns:
            conn.close()
    assert mariadb_server.wait_connection_count("app", before) == before
    assert mariadb_server.connection_count("root") == 0


def test_mariadb_restart(mariadb_server: MariaDbServer) -> None:
    conn = mariadb_server.connect("app", "app-secret", "app")
    mariadb_server.restart()
    with pytest.raises(pymysql.err.OperationalError):
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    conn.close()
    conn = mariadb_server.connect("app", "app-secret", "app")
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()


# --------------------------------------------------------------------------- ProxyProcess

FAKE_PROXY = textwrap.dedent("""\
    import signal, socket, sys, time, yaml
    cfg = yaml.safe_load(open(sys.argv[-1]))
    mode = cfg.get("fake_mode", "ok")
    print("fake proxy", mode, flush=True)
    if mode == "crash":
        print("boom: bad config", flush=True)
        sys.exit(3)
    time.sleep(0.3)  # listen late: start() must wait for it
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    signal.signal(signal.SIGHUP, lambda *a: print("reloaded", flush=True))
    addrs = [li["listen"] for li in cfg["listeners"]]
    if cfg["admin"]["listen"]:
        addrs.append(cfg["admin"]["listen"])
    socks = []
    for addr in addrs if mode == "ok" else []:
        host, port = addr.rsplit(":", 1)
        s = socket.socket()
        s.bind((host, int(port)))
        s.listen()
        socks.append(s)
    while True:
        time.sleep(0.1)
""")


@pytest.fixture
def fake_proxy(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_proxy.py"
    script.write_text(FAKE_PROXY)
    return [sys.executable, str(script)]


def test_config_builders(pg_server: PgServer) -> None:
    listener = pg_listener(pg_server, pool_size=5, auth={"type": "md5"})
    assert listener["server"] == {"host": "127.0.0.1", "port": pg_server.port}
    assert listener["auth"] == {"type": "md5"} and listener["pool_size"] == 5
    assert {u["name"] for u in listener["users"]} == {"app", "app_md5", "app2", "app_trust"}
    fake_my = type("My", (), {"host": "127.0.0.1", "port": 1})()
    my = mysql_listener(fake_my)  # type: ignore[arg-type]
    assert my["protocol"] == "mysql" and my["auth"] == {"type": "mysql_native_password"}
    config = make_config(listener, my, admin=False, defaults={"pool_mode": "session"})
    assert config["admin"]["listen"] is None
    assert config["defaults"] == {"pool_mode": "session"}
    assert [li["name"] for li in config["listeners"]] == ["pg", "mysql"]


def test_proxy_process_waits_for_listeners(
    pg_server: PgServer, tmp_path: Path, fake_proxy: list[str]
) -> None:
    config = make_config(pg_listener(pg_server), pg_listener(pg_server, name="pg2"))
    proc = ProxyProcess(config, tmp_path / "p", command=fake_proxy)
    assert proc.config_path.read_text().startswith("admin:")
    proc.start()
    try:
        for port in (proc.port("pg"), proc.port("pg2"), proc.admin_port):
            assert port is not None
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert proc.is_running()
        mark = len(proc.log_text())
        proc.reload(config)
        proc.wait_for_log("reloaded", since=mark)
        with pytest.raises(KeyError):
            proc.port("nope")
    finally:
        assert proc.stop() == 0
    assert not proc.is_running()
    assert "fake proxy ok" in proc.log_text()


def test_proxy_process_reports_early_exit(
    pg_server: PgServer, tmp_path: Path, fake_proxy: list[str]
) -> None:
    config = make_config(pg_listener(pg_server)) | {"fake_mode": "crash"}
    proc = ProxyProcess(config, tmp_path / "p", command=fake_proxy)
    with pytest.raises(RuntimeError, match="(?s)exited with code 3.*boom: bad config"):
        proc.start()
    assert not proc.is_running()


def test_proxy_process_times_out_and_kills(
    pg_server: PgServer, tmp_path: Path, fake_proxy: list[str]
) -> None:
    config = make_config(pg_listener(pg_server)) | {"fake_mode": "never_listen"}
    proc = ProxyProcess(config, tmp_path / "p", command=fake_proxy)
    with pytest.raises(TimeoutError, match="did not listen"):
        proc.start(timeout=1.0)
    assert not proc.is_running()


@pytest.mark.skipif(not (REPO_ROOT / "proxy" / "__main__.py").exists(),
                    reason="python -m proxy does not exist yet")
def test_real_proxy_starts_and_stops(pg_server: PgServer, proxy_factory: Any) -> None:
    proc = proxy_factory.start(make_config(pg_listener(pg_server, pool_size=5)))
    assert proc.is_running()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) is not None
