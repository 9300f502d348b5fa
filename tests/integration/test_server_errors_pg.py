"""A server connection that ends under a PostgreSQL client.

When PostgreSQL ends a backend while its client is idle inside a transaction
(pg_terminate_backend: FATAL 57P01; idle_in_transaction_session_timeout: FATAL 25P03), the
client's next statement gets the server's OWN SQLSTATE and message, as an ERROR (not FATAL),
with a hint that the session continues on a new server connection. The client's connection to
poolproxy stays open, and after a rollback its next transaction runs on a new backend. The lost
transaction's changes are gone. Drivers run at their default settings (psycopg 3's
prepare_threshold, asyncpg's statement cache).

Every test uses a database of its own, so pg_stat_activity counts only see it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from tests.harness import PgServer, ProxyProcess, make_config, pg_listener
from tests.harness.util import http_get, wait_for

USER, PASSWORD = "app", "app-secret"
HINT = "continues on a new server connection"
IITX_TIMEOUT = "500ms"

#: SQLSTATE -> PostgreSQL's own message for it.
MESSAGES = {
    "57P01": "terminating connection due to administrator command",
    "25P03": "terminating connection due to idle-in-transaction timeout",
}


# --------------------------------------------------------------------------- helpers


def ensure_db(pg: PgServer, name: str, iitx_timeout: str | None = None) -> str:
    """A database of the test's own (owner app) with an empty table se_t(v text); with
    `iitx_timeout`, its idle_in_transaction_session_timeout."""
    if not pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)):
        pg.execute(f'CREATE DATABASE "{name}" OWNER app')
    pg.execute("DROP TABLE IF EXISTS se_t", dbname=name)
    pg.execute("CREATE TABLE se_t (v text)", dbname=name)
    pg.execute("GRANT ALL ON se_t TO app", dbname=name)
    if iitx_timeout is not None:
        pg.execute(f'ALTER DATABASE "{name}" SET idle_in_transaction_session_timeout'
                   f" = '{iitx_timeout}'")
    return name


def db_name(prefix: str, test_name: str) -> str:
    """A database name of the test's own: readable, and unique per test and parameters."""
    digest = hashlib.sha1(test_name.encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9]+", "_", test_name.lower().replace("test_", "", 1)).strip("_")
    return f"{prefix}_{readable[:40]}_{digest}"


@pytest.fixture
def make_db(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(iitx_timeout: str | None = None) -> str:
        made.append(ensure_db(pg_server, db_name("se", request.node.name), iitx_timeout))
        return made[-1]

    yield make
    for name in made:
        pg_server.execute(f'ALTER DATABASE "{name}" RESET ALL')


def backend_pids(pg: PgServer, db: str) -> set[int]:
    return {int(r[0]) for r in pg.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = %s"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()", (db, USER))}


def only_backend(pg: PgServer, db: str) -> int:
    """The one backend of `db` (pool_size 1): the server the client is on."""
    pids = backend_pids(pg, db)
    assert len(pids) == 1, f"expected the pool's single backend, found {pids}"
    return pids.pop()


def pool_of(proxy: ProxyProcess, db: str) -> dict[str, Any] | None:
    for p in json.loads(http_get(proxy, "/pools")):
        if p["database"] == db and p["user"] == USER:
            return dict(p)
    return None


def wait_server_gone(proxy: ProxyProcess, pg: PgServer, db: str, victim: int,
                     timeout: float = 10.0) -> None:
    """Until the backend has exited and poolproxy has dropped its server connection."""
    assert wait_for(lambda: victim not in backend_pids(pg, db), timeout), \
        f"backend {victim} still there"
    assert wait_for(lambda: (pool_of(proxy, db) or {"servers": {"active": 1}})["servers"]
                    ["active"] == 0, timeout), f"poolproxy kept the dead server: {pool_of(proxy, db)}"


def end_backend(how: str, proxy: ProxyProcess, pg: PgServer, db: str, victim: int) -> None:
    """`terminate`: pg_terminate_backend from a superuser connection; `timeout`: wait for
    idle_in_transaction_session_timeout to end it."""
    started = time.monotonic()
    if how == "terminate":
        assert pg.execute("SELECT pg_terminate_backend(%s)", (victim,)) == [(True,)]
    wait_server_gone(proxy, pg, db, victim)
    if how == "timeout":
        # It was PostgreSQL's timeout (0.5 s), not anything of poolproxy's, and not earlier.
        assert time.monotonic() - started >= 0.4


def assert_settled(proxy: ProxyProcess, pg: PgServer, db: str) -> None:
    """Nothing active or waiting, and as many idle servers as PostgreSQL has backends (<= 1)."""
    problems: list[str] = []

    def settled() -> bool:
        problems.clear()
        snap = pool_of(proxy, db)
        if snap is None:
            problems.append("no pool")
            return False
        servers, pids = snap["servers"], backend_pids(pg, db)
        if servers["active"] or servers["login"] or servers["testing"] or snap["waiters"]:
            problems.append(f"not idle: {snap}")
        if len(pids) > 1 or servers["idle"] != len(pids):
            problems.append(f"{servers['idle']} idle server(s), backends {pids}")
        return not problems

    assert wait_for(settled, 10.0, 0.1), problems
    assert proxy.is_running()
    assert "Traceback" not in proxy.log_text()


def table(pg: PgServer, db: str) -> list[str]:
    return [str(r[0]) for r in pg.execute("SELECT v FROM se_t ORDER BY v", dbname=db)]


def start_proxy(pg: PgServer, proxy_factory: Any) -> ProxyProcess:
    proxy: ProxyProcess = proxy_factory(make_config(pg_listener(pg, pool_size=1)))
    return proxy


# --------------------------------------------------------------------------- psycopg


@pytest.mark.parametrize(("how", "sqlstate", "exc_class"), [
    ("terminate", "57P01", errors.AdminShutdown),
    ("timeout", "25P03", errors.IdleInTransactionSessionTimeout),
], ids=["pg_terminate_backend", "idle_in_transaction_session_timeout"])
def test_psycopg_idle_in_transaction_server_ends(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[..., str], how: str,
    sqlstate: str, exc_class: type[psycopg.Error],
) -> None:
    db = make_db(IITX_TIMEOUT if how == "timeout" else None)
    proxy = start_proxy(pg_server, proxy_factory)
    conn = psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user=USER,
                           password=PASSWORD, dbname=db, connect_timeout=10)
    try:
        conn.execute("INSERT INTO se_t VALUES ('lost')")  # opens the transaction
        victim = only_backend(pg_server, db)
        end_backend(how, proxy, pg_server, db, victim)

        with pytest.raises(exc_class) as info:
            conn.execute("SELECT 1")
        exc = info.value
        assert exc.sqlstate == sqlstate, f"{type(exc).__name__} {exc.sqlstate}: {exc}"
        assert exc.diag.severity == "ERROR", exc.diag.severity
        assert exc.diag.severity_nonlocalized == "ERROR"
        assert exc.diag.message_primary == MESSAGES[sqlstate]
        assert HINT in (exc.diag.message_hint or ""), exc.diag.message_hint
        assert not conn.closed, "poolproxy closed the client's connection"
        assert conn.info.status == psycopg.pq.ConnStatus.OK

        conn.rollback()
        conn.execute("INSERT INTO se_t VALUES ('kept')")
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None and row[0] != victim, "the next transaction ran on the dead backend"
        conn.commit()
        # And the one after that, on the same connection.
        with conn.transaction():
            assert conn.execute("SELECT count(*) FROM se_t").fetchone() == (1,)
    finally:
        conn.close()
    assert table(pg_server, db) == ["kept"], "the lost transaction's insert survived"
    assert_settled(proxy, pg_server, db)


def test_psycopg_terminated_twice_same_connection(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[..., str]
) -> None:
    """The connection survives one loss after another (and a server loss between two
    transactions, while the client is idle outside any, is invisible)."""
    db = make_db()
    proxy = start_proxy(pg_server, proxy_factory)
    with psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user=USER, password=PASSWORD,
                         dbname=db, connect_timeout=10) as conn:
        for round_ in range(2):
            conn.execute("INSERT INTO se_t VALUES (%s)", (f"lost{round_}",))
            victim = only_backend(pg_server, db)
            end_backend("terminate", proxy, pg_server, db, victim)
            with pytest.raises(errors.AdminShutdown) as info:
                conn.execute("SELECT 1")
            assert info.value.diag.severity == "ERROR"
            conn.rollback()
        # Between transactions: the pooled server dies, the client never notices.
        conn.execute("INSERT INTO se_t VALUES ('kept')")
        conn.commit()
        victim = only_backend(pg_server, db)
        end_backend("terminate", proxy, pg_server, db, victim)
        assert wait_for(lambda: (pool_of(proxy, db) or {"servers": {"idle": 1}})["servers"]
                        ["idle"] == 0, 10.0)
        assert conn.execute("SELECT v FROM se_t").fetchall() == [("kept",)]
        conn.commit()
    assert table(pg_server, db) == ["kept"]
    assert_settled(proxy, pg_server, db)


# --------------------------------------------------------------------------- asyncpg


@pytest.mark.parametrize(("how", "sqlstate", "exc_class"), [
    ("terminate", "57P01", asyncpg.exceptions.AdminShutdownError),
    ("timeout", "25P03", asyncpg.exceptions.IdleInTransactionSessionTimeoutError),
], ids=["pg_terminate_backend", "idle_in_transaction_session_timeout"])
def test_asyncpg_idle_in_transaction_server_ends(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[..., str], how: str,
    sqlstate: str, exc_class: type[Exception],
) -> None:
    """asyncpg (default statement cache) maps the server's SQLSTATE to its exception class; its
    connection stays open and the next transaction works."""
    db = make_db(IITX_TIMEOUT if how == "timeout" else None)
    proxy = start_proxy(pg_server, proxy_factory)
    outcome: dict[str, Any] = {}

    async def main() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port("pg"), user=USER,
                                     password=PASSWORD, database=db, timeout=15)
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("INSERT INTO se_t VALUES ('lost')")
            victim = only_backend(pg_server, db)
            # Blocking polls are fine: nothing is owed to the idle asyncpg connection.
            end_backend(how, proxy, pg_server, db, victim)
            with pytest.raises(exc_class) as info:
                await conn.execute("SELECT 1")
            exc: Any = info.value
            outcome.update(sqlstate=exc.sqlstate, severity=getattr(exc, "severity", None),
                           message=getattr(exc, "message", None), hint=getattr(exc, "hint", None),
                           closed=conn.is_closed())
            assert not conn.is_closed(), f"connection closed by {type(exc).__name__}: {exc}"
            await tx.rollback()
            async with conn.transaction():
                await conn.execute("INSERT INTO se_t VALUES ('kept')")
                pid = await conn.fetchval("SELECT pg_backend_pid()")
                assert pid != victim
            assert await conn.fetchval("SELECT count(*) FROM se_t") == 1
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(main(), 60))
    assert outcome["sqlstate"] == sqlstate, outcome
    assert outcome["severity"] == "ERROR", outcome
    assert outcome["message"] == MESSAGES[sqlstate], outcome
    assert HINT in (outcome["hint"] or ""), outcome
    assert table(pg_server, db) == ["kept"]
    assert_settled(proxy, pg_server, db)
