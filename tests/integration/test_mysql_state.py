"""Session state through poolproxy's MySQL listener in transaction mode (issue "Must show 3, 4, 5").

- Replayed state (Must show 3): isolation level, SET NAMES, time_zone, USE, sql_mode,
  foreign_key_checks set by client A follow A from server to server; with ``pool_size: 1``
  A and B share one server connection (same ``CONNECTION_ID()``) and B always sees defaults.
- Pinned state (Must show 4): user variables, temporary tables, GET_LOCK, LOCK TABLES keep A on
  its server (``pool_size: 2`` so that B runs on the other one meanwhile), and once A leaves,
  the next client of that very server (``pool_size: 1``) sees none of it.
- CLIENT_FOUND_ROWS (Must show 5): affected rows follow each client's own flag.

MariaDB itself (CONNECTION_ID(), IS_USED_LOCK(), information_schema.PROCESSLIST over a direct
root connection) is the witness, never the proxy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import MySQLdb
import MySQLdb.constants.CLIENT
import pymysql
import pymysql.constants.CLIENT
import pytest

from tests.harness import MariaDbServer, ProxyProcess, make_config, mysql_listener
from tests.harness.myclient import conn_id, one, rows

QUERY_WAIT = 5  # seconds: a client kept off the server fails this fast instead of hanging
ROUNDS = 10  # alternations between A and B


@pytest.fixture(scope="module")
def proxy(mariadb_server: MariaDbServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ProxyProcess]:
    config = make_config(
        mysql_listener(mariadb_server, name="one", pool_size=1,
                       query_wait_timeout=f"{QUERY_WAIT}s"),
        mysql_listener(mariadb_server, name="two", pool_size=2,
                       query_wait_timeout=f"{QUERY_WAIT}s"),
        admin=False,
    )
    proc = ProxyProcess(config, tmp_path_factory.mktemp("mysql_state_proxy"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module", autouse=True)
def schema(mariadb_server: MariaDbServer) -> None:
    for sql in (
        "DROP TABLE IF EXISTS app2.st_child, app2.st_parent",
        "CREATE TABLE app2.st_parent (id INT PRIMARY KEY) ENGINE=InnoDB",
        "CREATE TABLE app2.st_child (id INT PRIMARY KEY, parent_id INT NOT NULL,"
        " FOREIGN KEY (parent_id) REFERENCES app2.st_parent (id)) ENGINE=InnoDB",
        "DROP TABLE IF EXISTS app.st_locked, app.st_other, app.st_found, app.st_notes",
        "CREATE TABLE app.st_locked (id INT AUTO_INCREMENT PRIMARY KEY, who VARCHAR(16))"
        " ENGINE=InnoDB",
        "CREATE TABLE app.st_other (id INT PRIMARY KEY) ENGINE=InnoDB",
        "INSERT INTO app.st_other VALUES (1)",
        "CREATE TABLE app.st_found (id INT PRIMARY KEY, a INT NOT NULL) ENGINE=InnoDB",
        "INSERT INTO app.st_found VALUES (1, 10), (2, 20)",
        "CREATE TABLE app.st_notes (id INT AUTO_INCREMENT PRIMARY KEY, body VARCHAR(200))"
        " ENGINE=InnoDB",
    ):
        mariadb_server.execute(sql)


# --------------------------------------------------------------------------- helpers


def connect(proxy: ProxyProcess, listener: str = "one", database: str = "app",
            **kwargs: Any) -> pymysql.connections.Connection:
    kwargs.setdefault("charset", "utf8mb4")
    return pymysql.connect(host="127.0.0.1", port=proxy.port(listener), user="app",
                           password="app-secret", database=database, autocommit=True,
                           connect_timeout=10, **kwargs)


def processlist_user(my: MariaDbServer, server_id: int) -> list[tuple]:
    return [tuple(r) for r in my.execute(
        "SELECT USER FROM information_schema.PROCESSLIST WHERE ID = %s", (server_id,))]


def errno_of(exc_info: pytest.ExceptionInfo[BaseException]) -> int:
    return int(exc_info.value.args[0])  # type: ignore[call-overload]


class Holder:
    """B inside a transaction (autocommit off, as Django does) on the listener ``two``: it holds
    one of the two servers, so that A can only be on the other one."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> int:
        self.conn.autocommit(False)
        return conn_id(self.conn)

    def __exit__(self, *exc: object) -> None:
        self.conn.commit()
        self.conn.autocommit(True)


PROBE = ("SELECT CONNECTION_ID(), @@tx_isolation, @@character_set_client, @@time_zone,"
         " TIMESTAMPDIFF(MINUTE, UTC_TIMESTAMP(), NOW()), DATABASE(), @@sql_mode,"
         " @@foreign_key_checks, CHAR_LENGTH('é')")


# --------------------------------------------------------------------------- Must show 3


def test_session_settings_follow_their_client(proxy: ProxyProcess,
                                              mariadb_server: MariaDbServer) -> None:
    direct = mariadb_server.connect("app", "app-secret", "app", charset="utf8mb4")
    try:
        defaults = one(direct, PROBE)[1:]
    finally:
        direct.close()
    iso, charset, tz, offset, db, sql_mode, fkc, elen = defaults
    assert (iso, charset, db, fkc, elen) == ("REPEATABLE-READ", "utf8mb4", "app", 1, 1)
    assert "ANSI_QUOTES" not in sql_mode

    a = connect(proxy)
    b = connect(proxy)
    try:
        sid = conn_id(a)
        assert conn_id(b) == sid
        changes = [
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SET NAMES latin1",
            "SET time_zone = '+05:00'",
            "USE app2",
            "SET sql_mode = 'ANSI_QUOTES,STRICT_ALL_TABLES'",
            "SET foreign_key_checks = 0",
        ]
        for sql in changes:  # B uses the server between A's statements
            rows(a, sql)
            assert one(b, PROBE) == (sid, *defaults)
        # 'é' is sent as UTF-8 (2 bytes); under latin1 the server counts 2 characters.
        expected_a = (sid, "READ-COMMITTED", "latin1", "+05:00", 300, "app2",
                      "ANSI_QUOTES,STRICT_ALL_TABLES", 0, 2)
        for _ in range(ROUNDS):
            assert one(a, PROBE) == expected_a
            assert one(b, PROBE) == (sid, *defaults)

        # The settings act, not just read back: FK checks off and ANSI_QUOTES for A only.
        rows(a, "DELETE FROM st_child")
        rows(a, "INSERT INTO st_child VALUES (1, 999)")  # no parent 999: fine without FK checks
        with pytest.raises(pymysql.err.IntegrityError) as excinfo:
            rows(b, "INSERT INTO app2.st_child VALUES (2, 999)")
        assert errno_of(excinfo) == 1452
        assert one(b, 'SELECT "double quoted"') == ("double quoted",)
        with pytest.raises(pymysql.err.OperationalError) as excinfo:
            rows(a, 'SELECT "double quoted"')  # an identifier under ANSI_QUOTES
        assert errno_of(excinfo) == 1054
        assert one(a, 'SELECT COUNT("id") FROM st_child') == (1,)

        # A changes some of them again; B is still untouched.
        rows(a, "SET NAMES utf8mb4")
        rows(a, "SET time_zone = '-03:30'")
        rows(a, "SET foreign_key_checks = 1")
        expected_a = (sid, "READ-COMMITTED", "utf8mb4", "-03:30", -210, "app2",
                      "ANSI_QUOTES,STRICT_ALL_TABLES", 1, 1)
        for _ in range(ROUNDS):
            assert one(b, PROBE) == (sid, *defaults)
            assert one(a, PROBE) == expected_a
        with pytest.raises(pymysql.err.IntegrityError) as excinfo:
            rows(a, "INSERT INTO st_child VALUES (3, 999)")
        assert errno_of(excinfo) == 1452
        assert processlist_user(mariadb_server, sid) == [("app",)]
    finally:
        a.close()
        b.close()

    # A has gone: a new client on that server starts from the defaults.
    c = connect(proxy)
    try:
        assert one(c, PROBE) == (sid, *defaults)
    finally:
        c.close()


def test_set_inside_a_transaction_is_tracked(proxy: ProxyProcess) -> None:
    """SETs made inside a transaction are tracked as well as those between transactions."""
    a = connect(proxy)
    b = connect(proxy)
    try:
        sid = conn_id(a)
        a.autocommit(False)
        rows(a, "SET time_zone = '+02:00'")
        rows(a, "SELECT COUNT(*) FROM st_other")
        a.commit()
        a.autocommit(True)
        for _ in range(3):
            assert one(b, "SELECT CONNECTION_ID(), @@time_zone") == (sid, "SYSTEM")
            assert one(a, "SELECT CONNECTION_ID(), @@time_zone") == (sid, "+02:00")
    finally:
        a.close()
        b.close()


def test_django_style_connection_setup(proxy: ProxyProcess) -> None:
    """What Django's MySQL backend does with mysqlclient: CLIENT_FOUND_ROWS, an init_command,
    then one multi-statement COM_QUERY of SETs (init_connection_state)."""
    flag = MySQLdb.constants.CLIENT.FOUND_ROWS

    def open_(**kwargs: Any) -> Any:
        return MySQLdb.connect(host="127.0.0.1", port=proxy.port("one"), user="app",
                               password="app-secret", database="app", charset="utf8mb4",
                               client_flag=flag, connect_timeout=10, **kwargs)

    probe = "SELECT CONNECTION_ID(), @@sql_mode, @@sql_auto_is_null, @@tx_isolation"
    b = open_(autocommit=True)
    try:
        sid, default_mode, default_auto_null, default_iso = one(b, probe)
        assert (default_auto_null, default_iso) == (0, "REPEATABLE-READ")
        assert default_mode != "STRICT_TRANS_TABLES"
        a = open_(init_command="SET sql_mode='STRICT_TRANS_TABLES'")
        try:
            a.autocommit(True)
            rows(a, "SET SQL_AUTO_IS_NULL = 1; SET SESSION TRANSACTION ISOLATION LEVEL"
                    " READ COMMITTED")
            for _ in range(ROUNDS):
                assert one(a, probe) == (sid, "STRICT_TRANS_TABLES", 1, "READ-COMMITTED")
                assert one(b, probe) == (sid, default_mode, 0, "REPEATABLE-READ")
        finally:
            a.close()
        assert one(b, probe) == (sid, default_mode, 0, "REPEATABLE-READ")
    finally:
        b.close()


# --------------------------------------------------------------------------- Must show 4


def test_user_variables_pin(proxy: ProxyProcess, mariadb_server: MariaDbServer) -> None:
    a = connect(proxy, "two")
    b = connect(proxy, "two")
    try:
        rows(a, "SET @x := 5")
        a_id = conn_id(a)
        for i in range(ROUNDS):
            with Holder(b) as b_id:
                assert b_id != a_id  # A keeps its server, B has the other one
                assert one(b, "SELECT @x") == (None,)
                assert one(a, "SELECT @x, CONNECTION_ID()") == (5 + i, a_id)
                rows(a, "SET @x := @x + 1")
        assert one(a, "SELECT @x") == (5 + ROUNDS,)
        assert processlist_user(mariadb_server, a_id) == [("app",)]
    finally:
        a.close()
        b.close()

    a = connect(proxy, "one")
    try:
        rows(a, "SET @x := 'left behind'")
        rows(a, "SELECT @y := 7")
        assert one(a, "SELECT @x, @y") == ("left behind", 7)
        a_id = conn_id(a)
    finally:
        a.close()
    c = connect(proxy, "one")
    try:
        assert one(c, "SELECT CONNECTION_ID(), @x, @y") == (a_id, None, None)
    finally:
        c.close()


def test_temporary_tables_pin(proxy: ProxyProcess) -> None:
    a = connect(proxy, "two")
    b = connect(proxy, "two")
    try:
        rows(a, "CREATE TEMPORARY TABLE st_tmp (v INT)")
        rows(a, "INSERT INTO st_tmp VALUES (0)")
        a_id = conn_id(a)
        for i in range(1, ROUNDS + 1):
            with Holder(b) as b_id:
                assert b_id != a_id
                with pytest.raises(pymysql.err.ProgrammingError) as excinfo:
                    rows(b, "SELECT * FROM st_tmp")
                assert errno_of(excinfo) == 1146
                rows(a, "INSERT INTO st_tmp VALUES (%s)", (i,))
                assert one(a, "SELECT COUNT(*), SUM(v), CONNECTION_ID() FROM st_tmp") == (
                    i + 1, i * (i + 1) // 2, a_id)
        rows(a, "DROP TEMPORARY TABLE st_tmp")
    finally:
        a.close()
        b.close()

    a = connect(proxy, "one")
    try:
        rows(a, "CREATE TEMPORARY TABLE st_tmp (v INT)")
        rows(a, "INSERT INTO st_tmp VALUES (42)")
        assert one(a, "SELECT v FROM st_tmp") == (42,)
        a_id = conn_id(a)
    finally:
        a.close()
    c = connect(proxy, "one")
    try:
        assert conn_id(c) == a_id
        with pytest.raises(pymysql.err.ProgrammingError) as excinfo:
            rows(c, "SELECT * FROM st_tmp")
        assert errno_of(excinfo) == 1146
    finally:
        c.close()


def test_get_lock_pins(proxy: ProxyProcess, mariadb_server: MariaDbServer) -> None:
    a = connect(proxy, "two")
    b = connect(proxy, "two")
    try:
        assert one(a, "SELECT GET_LOCK('k', 1)") == (1,)
        a_id = conn_id(a)
        for _ in range(ROUNDS):
            with Holder(b) as b_id:
                assert b_id != a_id
                assert one(b, "SELECT IS_FREE_LOCK('k'), IS_USED_LOCK('k')") == (0, a_id)
                assert one(b, "SELECT GET_LOCK('k', 0)") == (0,)  # held by A's server
                assert one(a, "SELECT IS_USED_LOCK('k'), CONNECTION_ID()") == (a_id, a_id)
        assert mariadb_server.execute("SELECT IS_USED_LOCK('k')") == [(a_id,)]
        assert one(a, "SELECT RELEASE_LOCK('k')") == (1,)
        assert one(b, "SELECT IS_FREE_LOCK('k')") == (1,)
    finally:
        a.close()
        b.close()

    a = connect(proxy, "one")
    try:
        assert one(a, "SELECT GET_LOCK('k', 1), CONNECTION_ID()")[0] == 1
        a_id = conn_id(a)
        assert mariadb_server.execute("SELECT IS_USED_LOCK('k')") == [(a_id,)]
    finally:
        a.close()  # without RELEASE_LOCK
    c = connect(proxy, "one")
    try:
        assert one(c, "SELECT CONNECTION_ID(), IS_FREE_LOCK('k')") == (a_id, 1)
        assert mariadb_server.execute("SELECT IS_FREE_LOCK('k')") == [(1,)]
    finally:
        c.close()


def test_lock_tables_pins(proxy: ProxyProcess, mariadb_server: MariaDbServer) -> None:
    a = connect(proxy, "two")
    b = connect(proxy, "two")
    try:
        rows(a, "LOCK TABLES st_locked WRITE")
        a_id = conn_id(a)
        for _ in range(ROUNDS):
            with Holder(b) as b_id:
                assert b_id != a_id
                assert one(b, "SELECT COUNT(*) FROM st_other") == (1,)
                rows(a, "INSERT INTO st_locked (who) VALUES ('a')")
                assert one(a, "SELECT COUNT(*), CONNECTION_ID() FROM st_locked"
                              " WHERE who = 'a'")[1] == a_id
        # The lock really is held: another session cannot write meanwhile.
        assert_cannot_write(mariadb_server)
        rows(a, "UNLOCK TABLES")
        assert one(a, "SELECT COUNT(*) FROM st_other") == (1,)  # not limited to locked tables
        rows(b, "INSERT INTO st_locked (who) VALUES ('b')")
    finally:
        a.close()
        b.close()

    a = connect(proxy, "one")
    try:
        rows(a, "LOCK TABLES st_locked WRITE")
        rows(a, "INSERT INTO st_locked (who) VALUES ('left')")
        a_id = conn_id(a)
        assert_cannot_write(mariadb_server)
    finally:
        a.close()  # without UNLOCK TABLES
    c = connect(proxy, "one")
    try:
        assert conn_id(c) == a_id
        # Under a leftover LOCK TABLES, any other table would be refused (errno 1100).
        assert one(c, "SELECT COUNT(*) FROM st_other") == (1,)
        rows(c, "INSERT INTO st_locked (who) VALUES ('c')")
    finally:
        c.close()
    direct_insert(mariadb_server, "root-after")


def direct_insert(my: MariaDbServer, who: str, lock_wait: int = 3) -> None:
    conn = my.connect(database="app")
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET SESSION lock_wait_timeout = {lock_wait}")
            cur.execute("INSERT INTO st_locked (who) VALUES (%s)", (who,))
    finally:
        conn.close()


def assert_cannot_write(my: MariaDbServer) -> None:
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        direct_insert(my, "blocked", lock_wait=1)
    assert errno_of(excinfo) == 1205  # lock wait timeout


def test_string_literals_do_not_pin(proxy: ProxyProcess) -> None:
    """'@name' inside a string literal is not a user variable: the client must not be pinned
    (with pool_size 1 a wrongly pinned client starves everybody else)."""
    a = connect(proxy, "one")
    b = connect(proxy, "one")
    try:
        sid = conn_id(a)
        for sql, params in (
            ("SELECT '@twitter_handle'", None),
            ("INSERT INTO st_notes (body) VALUES (%s)", ("write to @home, not @@work",)),
            ("SELECT COUNT(*) FROM st_notes WHERE body LIKE '%@home%'", None),
        ):
            rows(a, sql, params)
            assert conn_id(b) == sid  # B gets the only server at once
    finally:
        a.close()
        b.close()


def test_hash_in_string_literal_does_not_hide_user_variable(proxy: ProxyProcess) -> None:
    """A '#' or '-- ' inside a string literal does not start a comment: a user variable after
    it must still pin the client."""
    for prefix in ("'a#b'", "'-- x'"):
        a = connect(proxy, "two")
        b = connect(proxy, "two")
        try:
            assert one(a, f"SELECT {prefix}, @x := 5") == (prefix.strip("'"), 5)
            a_id = conn_id(a)
            for _ in range(3):
                with Holder(b) as b_id:
                    assert one(a, "SELECT @x, CONNECTION_ID()") == (5, a_id)
                    assert b_id != a_id
        finally:
            a.close()
            b.close()


# --------------------------------------------------------------------------- Must show 5


@pytest.mark.parametrize("driver", ["pymysql", "mysqlclient"])
def test_client_found_rows(proxy: ProxyProcess, driver: str) -> None:
    def open_(found_rows: bool) -> Any:
        if driver == "pymysql":
            flag = pymysql.constants.CLIENT.FOUND_ROWS if found_rows else 0
            return connect(proxy, "two", client_flag=flag)
        flag = MySQLdb.constants.CLIENT.FOUND_ROWS if found_rows else 0
        return MySQLdb.connect(host="127.0.0.1", port=proxy.port("two"), user="app",
                               password="app-secret", database="app", charset="utf8mb4",
                               autocommit=True, client_flag=flag, connect_timeout=10)

    def affected(conn: Any, sql: str) -> int:
        cur = conn.cursor()
        try:
            return int(cur.execute(sql))
        finally:
            cur.close()

    plain = open_(False)  # the one without the flag first: its pool exists first
    found = open_(True)
    try:
        for i in range(ROUNDS):
            assert affected(found, "UPDATE st_found SET a = a WHERE id = 1") == 1
            assert affected(plain, "UPDATE st_found SET a = a WHERE id = 1") == 0
            assert affected(plain, "UPDATE st_found SET a = a") == 0
            assert affected(found, "UPDATE st_found SET a = a") == 2
            # A real change counts for both.
            assert affected(found, f"UPDATE st_found SET a = {100 + i} WHERE id = 2") == 1
            assert affected(plain, f"UPDATE st_found SET a = {200 + i} WHERE id = 2") == 1
        # Both at the same time, from two threads.
        results: dict[str, list[int]] = {"found": [], "plain": []}
        barrier = threading.Barrier(2)

        def run(name: str, conn: Any) -> None:
            barrier.wait(5)
            for _ in range(20):
                results[name].append(affected(conn, "UPDATE st_found SET a = a WHERE id = 1"))

        threads = [threading.Thread(target=run, args=("found", found)),
                   threading.Thread(target=run, args=("plain", plain))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == {"found": [1] * 20, "plain": [0] * 20}
    finally:
        plain.close()
        found.close()
