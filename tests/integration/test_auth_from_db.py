"""Authentication without passwords in the config: auth.query (PgBouncer's auth_query) and
auth.type passthrough, on both protocols, against real PostgreSQL and MariaDB.

Users created only in the database log in through poolproxy; a wrong password and an unknown
user fail with the same error; the poolproxy config holds no password for those users (only the
auth.user's, which runs the lookup). Drivers run at their defaults.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pymysql
import pytest
import yaml

from tests.harness import (
    MariaDbServer,
    PgServer,
    ProxyProcess,
    make_config,
    mysql_listener,
    pg_listener,
    run_cli,
)
from tests.harness.ports import free_port

DB_USER, DB_PASSWORD = "pp_dbonly", "dbonly-secret"
LOOKUP = "SELECT uname, phash FROM public.pp_user_lookup($1)"


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (a client from it is 'remote')."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module")
def pg_roles(pg_server: PgServer) -> None:
    pg_server.execute(f"DROP ROLE IF EXISTS {DB_USER}")
    pg_server.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
    pg_server.execute(f"GRANT ALL ON DATABASE app TO {DB_USER}")
    # PgBouncer's usual lookup: a SECURITY DEFINER function owned by a superuser.
    pg_server.execute(
        "CREATE OR REPLACE FUNCTION public.pp_user_lookup(i_username text, OUT uname text, "
        "OUT phash text) RETURNS record AS $$ SELECT usename::text, passwd::text FROM "
        "pg_catalog.pg_shadow WHERE usename = i_username $$ LANGUAGE sql SECURITY DEFINER",
        dbname="app")
    pg_server.execute("REVOKE ALL ON FUNCTION public.pp_user_lookup(text) FROM public",
                      dbname="app")
    pg_server.execute("GRANT EXECUTE ON FUNCTION public.pp_user_lookup(text) TO app",
                      dbname="app")


@pytest.fixture(scope="module")
def my_roles(mariadb_server: MariaDbServer) -> None:
    for sql in (
        f"DROP USER IF EXISTS '{DB_USER}'@'%'",
        f"CREATE USER '{DB_USER}'@'%' IDENTIFIED BY '{DB_PASSWORD}'",
        f"GRANT ALL ON app.* TO '{DB_USER}'@'%'",
        "DROP USER IF EXISTS 'pp_auth'@'%'",
        "CREATE USER 'pp_auth'@'%' IDENTIFIED BY 'auth-secret'",
        "GRANT SELECT ON mysql.user TO 'pp_auth'@'%'",
        "GRANT SELECT ON mysql.global_priv TO 'pp_auth'@'%'",
    ):
        mariadb_server.execute(sql)


@pytest.fixture(scope="module")
def proxy(pg_server: PgServer, mariadb_server: MariaDbServer, pg_roles: None, my_roles: None,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    remote_port = free_port()
    config = make_config(
        # auth.query: only the lookup user is listed (app_md5 is not: its md5 secret is
        # looked up too).
        pg_listener(pg_server, pool_size=2, users=[{"name": "app", "password": "app-secret"}],
                    auth={"type": "scram-sha-256", "query": LOOKUP, "user": "app",
                          "dbname": "app"}),
        pg_listener(pg_server, name="pg_pass", pool_size=2, users=[],
                    auth={"type": "passthrough"}),
        pg_listener(pg_server, name="pg_pass_remote", pool_size=1, users=[],
                    auth={"type": "passthrough"}, listen=f"0.0.0.0:{remote_port}"),
        mysql_listener(mariadb_server, pool_size=2,
                       users=[{"name": "pp_auth", "password": "auth-secret"}],
                       auth={"type": "mysql_native_password",
                             "query": "SELECT user, authentication_string FROM mysql.user "
                                      "WHERE user = ? LIMIT 1", "user": "pp_auth",
                             "dbname": "mysql"}),
        mysql_listener(mariadb_server, name="my_pass", pool_size=2, users=[],
                       auth={"type": "passthrough"}),
    )
    proc = ProxyProcess(config, tmp_path_factory.mktemp("auth_db_proxy"))
    proc.start()
    yield proc
    proc.stop()


def config_text(proxy: ProxyProcess) -> str:
    return Path(proxy.config_path).read_text()


def pg_dsn(proxy: ProxyProcess, listener: str = "pg", user: str = DB_USER,
           password: str = DB_PASSWORD) -> str:
    return (f"host=127.0.0.1 port={proxy.port(listener)} user={user} password={password} "
            "dbname=app connect_timeout=10")


# --------------------------------------------------------------------------- PostgreSQL


def test_pg_auth_query_scram_user_only_in_database(proxy: ProxyProcess,
                                                   pg_server: PgServer) -> None:
    assert DB_PASSWORD not in config_text(proxy)
    assert DB_USER not in config_text(proxy)
    with psycopg.connect(pg_dsn(proxy)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (DB_USER,)
        # psycopg at its defaults: prepared from the fifth execution on, still pooled
        for i in range(8):
            assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)

    async def many() -> list[int]:
        conns = [await asyncpg.connect(host="127.0.0.1", port=proxy.port("pg"), user=DB_USER,
                                       password=DB_PASSWORD, database="app") for _ in range(4)]
        try:
            return [await c.fetchval("SELECT $1::int", i) for i, c in enumerate(conns)]
        finally:
            for c in conns:
                await c.close()

    assert asyncio.run(many()) == [0, 1, 2, 3]
    # The servers log in with the ClientKey from the clients' proofs: at most pool_size.
    assert 1 <= pg_server.backend_count(DB_USER, "app") <= 2


def test_pg_auth_query_md5_secret(proxy: ProxyProcess) -> None:
    with psycopg.connect(pg_dsn(proxy, user="app_md5", password="md5-secret")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app_md5",)


def test_pg_wrong_password_and_unknown_user_fail_alike(proxy: ProxyProcess) -> None:
    errors = []
    for user, password in ((DB_USER, "wrong"), ("pp_nobody", "wrong"), ("pp_nobody", "x")):
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(pg_dsn(proxy, user=user, password=password))
        errors.append(str(info.value).replace(user, "USER"))
    assert errors[0] == errors[1] == errors[2], errors
    assert 'password authentication failed for user "USER"' in errors[0]
    # ... and the right password still works right after (the failed login forgot the cache)
    with psycopg.connect(pg_dsn(proxy)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pg_auth_query_sees_a_new_user_and_a_changed_password(proxy: ProxyProcess,
                                                             pg_server: PgServer) -> None:
    pg_server.execute("DROP ROLE IF EXISTS pp_fresh")
    pg_server.execute("CREATE ROLE pp_fresh LOGIN PASSWORD 'fresh-1'")
    pg_server.execute("GRANT CONNECT ON DATABASE app TO pp_fresh")
    with psycopg.connect(pg_dsn(proxy, user="pp_fresh", password="fresh-1")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("pp_fresh",)
    pg_server.execute("ALTER ROLE pp_fresh PASSWORD 'fresh-2'")
    with pytest.raises(psycopg.OperationalError):  # cached secret: the new password fails once
        psycopg.connect(pg_dsn(proxy, user="pp_fresh", password="fresh-2"))
    with psycopg.connect(pg_dsn(proxy, user="pp_fresh", password="fresh-2")) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_pg_passthrough(proxy: ProxyProcess, pg_server: PgServer) -> None:
    with psycopg.connect(pg_dsn(proxy, "pg_pass")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (DB_USER,)
    # the second login is checked against the cached verifier
    with psycopg.connect(pg_dsn(proxy, "pg_pass")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    errors = []
    for user in (DB_USER, "pp_nobody"):
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(pg_dsn(proxy, "pg_pass", user=user, password="wrong"))
        errors.append(str(info.value).replace(user, "USER"))
    assert errors[0] == errors[1], errors


def test_pg_passthrough_refuses_cleartext_from_another_host(proxy: ProxyProcess) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(f"host={address} port={proxy.port('pg_pass_remote')} user={DB_USER} "
                        f"password={DB_PASSWORD} dbname=app sslmode=disable connect_timeout=10")
    assert "only over TLS" in str(info.value)


# --------------------------------------------------------------------------- MariaDB


def my_connect(proxy: ProxyProcess, listener: str = "mysql", user: str = DB_USER,
               password: str = DB_PASSWORD, **kwargs: Any) -> Any:
    return pymysql.connect(host="127.0.0.1", port=proxy.port(listener), user=user,
                           password=password, database="app", connect_timeout=10, **kwargs)


def assert_logged_in_as_db_user(proxy: ProxyProcess, listener: str = "mysql") -> None:
    """A MySQL login through `listener` as DB_USER reaches the server as that user."""
    conn = my_connect(proxy, listener)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0].startswith(DB_USER + "@")
    finally:
        conn.close()


def test_mysql_auth_query_user_only_in_database(proxy: ProxyProcess) -> None:
    text = config_text(proxy)
    assert DB_PASSWORD not in text and DB_USER not in text
    for _ in range(3):
        assert_logged_in_as_db_user(proxy)


def test_mysql_wrong_password_and_unknown_user_fail_alike(proxy: ProxyProcess) -> None:
    errors = []
    for user in (DB_USER, "pp_nobody"):
        with pytest.raises(pymysql.err.OperationalError) as info:
            my_connect(proxy, user=user, password="wrong")
        errors.append((info.value.args[0], info.value.args[1].replace(user, "USER")))
    assert errors[0] == errors[1], errors
    assert errors[0][0] == 1045


def test_mysql_passthrough(proxy: ProxyProcess) -> None:
    # PyMySQL answers mysql_clear_password (a loopback client, no TLS here).
    for _ in range(2):
        assert_logged_in_as_db_user(proxy, "my_pass")
    with pytest.raises(pymysql.err.OperationalError) as info:
        my_connect(proxy, "my_pass", password="wrong")
    assert info.value.args[0] == 1045


def test_config_needs_no_users_with_passthrough(tmp_path: Path) -> None:
    """A whole config without a single user or password validates."""
    config = {"listeners": [{"name": "pg", "protocol": "postgres", "listen": "127.0.0.1:6432",
                             "server": {"host": "127.0.0.1"}, "auth": {"type": "passthrough"}},
                            {"name": "my", "protocol": "mysql", "listen": "127.0.0.1:6033",
                             "server": {"host": "127.0.0.1"}, "auth": {"type": "passthrough"}}]}
    path = tmp_path / "poolproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("-c", str(path), "--check")
    assert result.returncode == 0, result.stderr
