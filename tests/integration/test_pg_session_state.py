"""Session state the server does not report never leaks between clients (issue "Must show 7").

With ``pool_size: 1`` and two clients: client A leaves session state behind outside a
transaction (a SET of an unreported GUC, SET ROLE, SET search_path, LISTEN, a session advisory
lock, a temp table, SQL PREPARE, a cursor WITH HOLD). A must keep its state on its next
transactions — it is pinned to its server — and client B must never see it: while A is
pinned B gets a clean ``query_wait_timeout`` error (SQLSTATE 57014); once A disconnects, B gets
the *same* server back (same ``pg_backend_pid()``), reset: DISCARD ALL happened.
``SET LOCAL`` (transaction-scoped) must not pin at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.harness import PgServer, ProxyProcess
from tests.harness.pgclient import connect, discard_all, one, pool_of_one_proxy

QUERY_WAIT = 1.0  # seconds; the janitor checks a few times a second


@pytest.fixture(scope="module")
def proxy(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    yield from pool_of_one_proxy(pg_server, tmp_path_factory.mktemp("pg_session_state_proxy"), QUERY_WAIT)


@pytest.fixture(autouse=True)
def _reset_pooled_server(proxy: ProxyProcess) -> Iterator[None]:
    """After each test, DISCARD ALL on the pooled server (see ``discard_all``)."""
    yield
    discard_all(proxy)


@pytest.fixture(scope="module")
def server_setup(pg_server: PgServer) -> dict[str, str]:
    """Objects the cases need, created directly as the superuser; the server defaults."""
    pg_server.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname ="
                      " 'pp_state_role') THEN CREATE ROLE pp_state_role NOLOGIN; END IF; END $$")
    pg_server.execute("GRANT pp_state_role TO app")
    pg_server.execute("CREATE SCHEMA IF NOT EXISTS pp_state_schema AUTHORIZATION app",
                      dbname="app")
    pg_server.execute("CREATE TABLE IF NOT EXISTS pp_state_schema.only_here (v text)",
                      dbname="app")
    pg_server.execute("ALTER TABLE pp_state_schema.only_here OWNER TO app", dbname="app")
    pg_server.execute("TRUNCATE pp_state_schema.only_here", dbname="app")
    pg_server.execute("INSERT INTO pp_state_schema.only_here VALUES ('schema-row')",
                      dbname="app")
    pg_server.execute("GRANT USAGE ON SCHEMA pp_state_schema TO pp_state_role", dbname="app")
    pg_server.execute("GRANT SELECT ON pp_state_schema.only_here TO pp_state_role", dbname="app")
    return {
        "work_mem": pg_server.execute("SHOW work_mem")[0][0],
        "search_path": pg_server.execute("SHOW search_path")[0][0],
        "statement_timeout": pg_server.execute("SHOW statement_timeout")[0][0],
    }


def pid_of(conn: psycopg.Connection) -> int:
    return int(one(conn, "SELECT pg_backend_pid()"))


@dataclass
class Case:
    #: Statements client A runs outside a transaction (each one a separate Query).
    setup: list[str]
    #: Checks A's state is still there (raises AssertionError if not); gets A's connection.
    a_sees: Callable[[psycopg.Connection], None]
    #: Checks a connection sees none of A's state.
    clean: Callable[[psycopg.Connection, dict[str, str]], None]
    #: Optional check from a direct superuser connection while A holds the state (A's pid).
    server_side: Callable[[PgServer, int], None] | None = None
    #: Run the setup inside an explicit, committed transaction instead.
    in_transaction: bool = False


def _listening(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT pg_listening_channels()").fetchall()]


def _a_listens(conn: psycopg.Connection) -> None:
    assert _listening(conn) == ["pp_chan"]
    conn.execute("NOTIFY pp_chan, 'to-a'")
    got = [(n.channel, n.payload) for n in conn.notifies(timeout=2, stop_after=1)]
    assert got == [("pp_chan", "to-a")]


def _advisory_locks(pg: PgServer) -> list[tuple]:
    return pg.execute("SELECT pid, objid, granted FROM pg_locks WHERE locktype = 'advisory'"
                      " AND database = (SELECT oid FROM pg_database WHERE datname = 'app')")


def _clean_advisory(conn: psycopg.Connection, _d: dict[str, str]) -> None:
    assert one(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    with conn.transaction():  # transaction-scoped: taking it does not pin this client
        assert one(conn, "SELECT pg_try_advisory_xact_lock(4242)") is True


def _a_cursor(conn: psycopg.Connection) -> None:
    first = [r[0] for r in conn.execute("FETCH 2 FROM pp_cur").fetchall()]
    second = [r[0] for r in conn.execute("FETCH 2 FROM pp_cur").fetchall()]
    assert second == [first[0] + 2, first[1] + 2]
    assert one(conn, "SELECT count(*) FROM pg_cursors WHERE name = 'pp_cur'") == 1


def _a_temp(conn: psycopg.Connection) -> None:
    assert conn.execute("SELECT x FROM pp_tmp ORDER BY x").fetchall()[:1] == [(1,)]
    conn.execute("INSERT INTO pp_tmp VALUES (2)")
    assert one(conn, "SELECT count(*) FROM pp_tmp") >= 2


def _clean_temp(conn: psycopg.Connection, _d: dict[str, str]) -> None:
    assert one(conn, "SELECT to_regclass('pg_temp.pp_tmp')") is None
    with pytest.raises(errors.UndefinedTable):
        conn.execute("SELECT * FROM pp_tmp")
    assert one(conn, "SELECT count(*) FROM pg_class WHERE relname = 'pp_tmp'") == 0


def _clean_prepared(conn: psycopg.Connection, _d: dict[str, str]) -> None:
    # SQL-level statements only: the protocol-level ones poolproxy prepares on its servers
    # (poolproxy_<n>, for psycopg's prepared queries) are the pool's, shared by its clients.
    assert one(conn, "SELECT count(*) FROM pg_prepared_statements WHERE from_sql") == 0
    with pytest.raises(errors.InvalidSqlStatementName):
        conn.execute("EXECUTE pp_stmt")


def _clean_search_path(conn: psycopg.Connection, d: dict[str, str]) -> None:
    assert one(conn, "SHOW search_path") == d["search_path"]
    with pytest.raises(errors.UndefinedTable):
        conn.execute("SELECT * FROM only_here")


CASES: dict[str, Case] = {
    "set_work_mem": Case(
        ["SET work_mem = '8MB'"],
        lambda c: _eq(one(c, "SHOW work_mem"), "8MB"),
        lambda c, d: _eq(one(c, "SHOW work_mem"), d["work_mem"]),
    ),
    "set_config_session": Case(
        ["SELECT set_config('statement_timeout', '123s', false)"],
        lambda c: _eq(one(c, "SHOW statement_timeout"), "123s"),
        lambda c, d: _eq(one(c, "SHOW statement_timeout"), d["statement_timeout"]),
    ),
    "set_in_committed_transaction": Case(
        ["SET work_mem = '9MB'"],
        lambda c: _eq(one(c, "SHOW work_mem"), "9MB"),
        lambda c, d: _eq(one(c, "SHOW work_mem"), d["work_mem"]),
        in_transaction=True,
    ),
    "set_role": Case(
        ["SET ROLE pp_state_role"],
        lambda c: _eq(one(c, "SELECT current_user || '/' || session_user"), "pp_state_role/app"),
        lambda c, d: _eq(one(c, "SELECT current_user || '/' || session_user"), "app/app"),
    ),
    "set_session_role": Case(
        ["SET SESSION ROLE pp_state_role"],
        lambda c: _eq(one(c, "SELECT current_user"), "pp_state_role"),
        lambda c, d: _eq(one(c, "SELECT current_user"), "app"),
    ),
    "set_search_path": Case(
        ["SET search_path = pp_state_schema, public"],
        lambda c: _eq((one(c, "SHOW search_path"), one(c, "SELECT v FROM only_here")),
                      ("pp_state_schema, public", "schema-row")),
        _clean_search_path,
    ),
    "listen": Case(
        ["LISTEN pp_chan"],
        _a_listens,
        lambda c, d: _eq(_listening(c), []),
    ),
    "advisory_lock": Case(
        ["SELECT pg_advisory_lock(4242)"],
        lambda c: _eq(one(c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                             " AND objid = 4242 AND pid = pg_backend_pid() AND granted"), 1),
        _clean_advisory,
        server_side=lambda pg, pid: _eq(_advisory_locks(pg), [(pid, 4242, True)]),
    ),
    "temp_table": Case(
        ["CREATE TEMP TABLE pp_tmp (x int)", "INSERT INTO pp_tmp VALUES (1)"],
        _a_temp,
        _clean_temp,
        server_side=lambda pg, pid: _eq(
            pg.execute("SELECT count(*) FROM pg_class WHERE relname = 'pp_tmp'", dbname="app"),
            [(1,)]),
    ),
    "temp_table_in_transaction": Case(
        ["CREATE TEMPORARY TABLE pp_tmp (x int) ON COMMIT PRESERVE ROWS",
         "INSERT INTO pp_tmp VALUES (1)"],
        _a_temp,
        _clean_temp,
        in_transaction=True,
    ),
    "sql_prepare": Case(
        ["PREPARE pp_stmt (int) AS SELECT $1 * 2"],
        lambda c: _eq((one(c, "EXECUTE pp_stmt (21)"),
                       one(c, "SELECT count(*) FROM pg_prepared_statements WHERE from_sql")),
                      (42, 1)),
        _clean_prepared,
    ),
    "cursor_with_hold": Case(
        ["DECLARE pp_cur CURSOR WITH HOLD FOR SELECT i FROM generate_series(1, 1000) i"],
        _a_cursor,
        lambda c, d: _eq(one(c, "SELECT count(*) FROM pg_cursors"), 0),
    ),
    "cursor_with_hold_in_transaction": Case(
        ["DECLARE pp_cur NO SCROLL CURSOR WITH HOLD FOR SELECT i FROM generate_series(1, 1000) i"],
        _a_cursor,
        lambda c, d: _eq(one(c, "SELECT count(*) FROM pg_cursors"), 0),
        in_transaction=True,
    ),
}


def _eq(actual: object, expected: object) -> None:
    assert actual == expected


def _b_times_out(proxy: ProxyProcess, case: Case | None = None,
                 defaults: dict[str, str] | None = None) -> None:
    """A second client cannot get the (only) server while A holds it: a clean 57014 error.
    If it does get the server, say what of A's state it can see."""
    b = connect(proxy)
    try:
        started = time.monotonic()
        try:
            b.execute("SELECT 1")
        except errors.QueryCanceled as exc:
            waited = time.monotonic() - started
            assert exc.sqlstate == "57014"
            assert "query_wait_timeout" in str(exc)
            assert QUERY_WAIT * 0.8 <= waited < QUERY_WAIT + 3
            return
        leak = "(not checked)"
        if case is not None and defaults is not None:
            try:
                case.clean(b, defaults)
                leak = "B sees a clean session, by luck"
            except AssertionError as exc:
                leak = f"B sees A's state: {exc}"
        pytest.fail(f"client A holds session state but was not pinned: client B got A's "
                    f"server (pid {pid_of(b)}); {leak}")
    finally:
        b.close()


@pytest.mark.parametrize("name", list(CASES))
def test_unreported_state_pins_and_never_leaks(
        proxy: ProxyProcess, pg_server: PgServer, server_setup: dict[str, str], name: str,
) -> None:
    case = CASES[name]
    with connect(proxy) as fresh:  # the server starts clean
        pid = pid_of(fresh)
        case.clean(fresh, server_setup)

    a = connect(proxy)
    try:
        if case.in_transaction:
            with a.transaction():
                for sql in case.setup:
                    a.execute(sql)
        else:
            for sql in case.setup:
                a.execute(sql)
        # A keeps its state on its next statements and transactions, on the same server.
        for _ in range(3):
            assert pid_of(a) == pid
            case.a_sees(a)
            with a.transaction():
                assert pid_of(a) == pid
        if case.server_side is not None:
            case.server_side(pg_server, pid)

        # A is pinned: B waits and gets a clean error instead of A's server.
        _b_times_out(proxy, case, server_setup)
        assert pid_of(a) == pid
        case.a_sees(a)

        # B waits while A goes away; then B gets the same server, reset.
        b = connect(proxy)
        got: dict[str, Any] = {}

        def b_query() -> None:
            try:
                got["pid"] = pid_of(b)
            except Exception as exc:  # checked below
                got["error"] = exc

        thread = threading.Thread(target=b_query)
        thread.start()
        time.sleep(QUERY_WAIT / 4)
        assert not got, got  # still waiting for A's server
        a.close()
        thread.join(QUERY_WAIT + 10)
        try:
            assert got == {"pid": pid}, got
            case.clean(b, server_setup)
            assert pid_of(b) == pid
        finally:
            b.close()
    finally:
        a.close()

    # And a brand-new client too.
    with connect(proxy) as c:
        assert pid_of(c) == pid
        case.clean(c, server_setup)
    assert _advisory_locks(pg_server) == []


def test_set_local_and_transaction_scoped_state_do_not_pin(
        proxy: ProxyProcess, server_setup: dict[str, str]) -> None:
    with connect(proxy) as a, connect(proxy) as b:
        pid = pid_of(a)
        with a.transaction():
            a.execute("SET LOCAL work_mem = '8MB'")
            a.execute("SET LOCAL ROLE pp_state_role")
            a.execute("SET LOCAL search_path = pp_state_schema")
            a.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            a.execute("SELECT set_config('statement_timeout', '77s', true)")
            a.execute("SELECT pg_advisory_xact_lock(4343)")
            assert one(a, "SHOW work_mem") == "8MB"
            assert one(a, "SELECT current_user") == "pp_state_role"
            assert one(a, "SHOW transaction_isolation") == "repeatable read"
            assert one(a, "SHOW statement_timeout") == "77s"
            assert one(a, "SELECT v FROM only_here") == "schema-row"
        # Right after A's transaction, B uses the same server and sees none of it.
        assert pid_of(b) == pid
        assert one(b, "SHOW work_mem") == server_setup["work_mem"]
        assert one(b, "SELECT current_user") == "app"
        assert one(b, "SHOW search_path") == server_setup["search_path"]
        assert one(b, "SHOW statement_timeout") == server_setup["statement_timeout"]
        assert one(b, "SHOW transaction_isolation") == "read committed"
        assert one(b, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
        for _ in range(5):  # and they keep alternating
            assert pid_of(a) == pid
            assert pid_of(b) == pid
        assert one(a, "SHOW work_mem") == server_setup["work_mem"]
        # A cursor without HOLD lives only in its transaction.
        with a.transaction():
            a.execute("DECLARE pp_cur_tx CURSOR FOR SELECT 1")
            assert one(a, "FETCH 1 FROM pp_cur_tx") == 1
        assert pid_of(b) == pid
        assert one(b, "SELECT count(*) FROM pg_cursors") == 0


def test_temp_table_on_commit_drop_does_not_pin(proxy: ProxyProcess) -> None:
    """A temp table created ON COMMIT DROP is gone when its transaction ends: nothing is left
    behind, so the client need not be pinned."""
    with connect(proxy) as a, connect(proxy) as b:
        pid = pid_of(a)
        with a.transaction():
            a.execute("CREATE TEMP TABLE pp_tmp_commit (x int) ON COMMIT DROP")
            a.execute("INSERT INTO pp_tmp_commit VALUES (1)")
            assert one(a, "SELECT count(*) FROM pp_tmp_commit") == 1
        assert pid_of(b) == pid
        assert one(b, "SELECT count(*) FROM pg_class WHERE relname = 'pp_tmp_commit'") == 0
        assert pid_of(a) == pid


def test_pinned_client_state_survives_errors_and_rollback(
        proxy: ProxyProcess, server_setup: dict[str, str]) -> None:
    """A pinned client that hits errors and rolls back keeps its server (and its temp table)."""
    with connect(proxy) as a:
        pid = pid_of(a)
        a.execute("CREATE TEMP TABLE pp_tmp_err (x int)")
        a.execute("INSERT INTO pp_tmp_err VALUES (1)")
        with pytest.raises(errors.DivisionByZero):
            a.execute("SELECT 1 / 0")
        with pytest.raises(errors.UniqueViolation):
            with a.transaction():
                a.execute("INSERT INTO pp_tmp_err VALUES (2)")
                a.execute("CREATE UNIQUE INDEX ON pp_tmp_err (x)")
                a.execute("INSERT INTO pp_tmp_err VALUES (1)")
        assert pid_of(a) == pid
        assert a.execute("SELECT x FROM pp_tmp_err ORDER BY x").fetchall() == [(1,)]
        _b_times_out(proxy)
    with connect(proxy) as c:
        assert pid_of(c) == pid
        assert one(c, "SELECT to_regclass('pg_temp.pp_tmp_err')") is None
        assert one(c, "SHOW work_mem") == server_setup["work_mem"]
