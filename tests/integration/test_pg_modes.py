"""PostgreSQL pool modes through a running proxy: session, statement, and transaction (baseline).

- session: a client keeps its backend (same ``pg_backend_pid()``) for its whole connection while
  another client gets another backend; when it leaves, DISCARD ALL resets the backend before
  the next client gets it (``pool_size: 1`` forces the reuse).
- statement: autocommit statements share one backend between clients; a transaction block
  is refused with a clear error that names statement pooling, and the backend is not lost.
- transaction: two clients alternating transactions share the one backend of ``pool_size: 1``.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import PgServer, ProxyProcess, make_config, pg_listener


def start(proxy_factory: Any, pg_server: PgServer, mode: str, pool_size: int,
          admin: bool = False) -> ProxyProcess:
    return proxy_factory(make_config(
        pg_listener(pg_server, pool_mode=mode, pool_size=pool_size, query_wait_timeout="5s"),
        admin=admin))


def connect(proxy: ProxyProcess, **kwargs: Any) -> psycopg.Connection[Any]:
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                           password="app-secret", dbname="app", connect_timeout=5, **kwargs)


def pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def show(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


def idle_in_transaction(pg_server: PgServer) -> int:
    rows = pg_server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
        " AND state LIKE 'idle in transaction%'")
    return int(rows[0][0])


# --------------------------------------------------------------------------- session


def test_session_mode_client_keeps_its_backend(pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = start(proxy_factory, pg_server, "session", pool_size=2)
    a = connect(proxy)
    b = connect(proxy)
    try:
        a_pid = pid(a)
        b_pid = pid(b)
        assert a_pid != b_pid, "two concurrent session-mode clients share a backend"
        for _ in range(3):
            with a.transaction():
                assert pid(a) == a_pid
            assert pid(b) == b_pid
            assert pid(a) == a_pid, "session mode: a client keeps its backend between transactions"
        # Session state survives between transactions (it is the client's own backend).
        a.execute("SET work_mem = '7MB'")
        b.execute("SELECT 1")
        assert show(a, "work_mem") == "7MB"
    finally:
        a.close()
        b.close()


def test_session_mode_discard_all_between_clients(pg_server: PgServer,
                                                  proxy_factory: Any) -> None:
    default_work_mem = pg_server.execute("SHOW work_mem")[0][0]
    assert default_work_mem != "7MB"
    proxy = start(proxy_factory, pg_server, "session", pool_size=1)
    with connect(proxy) as first:
        first_pid = pid(first)
        first.execute("SET work_mem = '7MB'")
        first.execute("PREPARE pp_session_stmt AS SELECT 42")
        first.execute("CREATE TEMP TABLE pp_session_tmp (x int)")
        assert show(first, "work_mem") == "7MB"
    with connect(proxy) as second:
        assert pid(second) == first_pid, "pool_size 1: the next client must reuse the backend"
        assert show(second, "work_mem") == default_work_mem, "SET leaked to the next client"
        assert second.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'pp_session_stmt'"
        ).fetchone() == (0,)
        assert second.execute(
            "SELECT to_regclass('pg_temp.pp_session_tmp') IS NULL").fetchone() == (True,)


def test_session_mode_second_client_waits_for_the_first(pg_server: PgServer,
                                                        proxy_factory: Any) -> None:
    """pool_size 1 in session mode: the backend is held while the first client is connected;
    the second client gets it when the first leaves."""
    proxy = start(proxy_factory, pg_server, "session", pool_size=1)
    first = connect(proxy)
    second = connect(proxy)
    try:
        first_pid = pid(first)
        result: dict[str, Any] = {}

        def second_query() -> None:
            try:
                result["pid"] = pid(second)
            except Exception as exc:  # reported below
                result["error"] = exc

        thread = threading.Thread(target=second_query, daemon=True)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive(), f"second client was served while the first held: {result}"
        assert pid(first) == first_pid
        first.close()
        thread.join(4.0)
        assert result == {"pid": first_pid}
    finally:
        first.close()
        second.close()


def test_session_mode_counts_transactions(pg_server: PgServer, proxy_factory: Any) -> None:
    """Transactions happen in session mode too: poolproxy_transactions_total counts them."""
    proxy = start(proxy_factory, pg_server, "session", pool_size=1, admin=True)
    with connect(proxy) as conn:
        for _ in range(5):
            conn.execute("SELECT 1")
        url = f"http://127.0.0.1:{proxy.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("listener") == "pg" and s.labels.get("user") == "app":
                values[s.name] = s.value
    assert values["poolproxy_queries_total"] == 5
    assert values["poolproxy_transactions_total"] == 5


# --------------------------------------------------------------------------- statement


def test_statement_mode_autocommit_statements_share_one_server(
        pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = start(proxy_factory, pg_server, "statement", pool_size=1)
    a = connect(proxy)
    b = connect(proxy)
    try:
        pids = set()
        # 8 runs: past psycopg's default prepare_threshold (5), so both clients also run the
        # query as a named prepared statement on the shared backend.
        for i in range(8):
            assert a.execute("SELECT %s::int", (i,)).fetchone() == (i,)
            assert b.execute("SELECT %s::int", (i * 2,)).fetchone() == (i * 2,)
            pids.add(pid(a))
            pids.add(pid(b))
        assert len(pids) == 1, f"pool_size 1: one backend for both clients, got {pids}"
    finally:
        a.close()
        b.close()


def _refused_transaction(conn: psycopg.Connection[Any]) -> psycopg.Error:
    """BEGIN, then a second statement: one of them must fail; the error."""
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return exc
    pytest.fail("a transaction block was accepted in statement pooling mode")


def test_statement_mode_refuses_transaction_blocks(pg_server: PgServer,
                                                   proxy_factory: Any) -> None:
    proxy = start(proxy_factory, pg_server, "statement", pool_size=1)
    other = connect(proxy)
    try:
        server_pid = pid(other)
        conn = connect(proxy)
        try:
            exc = _refused_transaction(conn)
        finally:
            conn.close()
        assert "statement pooling" in str(exc), repr(exc)
        assert exc.sqlstate in (None, "0A000"), exc.sqlstate
        # The backend was not leaked: the other client still works, on the same backend
        # (pool_size 1), outside any transaction.
        assert other.execute("SELECT 7").fetchone() == (7,)
        assert pid(other) == server_pid
        assert other.execute("SELECT now() = statement_timestamp()").fetchone() == (True,), (
            "the backend is still inside the refused transaction")
        deadline = time.monotonic() + 3
        while idle_in_transaction(pg_server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert idle_in_transaction(pg_server) == 0
        # And a new client too.
        with connect(proxy) as again:
            assert pid(again) == server_pid
    finally:
        other.close()
    assert "Traceback" not in proxy.log_text(), proxy.log_tail()


def test_statement_mode_implicit_transaction_of_a_non_autocommit_driver(
        pg_server: PgServer, proxy_factory: Any) -> None:
    """psycopg without autocommit sends BEGIN itself: refused the same way, server kept."""
    proxy = start(proxy_factory, pg_server, "statement", pool_size=1)
    conn = connect(proxy, autocommit=False)
    try:
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT 1")
            conn.execute("SELECT 2")
        assert "statement pooling" in str(err.value), repr(err.value)
    finally:
        conn.close()
    with connect(proxy) as again:
        assert again.execute("SELECT 3").fetchone() == (3,)


# --------------------------------------------------------------------------- transaction


def test_transaction_mode_clients_alternate_on_one_backend(
        pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = start(proxy_factory, pg_server, "transaction", pool_size=1)
    a = connect(proxy)
    b = connect(proxy)
    try:
        pids = []
        for i in range(4):
            for conn in (a, b):
                with conn.transaction():
                    pids.append(pid(conn))
                    assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
                    assert pid(conn) == pids[-1], "a backend changed inside a transaction"
        assert len(set(pids)) == 1, f"pool_size 1: one backend for both clients, got {pids}"
        assert len(pids) == 8
    finally:
        a.close()
        b.close()
