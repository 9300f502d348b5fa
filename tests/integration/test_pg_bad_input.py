"""Hostile and broken clients: each gets a clear ErrorResponse (or the
connection closed), and none of them disturbs a well-behaved client running transactions all
along, or the proxy itself."""

from __future__ import annotations

import asyncio
import random
import struct
import threading
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.harness import PgServer, ProxyProcess, make_config, pg_listener
from tests.harness.pgraw import (
    PROTOCOL_V3,
    Raw,
    assert_error_or_eof,
    error_fields,
    message,
    simple_query,
    startup_packet,
    trust_login,
)

SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSSENC_REQUEST = struct.pack("!II", 8, 80877104)


# --------------------------------------------------------------------------- fixtures


class SteadyClient:
    """A well-behaved client running small transactions in a thread, recording every error."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.errors: list[BaseException] = []
        self.transactions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = psycopg.connect(self.dsn)
        except BaseException as exc:
            self.errors.append(exc)
            return
        with conn:
            while not self._stop.is_set():
                try:
                    with conn.transaction():
                        conn.execute("UPDATE steady SET n = n + 1 WHERE id = 1")
                        row = conn.execute("SELECT n FROM steady WHERE id = 1").fetchone()
                        assert row is not None and row[0] > 0
                    self.transactions += 1
                except BaseException as exc:
                    self.errors.append(exc)
                    if conn.closed:
                        return
                self._stop.wait(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def proxy(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    pg_server.execute("CREATE TABLE IF NOT EXISTS steady (id int PRIMARY KEY, n bigint)",
                      dbname="app")
    pg_server.execute("INSERT INTO steady VALUES (1, 0) ON CONFLICT DO NOTHING", dbname="app")
    pg_server.execute("GRANT ALL ON steady TO app", dbname="app")
    config = make_config(
        pg_listener(pg_server, pool_size=3),
        pg_listener(pg_server, name="pg_db", databases={"app": {}}, pool_size=2),
        pg_listener(pg_server, name="pg_trust", auth={"type": "trust"}, pool_size=2),
        admin=False,
    )
    proc = ProxyProcess(config, tmp_path_factory.mktemp("bad_input_proxy"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def steady(pg_server: PgServer, proxy: ProxyProcess) -> Iterator[SteadyClient]:
    client = SteadyClient(pg_server.dsn("app", "app-secret", "app", port=proxy.port("pg")))
    client.start()
    deadline = time.monotonic() + 10
    while client.transactions < 5 and not client.errors and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.transactions >= 5 and not client.errors, client.errors
    yield client
    client.stop()


@pytest.fixture
def healthy(pg_server: PgServer, proxy: ProxyProcess, steady: SteadyClient) -> Iterator[None]:
    """Checks after the test body: the proxy is up and serves new clients, and the steady
    client kept running transactions without a single error."""
    before = steady.transactions
    yield
    assert proxy.is_running(), proxy.log_tail()
    with psycopg.connect(pg_server.dsn("app", "app-secret", "app", port=proxy.port("pg")),
                         connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    deadline = time.monotonic() + 5
    while steady.transactions <= before + 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert steady.errors == [], steady.errors
    assert steady.transactions > before + 3, "the steady client stalled"


def pg_dsn(pg: PgServer, proxy: ProxyProcess, listener: str = "pg", user: str = "app",
           password: str = "app-secret", dbname: str = "app") -> str:
    return pg.dsn(user, password, dbname, port=proxy.port(listener))


# --------------------------------------------------------------------------- garbage at startup


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_at_startup(proxy: ProxyProcess, healthy: None, seed: int) -> None:
    rnd = random.Random(seed)
    garbage = bytes(rnd.randrange(256) for _ in range(200))
    # The first 4 bytes are read as the packet length: random ones are absurd (> 10000), so
    # the proxy must answer now rather than wait for more bytes.
    assert not 8 <= struct.unpack_from("!I", garbage)[0] <= 10000
    raw = Raw(proxy.port("pg"))
    try:
        raw.send(garbage)
        assert_error_or_eof(raw.read_all(), "08P01")
    finally:
        raw.close()


@pytest.mark.parametrize("text", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n",
    b"POST /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,  # a TLS ClientHello
])
def test_other_protocols_at_startup(proxy: ProxyProcess, healthy: None, text: bytes) -> None:
    raw = Raw(proxy.port("pg"))
    try:
        raw.send(text)
        fields = assert_error_or_eof(raw.read_all(), "08P01")
        if fields is not None:
            assert fields["S"] == "FATAL"
    finally:
        raw.close()


@pytest.mark.parametrize("length", [0, 4, 7, 10001, 0x7FFFFFFF, 0xFFFFFFFF])
def test_absurd_startup_length(proxy: ProxyProcess, healthy: None, length: int) -> None:
    raw = Raw(proxy.port("pg"))
    try:
        raw.send(struct.pack("!II", length, PROTOCOL_V3) + b"user\x00app\x00\x00")
        assert_error_or_eof(raw.read_all(), "08P01")
    finally:
        raw.close()


@pytest.mark.parametrize("payload", [
    struct.pack("!I", 0x00020000) + b"user\x00app\x00\x00",  # protocol 2
    struct.pack("!I", PROTOCOL_V3) + b"user\x00app\x00",  # no terminator
    struct.pack("!I", PROTOCOL_V3) + b"user\x00\xff\xfe\x00\x00",  # not UTF-8
    struct.pack("!I", PROTOCOL_V3) + b"\x00",  # no user
    struct.pack("!II", 80877102, 1),  # a truncated CancelRequest
])
def test_malformed_startup_packet(proxy: ProxyProcess, healthy: None, payload: bytes) -> None:
    raw = Raw(proxy.port("pg"))
    try:
        raw.send(struct.pack("!I", len(payload) + 4) + payload)
        msgs = raw.read_all()
        if payload.startswith(struct.pack("!I", 80877102)):
            assert_error_or_eof(msgs, "08P01")
        else:
            assert msgs, "a malformed startup packet deserves an answer"
            assert_error_or_eof(msgs, "08P01")
    finally:
        raw.close()


# --------------------------------------------------------------------------- login errors


def test_wrong_password(pg_server: PgServer, proxy: ProxyProcess, healthy: None) -> None:
    with pytest.raises(psycopg.OperationalError, match='password authentication failed'):
        psycopg.connect(pg_dsn(pg_server, proxy, password="wrong"), connect_timeout=5)

    async def via_asyncpg() -> None:
        await asyncpg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                              password="wrong", database="app", timeout=5)

    with pytest.raises(asyncpg.InvalidPasswordError) as excinfo:
        asyncio.run(via_asyncpg())
    assert excinfo.value.sqlstate == "28P01"


def test_unknown_user(pg_server: PgServer, proxy: ProxyProcess, healthy: None) -> None:
    with pytest.raises(psycopg.OperationalError, match='password authentication failed'):
        psycopg.connect(pg_dsn(pg_server, proxy, user="nobody", password="x"),
                        connect_timeout=5)

    async def via_asyncpg() -> None:
        await asyncpg.connect(host="127.0.0.1", port=proxy.port("pg"), user="nobody",
                              password="x", database="app", timeout=5)

    with pytest.raises(asyncpg.InvalidPasswordError) as excinfo:
        asyncio.run(via_asyncpg())
    assert excinfo.value.sqlstate == "28P01"


def test_unknown_user_trust_listener(proxy: ProxyProcess, healthy: None) -> None:
    # Trust auth skips the password, not the user list (PgBouncer: "the user name must still
    # exist"): an unconfigured user must be refused before AuthenticationOk, not passed on to
    # the server (which may well trust it) in a pool of its own.
    raw = Raw(proxy.port("pg_trust"))
    try:
        raw.send(startup_packet({"user": "nobody", "database": "app"}))
        msgs = raw.read_all()
        assert msgs and msgs[-1][0] == b"E", msgs
        assert error_fields(msgs[-1][1])["C"] in ("28P01", "28000")
        assert (b"R", b"\x00\x00\x00\x00") not in msgs
    finally:
        raw.close()


def test_unknown_database_not_configured(pg_server: PgServer, proxy: ProxyProcess,
                                         healthy: None) -> None:
    raw = Raw(proxy.port("pg_db"))
    try:
        raw.send(startup_packet({"user": "app", "database": "nope"}))
        msgs = raw.read_all()
        fields = assert_error_or_eof(msgs, "3D000")
        assert fields is not None, "no ErrorResponse for an unknown database"
        assert "nope" in fields["M"]
    finally:
        raw.close()
    with pytest.raises(psycopg.OperationalError, match="nope"):
        psycopg.connect(pg_dsn(pg_server, proxy, "pg_db", dbname="nope"), connect_timeout=5)
    # The configured one works on that listener.
    with psycopg.connect(pg_dsn(pg_server, proxy, "pg_db"), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("app",)


@pytest.mark.parametrize("how", ["options", "param", "asyncpg"])
def test_unsupported_startup_parameter(pg_server: PgServer, proxy: ProxyProcess,
                                       healthy: None, how: str) -> None:
    if how == "asyncpg":
        async def via_asyncpg() -> None:
            await asyncpg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                                  password="app-secret", database="app", timeout=5,
                                  server_settings={"work_mem": "1MB"})

        with pytest.raises(asyncpg.FeatureNotSupportedError, match="work_mem") as excinfo:
            asyncio.run(via_asyncpg())
        assert excinfo.value.sqlstate == "0A000"
        return
    if how == "options":
        with pytest.raises(psycopg.OperationalError, match="work_mem"):
            psycopg.connect(pg_dsn(pg_server, proxy), options="-c work_mem=1MB",
                            connect_timeout=5)
        params = {"user": "app", "database": "app", "options": "-c work_mem=1MB"}
    else:
        params = {"user": "app", "database": "app", "work_mem": "1MB"}
    raw = Raw(proxy.port("pg"))
    try:
        raw.send(startup_packet(params))
        fields = assert_error_or_eof(raw.read_all(), "0A000")
        assert fields is not None, "no ErrorResponse for an unsupported startup parameter"
        assert "work_mem" in fields["M"], fields
    finally:
        raw.close()


def test_supported_startup_options_are_applied(pg_server: PgServer, proxy: ProxyProcess,
                                              healthy: None) -> None:
    # The positive control of the test above: reported parameters are accepted.
    with psycopg.connect(pg_dsn(pg_server, proxy), options="-c TimeZone=Asia/Tokyo",
                         application_name="bad-input-test", connect_timeout=5) as conn:
        assert conn.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
        assert conn.execute("SHOW application_name").fetchone() == ("bad-input-test",)


# --------------------------------------------------------------------------- after login


def test_oversized_message_after_login(proxy: ProxyProcess, healthy: None) -> None:
    raw = trust_login(proxy.port("pg_trust"))
    try:
        assert simple_query(raw, "SELECT 1")[-1] == (b"Z", b"I")
        raw.send(b"Q" + struct.pack("!I", 0x7FFFFFFF) + b"SELECT " + b"x" * 100)
        msgs = raw.read_all()
        assert msgs, "the proxy closed without telling the client why"
        fields = assert_error_or_eof(msgs, "08P01")
        assert fields is not None and fields["S"] == "FATAL"
    finally:
        raw.close()
    # The trust listener's pool is fine afterwards.
    raw = trust_login(proxy.port("pg_trust"))
    try:
        msgs = simple_query(raw, "SELECT 42")
        assert (b"D", b"\x00\x01\x00\x00\x00\x0242") in msgs
        assert msgs[-1] == (b"Z", b"I")
    finally:
        raw.close()


def test_invalid_message_length_after_login(proxy: ProxyProcess, healthy: None) -> None:
    raw = trust_login(proxy.port("pg_trust"))
    try:
        raw.send(b"Q" + struct.pack("!I", 2))
        fields = assert_error_or_eof(raw.read_all(), "08P01")
        assert fields is not None
    finally:
        raw.close()


@pytest.mark.parametrize("where", ["startup", "auth", "query", "query_in_transaction"])
def test_half_message_then_vanish(pg_server: PgServer, proxy: ProxyProcess, healthy: None,
                                  where: str) -> None:
    port = proxy.port("pg_trust")
    if where == "startup":
        raw = Raw(port)
        raw.send(startup_packet({"user": "app_trust", "database": "app"})[:13])
    elif where == "auth":
        raw = Raw(proxy.port("pg"))
        raw.send(startup_packet({"user": "app", "database": "app"}))
        msgs = raw.read_until(b"RE")
        assert msgs[-1][0] == b"R"
        raw.send(b"p\x00\x00\x00\x40SCRAM-SHA-256\x00")  # a SASLInitialResponse cut short
    else:
        raw = trust_login(port)
        if where == "query_in_transaction":
            assert simple_query(raw, "BEGIN")[-1] == (b"Z", b"T")
        raw.send(message(b"Q", b"SELECT 123456789\x00")[:9])
    time.sleep(0.1)
    raw.sock.close()
    # Every server of the trust pool (pool_size 2) is still usable, in parallel.
    clients = [trust_login(port) for _ in range(3)]
    try:
        for raw2 in clients[:2]:
            assert simple_query(raw2, "BEGIN")[-1] == (b"Z", b"T")
        # Both servers are taken: the third client waits for one.
        clients[2].send(message(b"Q", b"BEGIN\x00"))
        for i, raw2 in enumerate(clients[:2]):
            msgs = simple_query(raw2, f"SELECT {i}; COMMIT")
            assert msgs[-1] == (b"Z", b"I"), msgs
        assert clients[2].read_until(b"Z")[-1] == (b"Z", b"T")
        assert simple_query(clients[2], "COMMIT")[-1] == (b"Z", b"I")
    finally:
        for raw2 in clients:
            raw2.close()
    assert pg_server.wait_backend_count("app_trust", 2, timeout=5) <= 2


# --------------------------------------------------------------------------- SSL / GSS requests


@pytest.mark.parametrize("request_bytes", [SSL_REQUEST, GSSENC_REQUEST], ids=["ssl", "gssenc"])
def test_encryption_request_refused_then_login(proxy: ProxyProcess, healthy: None,
                                               request_bytes: bytes) -> None:
    raw = Raw(proxy.port("pg_trust"))
    try:
        raw.send(request_bytes)
        assert raw.recv_exact(1) == b"N"
        raw.send(startup_packet({"user": "app_trust", "database": "app"}))
        msgs = raw.read_until(b"ZE")
        assert msgs[0] == (b"R", b"\x00\x00\x00\x00") and msgs[-1] == (b"Z", b"I"), msgs
        msgs = simple_query(raw, "SELECT current_user")
        assert (b"D", b"\x00\x01\x00\x00\x00\x09app_trust") in msgs
    finally:
        raw.close()


def test_ssl_and_gss_request_then_login(proxy: ProxyProcess, healthy: None) -> None:
    # libpq's order with sslmode=prefer, gssencmode=prefer: GSSENC, then SSL, then startup.
    raw = Raw(proxy.port("pg_trust"))
    try:
        raw.send(GSSENC_REQUEST)
        assert raw.recv_exact(1) == b"N"
        raw.send(SSL_REQUEST)
        assert raw.recv_exact(1) == b"N"
        raw.send(startup_packet({"user": "app_trust", "database": "app"}))
        assert raw.read_until(b"ZE")[-1] == (b"Z", b"I")
    finally:
        raw.close()


def test_sslmode_prefer_with_psycopg(pg_server: PgServer, proxy: ProxyProcess,
                                     healthy: None) -> None:
    with psycopg.connect(pg_dsn(pg_server, proxy), sslmode="prefer", connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use is False
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn(pg_server, proxy), sslmode="require", connect_timeout=5)


# --------------------------------------------------------------------------- finally


def test_all_of_it_left_the_proxy_up(proxy: ProxyProcess, steady: SteadyClient) -> None:
    assert proxy.is_running()
    assert steady.errors == []
    assert steady.transactions > 50
    log = proxy.log_text()
    assert "Traceback" not in log, log[-4000:]
