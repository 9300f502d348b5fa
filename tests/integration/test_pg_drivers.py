"""psycopg 3 and asyncpg through poolproxy in transaction mode (issue "Must show 1").

Every test runs against a real PostgreSQL through a real proxy whose main listener has
``pool_size: 1``: all clients share one server connection, so ``pg_backend_pid()`` proves
server sharing, and a client that wrongly keeps the server makes the next client fail with
the proxy's ``query_wait_timeout`` error (57014) instead of passing silently.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import asyncpg
import psycopg
import pytest
from psycopg import errors, pq

from tests.harness import PgServer, ProxyProcess, make_config, pg_listener

QUERY_WAIT = 3  # seconds: a client that keeps the server makes the next one fail this fast


@pytest.fixture(scope="module")
def proxy(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    config = make_config(
        pg_listener(pg_server, pool_size=1, query_wait_timeout=f"{QUERY_WAIT}s"),
        pg_listener(pg_server, name="md5", auth={"type": "md5"}, pool_size=1,
                    query_wait_timeout=f"{QUERY_WAIT}s"),
        pg_listener(pg_server, name="trust", auth={"type": "trust"}, pool_size=1,
                    query_wait_timeout=f"{QUERY_WAIT}s"),
        admin=False,
    )
    proc = ProxyProcess(config, tmp_path_factory.mktemp("pg_drivers_proxy"))
    proc.start()
    yield proc
    proc.stop()


def dsn(proxy: ProxyProcess, *, listener: str = "pg", user: str = "app",
        password: str | None = "app-secret", dbname: str = "app") -> str:
    parts = [f"host=127.0.0.1 port={proxy.port(listener)} user={user} dbname={dbname}"]
    if password is not None:
        parts.append(f"password={password}")
    return " ".join(parts)


def connect(proxy: ProxyProcess, autocommit: bool = True, **kwargs: object) -> psycopg.Connection:
    """A psycopg connection through the proxy (psycopg at its defaults)."""
    return psycopg.connect(dsn(proxy, **kwargs), autocommit=autocommit,  # type: ignore[arg-type]
                           connect_timeout=10)


def server_pid(conn: psycopg.Connection) -> int:
    """The server backend's pid (committing, so that a non-autocommit `conn` lets go)."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    if not conn.autocommit:
        conn.commit()
    return int(row[0])


def assert_pooled(proxy: ProxyProcess, conn: psycopg.Connection, pid: int, **kwargs: object
                  ) -> None:
    """`conn` gave its server back: another client gets that same (only) server at once, and
    the two can alternate on it."""
    with connect(proxy, **kwargs) as other:
        for _ in range(3):
            assert server_pid(other) == pid
            assert server_pid(conn) == pid


def recreate(conn: psycopg.Connection, table: str, columns: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} ({columns})")


# --------------------------------------------------------------------------- psycopg: protocols


def test_simple_protocol_and_multi_statement(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        pid = server_pid(conn)
        cur = conn.execute("SELECT 'a'::text, 42, NULL::int, 1.5::numeric", prepare=False)
        assert cur.fetchall() == [("a", 42, None, Decimal("1.5"))]
        assert cur.pgresult is not None and cur.pgresult.status == pq.ExecStatus.TUPLES_OK

        # Several statements in one Query message: only the simple protocol accepts that.
        recreate(conn, "drv_simple", "id int PRIMARY KEY, val text")
        ccur = psycopg.ClientCursor(conn)
        ccur.execute(
            "INSERT INTO drv_simple VALUES (%s, %s), (%s, %s);"
            " SELECT count(*) FROM drv_simple; SELECT val FROM drv_simple ORDER BY id",
            (1, "one", 2, "it's two"))
        assert ccur.statusmessage == "INSERT 0 2"
        assert ccur.nextset()
        assert ccur.fetchall() == [(2,)]
        assert ccur.nextset()
        assert ccur.fetchall() == [("one",), ("it's two",)]
        assert not ccur.nextset()

        # An error in the middle of a multi-statement query aborts the whole implicit
        # transaction (so the first INSERT is gone too), and the connection stays usable.
        with pytest.raises(errors.UniqueViolation):
            ccur.execute("INSERT INTO drv_simple VALUES (3, 'three'); INSERT INTO drv_simple"
                         " VALUES (1, 'dup'); INSERT INTO drv_simple VALUES (4, 'four')")
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert conn.execute("SELECT array_agg(id ORDER BY id) FROM drv_simple").fetchone() == (
            [1, 2],)
        assert_pooled(proxy, conn, pid)


def test_empty_query(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        pid = server_pid(conn)
        for sql in ("", "   ", "-- only a comment"):
            cur = conn.execute(sql)  # type: ignore[call-overload]
            assert cur.pgresult is not None
            assert cur.pgresult.status == pq.ExecStatus.EMPTY_QUERY
            assert cur.description is None
        # ";" alone is an empty statement too (simple protocol through a ClientCursor).
        ccur = psycopg.ClientCursor(conn)
        ccur.execute(";")
        assert ccur.pgresult is not None and ccur.pgresult.status == pq.ExecStatus.EMPTY_QUERY
        assert conn.execute("SELECT 7").fetchone() == (7,)
        assert_pooled(proxy, conn, pid)


def test_extended_protocol_parameters(proxy: ProxyProcess) -> None:
    values = (
        42, -(2**62), "text with 'quotes', \\ and ünïcödé ✓", b"\x00\x01\xffbytes", None,
        Decimal("12345678901234567890.123456789"), [1, 2, 3], date(2024, 2, 29),
        datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), True, 3.25,
    )
    placeholders = ", ".join(["%s"] * len(values))
    with connect(proxy) as conn:
        pid = server_pid(conn)
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            assert cur.execute(f"SELECT {placeholders}", values).fetchone() == values
            cur.execute("SELECT %s::int + %s::int, upper(%s)", (40, 2, "abc"))
            assert cur.fetchone() == (42, "ABC")
        # A parameter much larger than a socket buffer: the Bind spans many reads.
        big = "x" * 3_000_000 + "end"
        row = conn.execute("SELECT length(%s::text), md5(%s::text)", (big, big)).fetchone()
        assert row == (len(big), hashlib.md5(big.encode()).hexdigest())
        # An error in the extended protocol, then more queries.
        with pytest.raises(errors.DivisionByZero):
            conn.execute("SELECT %s::int / 0", (1,))
        assert conn.execute("SELECT %s::text || 'ok'", ("still ",)).fetchone() == ("still ok",)
        assert_pooled(proxy, conn, pid)


def test_large_result_set(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        pid = server_pid(conn)
        cur = conn.execute("SELECT i, repeat('r', i % 100) FROM generate_series(1, 100000) i")
        rows = cur.fetchall()
        assert len(rows) == 100000
        assert sum(r[0] for r in rows) == 100000 * 100001 // 2
        assert rows[-1] == (100000, "")
        assert rows[98] == (99, "r" * 99)
        assert_pooled(proxy, conn, pid)


# --------------------------------------------------------------------------- psycopg: pipeline


def test_pipeline_with_error_and_recovery(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        pid = server_pid(conn)
        recreate(conn, "drv_pipe", "id int PRIMARY KEY")
        with conn.pipeline() as p:
            c1 = conn.execute("INSERT INTO drv_pipe VALUES (%s) RETURNING id", (1,))
            c2 = conn.execute("SELECT pg_backend_pid(), %s::text", ("first batch",))
            p.sync()
            c_err = conn.execute("INSERT INTO drv_pipe VALUES (%s)", (2,))
            conn.execute("SELECT 1 / %s", (0,))
            # psycopg raises the batch's error at the first call that reads it: the next
            # execute() or the sync(), depending on timing.
            c_skipped = None
            with pytest.raises(errors.DivisionByZero):
                c_skipped = conn.execute("INSERT INTO drv_pipe VALUES (%s)", (3,))
                p.sync()
            # Still inside the same pipeline: a new batch after the error works.
            c3 = conn.execute("INSERT INTO drv_pipe VALUES (%s) RETURNING id", (4,))
            c4 = conn.execute("SELECT count(*) FROM drv_pipe")
        assert c1.fetchone() == (1,)
        assert c2.fetchone() == (pid, "first batch")
        assert c3.fetchone() == (4,)
        # The failed batch ran as one implicit transaction: row 2 rolled back, row 3 never ran.
        assert c4.fetchone() == (2,)
        assert c_err.statusmessage == "INSERT 0 1"
        assert c_skipped is None or c_skipped.pgresult is None or (
            c_skipped.pgresult.status == pq.ExecStatus.PIPELINE_ABORTED)
        assert conn.execute("SELECT array_agg(id ORDER BY id) FROM drv_pipe").fetchone() == (
            [1, 4],)

        # An error that escapes the pipeline block, then the connection is fine.
        with pytest.raises(errors.UndefinedTable):
            with conn.pipeline():
                conn.execute("SELECT 1")
                conn.execute("SELECT * FROM drv_no_such_table")
                conn.execute("SELECT 2")
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)
        assert_pooled(proxy, conn, pid)


def test_pipeline_exit_releases_the_server(proxy: ProxyProcess) -> None:
    """psycopg ends a pipeline with Sync + Flush; once the Sync is answered with
    ReadyForQuery 'I' nothing is outstanding, so the server goes back to the pool."""
    with connect(proxy) as conn:
        pid = server_pid(conn)
        with conn.pipeline():
            cur = conn.execute("SELECT %s::int + 1", (1,))
        assert cur.fetchone() == (2,)
        assert_pooled(proxy, conn, pid)
        with conn.pipeline():
            c1 = conn.execute("SELECT 1")
            c2 = conn.execute("SELECT %s::text", ("two",))
        assert (c1.fetchone(), c2.fetchone()) == ((1,), ("two",))
        assert_pooled(proxy, conn, pid)


def _pipeline_results(conn: pq.PGconn, syncs: int) -> list[tuple[int, list[bytes | None]]]:
    """Read libpq pipeline results until `syncs` PIPELINE_SYNC results have arrived."""
    results: list[tuple[int, list[bytes | None]]] = []
    deadline = time.monotonic() + 10
    while sum(1 for s, _ in results if s == pq.ExecStatus.PIPELINE_SYNC) < syncs:
        conn.consume_input()
        if conn.is_busy():
            assert time.monotonic() < deadline, "no answer from the proxy"
            time.sleep(0.005)
            continue
        res = conn.get_result()
        if res is None:
            continue
        row = [res.get_value(0, c) for c in range(res.nfields)] if res.ntuples else []
        results.append((res.status, row))
    return results


@pytest.mark.parametrize("when", ["right_after_sync", "after_results"])
def test_flush_after_sync_does_not_hold_the_server(proxy: ProxyProcess, when: str) -> None:
    """A Flush that follows a Sync (nothing unsynced before it) asks for nothing: it must not
    keep, nor take, the server (psycopg sends one when it leaves a pipeline block)."""
    with connect(proxy) as b:
        pid = server_pid(b)
        a = pq.PGconn.connect(dsn(proxy).encode())
        try:
            assert a.status == pq.ConnStatus.OK, a.get_error_message()
            a.enter_pipeline_mode()
            a.send_query_params(b"SELECT pg_backend_pid()", None)
            a.pipeline_sync()
            if when == "right_after_sync":
                a.send_flush_request()
                while a.flush():
                    time.sleep(0.005)
                results = _pipeline_results(a, 1)
            else:
                results = _pipeline_results(a, 1)
                a.send_flush_request()
                while a.flush():
                    time.sleep(0.005)
                time.sleep(0.1)
            assert [s for s, _ in results] == [pq.ExecStatus.TUPLES_OK,
                                               pq.ExecStatus.PIPELINE_SYNC]
            assert results[0][1] == [str(pid).encode()]
            # a is idle between transactions: b gets the one server at once.
            assert server_pid(b) == pid
            # ...and a can go on.
            a.send_query_params(b"SELECT 'again'", None)
            a.pipeline_sync()
            assert _pipeline_results(a, 1)[0] == (pq.ExecStatus.TUPLES_OK, [b"again"])
            assert server_pid(b) == pid
        finally:
            a.finish()


def test_pipeline_in_transaction(proxy: ProxyProcess) -> None:
    with connect(proxy, autocommit=False) as conn:
        pid = server_pid(conn)
        recreate(conn, "drv_pipe_tx", "id int")
        conn.commit()
        with conn.pipeline():
            for i in range(50):
                conn.execute("INSERT INTO drv_pipe_tx VALUES (%s)", (i,))
            cur = conn.execute("SELECT count(*), sum(id) FROM drv_pipe_tx")
        assert cur.fetchone() == (50, sum(range(50)))
        assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM drv_pipe_tx").fetchone() == (0,)
        conn.commit()
        assert_pooled(proxy, conn, pid)


def test_pipeline_flush_without_sync_keeps_the_server(proxy: ProxyProcess) -> None:
    """Mid-pipeline (results fetched with Flush, no Sync yet) the client owns the server:
    another client must wait until the pipeline is synced, then gets the same server."""
    with connect(proxy) as a:
        pid = server_pid(a)
        got: dict[str, object] = {}
        pipeline_done = threading.Event()

        def other_client() -> None:
            try:
                with connect(proxy) as b:
                    got["pid"] = server_pid(b)
                    got["after_pipeline"] = pipeline_done.is_set()
            except Exception as exc:  # reported by the assertions below
                got["error"] = exc

        with a.pipeline():
            cur = a.execute("SELECT pg_backend_pid(), %s::text", ("flushed",))
            assert cur.fetchone() == (pid, "flushed")  # Flush, not Sync
            thread = threading.Thread(target=other_client)
            thread.start()
            time.sleep(0.7)
            assert "pid" not in got and "error" not in got, got
            cur2 = a.execute("SELECT %s::int * 2", (21,))
            assert cur2.fetchone() == (42,)
            pipeline_done.set()
        thread.join(QUERY_WAIT + 5)
        assert got.get("error") is None, got
        assert got == {"pid": pid, "after_pipeline": True}
        assert_pooled(proxy, a, pid)


def test_libpq_pipeline_several_syncs_in_flight(proxy: ProxyProcess) -> None:
    """Two Sync-terminated batches sent at once: the server may only go to another client after
    the second ReadyForQuery, not the first."""
    with connect(proxy) as b:
        pid = server_pid(b)
        a = pq.PGconn.connect(dsn(proxy).encode())
        try:
            assert a.status == pq.ConnStatus.OK, a.get_error_message()
            a.enter_pipeline_mode()
            a.send_query_params(b"SELECT pg_sleep(0.6)::text, 'batch1'", None)
            a.pipeline_sync()
            a.send_query_params(b"SELECT pg_backend_pid(), 'batch2'", None)
            a.pipeline_sync()
            while a.flush():
                time.sleep(0.01)
            time.sleep(0.2)  # both batches reached the proxy; the first one is running
            # b queues for the only server while a's first batch runs.
            assert b.execute("SELECT %s::text", ("b's own result",)).fetchone() == (
                "b's own result",)

            results = _pipeline_results(a, 2)
            statuses = [s for s, _ in results]
            assert statuses == [pq.ExecStatus.TUPLES_OK, pq.ExecStatus.PIPELINE_SYNC,
                                pq.ExecStatus.TUPLES_OK, pq.ExecStatus.PIPELINE_SYNC]
            assert results[0][1] == [b"", b"batch1"]
            assert results[2][1] == [str(pid).encode(), b"batch2"]
            a.exit_pipeline_mode()
        finally:
            a.finish()
        assert server_pid(b) == pid


def test_executemany_1000_rows(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        pid = server_pid(conn)
        recreate(conn, "drv_many", "id int PRIMARY KEY, val text")
        rows = [(i, f"value {i}") for i in range(1000)]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO drv_many VALUES (%s, %s)", rows)
            assert conn.execute("SELECT count(*), sum(id), min(val), max(val) FROM drv_many"
                                ).fetchone() == (1000, 499500, "value 0", "value 999")
            cur.executemany("UPDATE drv_many SET val = %s WHERE id = %s RETURNING id",
                            [(f"u{i}", i) for i in range(0, 1000, 10)], returning=True)
            ids = []
            while True:
                ids.extend(r[0] for r in cur.fetchall())
                if not cur.nextset():
                    break
            assert ids == list(range(0, 1000, 10))
        assert conn.execute("SELECT count(*) FROM drv_many WHERE val LIKE 'u%'").fetchone() == (
            100,)
        assert_pooled(proxy, conn, pid)


# --------------------------------------------------------------------------- psycopg: transactions


def test_transactions_commit_rollback_exception(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn, connect(proxy) as observer:
        pid = server_pid(conn)
        recreate(conn, "drv_tx", "id int PRIMARY KEY")
        with conn.transaction():
            conn.execute("INSERT INTO drv_tx VALUES (1)")
            assert server_pid(conn) == pid
        assert observer.execute("SELECT array_agg(id) FROM drv_tx").fetchone() == ([1],)

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            with conn.transaction():
                conn.execute("INSERT INTO drv_tx VALUES (2)")
                raise Boom
        assert observer.execute("SELECT array_agg(id) FROM drv_tx").fetchone() == ([1],)

        # Non-autocommit: explicit commit / rollback.
        with connect(proxy, autocommit=False) as tx:
            tx.execute("INSERT INTO drv_tx VALUES (3)")
            assert tx.info.transaction_status == pq.TransactionStatus.INTRANS
            tx.rollback()
            tx.execute("INSERT INTO drv_tx VALUES (4)")
            tx.commit()
            assert tx.info.transaction_status == pq.TransactionStatus.IDLE
            assert server_pid(tx) == pid
            assert_pooled(proxy, tx, pid, autocommit=False)
        assert observer.execute("SELECT array_agg(id ORDER BY id) FROM drv_tx").fetchone() == (
            [1, 4],)
        assert_pooled(proxy, conn, pid)


def test_savepoints(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        pid = server_pid(conn)
        recreate(conn, "drv_sp", "id int PRIMARY KEY")

        class Inner(Exception):
            pass

        with conn.transaction():
            conn.execute("INSERT INTO drv_sp VALUES (1)")
            with pytest.raises(Inner):
                with conn.transaction():
                    conn.execute("INSERT INTO drv_sp VALUES (2)")
                    raise Inner
            with conn.transaction():
                conn.execute("INSERT INTO drv_sp VALUES (3)")
                with pytest.raises(errors.UniqueViolation):
                    with conn.transaction():
                        conn.execute("INSERT INTO drv_sp VALUES (1)")
                conn.execute("INSERT INTO drv_sp VALUES (4)")
            assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
        assert conn.execute("SELECT array_agg(id ORDER BY id) FROM drv_sp").fetchone() == (
            [1, 3, 4],)
        assert_pooled(proxy, conn, pid)


def test_error_inside_transaction(proxy: ProxyProcess) -> None:
    with connect(proxy, autocommit=False) as conn:
        pid = server_pid(conn)
        with pytest.raises(errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)
        conn.commit()
        with connect(proxy) as other:
            assert server_pid(other) == pid
            assert other.execute("SELECT 'clean'").fetchone() == ("clean",)


def test_client_disconnect_inside_transaction_rolls_back(proxy: ProxyProcess) -> None:
    with connect(proxy) as setup:
        pid = server_pid(setup)
        recreate(setup, "drv_abandon", "id int")
    conn = connect(proxy, autocommit=False)
    conn.execute("INSERT INTO drv_abandon VALUES (1)")
    conn.pgconn.finish()  # vanish without COMMIT/ROLLBACK
    conn.close()
    with connect(proxy) as other:
        assert server_pid(other) == pid
        assert other.info.transaction_status == pq.TransactionStatus.IDLE
        assert other.execute("SELECT count(*) FROM drv_abandon").fetchone() == (0,)
        assert other.execute("SELECT now() = statement_timestamp()").fetchone() == (True,)


# --------------------------------------------------------------------------- psycopg: COPY, NOTICE


def test_copy_from_stdin_and_to_stdout(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        pid = server_pid(conn)
        recreate(conn, "drv_copy", "id int PRIMARY KEY, val text, n numeric")
        with conn.cursor() as cur:
            with cur.copy("COPY drv_copy (id, val, n) FROM STDIN") as copy:
                for i in range(10000):
                    copy.write_row((i, f"row\t{i} 'q' \\ é", Decimal(i) / 4))
            assert cur.rowcount == 10000
        assert conn.execute("SELECT count(*), sum(id), sum(n) FROM drv_copy").fetchone() == (
            10000, 49995000, Decimal(49995000) / 4)
        assert_pooled(proxy, conn, pid)

        expected = "".join(
            f"{i}\trow\\t{i} 'q' \\\\ é\t{Decimal(i) / 4}\n" for i in range(10000)).encode()
        with conn.cursor() as cur:
            with cur.copy("COPY (SELECT id, val, n FROM drv_copy ORDER BY id) TO STDOUT") as copy:
                data = b"".join(bytes(chunk) for chunk in copy)
            assert cur.rowcount == 10000
        assert data == expected
        # Rows too (parsed by psycopg) and CSV with a header.
        with conn.cursor() as cur:
            with cur.copy("COPY (SELECT id, val FROM drv_copy WHERE id < 3 ORDER BY id)"
                          " TO STDOUT (FORMAT csv, HEADER)") as copy:
                csv = b"".join(bytes(chunk) for chunk in copy)
        assert csv == b"id,val\n0,row\t0 'q' \\ \xc3\xa9\n1,row\t1 'q' \\ \xc3\xa9\n" \
            b"2,row\t2 'q' \\ \xc3\xa9\n"
        assert_pooled(proxy, conn, pid)


def test_copy_errors_then_usable(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        pid = server_pid(conn)
        recreate(conn, "drv_copy_err", "id int PRIMARY KEY")
        # Bad data: the server answers with an error in the middle of COPY IN.
        with pytest.raises(errors.InvalidTextRepresentation):
            with conn.cursor() as cur, cur.copy("COPY drv_copy_err FROM STDIN") as copy:
                for i in range(1000):
                    copy.write(f"{i}\n".encode())
                copy.write(b"not-a-number\n")
                for i in range(1000, 2000):
                    copy.write(f"{i}\n".encode())
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM drv_copy_err").fetchone() == (0,)
        assert_pooled(proxy, conn, pid)

        # The client aborts (CopyFail).
        class Abort(Exception):
            pass

        with pytest.raises(Abort):
            with conn.cursor() as cur, cur.copy("COPY drv_copy_err FROM STDIN") as copy:
                copy.write_row((1,))
                raise Abort
        assert conn.execute("SELECT count(*) FROM drv_copy_err").fetchone() == (0,)
        assert_pooled(proxy, conn, pid)

        # COPY inside a transaction, then the transaction goes on.
        with conn.transaction():
            with conn.cursor() as cur, cur.copy("COPY drv_copy_err FROM STDIN") as copy:
                for i in range(5):
                    copy.write_row((i,))
            assert conn.execute("SELECT count(*) FROM drv_copy_err").fetchone() == (5,)
        assert conn.execute("SELECT sum(id) FROM drv_copy_err").fetchone() == (10,)
        assert_pooled(proxy, conn, pid)


def test_notice(proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        pid = server_pid(conn)
        notices: list[tuple[str | None, str | None, str | None]] = []
        conn.add_notice_handler(
            lambda d: notices.append((d.severity_nonlocalized, d.sqlstate, d.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello % from DO', 42; END $$")
        assert notices == [("NOTICE", "00000", "hello 42 from DO")]
        # A notice and a warning from one statement, and within a transaction.
        with conn.transaction():
            conn.execute("DO $$ BEGIN RAISE NOTICE 'n1'; RAISE WARNING 'w2'; END $$")
        assert notices[1:] == [("NOTICE", "00000", "n1"), ("WARNING", "01000", "w2")]
        # A notice from the server itself, interleaved with a result.
        cur = conn.execute("DROP TABLE IF EXISTS drv_never_existed")
        assert cur.statusmessage == "DROP TABLE"
        assert notices[-1][0] == "NOTICE" and "drv_never_existed" in (notices[-1][2] or "")
        assert len(notices) == 4
        assert_pooled(proxy, conn, pid)


def test_notify_through_the_proxy(proxy: ProxyProcess) -> None:
    """NOTIFY delivered to a listening client (the listener is pinned while it listens)."""
    with connect(proxy) as conn:
        conn.execute("LISTEN drv_channel")
        conn.execute("NOTIFY drv_channel, 'payload-1'")
        conn.execute("SELECT pg_notify('drv_channel', 'payload-2')")
        received = []
        for note in conn.notifies(timeout=2, stop_after=2):
            received.append((note.channel, note.payload))
        assert received == [("drv_channel", "payload-1"), ("drv_channel", "payload-2")]
        conn.execute("UNLISTEN *")
    with connect(proxy) as after:  # the pinned server came back clean
        assert after.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)


# --------------------------------------------------------------------------- asyncpg


async def apg_connect(proxy: ProxyProcess, **kwargs: object) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1", port=proxy.port("pg"), user="app", password="app-secret",
        database="app", timeout=10, **kwargs)


def test_asyncpg_fetch_fetchval_execute(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await apg_connect(proxy)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("DROP TABLE IF EXISTS drv_apg")
            await conn.execute("CREATE TABLE drv_apg (id int PRIMARY KEY, val text, d date)")
            status = await conn.execute("INSERT INTO drv_apg VALUES ($1, $2, $3), ($4, $5, $6)",
                                        1, "one", date(2020, 1, 1), 2, "two", None)
            assert status == "INSERT 0 2"
            rows = await conn.fetch("SELECT id, val, d FROM drv_apg WHERE id >= $1 ORDER BY id",
                                    1)
            assert [tuple(r) for r in rows] == [(1, "one", date(2020, 1, 1)), (2, "two", None)]
            assert await conn.fetchval("SELECT $1::int + $2::int", 40, 2) == 42
            row = await conn.fetchrow("SELECT $1::text AS a, $2::bytea AS b", "ü", b"\x00\xff")
            assert row is not None and dict(row) == {"a": "ü", "b": b"\x00\xff"}
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetchval("SELECT $1::int / 0", 1)
            assert await conn.fetchval("SELECT 'recovered'") == "recovered"
            # Simple protocol (no args): several statements in one call.
            await conn.execute("UPDATE drv_apg SET val = 'x' WHERE id = 1;"
                               " UPDATE drv_apg SET val = 'y' WHERE id = 2")
            assert await conn.fetchval("SELECT string_agg(val, ',' ORDER BY id) FROM drv_apg"
                                       ) == "x,y"
            other = await apg_connect(proxy)
            try:
                for _ in range(3):
                    assert await other.fetchval("SELECT pg_backend_pid()") == pid
                    assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            finally:
                await other.close()
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncpg_concurrent_clients_share_one_server(proxy: ProxyProcess) -> None:
    """Many interleaved parameterised queries from several clients over one server connection:
    every client always gets its own answers."""
    async def worker(n: int) -> set[int]:
        conn = await apg_connect(proxy)
        pids = set()
        try:
            for i in range(40):
                row = await conn.fetchrow(
                    "SELECT $1::int * 1000 + $2::int AS v, $3::text AS who, pg_backend_pid() AS p",
                    n, i, f"client-{n}")
                assert row is not None
                assert (row["v"], row["who"]) == (n * 1000 + i, f"client-{n}")
                pids.add(row["p"])
                async with conn.transaction():
                    assert await conn.fetchval("SELECT $1::int", i) == i
        finally:
            await conn.close()
        return pids

    async def main() -> None:
        results = await asyncio.gather(*(worker(n) for n in range(5)))
        assert len(set().union(*results)) == 1  # all on the one pooled server

    asyncio.run(main())


def test_asyncpg_type_introspection_does_not_pin(pg_server: PgServer, proxy: ProxyProcess
                                                 ) -> None:
    """asyncpg introspects array/composite types between `set_config('jit', 'off', false)` and
    `set_config('jit', $1, false)` (restoring the old value). Once that is done nothing is
    left behind, so the client must not stay pinned to its server for the rest of its life."""
    jit_default = pg_server.execute("SHOW jit")[0][0]

    async def main() -> None:
        conn = await apg_connect(proxy)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            assert await conn.fetchval(
                "SELECT array_agg(i ORDER BY i) FROM generate_series(1, $1::int) i", 3
            ) == [1, 2, 3]
            assert await conn.fetchval("SELECT current_setting('jit')") == jit_default
            other = await apg_connect(proxy)
            try:
                assert await other.fetchval("SELECT pg_backend_pid()") == pid
                assert await other.fetchval("SELECT current_setting('jit')") == jit_default
            finally:
                await other.close()
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncpg_transaction_and_savepoint(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await apg_connect(proxy)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("DROP TABLE IF EXISTS drv_apg_tx")
            await conn.execute("CREATE TABLE drv_apg_tx (id int PRIMARY KEY)")
            async with conn.transaction():
                await conn.execute("INSERT INTO drv_apg_tx VALUES ($1)", 1)
                with pytest.raises(asyncpg.UniqueViolationError):
                    async with conn.transaction():  # a savepoint
                        await conn.execute("INSERT INTO drv_apg_tx VALUES ($1)", 2)
                        await conn.execute("INSERT INTO drv_apg_tx VALUES ($1)", 1)
                async with conn.transaction():
                    await conn.execute("INSERT INTO drv_apg_tx VALUES ($1)", 3)
                assert conn.is_in_transaction()
            assert not conn.is_in_transaction()
            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO drv_apg_tx VALUES ($1)", 4)
                    raise ZeroDivisionError
            tr = conn.transaction()
            await tr.start()
            await conn.execute("INSERT INTO drv_apg_tx VALUES ($1)", 5)
            await tr.rollback()
            rows = await conn.fetch("SELECT id FROM drv_apg_tx ORDER BY id")
            assert [r["id"] for r in rows] == [1, 3]
            other = await apg_connect(proxy)
            try:
                assert await other.fetchval("SELECT pg_backend_pid()") == pid
            finally:
                await other.close()
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncpg_copy_and_executemany(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await apg_connect(proxy)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("DROP TABLE IF EXISTS drv_apg_copy")
            await conn.execute("CREATE TABLE drv_apg_copy (id int PRIMARY KEY, val text)")
            records = [(i, f"rec {i}") for i in range(5000)]
            status = await conn.copy_records_to_table("drv_apg_copy", records=records,
                                                      columns=["id", "val"])
            assert status == "COPY 5000"
            assert await conn.fetchval("SELECT sum(id) FROM drv_apg_copy") == 5000 * 4999 // 2

            chunks: list[bytes] = []

            async def sink(chunk: bytes) -> None:
                chunks.append(bytes(chunk))

            status = await conn.copy_from_query(
                "SELECT id, val FROM drv_apg_copy WHERE id < $1 ORDER BY id", 1000,
                output=sink, format="csv")
            assert status == "COPY 1000"
            assert b"".join(chunks) == "".join(
                f"{i},rec {i}\n" for i in range(1000)).encode()

            await conn.executemany("UPDATE drv_apg_copy SET val = $2 WHERE id = $1",
                                   [(i, f"upd {i}") for i in range(0, 5000, 5)])
            await conn.executemany("INSERT INTO drv_apg_copy VALUES ($1, $2)",
                                   [(i, "new") for i in range(5000, 6000)])
            assert await conn.fetchval("SELECT count(*) FROM drv_apg_copy WHERE val LIKE 'upd%'"
                                       ) == 1000
            assert await conn.fetchval("SELECT count(*) FROM drv_apg_copy") == 6000
            # executemany that fails half-way is atomic, then the connection is usable.
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.executemany("INSERT INTO drv_apg_copy VALUES ($1, $2)",
                                       [(i, "again") for i in range(6000, 6010)] + [(1, "dup")])
            assert await conn.fetchval("SELECT count(*) FROM drv_apg_copy") == 6000
            other = await apg_connect(proxy)
            try:
                assert await other.fetchval("SELECT pg_backend_pid()") == pid
            finally:
                await other.close()
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncpg_copy_data_sent_before_copy_in_response(proxy: ProxyProcess) -> None:
    """asyncpg writes Query, CopyData and CopyDone in one go, without waiting for the server's
    CopyInResponse; the COPY must still end (and the server go back to the pool) normally."""
    async def main() -> None:
        conn = await apg_connect(proxy)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("DROP TABLE IF EXISTS drv_apg_small_copy")
            await conn.execute("CREATE TABLE drv_apg_small_copy (id int, val text)")

            async def server_is_free() -> None:
                other = await apg_connect(proxy)
                try:
                    assert await asyncio.wait_for(
                        other.fetchval("SELECT pg_backend_pid()"), QUERY_WAIT + 5) == pid
                finally:
                    await other.close()

            # Whether the CopyDone reaches the proxy before the CopyInResponse is a race, so
            # try it several times.
            for round_ in range(8):
                status = await conn.copy_records_to_table(
                    "drv_apg_small_copy", records=[(round_, "r"), (round_ + 10, "s")])
                assert status == "COPY 2"
                await server_is_free()
                status = await conn.copy_to_table(
                    "drv_apg_small_copy", source=io.BytesIO(f"{round_ + 100}\tt\n".encode()))
                assert status == "COPY 1"
                await server_is_free()
            assert await conn.fetchval("SELECT count(*) FROM drv_apg_small_copy") == 24
        finally:
            await conn.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- authentication


def test_md5_client_auth(proxy: ProxyProcess) -> None:
    conn_dsn = dsn(proxy, listener="md5", user="app_md5", password="md5-secret")
    with psycopg.connect(conn_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "app_md5", "app")
    # asyncpg implements md5 itself (not libpq).
    async def main() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port("md5"), user="app_md5",
                                     password="md5-secret", database="app")
        try:
            assert await conn.fetchval("SELECT current_user") == "app_md5"
        finally:
            await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(host="127.0.0.1", port=proxy.port("md5"), user="app_md5",
                                  password="wrong", database="app")

    asyncio.run(main())
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn(proxy, listener="md5", user="app_md5", password="nope"))


def test_trust_client_auth(proxy: ProxyProcess) -> None:
    with psycopg.connect(dsn(proxy, listener="trust", password=None), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    with psycopg.connect(dsn(proxy, listener="trust", user="app_trust", password=None),
                         autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app_trust",)


def test_wrong_password_is_28P01(proxy: ProxyProcess) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn(proxy, password="wrong-secret"), connect_timeout=10)
    exc = info.value
    if exc.sqlstate is not None:
        assert exc.sqlstate == "28P01"
    assert 'password authentication failed for user "app"' in str(exc)
    # Unknown users fail the same way (no user enumeration).
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn(proxy, user="nobody", password="x"), connect_timeout=10)

    async def main() -> None:
        with pytest.raises(asyncpg.InvalidPasswordError) as ainfo:
            await asyncpg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                                  password="wrong-secret", database="app")
        assert ainfo.value.sqlstate == "28P01"

    asyncio.run(main())
    # ...and the proxy is fine afterwards.
    with connect(proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
