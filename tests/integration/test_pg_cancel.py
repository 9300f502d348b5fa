"""CancelRequest through the proxy: the proxy hands out its own BackendKeyData,
maps a cancel to the server the client holds right now, drops it when the client holds none,
and never cancels another client's query."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from tests.harness import PgServer, make_config, pg_listener


def proxy_dsn(pg: PgServer, port: int) -> str:
    return pg.dsn("app", "app-secret", "app", port=port)


def wait_active_sleep(pg: PgServer, pattern: str, timeout: float = 5.0) -> None:
    """Wait until a query LIKE `pattern` of user app is running on the server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state = 'active'"
            " AND query LIKE %s", (pattern,))
        if rows[0][0]:
            return
        time.sleep(0.02)
    pytest.fail(f"no query like {pattern!r} started on the server")


def run_in_thread(fn: Any) -> Future[Any]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


def timed_query(dsn: str, sql: str) -> tuple[Any, float]:
    """Connect, run `sql`, return (first row, seconds the query took)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.monotonic()
        row = conn.execute(sql).fetchone()
        return row, time.monotonic() - started


def test_cancel_long_query_leaves_other_client_alone(pg_server: PgServer, pg_proxy: Any) -> None:
    dsn = proxy_dsn(pg_server, pg_proxy.port("pg"))
    victim = psycopg.connect(dsn, autocommit=True)
    other = psycopg.connect(dsn, autocommit=True)
    try:
        # The proxy's own key, not the server's: the pid is not a backend of the server.
        backend = victim.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        assert victim.info.backend_pid != backend

        def other_client() -> tuple[Any, Any]:
            first = other.execute("SELECT 6 FROM pg_sleep(1)").fetchone()
            return first, other.execute("SELECT 1").fetchone()

        def victim_query() -> Any:
            return victim.execute("SELECT pg_sleep(30)").fetchone()

        victim_future = run_in_thread(victim_query)
        wait_active_sleep(pg_server, "SELECT pg_sleep(30)%")
        other_future = run_in_thread(other_client)
        wait_active_sleep(pg_server, "SELECT 6 FROM pg_sleep(1)%")
        started = time.monotonic()
        canceller = threading.Thread(target=victim.cancel)
        canceller.start()
        canceller.join(5)
        with pytest.raises(errors.QueryCanceled) as excinfo:
            victim_future.result(timeout=5)
        assert time.monotonic() - started < 2.0
        assert excinfo.value.sqlstate == "57014"
        # The other client, on another server connection, was not touched.
        assert other_future.result(timeout=10) == ((6,), (1,))
        # The cancelled client goes on.
        assert victim.execute("SELECT 2").fetchone() == (2,)
    finally:
        victim.close()
        other.close()


def test_cancel_of_idle_client_is_dropped(pg_server: PgServer, proxy_factory: Any) -> None:
    # One server connection: the idle client's cancel, if forwarded, would hit the busy one's
    # query on the very server they share.
    proxy = proxy_factory.start(make_config(pg_listener(pg_server, pool_size=1), admin=False))
    dsn = proxy_dsn(pg_server, proxy.port("pg"))
    idle = psycopg.connect(dsn, autocommit=True)
    try:
        assert idle.execute("SELECT 1").fetchone() == (1,)  # logged in, between transactions
        busy_future = run_in_thread(lambda: timed_query(dsn, "SELECT 6 FROM pg_sleep(1)"))
        wait_active_sleep(pg_server, "SELECT 6 FROM pg_sleep(1)%")
        idle.cancel()
        time.sleep(0.2)
        idle.cancel()  # a second one, for good measure
        row, took = busy_future.result(timeout=10)
        assert row == (6,), "the busy client's query was cancelled by another client"
        assert took >= 0.9
        # The idle client's next query works (nothing cancels it later either).
        assert idle.execute("SELECT 7 FROM pg_sleep(0.3)").fetchone() == (7,)
        with idle.transaction():
            assert idle.execute("SELECT 8").fetchone() == (8,)
    finally:
        idle.close()
    assert proxy.is_running()


def test_cancel_with_wrong_secret_is_ignored(pg_server: PgServer, pg_proxy: Any) -> None:
    port = pg_proxy.port("pg")
    dsn = proxy_dsn(pg_server, port)
    with psycopg.connect(dsn, autocommit=True) as conn:
        key = conn.info.backend_pid
        future = run_in_thread(lambda: conn.execute("SELECT 5 FROM pg_sleep(1)").fetchone())
        wait_active_sleep(pg_server, "SELECT 5 FROM pg_sleep(1)%")
        for secret in (0, 1, 0xFFFFFFFF):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(struct.pack("!IIII", 16, 80877102, key, secret))
                sock.settimeout(5)
                assert sock.recv(100) == b""  # the proxy closes without an answer
        assert future.result(timeout=10) == (5,)


def test_asyncpg_timeout_cancels_and_connection_stays_usable(
    pg_server: PgServer, pg_proxy: Any
) -> None:
    async def main() -> tuple[float, float]:
        conn = await asyncpg.connect(host="127.0.0.1", port=pg_proxy.port("pg"), user="app",
                                     password="app-secret", database="app")
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.fetch("select pg_sleep(10)"), 0.5)
            # The next query waits for the cancel of the previous one: if the cancel was lost,
            # this takes the rest of the 10 s.
            assert await conn.fetchval("select 1") == 1
            elapsed = time.monotonic() - started
            async with conn.transaction():
                assert await conn.fetchval("select $1::int + 1", 41) == 42
            assert await conn.fetch("select generate_series(1, 3) AS x") == [
                (1,), (2,), (3,)]
            # And again, inside a transaction this time.
            started2 = time.monotonic()
            tr = conn.transaction()
            await tr.start()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.execute("select pg_sleep(10)"), 0.3)
            with pytest.raises(asyncpg.InFailedSQLTransactionError):
                await conn.fetchval("select 1")
            await tr.rollback()
            assert await conn.fetchval("select 3") == 3
            return elapsed, time.monotonic() - started2
        finally:
            await conn.close()

    elapsed, elapsed2 = asyncio.run(main())
    assert elapsed < 3.0
    assert elapsed2 < 3.0
    rows = pg_server.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
                             " AND query LIKE 'select pg_sleep(10)%' AND state = 'active'")
    assert rows == [(0,)], "a cancelled query is still running on the server"
