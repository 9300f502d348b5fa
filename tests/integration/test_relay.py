"""The fault-injecting relay (tests/harness/relay.py) on its own, without poolproxy.

Drivers connect to the real PostgreSQL / MariaDB through the relay, so each fault's effect is
seen exactly as a pooler would see it: ``drop_answer`` loses the answer of a request the server
executed (the row WAS incremented, the driver gets a lost connection), ``drop_request`` loses
a request the server never saw (not incremented), ``inject`` delivers its bytes as the answer,
``delay_*`` delay, ``reset_all`` kills idle connections. The at-most-once tests rely on these.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest

from tests.harness import MariaDbServer, PgServer
from tests.harness.relay import PG_READY, Relay, mysql_err_packet, pg_error_response
from tests.harness.util import wait_for

PG_TABLE = "relay_pg"
MY_TABLE = "app.relay_my"


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_relay(pg_server: PgServer) -> Iterator[Relay]:
    pg_server.execute(f"CREATE TABLE IF NOT EXISTS {PG_TABLE} (id int PRIMARY KEY, n int NOT NULL)",
                      dbname="app")
    pg_server.execute(f"GRANT ALL ON {PG_TABLE} TO app", dbname="app")
    pg_server.execute(f"INSERT INTO {PG_TABLE} VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = 0",
                      dbname="app")
    with Relay(pg_server.host, pg_server.port) as relay:
        yield relay


def pg_connect(relay: Relay) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=relay.port, user="app", password="app-secret",
                           dbname="app", autocommit=True, connect_timeout=10)


def pg_count(pg: PgServer) -> int:
    return int(pg.execute(f"SELECT n FROM {PG_TABLE} WHERE id = 1", dbname="app")[0][0])


PG_UPDATE = f"UPDATE {PG_TABLE} SET n = n + 1 WHERE id = 1"


def test_pg_drop_answer_executes_but_loses_the_answer(pg_server: PgServer, pg_relay: Relay) -> None:
    conn = pg_connect(pg_relay)
    try:
        conn.execute("SELECT 1")
        fault = pg_relay.drop_answer(b"update relay_pg", until=PG_READY)
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute(PG_UPDATE)
        assert info.value.sqlstate is None, f"an answer got through: {info.value!r}"
        assert conn.broken or conn.closed
        assert fault.wait(10) and fault.fired == 1 and fault.done == 1
        assert pg_relay.fired["drop_answer"] == 1
        assert pg_count(pg_server) == 1, "the server did not execute the request"
    finally:
        conn.close()
    assert wait_for(lambda: pg_relay.live == 0, 5), f"{pg_relay.live} relayed connection(s) left"


def test_pg_drop_request_never_reaches_the_server(pg_server: PgServer, pg_relay: Relay) -> None:
    conn = pg_connect(pg_relay)
    try:
        conn.execute("SELECT 1")
        fault = pg_relay.drop_request(b"update relay_pg")
        with pytest.raises(psycopg.OperationalError):
            conn.execute(PG_UPDATE)
        assert fault.wait(10) and fault.done == 1
        assert pg_count(pg_server) == 0, "the dropped request was executed"
    finally:
        conn.close()
    # Only the matching chunk fires, and only `times` times: a new connection works.
    with pg_connect(pg_relay) as conn:
        conn.execute(PG_UPDATE)
    assert pg_count(pg_server) == 1
    assert pg_relay.fired == {"drop_request": 1}


def test_pg_inject_delivers_the_bytes(pg_server: PgServer, pg_relay: Relay) -> None:
    conn = pg_connect(pg_relay)
    try:
        conn.execute("SELECT 1")
        fault = pg_relay.inject(b"update relay_pg", pg_error_response(
            "57P01", "terminating connection due to administrator command"))
        with pytest.raises(psycopg.errors.AdminShutdown) as info:
            conn.execute(PG_UPDATE)
        assert info.value.sqlstate == "57P01"
        assert info.value.diag.severity_nonlocalized == "FATAL"
        assert "administrator command" in str(info.value)
        assert fault.wait(10) and fault.done == 1
        assert pg_count(pg_server) == 0, "the request was forwarded anyway"
    finally:
        conn.close()


def test_pg_delays_and_reset_all(pg_server: PgServer, pg_relay: Relay) -> None:
    conn = pg_connect(pg_relay)
    other = pg_connect(pg_relay)
    try:
        conn.execute("SELECT 1")
        for arm in (pg_relay.delay_request, pg_relay.delay_answer):
            fault = arm(b"select 'slow'", 0.6)
            t = time.monotonic()
            assert conn.execute("SELECT 'slow'").fetchone() == ("slow",)
            elapsed = time.monotonic() - t
            assert 0.6 <= elapsed < 5, f"{fault.kind}: answered after {elapsed:.2f}s"
            assert fault.done == 1
        t = time.monotonic()
        conn.execute("SELECT 'slow'")  # spent: no delay any more
        assert time.monotonic() - t < 0.5
        assert pg_relay.live == 2
        assert pg_relay.reset_all() == 2
        for c in (conn, other):
            with pytest.raises(psycopg.OperationalError):
                c.execute("SELECT 1")
        assert wait_for(lambda: pg_relay.live == 0, 5)
    finally:
        conn.close()
        other.close()


# --------------------------------------------------------------------------- MySQL


@pytest.fixture
def my_relay(mariadb_server: MariaDbServer) -> Iterator[Relay]:
    mariadb_server.execute(f"CREATE TABLE IF NOT EXISTS {MY_TABLE} (id INT PRIMARY KEY,"
                           " n INT NOT NULL) ENGINE=InnoDB")
    mariadb_server.execute(f"REPLACE INTO {MY_TABLE} VALUES (1, 0)")
    with Relay(mariadb_server.host, mariadb_server.port) as relay:
        yield relay


def my_connect(relay: Relay) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=relay.port, user="app", password="app-secret",
                           database="app", autocommit=True, connect_timeout=10, read_timeout=30)


def my_count(my: MariaDbServer) -> int:
    return int(my.execute(f"SELECT n FROM {MY_TABLE} WHERE id = 1")[0][0])


def my_run(conn: pymysql.Connection, sql: str) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


MY_UPDATE = f"UPDATE {MY_TABLE} SET n = n + 1 WHERE id = 1"


def test_mysql_drop_answer_executes_but_loses_the_answer(mariadb_server: MariaDbServer,
                                                         my_relay: Relay) -> None:
    conn = my_connect(my_relay)
    try:
        my_run(conn, "SELECT 1")
        fault = my_relay.drop_answer(b"update app.relay_my")
        with pytest.raises(pymysql.err.OperationalError) as info:
            my_run(conn, MY_UPDATE)
        assert info.value.args[0] == 2013, info.value
        assert fault.wait(10) and fault.done == 1
        assert my_count(mariadb_server) == 1, "the server did not execute the request"
    finally:
        if conn.open:
            conn.close()


def test_mysql_drop_request_never_reaches_the_server(mariadb_server: MariaDbServer,
                                                     my_relay: Relay) -> None:
    conn = my_connect(my_relay)
    try:
        my_run(conn, "SELECT 1")
        fault = my_relay.drop_request(b"update app.relay_my")
        with pytest.raises(pymysql.err.OperationalError) as info:
            my_run(conn, MY_UPDATE)
        assert info.value.args[0] == 2013, info.value
        assert fault.wait(10) and fault.done == 1
        assert my_count(mariadb_server) == 0, "the dropped request was executed"
    finally:
        if conn.open:
            conn.close()


@pytest.mark.parametrize("errno", [1927, 1053])
def test_mysql_inject_delivers_the_bytes(mariadb_server: MariaDbServer, my_relay: Relay,
                                         errno: int) -> None:
    conn = my_connect(my_relay)
    try:
        my_run(conn, "SELECT 1")
        fault = my_relay.inject(b"update app.relay_my",
                                mysql_err_packet(errno, "Connection was killed", "70100"))
        with pytest.raises(pymysql.err.OperationalError) as info:
            my_run(conn, MY_UPDATE)
        assert info.value.args == (errno, "Connection was killed")
        assert fault.wait(10) and fault.done == 1
        assert my_count(mariadb_server) == 0, "the request was forwarded anyway"
    finally:
        if conn.open:
            conn.close()


def test_mysql_delays_and_reset_all(my_relay: Relay) -> None:
    conn = my_connect(my_relay)
    try:
        my_run(conn, "SELECT 1")
        for arm in (my_relay.delay_request, my_relay.delay_answer):
            fault = arm(b"select 'slow'", 0.6)
            t = time.monotonic()
            assert my_run(conn, "SELECT 'slow'") == [("slow",)]
            elapsed = time.monotonic() - t
            assert 0.6 <= elapsed < 5, f"{fault.kind}: answered after {elapsed:.2f}s"
        assert my_relay.reset_all() == 1
        with pytest.raises(pymysql.err.OperationalError) as info:
            my_run(conn, "SELECT 1")
        assert info.value.args[0] in (2006, 2013), info.value
        assert wait_for(lambda: my_relay.live == 0, 5)
    finally:
        if conn.open:
            conn.close()
