"""PyMySQL, mysqlclient (MySQLdb) and aiomysql through poolproxy in transaction mode
(issue "Must show 1").

The main listener has ``pool_size: 1`` and a short ``query_wait_timeout``: all clients of one
driver (one capability variant, one pool) share a single server connection, so
``CONNECTION_ID()`` (answered by MariaDB, not by the proxy) proves server sharing, and a client
that wrongly keeps its server makes the next client fail with the proxy's wait-timeout error
instead of passing silently. information_schema.PROCESSLIST, read over a direct root
connection, confirms which real server connections exist.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiomysql
import MySQLdb
import MySQLdb.constants.CLIENT
import pymysql
import pymysql.constants.CLIENT
import pytest

from tests.harness import MariaDbServer, ProxyProcess, make_config, mysql_listener
from tests.harness.myclient import conn_id, one, rows

QUERY_WAIT = 5  # seconds: a client that keeps the server makes the next one fail this fast
HOLD = 0.7  # seconds a transaction holds the only server while another client waits
BIG_RESULT = 20 * 1024 * 1024  # more than one 16 MiB protocol packet
BIG_BLOB = 17 * 1024 * 1024
CLIENT_MAX_PACKET = 64 * 1024 * 1024
def blob_data(size: int, seed: int) -> bytes:
    """Reproducible binary data without '@': this is about packet sizes, string literals that
    look like user variables are test_mysql_state's business."""
    return random.Random(seed).randbytes(size).replace(b"@", b"A")


EMOJI_TEXT = "emoji 😀🎉🐍 CJK 漢字かなカナ한국어 mixed ü ✓"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def proxy(mariadb_server: MariaDbServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ProxyProcess]:
    config = make_config(
        mysql_listener(mariadb_server, pool_size=1, query_wait_timeout=f"{QUERY_WAIT}s"),
        mysql_listener(mariadb_server, name="pool3", pool_size=3,
                       query_wait_timeout=f"{QUERY_WAIT * 4}s"),
        mysql_listener(mariadb_server, name="onlyapp", databases={"app": {}}, pool_size=1,
                       query_wait_timeout=f"{QUERY_WAIT}s"),
        admin=False,
    )
    proc = ProxyProcess(config, tmp_path_factory.mktemp("mysql_drivers_proxy"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module", autouse=True)
def schema(mariadb_server: MariaDbServer) -> None:
    my = mariadb_server
    for sql in (
        "DROP TABLE IF EXISTS app.drv_items, app.drv_blobs, app.drv_texts, app.drv_rows",
        "CREATE TABLE app.drv_items (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
        " owner VARCHAR(64) NOT NULL, payload VARCHAR(255) NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE app.drv_blobs (id INT AUTO_INCREMENT PRIMARY KEY, data LONGBLOB)"
        " ENGINE=InnoDB",
        "CREATE TABLE app.drv_texts (id INT AUTO_INCREMENT PRIMARY KEY, body TEXT) ENGINE=InnoDB"
        " DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        "CREATE TABLE app.drv_rows (id INT PRIMARY KEY, tag VARCHAR(64)) ENGINE=InnoDB",
        "DROP TABLE IF EXISTS app2.drv_only_in_app2",
        "CREATE TABLE app2.drv_only_in_app2 (id INT PRIMARY KEY, label VARCHAR(32))",
        "INSERT INTO app2.drv_only_in_app2 VALUES (1, 'from app2')",
        "DROP PROCEDURE IF EXISTS app.drv_multi",
        "CREATE PROCEDURE app.drv_multi(IN n INT) BEGIN"
        " SELECT n AS first;"
        " SELECT n * 2 AS doubled, 'two' AS word;"
        " SELECT n * 3 AS v UNION ALL SELECT n * 4;"
        " END",
    ):
        my.execute(sql)
    # DEFINER root@127.0.0.1 is fine: the procedure runs with its definer's rights.


# --------------------------------------------------------------------------- drivers


@dataclass
class Driver:
    """A synchronous DB-API driver: how to connect, and its error classes and flags."""

    name: str
    connect_fn: Callable[..., Any]
    module: Any
    client: Any  # the CLIENT constants module

    def connect(self, proxy: ProxyProcess, listener: str = "mysql", user: str = "app",
                password: str = "app-secret", database: str | None = "app", **kwargs: Any) -> Any:
        kwargs.setdefault("charset", "utf8mb4")
        kwargs.setdefault("autocommit", True)
        return self.connect_fn(host="127.0.0.1", port=proxy.port(listener), user=user,
                               password=password, database=database, connect_timeout=10,
                               **kwargs)

    @property
    def OperationalError(self) -> type[Exception]:  # noqa: N802 (DB-API name)
        return self.module.OperationalError  # type: ignore[no-any-return]

    @property
    def ProgrammingError(self) -> type[Exception]:  # noqa: N802
        return self.module.ProgrammingError  # type: ignore[no-any-return]


def _pymysql_connect(**kwargs: Any) -> Any:
    kwargs.setdefault("max_allowed_packet", CLIENT_MAX_PACKET)
    return pymysql.connect(**kwargs)


def _mysqlclient_connect(**kwargs: Any) -> Any:
    return MySQLdb.connect(**kwargs)


DRIVERS = {
    "pymysql": Driver("pymysql", _pymysql_connect, pymysql, pymysql.constants.CLIENT),
    "mysqlclient": Driver("mysqlclient", _mysqlclient_connect, MySQLdb, MySQLdb.constants.CLIENT),
}


@pytest.fixture(params=sorted(DRIVERS))
def drv(request: pytest.FixtureRequest) -> Driver:
    return DRIVERS[request.param]


# --------------------------------------------------------------------------- helpers


def processlist(my: MariaDbServer, server_id: int) -> list[tuple]:
    """(USER, DB) of the real server connection ``server_id``, seen by root."""
    return [tuple(r) for r in my.execute(
        "SELECT USER, DB FROM information_schema.PROCESSLIST WHERE ID = %s", (server_id,))]


def all_sets(cur: Any) -> list[list[tuple]]:
    """Every result set of the current statement (the final status-only OK gives none)."""
    out: list[list[tuple]] = []
    while True:
        if cur.description is not None:
            out.append([tuple(r) for r in cur.fetchall()])
        if not cur.nextset():
            return out


class Background(threading.Thread):
    """Runs ``fn`` in a thread; ``result``/``error`` when done (``done`` is an Event)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.done.set()

    def outcome(self, timeout: float) -> Any:
        assert self.done.wait(timeout), "background client did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def assert_released(drv: Driver, proxy: ProxyProcess, conn: Any, sid: int, **kwargs: Any) -> None:
    """`conn` gave its server back: a twin client (same pool) gets the same, only server at
    once, and the two alternate on it."""
    other = drv.connect(proxy, **kwargs)
    try:
        for _ in range(3):
            assert conn_id(other) == sid
            assert conn_id(conn) == sid
    finally:
        other.close()


# --------------------------------------------------------------------------- sync drivers


def test_simple_queries_share_one_server(drv: Driver, proxy: ProxyProcess,
                                         mariadb_server: MariaDbServer) -> None:
    conns = [drv.connect(proxy) for _ in range(4)]
    try:
        sid = conn_id(conns[0])
        for round_ in range(3):
            for i, conn in enumerate(conns):
                assert one(conn, "SELECT %s + 1, 'x', NULL, CONNECTION_ID(), DATABASE(),"
                                 " CURRENT_USER()", (i * 10 + round_,)) == (
                    i * 10 + round_ + 1, "x", None, sid, "app", "app@%")
        # A real server connection of user app in db app, not an id made up by the proxy.
        assert processlist(mariadb_server, sid) == [("app", "app")]
    finally:
        for conn in conns:
            conn.close()


def test_pool_size_1_is_one_server_connection(drv: Driver, proxy_factory: Any,
                                              mariadb_server: MariaDbServer) -> None:
    assert mariadb_server.wait_connection_count("app2", 0) == 0
    proxy = proxy_factory.start(make_config(
        mysql_listener(mariadb_server, pool_size=1, query_wait_timeout=f"{QUERY_WAIT}s"),
        admin=False))
    conns = [drv.connect(proxy, user="app2", password="app2-secret", database="app2")
             for _ in range(6)]
    try:
        ids = {conn_id(c) for c in conns for _ in range(2)}
        assert len(ids) == 1
        (sid,) = ids
        # Six clients, exactly one server connection (user app2), and it is the one they saw.
        listing = mariadb_server.execute(
            "SELECT ID, USER, DB FROM information_schema.PROCESSLIST WHERE USER = 'app2'")
        assert [tuple(r) for r in listing] == [(sid, "app2", "app2")]
    finally:
        for conn in conns:
            conn.close()


def test_atomic_style_transaction_with_savepoints(drv: Driver, proxy: ProxyProcess) -> None:
    tag = f"atomic-{drv.name}"
    conn = drv.connect(proxy)
    waiting = drv.connect(proxy)
    try:
        sid = conn_id(conn)
        assert conn_id(waiting) == sid
        rows(conn, "DELETE FROM drv_items WHERE owner = %s", (tag,))
        # What Django's atomic() does: no BEGIN, autocommit off, savepoints, COMMIT, autocommit on.
        conn.autocommit(False)
        rows(conn, "INSERT INTO drv_items (owner, payload) VALUES (%s, 'outer')", (tag,))
        rows(conn, "SAVEPOINT s1")
        rows(conn, "INSERT INTO drv_items (owner, payload) VALUES (%s, 'rolled back')", (tag,))
        rows(conn, "ROLLBACK TO SAVEPOINT s1")
        rows(conn, "SAVEPOINT s2")
        rows(conn, "INSERT INTO drv_items (owner, payload) VALUES (%s, 'inner kept')", (tag,))
        rows(conn, "RELEASE SAVEPOINT s2")

        # The only server is held: the other client waits ...
        bg = Background(lambda: conn_id(waiting))
        bg.start()
        for _ in range(5):
            assert conn_id(conn) == sid  # the transaction stays on one server
        assert not bg.done.wait(HOLD), "a second client got a server during a transaction"
        # ... and sees nothing uncommitted of ours (it has not even run).
        assert rows(conn, "SELECT payload FROM drv_items WHERE owner = %s ORDER BY id",
                    (tag,)) == [("outer",), ("inner kept",)]
        conn.commit()
        # autocommit is still off, but no transaction is open until the next statement: the
        # server is free, and the waiting client proceeds on it.
        assert bg.outcome(QUERY_WAIT) == sid
        assert conn_id(conn) == sid  # this statement begins conn's next transaction ...
        conn.autocommit(True)  # ... which SET autocommit=1 commits
        assert rows(waiting, "SELECT payload FROM drv_items WHERE owner = %s ORDER BY id",
                    (tag,)) == [("outer",), ("inner kept",)]
        assert_released(drv, proxy, conn, sid)
    finally:
        conn.close()
        waiting.close()


def test_rollback(drv: Driver, proxy: ProxyProcess) -> None:
    tag = f"rollback-{drv.name}"
    conn = drv.connect(proxy)
    try:
        sid = conn_id(conn)
        rows(conn, "DELETE FROM drv_items WHERE owner = %s", (tag,))
        conn.autocommit(False)
        rows(conn, "INSERT INTO drv_items (owner, payload) VALUES (%s, 'gone')", (tag,))
        assert one(conn, "SELECT COUNT(*) FROM drv_items WHERE owner = %s", (tag,)) == (1,)
        conn.rollback()
        conn.autocommit(True)
        assert one(conn, "SELECT COUNT(*) FROM drv_items WHERE owner = %s", (tag,)) == (0,)
        # An explicit BEGIN ... ROLLBACK as well.
        rows(conn, "BEGIN")
        rows(conn, "INSERT INTO drv_items (owner, payload) VALUES (%s, 'gone too')", (tag,))
        rows(conn, "ROLLBACK")
        assert one(conn, "SELECT COUNT(*) FROM drv_items WHERE owner = %s", (tag,)) == (0,)
        assert_released(drv, proxy, conn, sid)
    finally:
        conn.close()


def test_error_inside_transaction_then_rollback_and_continue(drv: Driver, proxy: ProxyProcess
                                                             ) -> None:
    tag = f"txerr-{drv.name}"
    conn = drv.connect(proxy)
    try:
        sid = conn_id(conn)
        conn.autocommit(False)
        rows(conn, "INSERT INTO drv_items (owner, payload) VALUES (%s, 'before error')", (tag,))
        with pytest.raises(drv.ProgrammingError) as excinfo:
            rows(conn, "SELECT * FROM no_such_table_here")
        assert excinfo.value.args[0] == 1146
        with pytest.raises(drv.module.IntegrityError) as excinfo2:
            rows(conn, "INSERT INTO drv_items (id, owner, payload) SELECT id, owner, payload"
                       " FROM drv_items WHERE owner = %s", (tag,))
        assert excinfo2.value.args[0] == 1062
        # Still in the transaction, still on the same server.
        assert conn_id(conn) == sid
        assert one(conn, "SELECT COUNT(*) FROM drv_items WHERE owner = %s", (tag,)) == (1,)
        conn.rollback()
        conn.autocommit(True)
        assert one(conn, "SELECT COUNT(*) FROM drv_items WHERE owner = %s", (tag,)) == (0,)
        assert one(conn, "SELECT 'continues'") == ("continues",)
        assert_released(drv, proxy, conn, sid)
    finally:
        conn.close()


def test_multi_statements(drv: Driver, proxy: ProxyProcess) -> None:
    flag = drv.client.MULTI_STATEMENTS | drv.client.MULTI_RESULTS
    conn = drv.connect(proxy, client_flag=flag)
    try:
        sid = conn_id(conn)
        cur = conn.cursor()
        cur.execute("DELETE FROM drv_rows WHERE id IN (1, 2, 3);"
                    " SELECT 1 AS a; SELECT 2, 'two' UNION ALL SELECT 3, 'three';"
                    " INSERT INTO drv_rows VALUES (1, 'm1'), (2, 'm2');"
                    " SELECT CONNECTION_ID(); SELECT tag FROM drv_rows WHERE id IN (1, 2)"
                    " ORDER BY id")
        assert all_sets(cur) == [[(1,)], [(2, "two"), (3, "three")], [(sid,)],
                                 [("m1",), ("m2",)]]
        cur.close()
        # An error in the middle stops the batch; the connection stays usable.
        cur = conn.cursor()
        with pytest.raises(drv.ProgrammingError) as excinfo:
            cur.execute("SELECT 10; SELECT * FROM no_such_table_here; SELECT 30")
            all_sets(cur)
        assert excinfo.value.args[0] == 1146
        cur.close()
        assert one(conn, "SELECT 'after'") == ("after",)
        assert_released(drv, proxy, conn, sid, client_flag=flag)
    finally:
        conn.close()


def test_stored_procedure_several_result_sets(drv: Driver, proxy: ProxyProcess) -> None:
    conn = drv.connect(proxy)
    try:
        sid = conn_id(conn)
        expected = [[(5,)], [(10, "two")], [(15,), (20,)]]
        for _ in range(2):
            cur = conn.cursor()
            cur.execute("CALL drv_multi(5)")
            assert all_sets(cur) == expected
            cur.close()
        assert one(conn, "SELECT 'after call'") == ("after call",)
        assert_released(drv, proxy, conn, sid)
    finally:
        conn.close()

    # callproc() passes the arguments through user variables (SET @_drv_multi_0=...): the
    # client is pinned to its server until it leaves, then the server is reset and reused.
    conn = drv.connect(proxy)
    try:
        cur = conn.cursor()
        cur.callproc("drv_multi", (7,))
        assert all_sets(cur) == [[(7,)], [(14, "two")], [(21,), (28,)]]
        cur.close()
        assert one(conn, "SELECT @_drv_multi_0, CONNECTION_ID()") == (7, sid)
    finally:
        conn.close()
    other = drv.connect(proxy)
    try:
        assert one(other, "SELECT @_drv_multi_0, CONNECTION_ID()") == (None, sid)
    finally:
        other.close()


def test_results_larger_than_16_mib(drv: Driver, proxy: ProxyProcess) -> None:
    conn = drv.connect(proxy)
    try:
        sid = conn_id(conn)
        (value,) = one(conn, "SELECT REPEAT('a', %s)", (BIG_RESULT,))
        assert len(value) == BIG_RESULT and value == "a" * BIG_RESULT
        # Two big columns in one row, then a normal query right after.
        big, small = one(conn, "SELECT REPEAT('b', %s), 'end'", (BIG_RESULT + 5,))
        assert (len(big), big[:3], big[-3:], small) == (BIG_RESULT + 5, "bbb", "bbb", "end")

        data = blob_data(BIG_BLOB, 1)
        digest = hashlib.sha256(data).hexdigest()
        cur = conn.cursor()
        cur.execute("INSERT INTO drv_blobs (data) VALUES (%s)", (data,))
        blob_id = cur.lastrowid
        cur.close()
        assert blob_id
        assert one(conn, "SELECT LENGTH(data), SHA2(data, 256) FROM drv_blobs WHERE id = %s",
                   (blob_id,)) == (BIG_BLOB, digest)
        (back,) = one(conn, "SELECT data FROM drv_blobs WHERE id = %s", (blob_id,))
        assert hashlib.sha256(bytes(back)).hexdigest() == digest
        rows(conn, "DELETE FROM drv_blobs WHERE id = %s", (blob_id,))
        assert_released(drv, proxy, conn, sid)
    finally:
        conn.close()


def test_lastrowid_under_concurrency(drv: Driver, proxy: ProxyProcess,
                                     mariadb_server: MariaDbServer) -> None:
    threads, per_thread = 20, 50
    seen_ids: set[int] = set()
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(n: int) -> int:
        owner = f"lrid-{drv.name}-{n}"
        conn = drv.connect(proxy, listener="pool3")
        try:
            barrier.wait(10)
            mine: list[int] = []
            for i in range(per_thread):
                payload = f"{owner}-row-{i}"
                cur = conn.cursor()
                cur.execute("INSERT INTO drv_items (owner, payload) VALUES (%s, %s)",
                            (owner, payload))
                rid = cur.lastrowid
                cur.close()
                got = one(conn, "SELECT owner, payload, CONNECTION_ID() FROM drv_items"
                                " WHERE id = %s", (rid,))
                assert got[:2] == (owner, payload), (rid, got)
                with lock:
                    seen_ids.add(got[2])
                mine.append(rid)
            assert len(set(mine)) == per_thread
            return len(mine)
        finally:
            conn.close()

    workers = [Background(functools.partial(worker, n)) for n in range(threads)]
    for w in workers:
        w.start()
    assert [w.outcome(60) for w in workers] == [per_thread] * threads
    # 20 clients shared at most 3 server connections, all real ones of user app.
    assert 1 <= len(seen_ids) <= 3, seen_ids
    for sid in seen_ids:
        assert processlist(mariadb_server, sid) == [("app", "app")]
    counts = mariadb_server.execute(
        "SELECT COUNT(*), COUNT(DISTINCT owner) FROM app.drv_items WHERE owner LIKE %s",
        (f"lrid-{drv.name}-%",))
    assert tuple(counts[0]) == (threads * per_thread, threads)


def test_utf8mb4_round_trip(drv: Driver, proxy: ProxyProcess) -> None:
    conn = drv.connect(proxy, charset="utf8mb4")
    try:
        sid = conn_id(conn)
        assert one(conn, "SELECT @@character_set_client, @@character_set_results") == (
            "utf8mb4", "utf8mb4")
        assert one(conn, "SELECT %s, CHAR_LENGTH(%s), HEX(%s)", (EMOJI_TEXT,) * 3) == (
            EMOJI_TEXT, len(EMOJI_TEXT), EMOJI_TEXT.encode().hex().upper())
        cur = conn.cursor()
        cur.execute("INSERT INTO drv_texts (body) VALUES (%s)", (EMOJI_TEXT,))
        tid = cur.lastrowid
        cur.close()
        other = drv.connect(proxy, charset="utf8mb4")
        try:  # read back by another client (same server, later transaction)
            assert one(other, "SELECT body, CHAR_LENGTH(body), CONNECTION_ID() FROM drv_texts"
                              " WHERE id = %s", (tid,)) == (EMOJI_TEXT, len(EMOJI_TEXT), sid)
        finally:
            other.close()
        assert one(conn, "SELECT COUNT(*) FROM drv_texts WHERE body = %s", (EMOJI_TEXT,))[0] >= 1
    finally:
        conn.close()


def test_ping_idle_and_in_transaction(drv: Driver, proxy: ProxyProcess) -> None:
    tag = f"ping-{drv.name}"
    conn = drv.connect(proxy)
    waiting = drv.connect(proxy)
    try:
        sid = conn_id(conn)
        for _ in range(3):
            conn.ping()  # idle: the proxy may answer it itself
        assert conn_id(waiting) == sid  # pinging did not take the server
        conn.autocommit(False)
        rows(conn, "INSERT INTO drv_items (owner, payload) VALUES (%s, 'pinged')", (tag,))
        conn.ping()
        conn.ping()
        bg = Background(lambda: conn_id(waiting))
        bg.start()
        assert not bg.done.wait(HOLD), "ping released the server in the middle of a transaction"
        assert conn_id(conn) == sid
        conn.commit()
        conn.autocommit(True)
        assert bg.outcome(QUERY_WAIT) == sid
        assert one(waiting, "SELECT COUNT(*) FROM drv_items WHERE owner = %s", (tag,)) == (1,)
        conn.ping()
        assert_released(drv, proxy, conn, sid)
    finally:
        conn.close()
        waiting.close()


def test_select_db_is_kept_across_transactions(drv: Driver, proxy: ProxyProcess) -> None:
    conn = drv.connect(proxy)
    other = drv.connect(proxy)
    try:
        sid = conn_id(conn)
        conn.select_db("app2")  # COM_INIT_DB
        for _ in range(4):
            # `other` uses the same (only) server in between, in database app.
            assert one(other, "SELECT DATABASE(), CONNECTION_ID()") == ("app", sid)
            with pytest.raises(drv.ProgrammingError) as excinfo:
                rows(other, "SELECT label FROM drv_only_in_app2")
            assert excinfo.value.args[0] == 1146
            assert one(conn, "SELECT DATABASE(), CONNECTION_ID()") == ("app2", sid)
            assert one(conn, "SELECT label FROM drv_only_in_app2 WHERE id = 1") == ("from app2",)
        conn.select_db("app")
        assert one(conn, "SELECT DATABASE()") == ("app",)
        assert one(other, "SELECT DATABASE()") == ("app",)
    finally:
        conn.close()
        other.close()


def test_wrong_password_is_1045(drv: Driver, proxy: ProxyProcess) -> None:
    with pytest.raises(drv.OperationalError) as excinfo:
        drv.connect(proxy, password="not-the-password")
    assert excinfo.value.args[0] == 1045
    assert "Access denied" in str(excinfo.value.args[1])
    with pytest.raises(drv.OperationalError) as excinfo:
        drv.connect(proxy, user="nobody", password="x")
    assert excinfo.value.args[0] == 1045
    conn = drv.connect(proxy)  # the listener still works
    try:
        assert one(conn, "SELECT 1") == (1,)
    finally:
        conn.close()


def test_unconfigured_database_is_1049(drv: Driver, proxy: ProxyProcess) -> None:
    with pytest.raises(drv.OperationalError) as excinfo:
        drv.connect(proxy, listener="onlyapp", database="nope")
    assert excinfo.value.args[0] == 1049
    assert "nope" in str(excinfo.value.args[1])
    conn = drv.connect(proxy, listener="onlyapp", database="app")
    try:
        assert one(conn, "SELECT DATABASE()") == ("app",)
    finally:
        conn.close()


# --------------------------------------------------------------------------- aiomysql


async def aconnect(proxy: ProxyProcess, listener: str = "mysql", user: str = "app",
                   password: str = "app-secret", db: str | None = "app", **kwargs: Any
                   ) -> aiomysql.Connection:
    kwargs.setdefault("charset", "utf8mb4")
    kwargs.setdefault("autocommit", True)
    return await aiomysql.connect(host="127.0.0.1", port=proxy.port(listener), user=user,
                                  password=password, db=db, connect_timeout=10, **kwargs)


async def arows(conn: aiomysql.Connection, sql: str, params: Any = None) -> list[tuple]:
    async with conn.cursor() as cur:
        await cur.execute(sql, params)
        return [tuple(r) for r in await cur.fetchall()] if cur.description is not None else []


async def aone(conn: aiomysql.Connection, sql: str, params: Any = None) -> tuple:
    result = await arows(conn, sql, params)
    assert len(result) == 1, result
    return result[0]


async def aconn_id(conn: aiomysql.Connection) -> int:
    return int((await aone(conn, "SELECT CONNECTION_ID()"))[0])


async def aall_sets(cur: Any) -> list[list[tuple]]:
    out: list[list[tuple]] = []
    while True:
        if cur.description is not None:
            out.append([tuple(r) for r in await cur.fetchall()])
        if not await cur.nextset():
            return out


async def aassert_released(proxy: ProxyProcess, conn: aiomysql.Connection, sid: int,
                           **kwargs: Any) -> None:
    other = await aconnect(proxy, **kwargs)
    try:
        for _ in range(3):
            assert await aconn_id(other) == sid
            assert await aconn_id(conn) == sid
    finally:
        other.close()


def test_aiomysql_simple_queries_and_sharing(proxy: ProxyProcess,
                                             mariadb_server: MariaDbServer) -> None:
    async def main() -> int:
        conns = [await aconnect(proxy) for _ in range(4)]
        try:
            sid = await aconn_id(conns[0])
            for round_ in range(3):
                results = await asyncio.gather(*(
                    aone(c, "SELECT %s * 2, 'y', NULL, CONNECTION_ID(), DATABASE()",
                         (i + round_,)) for i, c in enumerate(conns)))
                assert results == [((i + round_) * 2, "y", None, sid, "app")
                                   for i in range(len(conns))]
            return sid
        finally:
            for c in conns:
                c.close()

    sid = asyncio.run(main())
    assert processlist(mariadb_server, sid) == [("app", "app")]


def test_aiomysql_atomic_style_transaction(proxy: ProxyProcess) -> None:
    tag = "atomic-aiomysql"

    async def main() -> None:
        conn = await aconnect(proxy)
        waiting = await aconnect(proxy)
        try:
            sid = await aconn_id(conn)
            assert await aconn_id(waiting) == sid
            await arows(conn, "DELETE FROM drv_items WHERE owner = %s", (tag,))
            await conn.autocommit(False)
            await arows(conn, "INSERT INTO drv_items (owner, payload) VALUES (%s, 'outer')",
                        (tag,))
            await arows(conn, "SAVEPOINT s1")
            await arows(conn, "INSERT INTO drv_items (owner, payload) VALUES (%s, 'undone')",
                        (tag,))
            await arows(conn, "ROLLBACK TO SAVEPOINT s1")
            await arows(conn, "SAVEPOINT s2")
            await arows(conn, "INSERT INTO drv_items (owner, payload) VALUES (%s, 'kept')",
                        (tag,))
            await arows(conn, "RELEASE SAVEPOINT s2")
            task = asyncio.ensure_future(aconn_id(waiting))
            for _ in range(5):
                assert await aconn_id(conn) == sid
            await asyncio.sleep(HOLD)
            assert not task.done(), "a second client got a server during a transaction"
            await conn.commit()
            # No transaction is open until conn's next statement: the waiting client proceeds.
            assert await asyncio.wait_for(task, QUERY_WAIT) == sid
            await conn.autocommit(True)
            assert await arows(waiting, "SELECT payload FROM drv_items WHERE owner = %s"
                                        " ORDER BY id", (tag,)) == [("outer",), ("kept",)]

            # rollback, and an error inside a transaction, then continue
            await conn.autocommit(False)
            await arows(conn, "INSERT INTO drv_items (owner, payload) VALUES (%s, 'gone')",
                        (tag,))
            with pytest.raises(pymysql.err.ProgrammingError) as excinfo:
                await arows(conn, "SELECT * FROM no_such_table_here")
            assert excinfo.value.args[0] == 1146
            assert await aconn_id(conn) == sid
            await conn.rollback()
            await conn.autocommit(True)
            assert await aone(conn, "SELECT COUNT(*) FROM drv_items WHERE owner = %s",
                              (tag,)) == (2,)
            await aassert_released(proxy, conn, sid)
        finally:
            conn.close()
            waiting.close()

    asyncio.run(main())


def test_aiomysql_multi_statements_and_procedure(proxy: ProxyProcess) -> None:
    from pymysql.constants import CLIENT

    async def main() -> None:
        flag = CLIENT.MULTI_STATEMENTS
        conn = await aconnect(proxy, client_flag=flag)
        try:
            sid = await aconn_id(conn)
            async with conn.cursor() as cur:
                await cur.execute("SELECT 1; SELECT 'b', CONNECTION_ID(); DO 0; SELECT 3")
                assert await aall_sets(cur) == [[(1,)], [("b", sid)], [(3,)]]
            async with conn.cursor() as cur:
                await cur.execute("CALL drv_multi(2)")
                assert await aall_sets(cur) == [[(2,)], [(4, "two")], [(6,), (8,)]]
            assert await aone(conn, "SELECT 'after'") == ("after",)
            await aassert_released(proxy, conn, sid, client_flag=flag)
        finally:
            conn.close()

    asyncio.run(main())


def test_aiomysql_large_results_and_blob(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await aconnect(proxy)
        try:
            sid = await aconn_id(conn)
            (value,) = await aone(conn, "SELECT REPEAT('a', %s)", (BIG_RESULT,))
            assert value == "a" * BIG_RESULT
            data = blob_data(BIG_BLOB, 2)
            digest = hashlib.sha256(data).hexdigest()
            async with conn.cursor() as cur:
                # aiomysql 0.3 cannot escape bytes with PyMySQL 1.1: send it hex-encoded.
                await cur.execute("INSERT INTO drv_blobs (data) VALUES (UNHEX(%s))", (data.hex(),))
                blob_id = cur.lastrowid
            assert await aone(conn, "SELECT LENGTH(data), SHA2(data, 256) FROM drv_blobs"
                                    " WHERE id = %s", (blob_id,)) == (BIG_BLOB, digest)
            (back,) = await aone(conn, "SELECT data FROM drv_blobs WHERE id = %s", (blob_id,))
            assert hashlib.sha256(back).hexdigest() == digest
            await arows(conn, "DELETE FROM drv_blobs WHERE id = %s", (blob_id,))
            await aassert_released(proxy, conn, sid)
        finally:
            conn.close()

    asyncio.run(main())


def test_aiomysql_lastrowid_under_concurrency(proxy: ProxyProcess,
                                              mariadb_server: MariaDbServer) -> None:
    tasks, per_task = 20, 50
    seen_ids: set[int] = set()

    async def worker(n: int) -> int:
        owner = f"lrid-aiomysql-{n}"
        conn = await aconnect(proxy, listener="pool3")
        try:
            for i in range(per_task):
                payload = f"{owner}-row-{i}"
                async with conn.cursor() as cur:
                    await cur.execute("INSERT INTO drv_items (owner, payload) VALUES (%s, %s)",
                                      (owner, payload))
                    rid = cur.lastrowid
                got = await aone(conn, "SELECT owner, payload, CONNECTION_ID() FROM drv_items"
                                       " WHERE id = %s", (rid,))
                assert got[:2] == (owner, payload), (rid, got)
                seen_ids.add(got[2])
            return per_task
        finally:
            conn.close()

    async def main() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(tasks))), 60)

    assert asyncio.run(main()) == [per_task] * tasks
    assert 1 <= len(seen_ids) <= 3, seen_ids
    for sid in seen_ids:
        assert processlist(mariadb_server, sid) == [("app", "app")]
    counts = mariadb_server.execute(
        "SELECT COUNT(*), COUNT(DISTINCT owner) FROM app.drv_items WHERE owner LIKE %s",
        ("lrid-aiomysql-%",))
    assert tuple(counts[0]) == (tasks * per_task, tasks)


def test_aiomysql_utf8mb4_ping_select_db(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await aconnect(proxy)
        other = await aconnect(proxy)
        try:
            sid = await aconn_id(conn)
            assert await aone(conn, "SELECT %s, CHAR_LENGTH(%s)", (EMOJI_TEXT, EMOJI_TEXT)) == (
                EMOJI_TEXT, len(EMOJI_TEXT))
            async with conn.cursor() as cur:
                await cur.execute("INSERT INTO drv_texts (body) VALUES (%s)", (EMOJI_TEXT,))
                tid = cur.lastrowid
            assert await aone(other, "SELECT body, CONNECTION_ID() FROM drv_texts WHERE id = %s",
                              (tid,)) == (EMOJI_TEXT, sid)

            await conn.ping(reconnect=False)  # idle
            assert await aconn_id(other) == sid
            await conn.autocommit(False)
            await arows(conn, "SELECT 1 FROM drv_items LIMIT 1")
            await conn.ping(reconnect=False)  # inside a transaction
            task = asyncio.ensure_future(aconn_id(other))
            await asyncio.sleep(HOLD)
            assert not task.done(), "ping released the server in the middle of a transaction"
            assert await aconn_id(conn) == sid
            await conn.commit()
            await conn.autocommit(True)
            assert await asyncio.wait_for(task, QUERY_WAIT) == sid

            await conn.select_db("app2")
            for _ in range(3):
                assert await aone(other, "SELECT DATABASE(), CONNECTION_ID()") == ("app", sid)
                assert await aone(conn, "SELECT label, DATABASE(), CONNECTION_ID()"
                                        " FROM drv_only_in_app2") == ("from app2", "app2", sid)
        finally:
            conn.close()
            other.close()

    asyncio.run(main())


def test_aiomysql_login_errors(proxy: ProxyProcess) -> None:
    async def main() -> None:
        with pytest.raises(pymysql.err.OperationalError) as excinfo:
            await aconnect(proxy, password="wrong")
        assert excinfo.value.args[0] == 1045
        with pytest.raises(pymysql.err.OperationalError) as excinfo:
            await aconnect(proxy, listener="onlyapp", db="nope")
        assert excinfo.value.args[0] == 1049

    asyncio.run(main())
