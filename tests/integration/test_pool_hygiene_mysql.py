"""Pool hygiene, MySQL/MariaDB: a server goes back to the pool only when provably clean.

With `pool_size: 1` one client (A) leaves with something unanswered: a multi-statement query
whose later results it never read, a slow query it did not wait for, a large result it read
only the start of, an open transaction. The next client (B), queued for the only server when A
leaves, runs a fixed script (single and multi-statement queries, a transaction) and must get
exactly what the same script gets directly from MariaDB: the same rows and column descriptions,
no result set more or less. A's rows never become visible. The proxy then settles: nothing
active or waiting, at most one server connection for the test's database, each of them an idle
server of the pool.

All clients negotiate CLIENT_MULTI_STATEMENTS (pools are split by that flag, so A and B share
the server). B is connected before A starts, so PyMySQL's connect-time queries are behind it and
the first command B sends to a server is its script's (an internal query of the proxy in between
would swallow A's leftovers and hide a leak). Every test uses a database of its own (test_hyg_*).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.harness import MariaDbServer, ProxyProcess, make_config, mysql_listener
from tests.harness.util import http_get, shutdown_socket, wait_for

USER, PASSWORD = "app", "app-secret"
FLAGS = CLIENT.MULTI_STATEMENTS
LEAK = "LEAKED from client A"


# --------------------------------------------------------------------------- helpers


def connect(port: int, db: str, **kwargs: Any) -> pymysql.connections.Connection:
    kwargs.setdefault("autocommit", True)
    return pymysql.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD,
                           database=db, client_flag=FLAGS, connect_timeout=10, read_timeout=30,
                           **kwargs)


def ensure_db(my: MariaDbServer, name: str) -> str:
    """A database of the test's own with an empty InnoDB table hyg_t(v)."""
    my.execute(f"CREATE DATABASE IF NOT EXISTS `{name}`")
    my.execute(f"DROP TABLE IF EXISTS `{name}`.hyg_t")
    my.execute(f"CREATE TABLE `{name}`.hyg_t (v VARCHAR(100)) ENGINE=InnoDB")
    return name


def db_name(prefix: str, test_name: str) -> str:
    """A database name of the test's own: readable, and unique per test and parameters."""
    digest = hashlib.sha1(test_name.encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9]+", "_", test_name.lower().replace("test_", "", 1)).strip("_")
    return f"{prefix}_{readable[:40]}_{digest}"


@pytest.fixture
def make_db(mariadb_server: MariaDbServer, request: pytest.FixtureRequest) -> Callable[[], str]:
    def make() -> str:
        # app has ALL on test\_%.* (the harness grants it for Django's test runner).
        return ensure_db(mariadb_server, db_name("test_hyg", request.node.name))

    return make


def send_query(conn: pymysql.connections.Connection, sql: str) -> None:
    """COM_QUERY on the driver's socket, behind its back (it never reads the reply)."""
    payload = b"\x03" + sql.encode()
    conn._sock.sendall(struct.pack("<I", len(payload))[:3] + b"\x00" + payload)  # type: ignore


def read_until(conn: pymysql.connections.Connection, needle: bytes, limit: int = 1 << 20
               ) -> bytes:
    """Raw bytes from the driver's socket until `needle` was seen (at most `limit`)."""
    sock: socket.socket = conn._sock  # type: ignore[attr-defined]
    got = b""
    while needle not in got and len(got) < limit:
        chunk = sock.recv(1 << 16)
        assert chunk, f"EOF after {len(got)} bytes: {got[:200]!r}"
        got += chunk
    assert needle in got, got[:200]
    return got


def leave(conn: pymysql.connections.Connection, how: str) -> None:
    """A leaves: `quit` = COM_QUIT then close (PyMySQL's close(), which does not read unread
    results); `shutdown` = the socket is shut down under the driver (FIN, no COM_QUIT)."""
    if how == "quit":
        conn.close()
        return
    shutdown_socket(conn._sock.fileno())  # type: ignore[attr-defined]
    try:
        conn._force_close()  # type: ignore[attr-defined]
    except Exception:
        pass


def pools_of(proxy: ProxyProcess, db: str) -> list[dict[str, Any]]:
    return [p for p in json.loads(http_get(proxy, "/pools"))
            if p["database"] == db and p["user"] == USER]


def waiters(proxy: ProxyProcess, db: str) -> int:
    return sum(int(p["waiters"]) for p in pools_of(proxy, db))


def connections(my: MariaDbServer, db: str) -> list[tuple[int, str, str]]:
    """Server connections of app in `db` (id, command, info)."""
    return [(int(r[0]), str(r[1]), str(r[2])) for r in my.execute(
        "SELECT ID, COMMAND, COALESCE(INFO, '') FROM information_schema.PROCESSLIST"
        " WHERE USER = %s AND DB = %s AND ID <> CONNECTION_ID()", (USER, db))]


def wait_query_running(my: MariaDbServer, db: str, needle: str) -> None:
    assert wait_for(lambda: any(needle in info for _, _, info in connections(my, db)), 10.0), \
        f"no query with {needle!r} on the server: {connections(my, db)}"


def assert_healthy(proxy: ProxyProcess, my: MariaDbServer, db: str, pool_size: int = 1) -> None:
    """Nothing active, logging in, testing or waiting, no background task; at most `pool_size`
    server connections for `db`, each an idle server of the pool; a new client works."""
    problems: list[str] = []

    def settled() -> bool:
        problems.clear()
        snaps = pools_of(proxy, db)
        if not snaps:
            problems.append("no pool")
            return False
        idle = 0
        for snap in snaps:
            servers = snap["servers"]
            for state in ("active", "login", "testing"):
                if servers[state]:
                    problems.append(f"{servers[state]} server(s) {state}")
            for key in ("waiters", "tasks"):
                if snap[key]:
                    problems.append(f"{key}={snap[key]}")
            idle += servers["idle"]
        found = connections(my, db)
        if len(found) > pool_size:
            problems.append(f"{len(found)} server connections for pool_size {pool_size}: {found}")
        if idle != len(found):
            problems.append(f"{idle} idle server(s), server connections {found}")
        return not problems

    # An abandoned SLEEP(2) may run to its end before MariaDB drops a discarded connection.
    assert wait_for(settled, 15.0, 0.1), f"proxy did not settle: {problems}"
    assert proxy.is_running()
    conn = connect(proxy.port("mysql"), db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 'C1'")
            assert cur.fetchall() == (("C1",),)
    finally:
        conn.close()
    assert "Traceback" not in proxy.log_text()


# --------------------------------------------------------------------------- client B's script


B_ROWS = [(("B1",),), (("B2",),), (("B3", "B3b"),), (("B4",),), (("B",),)]


def script_b(conn: pymysql.connections.Connection) -> list[Any]:
    """B's fixed script; what it got: (description, rows) of every result, the end of the
    multi-statement results marked, and the table as B's own transaction sees it."""
    out: list[Any] = []
    with conn.cursor() as cur:
        cur.execute("SELECT 'B1' AS b1")
        out.append((cur.description, cur.fetchall()))
        cur.execute("SELECT 'B2' AS b2; SELECT 'B3' AS b3, 'B3b' AS b3b")
        out.append((cur.description, cur.fetchall()))
        assert cur.nextset()
        out.append((cur.description, cur.fetchall()))
        out.append(("more results after the last", cur.nextset()))
        cur.execute("SELECT %s AS b4", ("B4",))
        out.append((cur.description, cur.fetchall()))
        cur.execute("START TRANSACTION")
        cur.execute("INSERT INTO hyg_t VALUES ('B')")
        cur.execute("SELECT v FROM hyg_t ORDER BY v")
        out.append((cur.description, cur.fetchall()))
        cur.execute("COMMIT")
    return out


def b_rows(result: list[Any]) -> list[Any]:
    return [rows for desc, rows in result if desc != "more results after the last"]


@pytest.fixture(scope="module")
def direct_b(mariadb_server: MariaDbServer) -> list[Any]:
    """B's script directly against MariaDB (the reference)."""
    db = ensure_db(mariadb_server, "test_hyg_direct")
    conn = connect(mariadb_server.port, db)
    try:
        result = script_b(conn)
    finally:
        conn.close()
    assert b_rows(result) == B_ROWS, result
    return result


class ClientB:
    """B: connected (PyMySQL's login and its connect-time queries done) before A starts, so
    that its first command to reach a server is its script's; the script then runs in a thread
    of its own (PyMySQL blocks until the only server is free, so the test can make A leave
    while B waits)."""

    def __init__(self, port: int, db: str) -> None:
        self.conn = connect(port, db)
        self.result: list[Any] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ClientB:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = script_b(self.conn)
        except BaseException as exc:
            self.error = exc
        finally:
            self.conn.close()

    def check(self, direct: list[Any], what: str) -> None:
        self.thread.join(30)
        assert not self.thread.is_alive(), f"{what}: client B is stuck"
        assert self.error is None, f"{what}: client B failed: {self.error!r}"
        assert self.result is not None
        assert b_rows(self.result) == B_ROWS, \
            f"{what}: client B got {b_rows(self.result)}, expected only its own {B_ROWS}"
        assert self.result == direct, (f"{what}: client B's results differ from MariaDB's direct "
                                       f"ones:\n  via poolproxy: {self.result}\n  direct: {direct}")


def b_while_a_holds(proxy: ProxyProcess, db: str, b: ClientB) -> ClientB:
    """Start B's script and wait until it is queued for the server A holds."""
    b.start()
    assert wait_for(lambda: waiters(proxy, db) == 1 or not b.thread.is_alive(), 10.0), \
        f"client B is not waiting for the server: {pools_of(proxy, db)}"
    assert b.thread.is_alive(), f"client B did not wait for A's server: {b.error!r} {b.result}"
    return b


@pytest.fixture
def proxy(mariadb_server: MariaDbServer, proxy_factory: Any) -> ProxyProcess:
    proc: ProxyProcess = proxy_factory(make_config(mysql_listener(
        mariadb_server, pool_size=1, query_wait_timeout="30s")))
    return proc


def table(my: MariaDbServer, db: str) -> list[str]:
    return [str(r[0]) for r in my.execute(f"SELECT v FROM `{db}`.hyg_t ORDER BY v")]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("how", ["quit", "shutdown"])
@pytest.mark.parametrize("speed", ["slow", "fast"])
def test_multi_statement_results_unread(
    mariadb_server: MariaDbServer, proxy: ProxyProcess, make_db: Callable[[], str],
    direct_b: list[Any], speed: str, how: str,
) -> None:
    """A sends three statements in one COM_QUERY, reads only the first result (as PyMySQL's
    execute() does) and leaves. `slow`: the second statement sleeps, so its result is still to
    come when B gets the server; `fast`: every result has arrived, A just never read them."""
    db = make_db()
    b = ClientB(proxy.port("mysql"), db)
    a = connect(proxy.port("mysql"), db)
    sleep = " FROM (SELECT SLEEP(1)) s" if speed == "slow" else ""
    cur = a.cursor()  # not closed: closing a PyMySQL cursor reads the remaining results
    cur.execute(f"SELECT '{LEAK} 1'; SELECT '{LEAK} 2'{sleep}; SELECT '{LEAK} 3'")
    assert cur.fetchall() == ((f"{LEAK} 1",),)
    if speed == "fast":
        # Every result has reached A's socket: the server may well be free again already.
        assert wait_for(lambda: not connections(mariadb_server, db)
                        or all(cmd == "Sleep" for _, cmd, _ in connections(mariadb_server, db)),
                        10.0)
        b.start()
    else:
        b_while_a_holds(proxy, db, b)
    leave(a, how)
    b.check(direct_b, f"multi-statement, {speed}, {how}")
    assert_healthy(proxy, mariadb_server, db)


@pytest.mark.parametrize("how", ["quit", "shutdown"])
def test_abandoned_slow_query(
    mariadb_server: MariaDbServer, proxy: ProxyProcess, make_db: Callable[[], str],
    direct_b: list[Any], how: str,
) -> None:
    """A sends SELECT SLEEP(2) and leaves at once, without reading the answer."""
    db = make_db()
    b = ClientB(proxy.port("mysql"), db)
    a = connect(proxy.port("mysql"), db)
    send_query(a, f"SELECT SLEEP(2), '{LEAK}'")
    wait_query_running(mariadb_server, db, LEAK)
    b_while_a_holds(proxy, db, b)
    leave(a, how)
    b.check(direct_b, f"slow query, {how}")
    assert_healthy(proxy, mariadb_server, db)


@pytest.mark.parametrize("how", ["quit", "shutdown"])
def test_large_result_unread(
    mariadb_server: MariaDbServer, proxy: ProxyProcess, make_db: Callable[[], str],
    direct_b: list[Any], how: str,
) -> None:
    """A reads 256 KiB of a 64 MiB result (more than the socket buffers hold, so the server is
    still sending) and leaves."""
    db = make_db()
    b = ClientB(proxy.port("mysql"), db)
    a = connect(proxy.port("mysql"), db)
    send_query(a, f"SELECT CONCAT('{LEAK} ', seq, REPEAT('x', 1048576)) FROM seq_1_to_64")
    got = read_until(a, b"x" * 1024)
    while len(got) < 256 * 1024:
        got += a._sock.recv(1 << 16)  # type: ignore[attr-defined]
    assert LEAK.encode() in got
    b_while_a_holds(proxy, db, b)
    leave(a, how)
    b.check(direct_b, f"large result, {how}")
    assert_healthy(proxy, mariadb_server, db)


@pytest.mark.parametrize("how", ["quit", "shutdown"])
@pytest.mark.parametrize("moment", ["idle_in_transaction", "insert_unread", "autocommit_off"])
def test_client_leaves_inside_transaction(
    mariadb_server: MariaDbServer, proxy: ProxyProcess, make_db: Callable[[], str],
    direct_b: list[Any], moment: str, how: str,
) -> None:
    """START TRANSACTION (or autocommit off); INSERT; A leaves (after the INSERT's OK, or
    before it arrived): the row is rolled back, never visible, and B works."""
    db = make_db()
    b = ClientB(proxy.port("mysql"), db)
    a = connect(proxy.port("mysql"), db, autocommit=(moment != "autocommit_off"))
    with a.cursor() as cur:
        if moment != "autocommit_off":
            cur.execute("START TRANSACTION")
        if moment == "insert_unread":
            send_query(a, f"INSERT INTO hyg_t SELECT '{LEAK}' FROM seq_1_to_1 WHERE SLEEP(0.5) = 0")
            wait_query_running(mariadb_server, db, LEAK)
        else:
            cur.execute(f"INSERT INTO hyg_t VALUES ('{LEAK}')")
    b_while_a_holds(proxy, db, b)
    leave(a, how)
    b.check(direct_b, f"inside a transaction, {moment}, {how}")
    assert_healthy(proxy, mariadb_server, db)
    if moment == "insert_unread":
        time.sleep(0.6)  # the INSERT that was still running when A left has ended by now
    assert table(mariadb_server, db) == ["B"], "the departed client's row became visible"
