"""Transaction pooling under load and clients that leave at the wrong moment.

- 500 asyncpg clients share 5 server connections: every transaction counts exactly once and
  PostgreSQL never sees more than `pool_size` backends of the user.
- A client that vanishes inside a transaction: ROLLBACK, and the same backend is reused.
- A client that vanishes in the middle of a query does not break the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.harness import PgServer, make_config, pg_listener
from tests.harness.util import BackgroundLoop, shutdown_socket

CLIENTS = 500
TRANSACTIONS = 20
POOL_SIZE = 5


@pytest.fixture(scope="module")
def counter_table(pg_server: PgServer) -> str:
    pg_server.execute(
        "CREATE TABLE IF NOT EXISTS pool_counter (id int PRIMARY KEY, n bigint NOT NULL)",
        dbname="app")
    pg_server.execute("GRANT ALL ON pool_counter TO app", dbname="app")
    return "pool_counter"


def set_counter(pg: PgServer, row: int, value: int = 0) -> None:
    pg.execute("INSERT INTO pool_counter VALUES (%s, %s)"
               " ON CONFLICT (id) DO UPDATE SET n = excluded.n", (row, value), dbname="app")


def get_counter(pg: PgServer, row: int) -> int:
    return int(pg.execute("SELECT n FROM pool_counter WHERE id = %s", (row,), dbname="app")[0][0])


def app_backends(conn: psycopg.Connection[Any], state: str | None = None) -> int:
    sql = ("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
           " AND backend_type = 'client backend'")
    if state is not None:
        sql += f" AND state = '{state}'"
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


class BackendSampler(BackgroundLoop):
    """Counts user app's backends in pg_stat_activity every 50 ms from a superuser connection
    in a thread of its own (the client event loop is too busy to sample on time)."""

    def __init__(self, pg: PgServer, interval: float = 0.05) -> None:
        super().__init__(interval)
        self.conn = psycopg.connect(pg.dsn(dbname="app"), autocommit=True)
        self.samples: list[int] = []

    def step(self) -> None:
        self.samples.append(app_backends(self.conn))

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def no_app_backends(pg_server: PgServer) -> None:
    """Backends of user app left by earlier tests (their proxies are stopped) must be gone,
    or they would be counted as this test's."""
    assert pg_server.wait_backend_count("app", 0) == 0


# --------------------------------------------------------------------------- 500 clients


async def _many_clients(port: int) -> tuple[list[BaseException], float]:
    async def client(i: int) -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user="app", password="app-secret", database="app",
            timeout=60, command_timeout=60)
        try:
            for _ in range(TRANSACTIONS):
                async with conn.transaction():
                    await conn.execute("SELECT n FROM pool_counter WHERE id = 1 FOR UPDATE")
                    await conn.execute("UPDATE pool_counter SET n = n + 1 WHERE id = 1")
        finally:
            await conn.close()

    started = time.monotonic()
    results = await asyncio.gather(*(client(i) for i in range(CLIENTS)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    return errors, time.monotonic() - started


def test_500_clients_share_5_server_connections(
    pg_server: PgServer, proxy_factory: Any, counter_table: str, no_app_backends: None
) -> None:
    set_counter(pg_server, 1, 0)
    proxy = proxy_factory.start(make_config(pg_listener(
        pg_server, pool_size=POOL_SIZE, query_wait_timeout="60s"), admin=False))
    with BackendSampler(pg_server) as sampler:
        errors, elapsed = asyncio.run(_many_clients(proxy.port("pg")))
    assert not errors, (
        f"{len(errors)} of {CLIENTS} clients failed, e.g. {errors[:3]!r}")
    assert get_counter(pg_server, 1) == CLIENTS * TRANSACTIONS
    # Enough samples to mean something, and the sampler did see the pool at work.
    assert len(sampler.samples) >= min(20, elapsed / 0.05 / 4), sampler.samples
    assert max(sampler.samples) > 0, "the sampler never saw a server connection"
    assert max(sampler.samples) <= POOL_SIZE, (
        f"PostgreSQL saw {max(sampler.samples)} backends of user app with pool_size "
        f"{POOL_SIZE}; samples: {sampler.samples}")
    assert proxy.is_running()


# --------------------------------------------------------------------------- clients that leave


@pytest.fixture
def pool1_proxy(pg_server: PgServer, proxy_factory: Any, counter_table: str,
                no_app_backends: None) -> Iterator[Any]:
    proxy = proxy_factory.start(make_config(pg_listener(pg_server, pool_size=1), admin=False))
    yield proxy


def proxy_dsn(pg: PgServer, proxy: Any) -> str:
    return pg.dsn("app", "app-secret", "app", port=proxy.port("pg"))


def vanish(conn: psycopg.Connection[Any], how: str) -> None:
    """Leave without COMMIT: `terminate` = a polite close (Terminate message); `shutdown` = the
    socket is shut down under libpq (FIN, no Terminate), as when a process dies."""
    if how == "terminate":
        conn.close()
        return
    shutdown_socket(conn.fileno())
    try:
        conn.close()
    except psycopg.Error:
        pass


@pytest.mark.parametrize("how", ["terminate", "shutdown"])
def test_client_leaving_inside_transaction_rolls_back_and_reuses_server(
    pg_server: PgServer, pool1_proxy: Any, how: str
) -> None:
    set_counter(pg_server, 2, 100)
    dsn = proxy_dsn(pg_server, pool1_proxy)
    conn = psycopg.connect(dsn)
    conn.execute("BEGIN")  # psycopg would BEGIN anyway; make it explicit
    pid_before = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    conn.execute("UPDATE pool_counter SET n = n + 1 WHERE id = 2")
    with psycopg.connect(pg_server.dsn(dbname="app"), autocommit=True) as watch:
        assert app_backends(watch, "idle in transaction") == 1
        vanish(conn, how)
        deadline = time.monotonic() + 2.0
        while app_backends(watch, "idle in transaction") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert app_backends(watch, "idle in transaction") == 0, (
            "the abandoned transaction is still open on the server")
        # The row lock is gone and the change was rolled back.
        assert get_counter(pg_server, 2) == 100
        assert app_backends(watch) == 1, "the server connection was closed, not reused"
    with psycopg.connect(dsn, autocommit=True) as conn2:
        pid_after = conn2.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        assert conn2.execute("SELECT n FROM pool_counter WHERE id = 2").fetchone() == (100,)
        conn2.execute("UPDATE pool_counter SET n = n + 1 WHERE id = 2")
    assert pid_after == pid_before, "the proxy opened a new server connection instead of reusing"
    assert get_counter(pg_server, 2) == 101


def test_client_killed_during_long_query_does_not_break_pool(
    pg_server: PgServer, pool1_proxy: Any
) -> None:
    dsn = proxy_dsn(pg_server, pool1_proxy)
    conn = psycopg.connect(dsn, autocommit=True)
    conn.pgconn.send_query(b"SELECT pg_sleep(2)")
    conn.pgconn.flush()
    with psycopg.connect(pg_server.dsn(dbname="app"), autocommit=True) as watch:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            row = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
                " AND state = 'active' AND query LIKE 'SELECT pg_sleep%'").fetchone()
            if row and row[0]:
                break
            time.sleep(0.02)
        else:
            pytest.fail("pg_sleep(2) never started on the server")
    started = time.monotonic()
    vanish(conn, "shutdown")
    # The only server connection is busy in a dead client's query: the next client must still
    # get a server (a fresh one, or the old one once the query is over) and work.
    for _ in range(3):
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn2:
            assert conn2.execute("SELECT 41 + 1").fetchone() == (42,)
            with conn2.transaction():
                assert conn2.execute("SELECT 1").fetchone() == (1,)
    assert time.monotonic() - started < 10
    # And the pool stays at its size.
    assert pg_server.wait_backend_count("app", 1, timeout=5) == 1
    assert pool1_proxy.is_running()
