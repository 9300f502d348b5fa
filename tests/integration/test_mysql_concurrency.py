"""MySQL transaction pooling under load, and clients that leave at the wrong moment.

- 500 aiomysql clients share 5 server connections: every transaction counts exactly once and
  MariaDB never sees more than `pool_size` connections of the user (sampled every 50 ms).
- A client that vanishes inside a transaction: its change is rolled back and the same server
  connection (same CONNECTION_ID()) serves the next client.
- A client that vanishes while a large result is streaming does not break the pool.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import aiomysql
import pymysql
import pytest

from tests.harness import MariaDbServer, make_config, mysql_listener
from tests.harness.util import BackgroundLoop, shutdown_socket, wait_for

CLIENTS = 500
TRANSACTIONS = 20
POOL_SIZE = 5


@pytest.fixture(scope="module")
def counter_table(mariadb_server: MariaDbServer) -> str:
    mariadb_server.execute(
        "CREATE TABLE IF NOT EXISTS app.pool_counter (id INT PRIMARY KEY, n BIGINT NOT NULL)"
        " ENGINE=InnoDB")
    return "pool_counter"


def set_counter(my: MariaDbServer, row: int, value: int = 0) -> None:
    my.execute("INSERT INTO app.pool_counter VALUES (%s, %s) ON DUPLICATE KEY UPDATE n = VALUES(n)",
               (row, value))


def get_counter(my: MariaDbServer, row: int) -> int:
    return int(my.execute("SELECT n FROM app.pool_counter WHERE id = %s", (row,))[0][0])


def app_connection_ids(my: MariaDbServer) -> set[int]:
    rows = my.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'app'")
    return {int(r[0]) for r in rows}


def open_transactions(my: MariaDbServer, thread_id: int) -> int:
    rows = my.execute("SELECT COUNT(*) FROM information_schema.INNODB_TRX"
                      " WHERE trx_mysql_thread_id = %s", (thread_id,))
    return int(rows[0][0])


def row_lock_free(my: MariaDbServer, row: int) -> bool:
    """True if a root session can lock the counter row within a second."""
    conn = my.connect(database="app")
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
            cur.execute("BEGIN")
            try:
                cur.execute("SELECT n FROM pool_counter WHERE id = %s FOR UPDATE", (row,))
            except pymysql.err.OperationalError as exc:
                if exc.args[0] == 1205:  # lock wait timeout
                    return False
                raise
            cur.execute("ROLLBACK")
            return True
    finally:
        conn.close()


class ConnectionSampler(BackgroundLoop):
    """Counts user app's connections in information_schema.PROCESSLIST every 50 ms from a root
    connection in a thread of its own (the client event loop is too busy to sample on time)."""

    def __init__(self, my: MariaDbServer, interval: float = 0.05) -> None:
        super().__init__(interval)
        self.conn = my.connect()
        self.samples: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            super().run()
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc

    def step(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'")
            self.samples.append(int(cur.fetchone()[0]))

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def no_app_connections(mariadb_server: MariaDbServer) -> None:
    """Connections of user app left by earlier tests (their proxies are stopped) must be gone,
    or they would be counted as this test's."""
    assert mariadb_server.wait_connection_count("app", 0, timeout=10) == 0


# --------------------------------------------------------------------------- 500 clients


async def _many_clients(port: int, mode: str) -> tuple[list[BaseException], float]:
    async def client(i: int) -> None:
        conn = await aiomysql.connect(
            host="127.0.0.1", port=port, user="app", password="app-secret", db="app",
            autocommit=(mode == "begin_commit"), connect_timeout=60)
        try:
            async with conn.cursor() as cur:
                for _ in range(TRANSACTIONS):
                    if mode == "begin_commit":
                        await cur.execute("BEGIN")
                        await cur.execute("UPDATE pool_counter SET n = n + 1 WHERE id = 1")
                        await cur.execute("COMMIT")
                    else:  # autocommit off: the UPDATE opens the transaction
                        await cur.execute("UPDATE pool_counter SET n = n + 1 WHERE id = 1")
                        await conn.commit()
        finally:
            await conn.ensure_closed()

    started = time.monotonic()
    results = await asyncio.gather(*(client(i) for i in range(CLIENTS)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    return errors, time.monotonic() - started


@pytest.mark.parametrize("mode", ["begin_commit", "autocommit_off"])
def test_500_clients_share_5_server_connections(
    mariadb_server: MariaDbServer, proxy_factory: Any, counter_table: str,
    no_app_connections: None, mode: str,
) -> None:
    set_counter(mariadb_server, 1, 0)
    proxy = proxy_factory.start(make_config(mysql_listener(
        mariadb_server, pool_size=POOL_SIZE, query_wait_timeout="60s")))
    with ConnectionSampler(mariadb_server) as sampler:
        errors, elapsed = asyncio.run(_many_clients(proxy.port("mysql"), mode))
    assert sampler.error is None, f"the sampler failed: {sampler.error!r}"
    assert not errors, f"{len(errors)} of {CLIENTS} clients failed, e.g. {errors[:3]!r}"
    assert get_counter(mariadb_server, 1) == CLIENTS * TRANSACTIONS
    # Enough samples to mean something, and the sampler did see the pool at work.
    assert len(sampler.samples) >= min(20, elapsed / 0.05 / 4), sampler.samples
    assert max(sampler.samples) > 0, "the sampler never saw a server connection"
    assert max(sampler.samples) <= POOL_SIZE, (
        f"MariaDB saw {max(sampler.samples)} connections of user app with pool_size "
        f"{POOL_SIZE}; samples: {sampler.samples}")
    assert proxy.is_running()
    assert "Traceback" not in proxy.log_text()


# --------------------------------------------------------------------------- clients that leave


@pytest.fixture
def pool1_proxy(mariadb_server: MariaDbServer, proxy_factory: Any, counter_table: str,
                no_app_connections: None) -> Iterator[Any]:
    yield proxy_factory.start(make_config(mysql_listener(
        mariadb_server, pool_size=1, query_wait_timeout="10s")))


def proxy_connect(proxy: Any, **kwargs: Any) -> pymysql.connections.Connection:
    kwargs.setdefault("autocommit", True)
    return pymysql.connect(host="127.0.0.1", port=proxy.port("mysql"), user="app",
                           password="app-secret", database="app", connect_timeout=10,
                           read_timeout=30, **kwargs)


def scalar(conn: pymysql.connections.Connection, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
    assert row is not None
    return row[0]


def vanish(conn: pymysql.connections.Connection, how: str) -> None:
    """Leave without COMMIT: `quit` = a polite close (COM_QUIT); `shutdown` = the socket is shut
    down under the driver (FIN, no COM_QUIT), as when a process dies."""
    if how == "quit":
        conn.close()
        return
    shutdown_socket(conn._sock.fileno())  # type: ignore[attr-defined]
    try:
        conn._force_close()  # type: ignore[attr-defined]
    except Exception:
        pass


@pytest.mark.parametrize("how", ["quit", "shutdown"])
@pytest.mark.parametrize("begin", ["begin", "autocommit_off"])
def test_client_leaving_inside_transaction_rolls_back_and_reuses_server(
    mariadb_server: MariaDbServer, pool1_proxy: Any, how: str, begin: str
) -> None:
    set_counter(mariadb_server, 2, 100)
    conn = proxy_connect(pool1_proxy, autocommit=(begin == "begin"))
    if begin == "begin":
        conn.begin()
    thread_id = int(scalar(conn, "SELECT CONNECTION_ID()"))
    with conn.cursor() as cur:
        cur.execute("UPDATE pool_counter SET n = n + 1 WHERE id = 2")
    assert open_transactions(mariadb_server, thread_id) == 1
    assert not row_lock_free(mariadb_server, 2)
    vanish(conn, how)
    # INNODB_TRX is served from a cache that is refreshed only when it has not been read for
    # 100 ms: poll it more slowly than that, or it never changes.
    assert wait_for(lambda: open_transactions(mariadb_server, thread_id) == 0, 5.0, 0.25), (
        "the abandoned transaction is still open on the server")
    assert row_lock_free(mariadb_server, 2), "the abandoned transaction still holds its row lock"
    # The row lock is gone and the change was rolled back.
    assert get_counter(mariadb_server, 2) == 100
    assert app_connection_ids(mariadb_server) == {thread_id}, (
        "the server connection was closed (or another opened) instead of being reused")
    conn2 = proxy_connect(pool1_proxy)
    try:
        assert int(scalar(conn2, "SELECT CONNECTION_ID()")) == thread_id, (
            "the proxy opened a new server connection instead of reusing")
        # The reset put the connection back in autocommit: nothing of the old session is left.
        assert int(scalar(conn2, "SELECT @@autocommit")) == 1
        assert int(scalar(conn2, "SELECT n FROM pool_counter WHERE id = 2")) == 100
        with conn2.cursor() as cur:
            cur.execute("UPDATE pool_counter SET n = n + 1 WHERE id = 2")
    finally:
        conn2.close()
    assert get_counter(mariadb_server, 2) == 101


def start_query_raw(conn: pymysql.connections.Connection, sql: str, nbytes: int) -> bytes:
    """Send COM_QUERY on the driver's socket and read the first `nbytes` of the response
    (the driver itself never sees it)."""
    sock: socket.socket = conn._sock  # type: ignore[attr-defined]
    payload = b"\x03" + sql.encode()
    sock.sendall(struct.pack("<I", len(payload))[:3] + b"\x00" + payload)
    received = b""
    while len(received) < nbytes:
        chunk = sock.recv(65536)
        assert chunk, f"EOF after {len(received)} bytes: {received[:200]!r}"
        received += chunk
    return received


@pytest.mark.parametrize("how", ["quit", "shutdown"])
def test_client_killed_while_big_result_streams_does_not_break_pool(
    mariadb_server: MariaDbServer, pool1_proxy: Any, how: str
) -> None:
    set_counter(mariadb_server, 3, 0)
    old_ids: set[int] = set()
    for _round in range(3):  # a leaked pool slot would make the second round time out
        conn = proxy_connect(pool1_proxy)
        old_ids.add(int(scalar(conn, "SELECT CONNECTION_ID()")))
        # ~100 MB in 1 MiB rows: far more than the socket buffers hold, so the server is still
        # writing when the client goes away.
        received = start_query_raw(conn, "SELECT REPEAT('x', 1048576) FROM seq_1_to_100", 256 * 1024)
        assert b"x" * 1024 in received, received[:200]
        vanish(conn, how)
        started = time.monotonic()
        conn2 = proxy_connect(pool1_proxy)
        try:
            with conn2.cursor() as c2:
                c2.execute("BEGIN")
                c2.execute("UPDATE pool_counter SET n = n + 1 WHERE id = 3")
                c2.execute("COMMIT")
                c2.execute("SELECT 1")
                assert c2.fetchone() == (1,)
            assert time.monotonic() - started < 5.0, "the next client waited for the pool"
        finally:
            conn2.close()
    assert get_counter(mariadb_server, 3) == 3
    # The connection that was streaming is not left behind on the server (pool_size 1).
    assert wait_for(lambda: len(app_connection_ids(mariadb_server)) <= 1, 5.0, 0.02), (
        f"server connections of app: {app_connection_ids(mariadb_server)} (old: {old_ids})")
    assert pool1_proxy.is_running()
    assert "Traceback" not in pool1_proxy.log_text()
