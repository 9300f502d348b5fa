"""Server connections over a Unix-domain socket (`server.host` is a path): PostgreSQL by its
socket directory (libpq's and PgBouncer's rule), MySQL by its socket file.

Each test checks on the server side that poolproxy's connection really came over the socket
(PostgreSQL: no server address; MariaDB: host `localhost`), then that the things that open
connections of their own work too: transaction pooling under concurrency, CancelRequest (a new
connection to the socket), and the MySQL greeting fetched at startup. A socket path that does
not exist gives the client a clear error, and the proxy keeps serving.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg import errors

from tests.harness import MariaDbServer, PgServer, make_config, mysql_listener, pg_listener
from tests.harness.myclient import one


def _pg_connect(pg: PgServer, port: int) -> psycopg.Connection[Any]:
    return psycopg.connect(pg.dsn("app", "app-secret", "app", port=port), autocommit=True)


def test_pg_through_the_socket_directory(pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(pg_listener(
        pg_server, pool_size=2,
        server={"host": str(pg_server.socket_dir), "port": pg_server.port})))
    port = proxy.port("pg")
    with _pg_connect(pg_server, port) as conn:
        # inet_server_addr() is NULL for a connection that came over the Unix socket.
        assert conn.execute("SELECT inet_server_addr() IS NULL, current_user").fetchone() == (
            True, "app")

    # Transaction pooling: 8 clients over 2 server connections, exact totals.
    with _pg_connect(pg_server, port) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS unix_counter (n int)")
        conn.execute("TRUNCATE unix_counter")

    def work(_: int) -> None:
        with _pg_connect(pg_server, port) as c:
            for _ in range(10):
                with c.transaction():
                    c.execute("INSERT INTO unix_counter VALUES (1)")
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(work, range(8)))
    with _pg_connect(pg_server, port) as conn:
        assert conn.execute("SELECT count(*) FROM unix_counter").fetchone() == (80,)
        conn.execute("DROP TABLE unix_counter")

    # A cancel travels over a new connection to the same socket.
    conn = _pg_connect(pg_server, port)
    try:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - started < 10
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()


def test_mysql_through_the_socket_file(mariadb_server: MariaDbServer, proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(mysql_listener(
        mariadb_server, pool_size=2, server={"host": str(mariadb_server.socket_path)})))
    port = proxy.port("mysql")

    def connect() -> pymysql.connections.Connection:
        return pymysql.connect(host="127.0.0.1", port=port, user="app", password="app-secret",
                               database="app", autocommit=True, connect_timeout=10)

    conn = connect()
    try:
        # The greeting poolproxy shows clients was fetched from the server over the socket
        # (MariaDB prefixes its greeting's version with 5.5.5-; poolproxy's fallback differs).
        assert conn.get_server_info() == "5.5.5-" + one(conn, "SELECT VERSION()")[0]
        host = one(conn, "SELECT HOST FROM information_schema.PROCESSLIST"
                         " WHERE ID = CONNECTION_ID()")[0]
        assert host == "localhost"  # a TCP connection would show 127.0.0.1:<port>
        conn.cursor().execute("CREATE TABLE IF NOT EXISTS unix_counter (n int)")
        conn.cursor().execute("TRUNCATE unix_counter")
    finally:
        conn.close()

    def work(_: int) -> None:
        c = connect()
        try:
            for _ in range(10):
                cur = c.cursor()
                cur.execute("BEGIN")
                cur.execute("INSERT INTO unix_counter VALUES (1)")
                cur.execute("COMMIT")
        finally:
            c.close()
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(work, range(8)))
    conn = connect()
    try:
        assert one(conn, "SELECT count(*) FROM unix_counter") == (80,)
        conn.cursor().execute("DROP TABLE unix_counter")
    finally:
        conn.close()
    servers = mariadb_server.execute(
        "SELECT count(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'")[0][0]
    assert servers <= 2


def test_missing_socket_is_a_clear_error(pg_server: PgServer, mariadb_server: MariaDbServer,
                                         proxy_factory: Any, tmp_path: Any) -> None:
    missing = tmp_path / "nowhere"
    proxy = proxy_factory(make_config(
        pg_listener(pg_server, server={"host": str(missing), "port": 5432}),
        mysql_listener(mariadb_server, server={"host": str(missing / "mysqld.sock")}),
        pg_listener(pg_server, name="good", pool_size=1),
        # The clients wait for the database to come back (it may be restarting) until
        # client_login_timeout; the error then says why no server connection was there.
        defaults={"client_login_timeout": "2s"}))
    with pytest.raises(psycopg.OperationalError) as pg_err:
        _pg_connect(pg_server, proxy.port("pg"))
    assert f"{missing}/.s.PGSQL.5432" in str(pg_err.value)
    with pytest.raises(pymysql.err.OperationalError) as my_err:
        pymysql.connect(host="127.0.0.1", port=proxy.port("mysql"), user="app",
                        password="app-secret", database="app", connect_timeout=10)
    assert f"{missing}/mysqld.sock" in str(my_err.value)
    with _pg_connect(pg_server, proxy.port("good")) as conn:  # everything else keeps working
        assert conn.execute("SELECT 1").fetchone() == (1,)
