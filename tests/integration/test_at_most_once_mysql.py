"""At-most-once through poolproxy (MySQL/MariaDB): a command is replayed on another server only
when it provably cannot have taken effect; otherwise the client gets ERR 2013 and goes on.

poolproxy's server is a fault-injecting relay (tests/harness/relay.py) in front of the real
MariaDB, with ``server_check_delay: 0`` so no health check hides a dead pooled connection.
Each client first runs ``SELECT 1`` (its pooled server is logged in and idle), then the command
the fault hits. The witness is the row counter, read over a direct root connection.

- a: autocommit write whose answer is lost (the server executed it): 2013 as an ERR packet
  (the client connection stays open), applied exactly once, the same connection goes on; in a
  loop, PyMySQL and aiomysql.
- b: autocommit write lost on its way (never executed): 2013 too (poolproxy cannot know).
- c: the idle pooled connection reset before the command: invisible, applied exactly once.
- d: transactions whose opening command loses its answer: ``BEGIN`` (PyMySQL, aiomysql
  ``begin()``), ``SET AUTOCOMMIT = 0`` (Django's pattern by hand; PyMySQL's, aiomysql's and
  SQLAlchemy's default autocommit-off session, sent at connect), a ``BEGIN; UPDATE``
  multi-statement that leaves its block open: replayed, applied once.
- e: ERR 1927 / 1053 / 4031 as the first reply: replayed, applied once, no error.
- f: commands that commit, with their answer lost: a ``BEGIN; UPDATE; COMMIT`` multi-statement,
  a COMMIT (after BEGIN, and after SET autocommit=0), SET autocommit=1 and BEGIN inside an
  open transaction (both commit it implicitly), a SELECT calling a writing function: 2013,
  never replayed.
- session-only SET / SHOW whose answer is lost: replayed transparently.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import aiomysql
import pymysql
import pytest
import sqlalchemy as sa
from pymysql.constants import CLIENT

from tests.harness import MariaDbServer, ProxyProcess, make_config, mysql_listener
from tests.harness.relay import Relay, mysql_err_packet
from tests.harness.util import http_get, wait_for

TABLE = "amo_my"
UPDATE = f"UPDATE {TABLE} SET n = n + 1 WHERE id = 1"
FAULT_WAIT = 10.0
UNKNOWN = 2013
#: The OK packet that ends a multi-statement (no rows, status AUTOCOMMIT only, no warnings).
LAST_OK = b"\x00\x00\x00\x02\x00\x00\x00"
#: The OK packet that ends "BEGIN; UPDATE" (1 row, status IN_TRANS | AUTOCOMMIT, no warnings).
LAST_OK_IN_BLOCK = b"\x00\x01\x00\x03\x00\x00\x00"


# --------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture
def relay(mariadb_server: MariaDbServer) -> Iterator[Relay]:
    mariadb_server.execute(f"CREATE TABLE IF NOT EXISTS app.{TABLE} (id INT PRIMARY KEY,"
                           " n INT NOT NULL) ENGINE=InnoDB")
    mariadb_server.execute(f"REPLACE INTO app.{TABLE} VALUES (1, 0)")
    with Relay(mariadb_server.host, mariadb_server.port) as r:
        yield r


@pytest.fixture
def proxy(mariadb_server: MariaDbServer, relay: Relay, proxy_factory: Any) -> ProxyProcess:
    proc: ProxyProcess = proxy_factory(make_config(mysql_listener(
        mariadb_server, server={"host": "127.0.0.1", "port": relay.port}, server_check_delay=0,
        pool_size=2, query_wait_timeout="20s")))
    return proc


def count(my: MariaDbServer) -> int:
    return int(my.execute(f"SELECT n FROM app.{TABLE} WHERE id = 1")[0][0])


def connect(proxy: ProxyProcess, **kwargs: Any) -> pymysql.Connection:
    kwargs.setdefault("autocommit", True)
    return pymysql.connect(host="127.0.0.1", port=proxy.port("mysql"), user="app",
                           password="app-secret", database="app", connect_timeout=10,
                           read_timeout=30, **kwargs)


async def aconnect(proxy: ProxyProcess, **kwargs: Any) -> aiomysql.Connection:
    return await aiomysql.connect(host="127.0.0.1", port=proxy.port("mysql"), user="app",
                                  password="app-secret", db="app", connect_timeout=10, **kwargs)


def run(conn: pymysql.Connection, sql: str) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]


async def arun(conn: aiomysql.Connection, sql: str) -> list[tuple]:
    async with conn.cursor() as cur:
        await cur.execute(sql)
        return [tuple(r) for r in await cur.fetchall()]


def close_quietly(conn: pymysql.Connection) -> None:
    if conn.open:
        conn.close()


def attempt(fn: Callable[[], Any]) -> Exception | None:
    """What ``fn()`` raised, or None."""
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def errno(exc: BaseException) -> int | None:
    args = getattr(getattr(exc, "orig", None) or exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def describe(exc: BaseException | None) -> str:
    return "success" if exc is None else f"{type(exc).__name__}: {exc}"


def unknown_problem(exc: BaseException | None) -> str | None:
    """Why ``exc`` is not poolproxy's "outcome unknown" ERR 2013 (None if it is)."""
    if exc is None:
        return "the client was told it succeeded"
    if errno(exc) != UNKNOWN:
        return f"expected error {UNKNOWN}, got {describe(exc)}"
    if not re.search(r"\bm(?:ay|ight)\b", str(exc), re.I):
        return f"the message does not say the statement may have been applied: {describe(exc)}"
    return None


def assert_unknown(exc: BaseException | None, conn: pymysql.Connection | None = None) -> None:
    problem = unknown_problem(exc)
    assert problem is None, problem
    if conn is not None:
        assert conn.open, "2013 came from a closed socket, not from poolproxy's ERR packet"


def pool_idle(proxy: ProxyProcess) -> int:
    pools = json.loads(http_get(proxy, "/pools"))
    return sum(p["servers"]["idle"] for p in pools if p["user"] == "app")


def warm_pool(proxy: ProxyProcess) -> None:
    """One server logged in and idle in the pool (for clients whose first command is faulty)."""
    conn = connect(proxy)
    try:
        run(conn, "SELECT 1")
    finally:
        conn.close()
    assert wait_for(lambda: pool_idle(proxy) >= 1, 5)


def lost_answer_loop(my: MariaDbServer, relay: Relay, calls: int, select1: Callable[[], Any],
                     write: Callable[[str], Any], is_open: Callable[[], bool]) -> None:
    """``calls`` times: SELECT 1, then ``write(tag)`` (an autocommit increment whose SQL
    contains ``tag``) with its answer dropped. Each must be executed exactly once and answered
    with 2013 on a connection that stays open; the same connection must go on."""
    problems: list[str] = []
    for i in range(calls):
        select1()
        before = count(my)
        tag = f"/* amo call {i} */"
        fault = relay.drop_answer(tag.encode())
        exc = attempt(lambda tag=tag: write(tag))  # type: ignore[misc]
        applied = count(my) - before
        if not fault.wait(FAULT_WAIT):
            problems.append(f"call {i}: the fault did not fire ({describe(exc)})")
            break
        if applied != 1:
            problems.append(f"call {i}: applied {applied} times (client saw {describe(exc)})")
        problem = unknown_problem(exc)
        if problem is not None:
            problems.append(f"call {i}: {problem}")
        if not is_open():
            problems.append(f"call {i}: poolproxy closed the client connection ({describe(exc)})")
            break
        after = attempt(select1)
        if after is not None:
            problems.append(f"call {i}: the client connection is unusable after the error: "
                            f"{describe(after)}")
            break
    total = count(my)
    assert total == calls and not problems, \
        f"{calls} increments, row is {total}; {len(problems)} problem(s):\n" + "\n".join(problems)


# --------------------------------------------------------------------------- a. answer lost


def test_autocommit_write_answer_lost_pymysql(mariadb_server: MariaDbServer, relay: Relay,
                                              proxy: ProxyProcess) -> None:
    conn = connect(proxy)
    try:
        lost_answer_loop(mariadb_server, relay, 12, lambda: run(conn, "SELECT 1"),
                         lambda tag: run(conn, f"{UPDATE} {tag}"), lambda: conn.open)
    finally:
        close_quietly(conn)


def test_autocommit_write_answer_lost_aiomysql(mariadb_server: MariaDbServer, relay: Relay,
                                               proxy: ProxyProcess) -> None:
    with asyncio.Runner() as runner:
        conn = runner.run(aconnect(proxy, autocommit=True))
        try:
            lost_answer_loop(
                mariadb_server, relay, 8, lambda: runner.run(arun(conn, "SELECT 1")),
                lambda tag: runner.run(arun(conn, f"{UPDATE} {tag}")), lambda: not conn.closed)
        finally:
            conn.close()


# --------------------------------------------------------------------------- b. request lost


def test_autocommit_write_request_lost(mariadb_server: MariaDbServer, relay: Relay,
                                       proxy: ProxyProcess) -> None:
    conn = connect(proxy)
    try:
        for i in range(3):
            run(conn, "SELECT 1")
            tag = f"/* amo lost {i} */"
            fault = relay.drop_request(tag.encode())
            exc = attempt(lambda tag=tag: run(conn, f"{UPDATE} {tag}"))  # type: ignore[misc]
            assert fault.wait(FAULT_WAIT), "the fault did not fire"
            assert count(mariadb_server) == 0, \
                f"call {i}: a command that never arrived was applied (client saw {describe(exc)})"
            assert_unknown(exc, conn)
            assert run(conn, "SELECT 1") == [(1,)]
    finally:
        close_quietly(conn)


# --------------------------------------------------------------------------- c. reset while idle


def test_idle_connection_reset_before_the_command_is_invisible(
        mariadb_server: MariaDbServer, relay: Relay, proxy: ProxyProcess) -> None:
    conn = connect(proxy)
    problems: list[str] = []
    rounds = 8
    try:
        for i in range(rounds):
            run(conn, "SELECT 1")
            assert wait_for(lambda: pool_idle(proxy) >= 1, 5), "the server was not given back"
            assert relay.reset_all() >= 1
            if i % 2:  # let poolproxy notice; otherwise the command races the reset
                assert wait_for(lambda: pool_idle(proxy) == 0, 5), "the dead server stays idle"
            exc = attempt(lambda i=i: run(conn, f"{UPDATE} /* amo reset {i} */"))  # type: ignore
            if exc is not None:
                problems.append(f"round {i}: {describe(exc)}")
            if count(mariadb_server) != i + 1 - len(problems):
                problems.append(f"round {i}: row is {count(mariadb_server)} after {i + 1} rounds")
                break
            if exc is not None and (not conn.open or attempt(lambda: run(conn, "SELECT 1"))):
                break
    finally:
        close_quietly(conn)
    assert not problems, "\n".join(problems)
    assert count(mariadb_server) == rounds


# --------------------------------------------------------------------------- d. opening command


def test_begin_answer_lost_pymysql_transaction_is_replayed(
        mariadb_server: MariaDbServer, relay: Relay, proxy: ProxyProcess) -> None:
    conn = connect(proxy)
    try:
        for i in range(3):
            run(conn, "SELECT 1")
            fault = relay.drop_answer(b"\x03BEGIN")
            conn.begin()
            run(conn, UPDATE)
            conn.commit()
            assert fault.wait(FAULT_WAIT), "the fault did not fire"
            assert count(mariadb_server) == i + 1
    finally:
        close_quietly(conn)


def test_set_autocommit_0_answer_lost_is_replayed(
        mariadb_server: MariaDbServer, relay: Relay, proxy: ProxyProcess) -> None:
    """Django's atomic() on MySQL: SET autocommit=0, the work, COMMIT, SET autocommit=1."""
    conn = connect(proxy)
    try:
        for i in range(3):
            run(conn, "SELECT 1")
            fault = relay.drop_answer(b"SET AUTOCOMMIT = 0")
            conn.autocommit(False)
            run(conn, UPDATE)
            conn.commit()
            conn.autocommit(True)
            assert fault.wait(FAULT_WAIT), "the fault did not fire"
            assert count(mariadb_server) == i + 1
            assert run(conn, "SELECT @@autocommit") == [(1,)]
    finally:
        close_quietly(conn)


def test_default_autocommit_off_session_opening_is_replayed_pymysql(
        mariadb_server: MariaDbServer, relay: Relay, proxy: ProxyProcess) -> None:
    """PyMySQL's default (autocommit=False) sends SET AUTOCOMMIT = 0 at connect."""
    warm_pool(proxy)
    fault = relay.drop_answer(b"SET AUTOCOMMIT = 0")
    conn = connect(proxy, autocommit=False)
    try:
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert run(conn, "SELECT @@autocommit") == [(0,)]
        run(conn, UPDATE)
        conn.rollback()
        run(conn, UPDATE)
        conn.commit()
        assert count(mariadb_server) == 1
    finally:
        close_quietly(conn)


def test_default_autocommit_off_session_opening_is_replayed_sqlalchemy(
        mariadb_server: MariaDbServer, relay: Relay, proxy: ProxyProcess) -> None:
    warm_pool(proxy)
    engine = sa.create_engine(f"mysql+pymysql://app:app-secret@127.0.0.1:{proxy.port('mysql')}/app")
    try:
        fault = relay.drop_answer(b"SET AUTOCOMMIT = 0")
        with engine.begin() as c:  # connects: SET AUTOCOMMIT = 0, the dialect's queries
            c.execute(sa.text(UPDATE))
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert count(mariadb_server) == 1
        with engine.begin() as c:
            c.execute(sa.text(UPDATE))
        assert count(mariadb_server) == 2
    finally:
        engine.dispose()


@pytest.mark.parametrize("autocommit", [True, False], ids=["begin", "default_autocommit_off"])
def test_opening_answer_lost_aiomysql_transaction_is_replayed(
        mariadb_server: MariaDbServer, relay: Relay, proxy: ProxyProcess, autocommit: bool) -> None:
    """aiomysql ``begin()`` (sends BEGIN); with its default autocommit=False the session's
    opening command is the SET AUTOCOMMIT = 0 sent at connect instead."""
    async def main() -> None:
        if not autocommit:
            warm_pool(proxy)
            fault = relay.drop_answer(b"SET AUTOCOMMIT = 0")
        conn = await aconnect(proxy, autocommit=autocommit)
        try:
            await arun(conn, "SELECT 1")
            if autocommit:
                fault = relay.drop_answer(b"\x03BEGIN")
            await conn.begin()
            await arun(conn, UPDATE)
            await conn.commit()
            assert fault.wait(FAULT_WAIT), "the fault did not fire"
        finally:
            conn.close()

    asyncio.run(main())
    assert count(mariadb_server) == 1


def test_multi_statement_opening_a_block_it_leaves_open_is_replayed(
        mariadb_server: MariaDbServer, relay: Relay, proxy: ProxyProcess) -> None:
    """One COM_QUERY "BEGIN; UPDATE ..." without COMMIT cannot have committed anything."""
    conn = connect(proxy, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        run(conn, "SELECT 1")
        fault = relay.drop_answer(b"/* amo open block */", until=LAST_OK_IN_BLOCK)
        exc = attempt(lambda: run(conn, f"BEGIN; {UPDATE} /* amo open block */"))
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert exc is None, f"not replayed: {describe(exc)}"
        assert count(mariadb_server) == 0, "the open block was committed"
        conn.commit()
        assert count(mariadb_server) == 1
    finally:
        close_quietly(conn)


# --------------------------------------------------------------------------- e. server says so


@pytest.mark.parametrize("code", [1927, 1053, 4031])
def test_server_going_away_before_the_command_is_replayed(
        mariadb_server: MariaDbServer, relay: Relay, proxy: ProxyProcess, code: int) -> None:
    conn = connect(proxy)
    try:
        run(conn, "SELECT 1")
        tag = b"/* amo going away */"
        fault = relay.inject(tag, mysql_err_packet(code, "Connection was killed", "70100", seq=1))
        exc = attempt(lambda: run(conn, f"{UPDATE} {tag.decode()}"))
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert exc is None, f"ERR {code} as first reply was not replayed: {describe(exc)}"
        assert count(mariadb_server) == 1
        assert run(conn, "SELECT 1") == [(1,)]
    finally:
        close_quietly(conn)


# --------------------------------------------------------------------------- f. commits


def test_committing_multi_statement_answer_lost(mariadb_server: MariaDbServer, relay: Relay,
                                                proxy: ProxyProcess) -> None:
    conn = connect(proxy, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        run(conn, "SELECT 1")
        fault = relay.drop_answer(b"/* amo batch */", until=LAST_OK)
        exc = attempt(lambda: run(conn, f"BEGIN; {UPDATE} /* amo batch */; COMMIT"))
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert count(mariadb_server) == 1, f"client saw {describe(exc)}"
        assert_unknown(exc, conn)
        assert run(conn, "SELECT 1") == [(1,)]
    finally:
        close_quietly(conn)


@pytest.mark.parametrize("opening", ["begin", "autocommit_off"])
def test_commit_answer_lost(mariadb_server: MariaDbServer, relay: Relay, proxy: ProxyProcess,
                            opening: str) -> None:
    conn = connect(proxy)
    try:
        run(conn, "SELECT 1")
        if opening == "begin":
            conn.begin()
        else:
            conn.autocommit(False)
        run(conn, UPDATE)
        fault = relay.drop_answer(b"\x03COMMIT")
        exc = attempt(conn.commit)
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert count(mariadb_server) == 1, f"client saw {describe(exc)}"
        assert_unknown(exc, conn)
        if opening != "begin":
            conn.autocommit(True)
        assert run(conn, "SELECT @@autocommit") == [(1,)]
    finally:
        close_quietly(conn)


def test_set_autocommit_1_answer_lost(mariadb_server: MariaDbServer, relay: Relay,
                                     proxy: ProxyProcess) -> None:
    """SET autocommit=1 commits the open transaction (PyMySQL's ``autocommit(True)`` without a
    ``commit()`` first): its lost answer is "outcome unknown", not a rollback."""
    conn = connect(proxy)
    try:
        run(conn, "SELECT 1")
        conn.autocommit(False)
        run(conn, UPDATE)
        fault = relay.drop_answer(b"SET AUTOCOMMIT = 1")
        exc = attempt(lambda: conn.autocommit(True))
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert count(mariadb_server) == 1, f"client saw {describe(exc)}"
        assert_unknown(exc, conn)
        assert run(conn, "SELECT 1") == [(1,)]
    finally:
        close_quietly(conn)


def test_begin_inside_an_open_transaction_answer_lost(
        mariadb_server: MariaDbServer, relay: Relay, proxy: ProxyProcess) -> None:
    """BEGIN commits the transaction that is open (here, autocommit=0 with an UPDATE done):
    its lost answer is "outcome unknown", and it is not replayed."""
    conn = connect(proxy)
    try:
        run(conn, "SELECT 1")
        conn.autocommit(False)
        run(conn, UPDATE)
        fault = relay.drop_answer(b"\x03BEGIN")
        exc = attempt(conn.begin)
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert count(mariadb_server) == 1, f"client saw {describe(exc)}"
        assert_unknown(exc, conn)
        assert run(conn, "SELECT 1") == [(1,)]
    finally:
        close_quietly(conn)


def test_select_calling_a_writing_function_is_not_replayed(
        mariadb_server: MariaDbServer, relay: Relay, proxy: ProxyProcess) -> None:
    mariadb_server.execute("DROP FUNCTION IF EXISTS app.amo_bump")
    mariadb_server.execute(f"CREATE FUNCTION app.amo_bump() RETURNS INT MODIFIES SQL DATA "
                           f"BEGIN UPDATE app.{TABLE} SET n = n + 1 WHERE id = 1; RETURN 1; END")
    conn = connect(proxy)
    try:
        run(conn, "SELECT 1")
        fault = relay.drop_answer(b"select amo_bump()")
        exc = attempt(lambda: run(conn, "SELECT amo_bump()"))
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert count(mariadb_server) == 1, f"client saw {describe(exc)}"
        assert_unknown(exc, conn)
        assert run(conn, "SELECT 1") == [(1,)]
    finally:
        close_quietly(conn)


# --------------------------------------------------------------------------- session-only


def test_session_only_statements_are_replayed(relay: Relay, proxy: ProxyProcess) -> None:
    conn = connect(proxy)
    try:
        run(conn, "SELECT 1")
        fault = relay.drop_answer(b"set time_zone")
        run(conn, "SET time_zone = '+02:00'")
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        fault = relay.drop_answer(b"show session variables")
        rows = run(conn, "SHOW SESSION VARIABLES LIKE 'time_zone'")
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert rows == [("time_zone", "+02:00")]
    finally:
        close_quietly(conn)
