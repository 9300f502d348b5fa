"""Hostile and broken MySQL clients: each gets a clear ERR packet (or the
connection closed), and none of them disturbs a well-behaved client running transactions all
along, or the proxy itself.

The raw protocol client here parses the proxy's bytes itself (not with the codec under test).
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tests.harness import MariaDbServer, ProxyProcess, make_config, mysql_listener
from tests.harness.rawsock import RawSocket
from tests.harness.util import BackgroundLoop

# Capability flags (spelled out here rather than imported from the codec under test).
CLIENT_LONG_PASSWORD = 1 << 0
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_SSL = 1 << 11
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_PLUGIN_AUTH = 1 << 19
RAW_CAPS = (CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS
            | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH)
COM_QUIT = 0x01
COM_QUERY = 0x03
COM_CHANGE_USER = 0x11
MAX_PAYLOAD = 0xFFFFFF
LOGIN_TIMEOUT = 2.0


# --------------------------------------------------------------------------- raw protocol


def scramble_native(password: str, nonce: bytes) -> bytes:
    if not password:
        return b""
    h1 = hashlib.sha1(password.encode()).digest()
    h2 = hashlib.sha1(h1).digest()
    h3 = hashlib.sha1(nonce + h2).digest()
    return bytes(a ^ b for a, b in zip(h1, h3, strict=True))


def header(length: int, seq: int) -> bytes:
    return struct.pack("<I", length)[:3] + bytes((seq & 0xFF,))


def packet(seq: int, payload: bytes) -> bytes:
    assert len(payload) < MAX_PAYLOAD
    return header(len(payload), seq) + payload


@dataclass
class Err:
    errno: int
    sqlstate: str
    message: str
    raw: bytes


def parse_err(payload: bytes) -> Err:
    assert payload[:1] == b"\xff", f"not an ERR packet: {payload[:64]!r}"
    errno = struct.unpack_from("<H", payload, 1)[0]
    if payload[3:4] == b"#":
        sqlstate, message = payload[4:9].decode(), payload[9:].decode("utf-8", "replace")
    else:
        sqlstate, message = "", payload[3:].decode("utf-8", "replace")
    return Err(errno, sqlstate, message, payload)


def lenenc(buf: bytes, pos: int) -> tuple[int | None, int]:
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFB:
        return None, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}[first]
    return int.from_bytes(buf[pos + 1:pos + 1 + size], "little"), pos + 1 + size


class RawClient(RawSocket):
    """A MySQL client socket speaking just enough protocol 4.1 to log in and run queries."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        super().__init__(port, timeout)
        self.nonce = b""
        self.server_caps = 0

    def read_packet(self) -> tuple[int, bytes] | None:
        """The next logical packet (continuations joined) as (seq, payload); None at EOF."""
        payload = b""
        first_seq: int | None = None
        while True:
            while len(self.buf) < 4:
                if not self._fill():
                    assert not self.buf and not payload, f"EOF inside a packet: {self.buf[:64]!r}"
                    return None
            length = int.from_bytes(self.buf[:3], "little")
            seq = self.buf[3]
            while len(self.buf) < 4 + length:
                if not self._fill():
                    raise AssertionError(f"EOF inside a packet of {length} bytes")
            payload += self.buf[4:4 + length]
            self.buf = self.buf[4 + length:]
            first_seq = seq if first_seq is None else first_seq
            if length < MAX_PAYLOAD:
                return first_seq, payload

    def read_err_or_eof(self) -> Err | None:
        """What a refused client must see: exactly one ERR packet then EOF, or just EOF."""
        pkt = self.read_packet()
        if pkt is None:
            return None
        err = parse_err(pkt[1])
        assert self.read_packet() is None, "the proxy kept the connection open after a fatal ERR"
        return err

    def greeting(self) -> bytes:
        pkt = self.read_packet()
        assert pkt is not None, "no greeting"
        seq, p = pkt
        assert seq == 0 and p[0] == 10, f"not a HandshakeV10: {p[:64]!r}"
        pos = p.index(b"\x00", 1) + 1 + 4  # server version, connection id
        part1 = p[pos:pos + 8]
        pos += 9
        caps = struct.unpack_from("<H", p, pos)[0]
        pos += 2
        caps |= struct.unpack_from("<H", p, pos + 3)[0] << 16
        auth_len = p[pos + 5]
        pos += 16
        part2 = p[pos:pos + max(13, auth_len - 8)].rstrip(b"\x00")
        self.nonce = part1 + part2
        self.server_caps = caps
        assert len(self.nonce) == 20, self.nonce
        return p

    def handshake_response(self, user: str, password: str, database: str | None = None,
                           caps: int = RAW_CAPS) -> bytes:
        if database:
            caps |= CLIENT_CONNECT_WITH_DB
        auth = scramble_native(password, self.nonce)
        body = struct.pack("<IIB", caps, 1 << 24, 45) + b"\x00" * 23
        body += user.encode() + b"\x00" + bytes((len(auth),)) + auth
        if database:
            body += database.encode() + b"\x00"
        body += b"mysql_native_password\x00"
        return body

    def login(self, user: str = "app", password: str = "app-secret",
              database: str | None = "app") -> Err | None:
        """Log in; None on success, the ERR otherwise."""
        self.greeting()
        self.send(packet(1, self.handshake_response(user, password, database)))
        pkt = self.read_packet()
        assert pkt is not None, "the proxy closed the connection during login"
        seq, payload = pkt
        assert seq == 2, f"reply to the handshake response has seq {seq}"
        if payload[:1] == b"\xff":
            return parse_err(payload)
        assert payload[:1] == b"\x00", f"expected OK after login: {payload[:64]!r}"
        return None

    def command(self, cmd: int, arg: bytes = b"") -> None:
        self.send(packet(0, bytes((cmd,)) + arg))

    def query(self, sql: str) -> list[list[bytes | None]]:
        """Run a text query (no DEPRECATE_EOF); its rows. Raises AssertionError on ERR."""
        self.command(COM_QUERY, sql.encode())
        pkt = self.read_packet()
        assert pkt is not None, f"EOF in reply to {sql!r}"
        first = pkt[1]
        if first[:1] == b"\xff":
            raise AssertionError(f"{sql!r} failed: {parse_err(first)}")
        if first[:1] == b"\x00":
            return []
        ncols, _ = lenenc(first, 0)
        assert ncols
        for _ in range(ncols):
            assert self.read_packet() is not None
        eof = self.read_packet()
        assert eof is not None and eof[1][:1] == b"\xfe", eof
        rows: list[list[bytes | None]] = []
        while True:
            pkt = self.read_packet()
            assert pkt is not None
            p = pkt[1]
            if p[:1] == b"\xfe" and len(p) < 9:
                return rows
            assert p[:1] != b"\xff", parse_err(p)
            row: list[bytes | None] = []
            pos = 0
            for _ in range(ncols):
                n, pos = lenenc(p, pos)
                row.append(None if n is None else p[pos:pos + n])
                pos += n or 0
            rows.append(row)


# --------------------------------------------------------------------------- fixtures


class SteadyClient:
    """A well-behaved PyMySQL client looping BEGIN/UPDATE/COMMIT in a thread; records errors."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.done = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = pymysql.connect(host="127.0.0.1", port=self.port, user="app",
                                           password="app-secret", database="app",
                                           autocommit=True, connect_timeout=10, read_timeout=15,
                                           write_timeout=15)
                with conn.cursor() as cur:
                    cur.execute("BEGIN")
                    cur.execute("UPDATE bad_input_counter SET n = n + 1 WHERE id = 1")
                    cur.execute("COMMIT")
                self.done += 1
            except Exception as exc:
                self.errors.append(exc)
                try:
                    if conn is not None:
                        conn.close()
                except Exception:
                    pass
                conn = None
            self._stop.wait(0.005)
        if conn is not None:
            conn.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)


@pytest.fixture(scope="module")
def proxy(mariadb_server: MariaDbServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ProxyProcess]:
    config = make_config(
        mysql_listener(mariadb_server, pool_size=3, query_wait_timeout="10s",
                       client_login_timeout=f"{LOGIN_TIMEOUT:g}s"),
        mysql_listener(mariadb_server, name="mysql_app", databases={"app": {}}, pool_size=2),
    )
    proc = ProxyProcess(config, Path(tmp_path_factory.mktemp("mysql_bad_input")))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def steady(mariadb_server: MariaDbServer, proxy: ProxyProcess) -> Iterator[SteadyClient]:
    mariadb_server.execute(
        "CREATE TABLE IF NOT EXISTS app.bad_input_counter (id INT PRIMARY KEY, n BIGINT NOT NULL)")
    mariadb_server.execute("REPLACE INTO app.bad_input_counter VALUES (1, 0)")
    client = SteadyClient(proxy.port("mysql"))
    client.start()
    yield client
    client.stop()


@pytest.fixture(autouse=True)
def steady_keeps_working(steady: SteadyClient, proxy: ProxyProcess) -> Iterator[None]:
    """After every test: the steady client saw no new error and still makes progress (the
    errors are blamed on the test during which they happened; the last test checks them all)."""
    before, errors_before = steady.done, len(steady.errors)
    yield
    deadline = time.monotonic() + 10
    while steady.done < before + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    new_errors = steady.errors[errors_before:]
    assert not new_errors, f"the steady client failed during this test: {new_errors[:3]!r}"
    assert steady.done >= before + 2, "the steady client made no progress"
    assert proxy.is_running()


def port(proxy: ProxyProcess, listener: str = "mysql") -> int:
    return proxy.port(listener)


def pymysql_connect(proxy: ProxyProcess, listener: str = "mysql", **kwargs: Any) -> Any:
    kwargs.setdefault("user", "app")
    kwargs.setdefault("password", "app-secret")
    kwargs.setdefault("database", "app")
    kwargs.setdefault("read_timeout", 15)
    return pymysql.connect(host="127.0.0.1", port=port(proxy, listener), connect_timeout=10,
                           autocommit=True, **kwargs)


def assert_usable(raw: RawClient) -> None:
    assert raw.query("SELECT 1 + 1") == [[b"2"]]


# --------------------------------------------------------------------------- login garbage


def _junk(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


GARBAGE = {
    # A well-framed packet whose body is random: not a HandshakeResponse41.
    "framed_random": packet(1, _junk(60, 1)),
    "framed_zeros": packet(1, b"\x00" * 100),
    # Caps say 4.1 but the body stops inside the 23-byte filler.
    "truncated_response": packet(1, struct.pack("<IIB", RAW_CAPS, 1 << 24, 45) + b"\x00" * 5),
    # Caps 4.1, then a user name without its NUL terminator.
    "unterminated_user": packet(1, struct.pack("<IIB", RAW_CAPS, 1 << 24, 45) + b"\x00" * 23
                                + b"app"),
    "empty_packet": packet(1, b""),
    # Not framed at all: the first 4 bytes read as a header announcing megabytes.
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "tls_client_hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + _junk(64, 2),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_instead_of_handshake_response(proxy: ProxyProcess, name: str) -> None:
    raw = RawClient(port(proxy), timeout=LOGIN_TIMEOUT + 5)
    try:
        raw.greeting()
        started = time.monotonic()
        raw.send(GARBAGE[name])
        err = raw.read_err_or_eof()
        if err is not None:
            # 1043 bad handshake, 1047 unknown command, 1153 packet too large (unframed bytes
            # read as a header announce megabytes).
            assert err.errno in (1043, 1047, 1153), err
            assert err.sqlstate in ("08S01", "HY000"), err
            assert err.message, err
        assert time.monotonic() - started < LOGIN_TIMEOUT + 2
    finally:
        raw.close()


def test_client_that_never_answers_the_greeting_is_dropped(proxy: ProxyProcess) -> None:
    raw = RawClient(port(proxy), timeout=LOGIN_TIMEOUT + 5)
    try:
        raw.greeting()
        started = time.monotonic()
        err = raw.read_err_or_eof()
        assert LOGIN_TIMEOUT - 0.5 < time.monotonic() - started < LOGIN_TIMEOUT + 2
        if err is not None:
            assert err.errno in (1043, 1047), err
            assert "client_login_timeout" in err.message, err
    finally:
        raw.close()


def test_oversized_packet_before_login_is_refused_early(proxy: ProxyProcess) -> None:
    # A HandshakeResponse is a few hundred bytes. An unauthenticated client announcing a 16 MiB
    # packet should be refused at once, not buffered (up to the 64 MiB post-login limit, times
    # max_client_conn) until client_login_timeout.
    raw = RawClient(port(proxy), timeout=LOGIN_TIMEOUT + 5)
    try:
        raw.greeting()
        started = time.monotonic()
        raw.send(header(MAX_PAYLOAD - 1, 1) + b"\x00" * 65536)
        err = raw.read_err_or_eof()
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, (
            f"the proxy waited {elapsed:.1f}s (client_login_timeout) for a 16 MiB login packet")
        if err is not None:
            assert err.errno in (1043, 1047, 1153), err
    finally:
        raw.close()


# --------------------------------------------------------------------------- authentication


def test_wrong_password_pymysql(proxy: ProxyProcess) -> None:
    with pytest.raises(pymysql.err.OperationalError) as info:
        pymysql_connect(proxy, password="wrong")
    assert info.value.args[0] == 1045, info.value
    assert "Access denied" in info.value.args[1]


@pytest.mark.parametrize(("user", "password"), [
    ("app", "wrong"), ("app", ""), ("nobody", "app-secret"), ("app2", "app-secret")])
def test_wrong_password_raw_err_packet(proxy: ProxyProcess, user: str, password: str) -> None:
    raw = RawClient(port(proxy))
    try:
        err = raw.login(user, password)
        assert err is not None, "login with a wrong password succeeded"
        assert err.errno == 1045 and err.sqlstate == "28000", err
        assert b"#28000" in err.raw
        assert user in err.message
        assert ("using password: NO" in err.message) == (password == ""), err.message
        assert raw.read_packet() is None, "connection still open after ERR 1045"
    finally:
        raw.close()


def test_unknown_database_not_configured(proxy: ProxyProcess) -> None:
    # listener mysql_app serves only "app".
    with pytest.raises(pymysql.err.OperationalError) as info:
        pymysql_connect(proxy, "mysql_app", database="nope")
    assert info.value.args[0] == 1049, info.value
    raw = RawClient(port(proxy, "mysql_app"))
    try:
        err = raw.login(database="nope")
        assert err is not None and err.errno == 1049, err
        assert err.sqlstate == "42000", err
        assert "nope" in err.message
    finally:
        raw.close()
    # The configured one works.
    conn = pymysql_connect(proxy, "mysql_app")
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == ("app",)
    conn.close()


def test_unknown_database_on_the_server(proxy: ProxyProcess) -> None:
    # listener mysql serves "*": the server decides; its 1049 reaches the client.
    with pytest.raises(pymysql.err.OperationalError) as info:
        pymysql_connect(proxy, database="no_such_db")
    assert info.value.args[0] == 1049, info.value
    assert "no_such_db" in info.value.args[1]


def test_ssl_request_gets_a_clear_err(proxy: ProxyProcess) -> None:
    raw = RawClient(port(proxy))
    try:
        raw.greeting()
        assert not raw.server_caps & CLIENT_SSL, "the proxy advertises CLIENT_SSL"
        ssl_request = struct.pack("<IIB", RAW_CAPS | CLIENT_SSL, 1 << 24, 45) + b"\x00" * 23
        assert len(ssl_request) == 32
        raw.send(packet(1, ssl_request))
        err = raw.read_err_or_eof()
        assert err is not None, "SSLRequest: connection closed without an ERR"
        assert "TLS" in err.message or "SSL" in err.message, err
        assert err.errno != 0 and len(err.sqlstate) == 5, err
    finally:
        raw.close()


# --------------------------------------------------------------------------- after login


def test_oversized_packet_after_login(proxy: ProxyProcess) -> None:
    raw = RawClient(port(proxy), timeout=30)
    try:
        assert raw.login() is None
        # A COM_QUERY of more than 64 MiB: four full 16 MiB fragments, then a fifth header.
        chunk = b"\x03" + b"x" * (MAX_PAYLOAD - 1)
        try:
            for seq in range(4):
                raw.send(header(MAX_PAYLOAD, seq) + (chunk if seq == 0 else b"x" * MAX_PAYLOAD))
            raw.send(header(1000, 4))
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed early: fine, as long as nothing else went wrong
        err = raw.read_err_or_eof()
        if err is not None:
            assert err.errno == 1153, err
            assert err.sqlstate == "08S01", err
            assert "64 MiB" in err.message, err
    finally:
        raw.close()


class LatencyProbe(BackgroundLoop):
    """A second well-behaved client running SELECT 1 in a loop; the slowest round trip."""

    def __init__(self, proxy: ProxyProcess) -> None:
        super().__init__(0.01, join_timeout=30)
        self.conn = pymysql_connect(proxy)
        self.max_latency = 0.0
        self.rounds = 0

    def step(self) -> None:
        with self.conn.cursor() as cur:
            started = time.monotonic()
            cur.execute("SELECT 1")
            cur.fetchall()
            self.max_latency = max(self.max_latency, time.monotonic() - started)
            self.rounds += 1

    def close(self) -> None:
        self.conn.close()


def _timed_big_select(conn: Any, size: int) -> float:
    started = time.monotonic()
    with conn.cursor() as cur:
        cur.execute("SELECT LENGTH('" + "x" * size + "')")
        assert cur.fetchone() == (size,)
    return time.monotonic() - started


def test_large_query_does_not_stall_other_clients(proxy: ProxyProcess,
                                                  mariadb_server: MariaDbServer) -> None:
    # A legitimate 32 MiB COM_QUERY (two continued 16 MiB fragments) must not block the event
    # loop: other clients keep their millisecond round trips while it is uploaded. Not a
    # benchmark: the bounds are an order of magnitude above what a linear proxy needs and
    # catch only super-linear (per-chunk copy of the whole pending buffer) behaviour.
    size = 32 << 20
    direct = mariadb_server.connect("app", "app-secret", "app", read_timeout=120)
    try:
        direct_elapsed = _timed_big_select(direct, size)
    finally:
        direct.close()
    with LatencyProbe(proxy) as probe:
        time.sleep(0.2)
        conn = pymysql_connect(proxy, read_timeout=120, write_timeout=120)
        try:
            elapsed = _timed_big_select(conn, size)
        finally:
            conn.close()
        time.sleep(0.2)
    assert probe.rounds > 10
    assert probe.max_latency < 1.0 and elapsed < 3 * direct_elapsed + 1.0, (
        f"a {size >> 20} MiB query took {elapsed:.1f}s through poolproxy ({direct_elapsed:.1f}s"
        f" direct) and a SELECT 1 of another client meanwhile took up to"
        f" {probe.max_latency:.1f}s: the event loop was blocked")


def proxy_rss_mib(proxy: ProxyProcess) -> float:
    with open(f"/proc/{proxy.pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_client_that_stops_reading_does_not_make_the_proxy_buffer_the_result(
    proxy: ProxyProcess
) -> None:
    # When one side's transport is over its write high-water mark, pause reading the
    # other side. A client that does not read a 300 MiB result must not make poolproxy hold
    # the result in memory (one such client per GiB of RAM is an OOM kill otherwise).
    raw = RawClient(port(proxy))
    try:
        assert raw.login() is None
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        baseline = proxy_rss_mib(proxy)
        raw.command(COM_QUERY, b"SELECT REPEAT('x', 1048576) FROM seq_1_to_300")
        peak = baseline
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            peak = max(peak, proxy_rss_mib(proxy))
            time.sleep(0.05)
        # Reading resumes normally: the first row arrives intact.
        pkt = raw.read_packet()
        assert pkt is not None and pkt[1] == b"\x01", pkt
    finally:
        raw.close()
    assert peak - baseline < 64, (
        f"poolproxy's RSS grew by {peak - baseline:.0f} MiB while a client did not read a "
        "300 MiB result: no backpressure from the client to the server connection")


def test_truncated_packet_then_client_vanishes(proxy: ProxyProcess) -> None:
    for tail in (b"", b"\x03SEL", b"\x03" + b"x" * 70000):
        raw = RawClient(port(proxy))
        try:
            assert raw.login() is None
            assert_usable(raw)
            raw.send(header(200000, 0) + tail)  # announces more than it sends
            time.sleep(0.05)
        finally:
            raw.close()
    # Nothing stuck: a new client gets a server at once.
    raw = RawClient(port(proxy))
    try:
        assert raw.login() is None
        assert_usable(raw)
    finally:
        raw.close()


@pytest.mark.parametrize("sql", [
    "SELECT REPEAT('x', 1048576) FROM seq_1_to_50",  # 50 rows of 1 MiB
    "SELECT REPEAT('x', 50 * 1048576)",  # one 50 MiB row: continued 16 MiB packets
])
def test_client_vanishes_mid_result(proxy: ProxyProcess, sql: str) -> None:
    # More rounds than pool_size (3): a server slot leaked by an abandoned result would leave
    # the last client waiting for query_wait_timeout.
    for _ in range(4):
        raw = RawClient(port(proxy))
        try:
            assert raw.login() is None
            raw.command(COM_QUERY, sql.encode())
            got = b""
            while len(got) < 1024:
                chunk = raw.sock.recv(1024)
                assert chunk, "EOF before any result"
                got += chunk
        finally:
            raw.close()
    raw = RawClient(port(proxy))
    try:
        assert raw.login() is None
        assert_usable(raw)
    finally:
        raw.close()


def test_com_change_user_is_refused_and_connection_stays_usable(proxy: ProxyProcess) -> None:
    raw = RawClient(port(proxy))
    try:
        assert raw.login() is None
        auth = scramble_native("app2-secret", raw.nonce)
        arg = (b"app2\x00" + bytes((len(auth),)) + auth + b"app2\x00"
               + struct.pack("<H", 45) + b"mysql_native_password\x00")
        raw.command(COM_CHANGE_USER, arg)
        pkt = raw.read_packet()
        assert pkt is not None, "the proxy closed the connection on COM_CHANGE_USER"
        seq, payload = pkt
        assert seq == 1
        err = parse_err(payload)
        assert "not supported" in err.message, err
        assert err.errno == 1235 and err.sqlstate == "42000", err
        # fatal=False: the same connection still works, as user app.
        assert raw.query("SELECT CURRENT_USER()")[0][0].startswith(b"app@")  # type: ignore[union-attr]
        assert_usable(raw)
    finally:
        raw.close()


def test_com_change_user_via_mysqlclient(proxy: ProxyProcess) -> None:
    MySQLdb = pytest.importorskip("MySQLdb")
    conn = MySQLdb.connect(host="127.0.0.1", port=port(proxy), user="app", password="app-secret",
                           database="app", connect_timeout=10)
    try:
        with pytest.raises(MySQLdb.Error):
            conn.change_user("app2", "app2-secret", "app2")
        conn.ping()  # answered by the proxy, but checks the client still thinks it is connected
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), 1 + 1")
        user, two = cur.fetchone()
        assert user.startswith("app@") and two == 2
    finally:
        conn.close()


# --------------------------------------------------------------------------- afterwards


def test_proxy_still_serves_new_clients(proxy: ProxyProcess, steady: SteadyClient) -> None:
    for listener in ("mysql", "mysql_app"):
        conn = pymysql_connect(proxy, listener)
        with conn.cursor() as cur:
            cur.execute("SELECT n FROM bad_input_counter WHERE id = 1")
            (n,) = cur.fetchone()
            assert n >= steady.done - 1
        conn.close()
    assert "Traceback" not in proxy.log_text(), proxy.log_tail()
    assert steady.done > 20
    assert not steady.errors, (
        f"the steady client saw {len(steady.errors)} error(s) over the module: {steady.errors[:3]!r}")
