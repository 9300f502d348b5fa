"""At-most-once through poolproxy (PostgreSQL): a request is replayed on another server only
when it provably cannot have taken effect; otherwise the client gets 08007.

poolproxy's server is a fault-injecting relay (tests/harness/relay.py) in front of the real
PostgreSQL, with ``server_check_delay: 0`` so no health check hides a dead pooled connection.
Each client first runs ``SELECT 1`` (its pooled server is logged in and idle), then the request
the fault hits. The witness is the row counter, read over a direct superuser connection.

- a: autocommit write whose answer is lost (the server executed it): 08007, applied exactly
  once, the same client connection goes on; in a loop, psycopg (simple and extended protocol)
  and asyncpg.
- b: autocommit write lost on its way (never executed): 08007 too (poolproxy cannot know).
- c: the idle pooled connection reset before the request: invisible, applied exactly once.
- d: BEGIN-first transactions (psycopg non-autocommit, asyncpg ``transaction()``, SQLAlchemy
  ``engine.begin()``) with the answer to BEGIN lost, and a one-Query "BEGIN; UPDATE" that
  leaves its block open: replayed transparently, applied once.
- e: FATAL 57P01/57P02/57P03/57P05 as the first reply: replayed, applied once, no error.
- f: statements that commit, with their answer lost: a one-Query ``BEGIN; UPDATE; COMMIT``
  batch, a COMMIT, a SELECT calling a writing function: 08007, never replayed.
- session-only SET / SHOW whose answer is lost: replayed transparently.

Drivers run at their defaults (psycopg 3's prepare_threshold, asyncpg's statement cache);
asyncpg only uses ``execute()`` without arguments, which prepares nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
import sqlalchemy as sa

from tests.harness import PgServer, ProxyProcess, make_config, pg_listener
from tests.harness.relay import PG_READY, Relay, pg_error_response
from tests.harness.util import http_get, wait_for

TABLE = "amo_pg"
UPDATE = f"UPDATE {TABLE} SET n = n + 1 WHERE id = 1"
FAULT_WAIT = 10.0
UNKNOWN = "08007"


# --------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture
def relay(pg_server: PgServer) -> Iterator[Relay]:
    pg_server.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int PRIMARY KEY, n int NOT NULL)",
                      dbname="app")
    pg_server.execute(f"GRANT ALL ON {TABLE} TO app", dbname="app")
    pg_server.execute(f"INSERT INTO {TABLE} VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = 0",
                      dbname="app")
    with Relay(pg_server.host, pg_server.port) as r:
        yield r


@pytest.fixture
def proxy(pg_server: PgServer, relay: Relay, proxy_factory: Any) -> ProxyProcess:
    proc: ProxyProcess = proxy_factory(make_config(pg_listener(
        pg_server, server={"host": "127.0.0.1", "port": relay.port}, server_check_delay=0,
        pool_size=2, query_wait_timeout="20s")))
    return proc


def count(pg: PgServer) -> int:
    return int(pg.execute(f"SELECT n FROM {TABLE} WHERE id = 1", dbname="app")[0][0])


def connect(proxy: ProxyProcess, autocommit: bool = True) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                           password="app-secret", dbname="app", autocommit=autocommit,
                           connect_timeout=10)


async def aconnect(proxy: ProxyProcess) -> asyncpg.Connection:
    return await asyncpg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                                 password="app-secret", database="app", timeout=15)


def sa_engine(proxy: ProxyProcess) -> sa.Engine:
    return sa.create_engine(f"postgresql+psycopg://app:app-secret@127.0.0.1:{proxy.port('pg')}/app")


def attempt(fn: Callable[[], Any]) -> Exception | None:
    """What ``fn()`` raised, or None."""
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg, asyncpg or SQLAlchemy-wrapped error (None if it has none)."""
    orig = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError
    return getattr(orig if orig is not None else exc, "sqlstate", None)


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "success"
    return f"{type(exc).__name__} [{sqlstate(exc)}]: {str(exc).strip()}"


def unknown_problem(exc: BaseException | None) -> str | None:
    """Why ``exc`` is not poolproxy's "outcome unknown" error (None if it is)."""
    if exc is None:
        return "the client was told it succeeded"
    if sqlstate(exc) != UNKNOWN:
        return f"expected SQLSTATE {UNKNOWN}, got {describe(exc)}"
    if not re.search(r"\bm(?:ay|ight)\b", str(exc), re.I):
        return f"the message does not say the statement may have been applied: {describe(exc)}"
    diag = getattr(exc, "diag", None)  # psycopg: an ERROR, not a FATAL closing the connection
    if diag is not None and diag.severity_nonlocalized not in (None, "ERROR"):
        return f"severity {diag.severity_nonlocalized}, expected ERROR: {describe(exc)}"
    return None


def assert_unknown(exc: BaseException | None) -> None:
    problem = unknown_problem(exc)
    assert problem is None, problem


def pool_idle(proxy: ProxyProcess) -> int:
    pools = json.loads(http_get(proxy, "/pools"))
    return sum(p["servers"]["idle"] for p in pools if p["database"] == "app" and p["user"] == "app")


def lost_answer_loop(pg: PgServer, relay: Relay, calls: int, select1: Callable[[], Any],
                     write: Callable[[str], Any]) -> None:
    """``calls`` times: SELECT 1, then ``write(tag)`` (an autocommit increment whose SQL
    contains ``tag``) with its answer dropped. Each must be executed exactly once and answered
    with 08007; the same client connection must go on."""
    problems: list[str] = []
    for i in range(calls):
        select1()
        before = count(pg)
        tag = f"/* amo call {i} */"
        fault = relay.drop_answer(tag.encode(), until=PG_READY)
        exc = attempt(lambda tag=tag: write(tag))  # type: ignore[misc]
        applied = count(pg) - before
        if not fault.wait(FAULT_WAIT):
            problems.append(f"call {i}: the fault did not fire ({describe(exc)})")
            break
        if applied != 1:
            problems.append(f"call {i}: applied {applied} times (client saw {describe(exc)})")
        problem = unknown_problem(exc)
        if problem is not None:
            problems.append(f"call {i}: {problem}")
        after = attempt(select1)
        if after is not None:
            problems.append(f"call {i}: the client connection is unusable after the error: "
                            f"{describe(after)}")
            break
    total = count(pg)
    assert total == calls and not problems, \
        f"{calls} increments, row is {total}; {len(problems)} problem(s):\n" + "\n".join(problems)


# --------------------------------------------------------------------------- a. answer lost


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_autocommit_write_answer_lost_psycopg(pg_server: PgServer, relay: Relay,
                                              proxy: ProxyProcess, protocol: str) -> None:
    conn = connect(proxy)
    try:
        if protocol == "simple":
            def write(tag: str) -> None:
                conn.execute(f"{UPDATE} {tag}")
        else:  # Parse/Bind/Describe/Execute/Sync in one write
            def write(tag: str) -> None:
                conn.execute(f"UPDATE {TABLE} SET n = n + %s WHERE id = %s {tag}", (1, 1))
        lost_answer_loop(pg_server, relay, 12, lambda: conn.execute("SELECT 1"), write)
    finally:
        conn.close()


def test_autocommit_write_answer_lost_asyncpg(pg_server: PgServer, relay: Relay,
                                              proxy: ProxyProcess) -> None:
    with asyncio.Runner() as runner:
        conn = runner.run(aconnect(proxy))
        try:
            lost_answer_loop(
                pg_server, relay, 8, lambda: runner.run(conn.execute("SELECT 1")),
                lambda tag: runner.run(conn.execute(f"{UPDATE} {tag}")))
        finally:
            runner.run(conn.close(timeout=5))


# --------------------------------------------------------------------------- b. request lost


def test_autocommit_write_request_lost(pg_server: PgServer, relay: Relay,
                                       proxy: ProxyProcess) -> None:
    conn = connect(proxy)
    try:
        for i in range(3):
            conn.execute("SELECT 1")
            tag = f"/* amo lost {i} */"
            fault = relay.drop_request(tag.encode())
            exc = attempt(lambda tag=tag: conn.execute(f"{UPDATE} {tag}"))  # type: ignore[misc]
            assert fault.wait(FAULT_WAIT), "the fault did not fire"
            assert count(pg_server) == 0, f"call {i}: a request that never arrived was applied " \
                f"(client saw {describe(exc)})"
            assert_unknown(exc)
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()


# --------------------------------------------------------------------------- c. reset while idle


def test_idle_connection_reset_before_the_request_is_invisible(
        pg_server: PgServer, relay: Relay, proxy: ProxyProcess) -> None:
    conn = connect(proxy)
    problems: list[str] = []
    rounds = 8
    try:
        for i in range(rounds):
            conn.execute("SELECT 1")
            assert wait_for(lambda: pool_idle(proxy) >= 1, 5), "the server was not given back"
            assert relay.reset_all() >= 1
            if i % 2:  # let poolproxy notice; otherwise the request races the reset
                assert wait_for(lambda: pool_idle(proxy) == 0, 5), "the dead server stays idle"
            exc = attempt(lambda i=i: conn.execute(f"{UPDATE} /* amo reset {i} */"))  # type: ignore
            if exc is not None:
                problems.append(f"round {i}: {describe(exc)}")
            if count(pg_server) != i + 1 - len(problems):
                problems.append(f"round {i}: row is {count(pg_server)} after {i + 1} rounds")
                break
            if exc is not None and attempt(lambda: conn.execute("SELECT 1")) is not None:
                break
    finally:
        conn.close()
    assert not problems, "\n".join(problems)
    assert count(pg_server) == rounds


# --------------------------------------------------------------------------- d. BEGIN first


def test_begin_answer_lost_psycopg_transaction_is_replayed(
        pg_server: PgServer, relay: Relay, proxy: ProxyProcess) -> None:
    conn = connect(proxy, autocommit=False)  # psycopg sends BEGIN as a query of its own
    try:
        for i in range(3):
            conn.execute("SELECT 1")
            conn.commit()
            fault = relay.drop_answer(b"Q\x00\x00\x00\x0aBEGIN\x00", until=PG_READY)
            conn.execute(UPDATE)
            conn.commit()
            assert fault.wait(FAULT_WAIT), "the fault did not fire"
            assert count(pg_server) == i + 1
    finally:
        conn.close()


def test_begin_answer_lost_asyncpg_transaction_is_replayed(
        pg_server: PgServer, relay: Relay, proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await aconnect(proxy)
        try:
            for i in range(3):
                await conn.execute("SELECT 1")
                fault = relay.drop_answer(b"BEGIN;\x00", until=PG_READY)
                async with conn.transaction():  # sends "BEGIN;"
                    await conn.execute(UPDATE)
                assert fault.wait(FAULT_WAIT), "the fault did not fire"
                assert count(pg_server) == i + 1
        finally:
            await conn.close(timeout=5)

    asyncio.run(main())


def test_begin_answer_lost_sqlalchemy_transaction_is_replayed(
        pg_server: PgServer, relay: Relay, proxy: ProxyProcess) -> None:
    engine = sa_engine(proxy)
    try:
        with engine.begin() as c:  # the dialect's first-connect queries, then SELECT 1
            c.execute(sa.text("SELECT 1"))
        for i in range(3):
            fault = relay.drop_answer(b"Q\x00\x00\x00\x0aBEGIN\x00", until=PG_READY)
            with engine.begin() as c:
                c.execute(sa.text(UPDATE))
            assert fault.wait(FAULT_WAIT), "the fault did not fire"
            assert count(pg_server) == i + 1
    finally:
        engine.dispose()


def test_batch_opening_a_block_it_leaves_open_is_replayed(
        pg_server: PgServer, relay: Relay, proxy: ProxyProcess) -> None:
    """One Query "BEGIN; UPDATE ..." without COMMIT: everything after BEGIN stays inside the
    block it opens, so nothing of it can have committed: replayed, then committed once."""
    conn = connect(proxy)
    try:
        conn.execute("SELECT 1")
        fault = relay.drop_answer(b"/* amo open block */", until=PG_READY)
        exc = attempt(lambda: conn.execute(f"BEGIN; {UPDATE} /* amo open block */"))
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert exc is None, f"not replayed: {describe(exc)}"
        assert count(pg_server) == 0, "the open block was committed"
        conn.execute("COMMIT")
        assert count(pg_server) == 1
    finally:
        conn.close()


# --------------------------------------------------------------------------- e. server says so


@pytest.mark.parametrize("code", ["57P01", "57P02", "57P03", "57P05"])
def test_server_going_away_before_the_request_is_replayed(
        pg_server: PgServer, relay: Relay, proxy: ProxyProcess, code: str) -> None:
    conn = connect(proxy)
    try:
        conn.execute("SELECT 1")
        tag = b"/* amo fatal */"
        fault = relay.inject(tag, pg_error_response(
            code, "terminating connection due to administrator command"))
        exc = attempt(lambda: conn.execute(f"{UPDATE} {tag.decode()}"))
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert exc is None, f"FATAL {code} as first reply was not replayed: {describe(exc)}"
        assert count(pg_server) == 1
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()


# --------------------------------------------------------------------------- f. commits


def test_committing_batch_answer_lost_psycopg(pg_server: PgServer, relay: Relay,
                                              proxy: ProxyProcess) -> None:
    conn = connect(proxy)
    try:
        conn.execute("SELECT 1")
        fault = relay.drop_answer(b"/* amo batch */", until=PG_READY)
        # No parameters: psycopg sends one simple Query with the three statements.
        exc = attempt(lambda: conn.execute(f"BEGIN; {UPDATE} /* amo batch */; COMMIT"))
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert count(pg_server) == 1, f"client saw {describe(exc)}"
        assert_unknown(exc)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()


def test_committing_batch_answer_lost_asyncpg(pg_server: PgServer, relay: Relay,
                                              proxy: ProxyProcess) -> None:
    async def main() -> Exception | None:
        conn = await aconnect(proxy)
        try:
            await conn.execute("SELECT 1")
            fault = relay.drop_answer(b"/* amo batch */", until=PG_READY)
            try:
                await conn.execute(f"BEGIN; {UPDATE} /* amo batch */; COMMIT")
                exc = None
            except Exception as e:
                exc = e
            assert fault.wait(FAULT_WAIT), "the fault did not fire"
            await conn.execute("SELECT 1")  # the connection goes on
            return exc
        finally:
            await conn.close(timeout=5)

    exc = asyncio.run(main())
    assert count(pg_server) == 1, f"client saw {describe(exc)}"
    assert_unknown(exc)


def test_commit_answer_lost(pg_server: PgServer, relay: Relay, proxy: ProxyProcess) -> None:
    """The COMMIT of an explicit transaction was executed but its answer lost: not a rollback
    (08006 would claim one), the outcome is unknown."""
    conn = connect(proxy, autocommit=False)
    try:
        conn.execute("SELECT 1")
        conn.commit()
        conn.execute(UPDATE)
        fault = relay.drop_answer(b"Q\x00\x00\x00\x0bCOMMIT\x00", until=PG_READY)
        exc = attempt(conn.commit)
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert count(pg_server) == 1, f"client saw {describe(exc)}"
        assert_unknown(exc)
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.commit()
    finally:
        conn.close()


def test_select_calling_a_writing_function_is_not_replayed(
        pg_server: PgServer, relay: Relay, proxy: ProxyProcess) -> None:
    pg_server.execute(f"CREATE OR REPLACE FUNCTION amo_bump() RETURNS int LANGUAGE sql AS "
                      f"'UPDATE {TABLE} SET n = n + 1 WHERE id = 1 RETURNING n'", dbname="app")
    conn = connect(proxy)
    try:
        conn.execute("SELECT 1")
        fault = relay.drop_answer(b"select amo_bump()", until=PG_READY)
        exc = attempt(lambda: conn.execute("SELECT amo_bump()"))
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert count(pg_server) == 1, f"client saw {describe(exc)}"
        assert_unknown(exc)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()


# --------------------------------------------------------------------------- session-only


def test_session_only_statements_are_replayed(relay: Relay, proxy: ProxyProcess) -> None:
    conn = connect(proxy)
    try:
        conn.execute("SELECT 1")
        fault = relay.drop_answer(b"set application_name", until=PG_READY)
        conn.execute("SET application_name = 'amo-replayed'")
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        fault = relay.drop_answer(b"show application_name", until=PG_READY)
        row = conn.execute("SHOW application_name").fetchone()
        assert fault.wait(FAULT_WAIT), "the fault did not fire"
        assert row == ("amo-replayed",)
    finally:
        conn.close()
