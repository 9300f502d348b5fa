"""Byte-level tests for the sans-IO MySQL/MariaDB codec (proxy/mysql/codec.py)."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.mysql import codec as c
from proxy.mysql.codec import (
    MAX_PAYLOAD,
    PacketReader,
    PacketWalker,
    ProtocolError,
    ResponseMode,
    ResponseTracker,
    TrackerState,
)

CODEC_PATH = Path(c.__file__)

BASE = (
    c.CLIENT_PROTOCOL_41
    | c.CLIENT_SECURE_CONNECTION
    | c.CLIENT_PLUGIN_AUTH
    | c.CLIENT_TRANSACTIONS
    | c.CLIENT_MULTI_STATEMENTS
    | c.CLIENT_MULTI_RESULTS
    | c.CLIENT_PS_MULTI_RESULTS
    | c.CLIENT_SESSION_TRACK
)
DEP = BASE | c.CLIENT_DEPRECATE_EOF
AC = c.SERVER_STATUS_AUTOCOMMIT
IN_TRANS = c.SERVER_STATUS_IN_TRANS
MORE = c.SERVER_MORE_RESULTS_EXISTS

# A column definition as MariaDB sends it for `SELECT 1 AS a` (content is never inspected).
COLDEF = b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00"


def stream_of(payloads: list[bytes], seq: int = 1) -> bytes:
    out = []
    for p in payloads:
        out.append(c.encode_packet(seq, p))
        seq = c.seq_after(seq, len(p))
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# Sans-IO guarantee
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["codec", "wire", "messages", "response"])
def test_codec_imports_no_io_modules(module: str) -> None:
    tree = ast.parse(CODEC_PATH.with_name(f"{module}.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            pytest.fail("codec.py must not import dynamically")
    assert imported, "the AST walk found no imports at all"
    assert not imported & {"asyncio", "socket", "ssl", "selectors", "uvloop"}


# ---------------------------------------------------------------------------------------------
# Length-encoded integers and strings
# ---------------------------------------------------------------------------------------------
LENENC_CASES = [
    (0, b"\x00"),
    (250, b"\xfa"),
    (251, b"\xfc\xfb\x00"),
    (0xFFFF, b"\xfc\xff\xff"),
    (0x10000, b"\xfd\x00\x00\x01"),
    (0xFFFFFF, b"\xfd\xff\xff\xff"),
    (0x1000000, b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00"),
    (2**64 - 1, b"\xfe" + b"\xff" * 8),
]


@pytest.mark.parametrize(("value", "encoded"), LENENC_CASES)
def test_lenenc_int_edges(value: int, encoded: bytes) -> None:
    assert c.lenenc_int(value) == encoded
    assert c.read_lenenc_int(encoded, 0) == (value, len(encoded))
    # at an offset, followed by other data
    assert c.read_lenenc_int(b"xx" + encoded + b"yy", 2) == (value, 2 + len(encoded))
    # every truncation is a ProtocolError, never IndexError / struct.error
    for cut in range(len(encoded)):
        with pytest.raises(ProtocolError):
            c.read_lenenc_int(encoded[:cut], 0)


@pytest.mark.parametrize("bad", [b"\xfb", b"\xff", b"\xff\x00\x00"])
def test_lenenc_int_rejects_null_and_err_prefix(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        c.read_lenenc_int(bad)


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_lenenc_int_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError):
        c.lenenc_int(bad)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_lenenc_int_roundtrip(n: int) -> None:
    enc = c.lenenc_int(n)
    assert c.read_lenenc_int(enc) == (n, len(enc))


@given(st.binary(max_size=70000).filter(lambda b: len(b) < 300 or len(b) > 65000))
@settings(max_examples=30, suppress_health_check=[HealthCheck.filter_too_much])
def test_lenenc_str_roundtrip(data: bytes) -> None:
    enc = c.lenenc_str(data)
    assert c.read_lenenc_str(enc + b"tail") == (data, len(enc))


def test_lenenc_str_and_nul_str() -> None:
    assert c.lenenc_str("héllo") == b"\x06h\xc3\xa9llo"
    with pytest.raises(ProtocolError):
        c.read_lenenc_str(b"\x05abc")
    assert c.nul_str("db") == b"db\x00"
    assert c.read_nul_str(b"abc\x00def\x00", 4) == (b"def", 8)
    assert c.read_nul_str(memoryview(b"abc\x00"), 0) == (b"abc", 4)
    with pytest.raises(ProtocolError):
        c.read_nul_str(b"abc")
    with pytest.raises(ValueError):
        c.nul_str(b"a\x00b")


# ---------------------------------------------------------------------------------------------
# Framing: encode_packet, PacketReader
# ---------------------------------------------------------------------------------------------
def test_encode_small_packets() -> None:
    assert c.encode_packet(0, b"\x0e") == b"\x01\x00\x00\x00\x0e"
    assert c.encode_packet(3, b"") == b"\x00\x00\x00\x03"
    assert c.encode_packet(256 + 7, b"ab") == b"\x02\x00\x00\x07ab"  # seq is mod 256


def test_encode_exactly_max_payload_adds_empty_packet() -> None:
    payload = b"\x05\x00\x00\x00\xfe" * (MAX_PAYLOAD // 5)
    assert len(payload) == MAX_PAYLOAD
    wire = c.encode_packet(255, payload)
    assert len(wire) == 4 + MAX_PAYLOAD + 4
    assert wire[:4] == b"\xff\xff\xff\xff"
    assert wire[-4:] == b"\x00\x00\x00\x00"  # empty trailer, seq wrapped 255 -> 0
    assert c.seq_after(255, MAX_PAYLOAD) == 1
    assert PacketReader(max_packet=1 << 26).feed(wire) == [(255, payload)]


def test_encode_two_continuations_plus_five() -> None:
    n = 2 * MAX_PAYLOAD + 5
    payload = (b"\x01\x00\x00\x05\xfe\x00\x00\x02\x00" * (n // 9 + 1))[:n]
    wire = c.encode_packet(7, payload)
    assert len(wire) == n + 12
    assert wire[:4] == b"\xff\xff\xff\x07"
    second = 4 + MAX_PAYLOAD
    assert wire[second : second + 4] == b"\xff\xff\xff\x08"
    third = second + 4 + MAX_PAYLOAD
    assert wire[third : third + 4] == b"\x05\x00\x00\x09"
    assert c.seq_after(7, n) == 10

    reader = PacketReader(max_packet=1 << 26)
    got: list[tuple[int, bytes]] = []
    # 1 MiB chunks, then a split right inside the third header
    for start in range(0, third + 2, 1 << 20):
        got += reader.feed(wire[start : min(start + (1 << 20), third + 2)])
    assert got == []
    assert reader.pending == wire[: third + 2]
    got += reader.feed(wire[third + 2 :] + c.encode_packet(10, b"\x00next"))
    assert got == [(7, payload), (10, b"\x00next")]
    assert reader.pending == b""


def test_reader_multiple_and_partial() -> None:
    wire = stream_of([b"\x03SELECT 1", b"", b"\x0e"])
    r = PacketReader()
    assert r.feed(wire[:6]) == []
    assert r.pending == wire[:6]
    assert r.feed(wire[6:]) == [(1, b"\x03SELECT 1"), (2, b""), (3, b"\x0e")]
    assert r.pending == b""


def test_reader_every_split_offset() -> None:
    payloads = [b"\x03SELECT 1", b"", b"x" * 300, b"\x01"]
    wire = stream_of(payloads)
    expected = [(i + 1, p) for i, p in enumerate(payloads)]
    for cut in range(len(wire) + 1):
        r = PacketReader()
        assert r.feed(wire[:cut]) + r.feed(wire[cut:]) == expected
    r = PacketReader()
    got = []
    for i in range(len(wire)):
        got += r.feed(wire[i : i + 1])
    assert got == expected


def test_reader_max_packet_rejected_before_the_bytes_arrive() -> None:
    r = PacketReader(max_packet=50)
    with pytest.raises(ProtocolError, match="max_packet"):
        r.feed(b"\x64\x00\x00\x00abc")  # header says 100 bytes
    r = PacketReader(max_packet=MAX_PAYLOAD + 10)
    head = b"\xff\xff\xff\x00" + b"a" * MAX_PAYLOAD + b"\x14\x00\x00\x01"
    with pytest.raises(ProtocolError, match="max_packet"):
        r.feed(head)


@given(st.binary(max_size=200))
def test_reader_fuzz_only_protocol_errors(data: bytes) -> None:
    r = PacketReader(max_packet=1000)
    try:
        for seq, payload in r.feed(data):
            assert 0 <= seq < 256 and len(payload) <= 1000
    except ProtocolError:
        pass


# ---------------------------------------------------------------------------------------------
# PacketWalker
# ---------------------------------------------------------------------------------------------
def test_walker_reports_heads_and_offsets() -> None:
    payloads = [b"\x01", COLDEF, b"\xfe\x00\x00\x02\x00", b"", b"\x03abc" + b"z" * 100]
    wire = stream_of(payloads)
    w = PacketWalker(head_limit=8)
    w.feed(wire)
    ends = []
    got = []
    while (p := w.next_packet()) is not None:
        got.append(p)
        ends.append(w.offset)
    assert got == [(i + 1, len(p), p[:8]) for i, p in enumerate(payloads)]
    assert ends == [sum(4 + len(p) for p in payloads[: i + 1]) for i in range(len(payloads))]
    assert w.offset == len(wire) and w.at_boundary


def test_walker_mask_skips_without_reporting() -> None:
    payloads = [b"\x01a", b"\x02b", b"\xfe\x00\x00\x02\x00", b"\x03c", b"", b"\xff\x15\x04#28000x"]
    w = PacketWalker()
    mask = c.make_mask(0xFE, 0xFF)
    got = w.walk(stream_of(payloads), mask)
    # empty packets have no first byte and are always reported
    assert [p[2] for p in got] == [payloads[2], b"", payloads[5]]


def test_walker_skip_packets() -> None:
    wire = stream_of([b"\x01", b"\x02", b"\x03", b"\x04"])
    w = PacketWalker()
    w.skip_packets(3)
    w.feed(wire[:7])  # one whole packet and part of the second
    assert w.next_packet() is None and w.skip_pending == 2
    w.feed(wire[7:])
    assert w.next_packet() == (4, 1, b"\x04")
    assert w.skip_pending == 0


def _walk_chunks(
    chunks: list[bytes], mask: bytes | None = None
) -> list[tuple[int, int, bytes, int]]:
    w = PacketWalker(head_limit=16)
    out = []
    base = 0
    for chunk in chunks:
        w.feed(chunk)
        while (p := w.next_packet(mask)) is not None:
            out.append((*p, base + w.offset))  # global end offset of the packet
        base += len(chunk)
    assert w.at_boundary
    return out


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def test_walker_every_split_offset_and_bytewise() -> None:
    payloads = [b"\x01", COLDEF, b"", b"\xfe\x00\x00\x02\x00", b"\x05" * 40]
    wire = stream_of(payloads)
    expected = _walk_chunks([wire])
    assert len(expected) == len(payloads)
    for i in range(len(wire) + 1):
        assert _walk_chunks([wire[:i], wire[i:]]) == expected
    assert _walk_chunks([wire[i : i + 1] for i in range(len(wire))]) == expected


@given(
    st.lists(st.binary(max_size=600), min_size=1, max_size=12),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
    st.sampled_from([None, c.make_mask(0xFE, 0xFF), c.make_mask(0x00)]),
)
def test_walker_any_chunking_same_boundaries(
    payloads: list[bytes], cuts: list[int], mask: bytes | None
) -> None:
    wire = stream_of(payloads)
    whole = _walk_chunks([wire], mask)
    assert _walk_chunks(_cut(wire, [x % (len(wire) + 1) for x in cuts]), mask) == whole
    if mask is None:
        assert [(s, n, h) for s, n, h, _ in whole] == [
            ((i + 1) & 0xFF, len(p), p[:16]) for i, p in enumerate(payloads)
        ]


def test_walker_continuation_inner_bytes_are_not_headers() -> None:
    # The payload is full of byte patterns that look like small packets and EOF packets.
    n = 2 * MAX_PAYLOAD + 5
    big = (b"\x05\x00\x00\x02\xfe\x00\x00\x02\x00" * (n // 9 + 1))[:n]
    exact = (
        b"\xfe"
        + b"\x01\x00\x00\x03\xff" * ((MAX_PAYLOAD - 1) // 5)
        + b"\x00" * ((MAX_PAYLOAD - 1) % 5)
    )
    assert len(exact) == MAX_PAYLOAD
    payloads = [b"\x01", big, exact, b"\xfe\x00\x00\x02\x00"]
    wire = stream_of(payloads)
    mask = c.make_mask(0xFE, 0xFF, 0x05)
    expected = [
        (2, n, big[:16]),
        (5, MAX_PAYLOAD, exact[:16]),
        (7, 5, payloads[3]),
    ]
    whole = _walk_chunks([wire], mask)
    assert [p[:3] for p in whole] == expected
    # chunk sizes that split headers of the continuation packets in every way
    h2 = 4 + 1 + 4 + MAX_PAYLOAD  # offset of big's second header
    for size in (65536, 1 << 20, 3_000_001):
        chunks = [wire[i : i + size] for i in range(0, len(wire), size)]
        assert _walk_chunks(chunks, mask) == whole
    for k in range(5):
        assert _walk_chunks([wire[: h2 + k], wire[h2 + k :]], mask) == whole


# ---------------------------------------------------------------------------------------------
# Handshake (server greeting)
# ---------------------------------------------------------------------------------------------
MARIADB_CAPS_LO = 0xF7FE  # everything but CLIENT_MYSQL (bit 0) and CLIENT_SSL (bit 11)
MARIADB_CAPS_HI = 0x81FF  # MULTI_STATEMENTS..DEPRECATE_EOF, REMEMBER_OPTIONS
MARIADB_EXT = 0x1F  # PROGRESS|COM_MULTI|STMT_BULK_OPERATIONS|EXTENDED_TYPE_INFO|CACHE_METADATA
SCRAMBLE = b"Wl%;fN:'5Ah=x.R<QCp]"

# HandshakeV10 as MariaDB 10.11 sends it, written out field by field from the protocol docs.
MARIADB_HANDSHAKE = (
    b"\x0a"  # protocol version 10
    b"5.5.5-10.11.6-MariaDB-0+deb12u1\x00"  # "5.5.5-" replication prefix + version
    b"\x2a\x00\x00\x00"  # connection id 42
    b"Wl%;fN:'"  # auth-plugin-data part 1 (8 bytes)
    b"\x00"  # filler
    b"\xfe\xf7"  # capability flags, lower 16 bits (CLIENT_MYSQL clear => MariaDB ext caps)
    b"\x2d"  # charset 45 = utf8mb4_general_ci
    b"\x02\x00"  # status flags: SERVER_STATUS_AUTOCOMMIT
    b"\xff\x81"  # capability flags, upper 16 bits
    b"\x15"  # auth plugin data length 21 (20-byte scramble + NUL)
    b"\x00\x00\x00\x00\x00\x00"  # filler
    b"\x1f\x00\x00\x00"  # MariaDB extended capabilities
    b"5Ah=x.R<QCp]\x00"  # auth-plugin-data part 2 (12 bytes) + NUL
    b"mysql_native_password\x00"
)


def test_parse_mariadb_1011_handshake() -> None:
    hs = c.parse_handshake(MARIADB_HANDSHAKE)
    assert hs.protocol_version == 10
    assert hs.server_version == "5.5.5-10.11.6-MariaDB-0+deb12u1"
    assert hs.is_mariadb
    assert hs.connection_id == 42
    assert hs.auth_plugin_data == SCRAMBLE
    assert hs.capabilities == MARIADB_CAPS_HI << 16 | MARIADB_CAPS_LO
    assert not hs.capabilities & c.CLIENT_MYSQL
    assert hs.capabilities & c.CLIENT_DEPRECATE_EOF and hs.capabilities & c.CLIENT_SESSION_TRACK
    assert not hs.capabilities & c.CLIENT_SSL
    assert hs.mariadb_ext_caps == MARIADB_EXT
    for flag in (
        c.MARIADB_CLIENT_PROGRESS,
        c.MARIADB_CLIENT_COM_MULTI,
        c.MARIADB_CLIENT_STMT_BULK_OPERATIONS,
        c.MARIADB_CLIENT_EXTENDED_TYPE_INFO,
        c.MARIADB_CLIENT_CACHE_METADATA,
    ):
        assert hs.all_capabilities & flag
    assert hs.charset == c.UTF8MB4_GENERAL_CI
    assert hs.status_flags == AC
    assert hs.auth_plugin_name == "mysql_native_password"


def test_build_mariadb_handshake_byte_for_byte() -> None:
    built = c.build_handshake(
        server_version="5.5.5-10.11.6-MariaDB-0+deb12u1",
        connection_id=42,
        auth_plugin_data=SCRAMBLE,
        capabilities=MARIADB_CAPS_HI << 16 | MARIADB_CAPS_LO,
        charset=45,
        status_flags=AC,
        auth_plugin_name="mysql_native_password",
        mariadb_ext_caps=MARIADB_EXT,
    )
    assert built == MARIADB_HANDSHAKE
    with pytest.raises(ValueError):
        c.build_handshake("8.0", 1, SCRAMBLE, BASE | c.CLIENT_MYSQL, mariadb_ext_caps=1)
    with pytest.raises(ValueError):
        c.build_handshake("8.0", 1, b"short", BASE)


def test_parse_mysql8_handshake() -> None:
    caps = BASE | c.CLIENT_MYSQL | c.CLIENT_SSL | c.CLIENT_DEPRECATE_EOF | c.CLIENT_QUERY_ATTRIBUTES
    payload = (
        b"\x0a8.0.36\x00"
        + struct.pack("<I", 9)
        + SCRAMBLE[:8]
        + b"\x00"
        + struct.pack("<HBHHB", caps & 0xFFFF, 255, 2, caps >> 16, 21)
        + b"\x00" * 10
        + SCRAMBLE[8:]
        + b"\x00caching_sha2_password\x00"
    )
    hs = c.parse_handshake(payload)
    assert (hs.server_version, hs.connection_id, hs.charset) == ("8.0.36", 9, 255)
    assert hs.capabilities == caps and hs.mariadb_ext_caps == 0 and not hs.is_mariadb
    assert hs.auth_plugin_data == SCRAMBLE
    assert hs.auth_plugin_name == "caching_sha2_password"
    # the plugin name without its NUL (MySQL bug #59453) is accepted
    assert c.parse_handshake(payload[:-1]).auth_plugin_name == "caching_sha2_password"


def test_handshake_err_greeting_and_truncations() -> None:
    err = c.build_err(1040, "08004", "Too many connections")
    with pytest.raises(ProtocolError, match="Too many connections"):
        c.parse_handshake(err)
    with pytest.raises(ProtocolError):
        c.parse_handshake(b"\x09old\x00")
    for cut in range(len(MARIADB_HANDSHAKE)):
        try:
            c.parse_handshake(MARIADB_HANDSHAKE[:cut])
        except ProtocolError:
            pass


def test_pymysql_reads_our_handshake() -> None:
    pymysql = pytest.importorskip("pymysql")
    from pymysql.protocol import MysqlPacket

    conn = pymysql.connections.Connection(defer_connect=True, user="app", password="pw")
    conn._read_packet = lambda *a, **k: MysqlPacket(MARIADB_HANDSHAKE, "utf8")
    conn._get_server_information()
    assert conn.server_version == "5.5.5-10.11.6-MariaDB-0+deb12u1"
    assert conn.salt == SCRAMBLE
    assert conn.server_capabilities == MARIADB_CAPS_HI << 16 | MARIADB_CAPS_LO
    assert conn._auth_plugin_name == "mysql_native_password"


# ---------------------------------------------------------------------------------------------
# HandshakeResponse41 / SSLRequest
# ---------------------------------------------------------------------------------------------
def _pymysql_login(**kwargs: object) -> tuple[bytes, bytes]:
    """Run PyMySQL's real login code against MARIADB_HANDSHAKE; return (response, salt)."""
    pymysql = pytest.importorskip("pymysql")
    from pymysql.protocol import MysqlPacket

    conn = pymysql.connections.Connection(defer_connect=True, **kwargs)
    conn._read_packet = lambda *a, **k: MysqlPacket(MARIADB_HANDSHAKE, "utf8")
    conn._get_server_information()
    sent: list[bytes] = []

    class Stop(Exception):
        pass

    def stop(*a: object, **k: object) -> None:
        raise Stop

    conn.write_packet = sent.append
    conn._read_packet = stop
    with pytest.raises(Stop):
        conn._request_authentication()
    assert len(sent) == 1
    return sent[0], conn.salt


def test_pymysql_handshake_response_parse_and_rebuild() -> None:
    payload, salt = _pymysql_login(
        user="app", password="secret", database="appdb", charset="utf8mb4", program_name="tests"
    )
    from pymysql import _auth

    resp = c.parse_handshake_response(payload)
    assert resp.username == "app"
    assert resp.database == "appdb"
    assert resp.auth_plugin_name == "mysql_native_password"
    assert resp.auth_response == _auth.scramble_native_password(b"secret", salt)
    assert resp.charset == 45
    assert resp.max_packet == MAX_PAYLOAD
    assert resp.capabilities & c.CLIENT_CONNECT_WITH_DB
    assert resp.capabilities & c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    assert resp.attrs["_client_name"] == "pymysql" and resp.attrs["program_name"] == "tests"
    assert resp.mariadb_ext_caps == 0
    assert not c.is_ssl_request(payload)
    rebuilt = c.build_handshake_response(
        resp.capabilities,
        resp.username,
        resp.auth_response,
        database=resp.database,
        auth_plugin_name=resp.auth_plugin_name,
        attrs=resp.attrs,
        max_packet=resp.max_packet,
        charset=resp.charset,
    )
    assert rebuilt == payload


def test_pymysql_without_database() -> None:
    payload, _ = _pymysql_login(user="app", password="")
    resp = c.parse_handshake_response(payload)
    assert resp.database is None and resp.auth_response == b""
    assert not resp.capabilities & c.CLIENT_CONNECT_WITH_DB


def test_handshake_response_by_hand_with_mariadb_ext_caps() -> None:
    caps = (
        c.CLIENT_PROTOCOL_41
        | c.CLIENT_SECURE_CONNECTION
        | c.CLIENT_PLUGIN_AUTH
        | c.CLIENT_CONNECT_WITH_DB
        | c.CLIENT_FOUND_ROWS
        | c.CLIENT_TRANSACTIONS
        | c.CLIENT_MULTI_RESULTS
    )
    auth = bytes(range(1, 21))
    payload = (
        struct.pack("<IIB", caps, 1 << 24, 33)
        + b"\x00" * 19
        + struct.pack("<I", 0x1C)  # STMT_BULK_OPERATIONS|EXTENDED_TYPE_INFO|CACHE_METADATA
        + b"django\x00"
        + b"\x14"
        + auth  # CLIENT_SECURE_CONNECTION: 1-byte length
        + b"shop\x00"
        + b"mysql_native_password\x00"
    )
    resp = c.parse_handshake_response(payload)
    assert (resp.username, resp.database, resp.auth_response) == ("django", "shop", auth)
    assert resp.charset == 33 and resp.max_packet == 1 << 24 and resp.attrs == {}
    assert resp.capabilities == caps and resp.mariadb_ext_caps == 0x1C
    assert resp.all_capabilities & c.MARIADB_CLIENT_CACHE_METADATA
    assert not resp.all_capabilities & c.MARIADB_CLIENT_PROGRESS
    built = c.build_handshake_response(
        caps,
        "django",
        auth,
        database="shop",
        auth_plugin_name="mysql_native_password",
        max_packet=1 << 24,
        charset=33,
        mariadb_ext_caps=0x1C,
    )
    assert built == payload


def test_handshake_response_variants_and_errors() -> None:
    # pre-secure-connection: NUL-terminated auth response
    caps = c.CLIENT_PROTOCOL_41
    p = c.build_handshake_response(caps, "u", b"abc")
    assert c.parse_handshake_response(p).auth_response == b"abc"
    # lenenc auth data longer than 255 bytes
    caps = BASE | c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | c.CLIENT_CONNECT_ATTRS
    p = c.build_handshake_response(caps, "ü", b"k" * 300, attrs={"a": "b"})
    r = c.parse_handshake_response(p)
    assert (r.username, r.auth_response, r.attrs) == ("ü", b"k" * 300, {"a": "b"})
    with pytest.raises(ValueError):
        c.build_handshake_response(BASE, "u", b"k" * 300)
    with pytest.raises(ValueError):
        c.build_handshake_response(BASE, "u", database="db")  # no CONNECT_WITH_DB
    with pytest.raises(ProtocolError):  # HandshakeResponse320
        c.parse_handshake_response(b"\x85\x24\x00\x00\x00old\x00")
    with pytest.raises(ProtocolError):  # an SSLRequest is not a login
        c.parse_handshake_response(c.build_ssl_request(BASE))
    for cut in range(len(p)):
        try:
            c.parse_handshake_response(p[:cut])
        except ProtocolError:
            pass


def test_ssl_request() -> None:
    req = c.build_ssl_request(BASE, charset=45, mariadb_ext_caps=0x04)
    assert len(req) == 32
    assert c.is_ssl_request(req)
    assert struct.unpack_from("<I", req)[0] == BASE | c.CLIENT_SSL
    assert struct.unpack_from("<I", req, 28)[0] == 0x04
    assert not c.is_ssl_request(req[:31])
    no_ssl = struct.pack("<I", BASE) + req[4:]
    assert not c.is_ssl_request(no_ssl)
    # PyMySQL's own SSLRequest prefix
    pyssl = struct.pack("<iIB23s", BASE | c.CLIENT_SSL, MAX_PAYLOAD, 45, b"")
    assert c.is_ssl_request(pyssl)


# ---------------------------------------------------------------------------------------------
# Auth switch / more data
# ---------------------------------------------------------------------------------------------
def test_auth_switch_request() -> None:
    wire = b"\xfemysql_native_password\x00" + SCRAMBLE + b"\x00"
    assert c.build_auth_switch_request("mysql_native_password", SCRAMBLE) == wire
    assert c.parse_auth_switch_request(wire) == ("mysql_native_password", SCRAMBLE)
    assert c.parse_auth_switch_request(b"\xfe") == ("mysql_old_password", b"")
    assert c.parse_auth_switch_request(b"\xfecaching_sha2_password\x00") == (
        "caching_sha2_password",
        b"",
    )
    with pytest.raises(ProtocolError):
        c.parse_auth_switch_request(b"\x00abc")
    with pytest.raises(ProtocolError):
        c.parse_auth_switch_request(b"")


def test_auth_more_data() -> None:
    assert c.build_auth_more_data(b"\x03") == b"\x01\x03"
    assert c.parse_auth_more_data(b"\x01\x04") == bytes((c.CACHING_SHA2_PERFORM_FULL_AUTH,))
    with pytest.raises(ProtocolError):
        c.parse_auth_more_data(b"\xfe")


# ---------------------------------------------------------------------------------------------
# OK / ERR / EOF
# ---------------------------------------------------------------------------------------------
# OK after "SET autocommit=OFF; USE test" with session tracking, written out from the docs.
OK_TRACKED = (
    b"\x00"  # OK header
    b"\x00"  # affected rows 0
    b"\x00"  # last insert id 0
    b"\x00\x40"  # status: SERVER_SESSION_STATE_CHANGED (autocommit now off)
    b"\x00\x00"  # warnings
    b"\x00"  # info: empty lenenc string
    b"\x18"  # session state info: 24 bytes
    b"\x00\x0f\x0aautocommit\x03OFF"  # SESSION_TRACK_SYSTEM_VARIABLES: autocommit=OFF
    b"\x01\x05\x04test"  # SESSION_TRACK_SCHEMA: test
)


def test_parse_ok_with_session_tracking() -> None:
    ok = c.parse_ok(OK_TRACKED, BASE)
    assert ok.affected_rows == 0 and ok.last_insert_id == 0 and ok.warnings == 0
    assert ok.status_flags == c.SERVER_SESSION_STATE_CHANGED
    assert not ok.status_flags & (IN_TRANS | AC)
    assert ok.info == ""
    assert ok.session_state_changes == [
        (c.SESSION_TRACK_SYSTEM_VARIABLES, ("autocommit", "OFF")),
        (c.SESSION_TRACK_SCHEMA, "test"),
    ]


def test_build_ok_with_session_tracking_byte_for_byte() -> None:
    built = c.build_ok(
        status_flags=0,
        session_state_changes=[
            (c.SESSION_TRACK_SYSTEM_VARIABLES, ("autocommit", "OFF")),
            (c.SESSION_TRACK_SCHEMA, "test"),
        ],
        capabilities=BASE,
    )
    assert built == OK_TRACKED


def test_ok_all_tracker_types_roundtrip() -> None:
    changes: list[c.SessionStateChange] = [
        (c.SESSION_TRACK_SYSTEM_VARIABLES, ("time_zone", "+00:00")),
        (c.SESSION_TRACK_SYSTEM_VARIABLES, ("sql_mode", "STRICT_TRANS_TABLES")),
        (c.SESSION_TRACK_SCHEMA, "shop"),
        (c.SESSION_TRACK_STATE_CHANGE, True),
        (c.SESSION_TRACK_GTIDS, "0-1-42"),
        (c.SESSION_TRACK_TRANSACTION_CHARACTERISTICS, "START TRANSACTION READ ONLY;"),
        (c.SESSION_TRACK_TRANSACTION_STATE, "T_______"),
        (77, b"\x01raw"),
    ]
    payload = c.build_ok(3, 700, IN_TRANS | AC, 2, "info", changes, capabilities=BASE)
    ok = c.parse_ok(payload, BASE)
    assert (ok.affected_rows, ok.last_insert_id, ok.warnings, ok.info) == (3, 700, 2, "info")
    assert ok.status_flags == IN_TRANS | AC | c.SERVER_SESSION_STATE_CHANGED
    assert ok.session_state_changes == changes
    # several variables inside one entry (allowed by the format) are all reported
    blob = b"\x00\x08\x01a\x011\x01b\x012"
    assert c.parse_session_state(blob) == [(0, ("a", "1")), (0, ("b", "2"))]


def test_ok_without_session_track_and_short_forms() -> None:
    caps = BASE & ~c.CLIENT_SESSION_TRACK
    info = "Rows matched: 1  Changed: 1  Warnings: 0"
    payload = c.build_ok(1, 0, AC, 0, info, capabilities=caps)
    assert payload == b"\x00\x01\x00\x02\x00\x00\x00" + info.encode()
    assert c.parse_ok(payload, caps).info == info
    # session tracking negotiated but the server stopped after the warnings (MySQL does)
    ok = c.parse_ok(b"\x00\x00\x00\x02\x00\x00\x00", BASE)
    assert ok.info == "" and ok.session_state_changes == [] and ok.status_flags == AC
    # big lenenc values
    big = c.build_ok(70000, 2**40, capabilities=BASE)
    ok = c.parse_ok(big, BASE)
    assert (ok.affected_rows, ok.last_insert_id) == (70000, 2**40)
    # 0xFE header (end of rows under CLIENT_DEPRECATE_EOF)
    fe = c.build_ok(status_flags=IN_TRANS, capabilities=DEP, eof_header=True)
    assert fe[0] == 0xFE and c.parse_ok(fe, DEP).status_flags == IN_TRANS


def test_ok_truncated_and_malformed() -> None:
    for cut in range(len(OK_TRACKED)):
        if cut in (7, 8):  # complete without info / without the state block: tolerated
            continue
        with pytest.raises(ProtocolError):
            c.parse_ok(OK_TRACKED[:cut], BASE)
    with pytest.raises(ProtocolError):
        c.parse_ok(b"\xff\x00\x00\x00\x00\x00\x00", BASE)
    with pytest.raises(ProtocolError):  # session blob claims more than present
        c.parse_ok(b"\x00\x00\x00\x00\x40\x00\x00\x00\x05\x00\x09", BASE)


ERR_ACCESS = b"\xff\x15\x04#28000Access denied for user 'app'@'localhost' (using password: YES)"


def test_err_packet() -> None:
    err = c.parse_err(ERR_ACCESS, BASE)
    assert err.errno == 1045 and err.sqlstate == "28000"
    assert err.message.startswith("Access denied for user 'app'")
    assert c.build_err(1045, "28000", err.message) == ERR_ACCESS
    # no '#' marker (errors sent before capabilities are negotiated)
    early = b"\xff\x69\x04Host '10.0.0.1' is not allowed to connect"
    e2 = c.parse_err(early)
    assert (e2.errno, e2.sqlstate, e2.message[:4]) == (1129, "HY000", "Host")
    with pytest.raises(ValueError):
        c.build_err(1, "HY00", "x")
    for bad in (b"", b"\xff", b"\xff\x15", b"\x00\x15\x04"):
        with pytest.raises(ProtocolError):
            c.parse_err(bad)


def test_eof_and_row_disambiguation() -> None:
    eof = c.build_eof(1, IN_TRANS | AC)
    assert eof == b"\xfe\x01\x00\x03\x00"
    assert c.is_eof(eof) and c.parse_eof(eof) == c.EofPacket(1, IN_TRANS | AC)
    assert c.parse_eof(b"\xfe") == c.EofPacket(0, 0)
    # a text row whose first column has an 8-byte length also starts with 0xFE
    row_head = b"\xfe" + (0x1000000).to_bytes(8, "little") + b"x"
    assert not c.is_eof(row_head)
    with pytest.raises(ProtocolError):
        c.parse_eof(row_head)
    assert c.is_result_end(0xFE, 5, BASE)
    assert not c.is_result_end(0xFE, 9, BASE)
    assert not c.is_result_end(0x00, 5, DEP)
    assert c.is_result_end(0xFE, 60, DEP)  # OK-with-0xFE carrying session state
    assert not c.is_result_end(0xFE, MAX_PAYLOAD, DEP)  # 16 MiB row
    assert c.is_progress_report(b"\xff\xff\xff\x01\x02\x00\x10\x00\x00")
    assert not c.is_progress_report(ERR_ACCESS)


# ---------------------------------------------------------------------------------------------
# Rows, prepare-OK, small helpers
# ---------------------------------------------------------------------------------------------
def test_text_rows() -> None:
    values: list[bytes | str | None] = [b"1", None, b"", b"x" * 300]
    payload = c.build_text_row(values)
    assert payload[:4] == b"\x011\xfb\x00"
    assert c.parse_text_row(payload, 4) == [b"1", None, b"", b"x" * 300]
    with pytest.raises(ProtocolError):
        c.parse_text_row(payload, 5)
    with pytest.raises(ProtocolError):
        c.parse_text_row(payload, 3)  # trailing bytes
    with pytest.raises(ProtocolError):
        c.parse_text_row(payload[:-1], 4)


def test_stmt_prepare_ok_and_commands() -> None:
    payload = b"\x00" + struct.pack("<IHHBH", 7, 2, 3, 0, 1)
    ok = c.parse_stmt_prepare_ok(payload)
    assert (ok.statement_id, ok.num_columns, ok.num_params, ok.warnings) == (7, 2, 3, 1)
    with pytest.raises(ProtocolError):
        c.parse_stmt_prepare_ok(payload[:8])
    assert c.build_command(c.COM_QUERY, "SELECT 1") == b"\x03SELECT 1"
    assert c.build_command(c.COM_PING) == b"\x0e"
    assert c.parse_infile_request(b"\xfb/tmp/x.csv") == "/tmp/x.csv"
    assert c.parse_column_count(b"\x03") == 3
    with pytest.raises(ProtocolError):
        c.parse_column_count(b"\x00")


@pytest.mark.parametrize(
    ("cmd", "mode"),
    [
        (c.COM_QUERY, ResponseMode.QUERY),
        (c.COM_INIT_DB, ResponseMode.SINGLE),
        (c.COM_PING, ResponseMode.SINGLE),
        (c.COM_RESET_CONNECTION, ResponseMode.SINGLE),
        (c.COM_SET_OPTION, ResponseMode.SINGLE),
        (c.COM_FIELD_LIST, ResponseMode.FIELD_LIST),
        (c.COM_STATISTICS, ResponseMode.STATISTICS),
        (c.COM_STMT_PREPARE, ResponseMode.STMT_PREPARE),
        (c.COM_STMT_EXECUTE, ResponseMode.STMT_EXECUTE),
        (c.COM_STMT_FETCH, ResponseMode.STMT_FETCH),
        (c.COM_STMT_CLOSE, ResponseMode.NO_RESPONSE),
        (c.COM_STMT_SEND_LONG_DATA, ResponseMode.NO_RESPONSE),
        (c.COM_CHANGE_USER, None),
        (c.COM_BINLOG_DUMP, None),
    ],
)
def test_response_mode_for_command(cmd: int, mode: ResponseMode | None) -> None:
    assert c.response_mode_for_command(cmd) is mode


# ---------------------------------------------------------------------------------------------
# ResponseTracker
# ---------------------------------------------------------------------------------------------
def run_tracker(
    payloads: list[bytes], caps: int, mode: ResponseMode = ResponseMode.QUERY
) -> ResponseTracker:
    """Feed a complete response three ways (payloads, whole stream, byte by byte) and check
    they agree and that ``done`` turns true exactly at the last packet / byte."""
    t1 = ResponseTracker(caps, mode)
    for i, p in enumerate(payloads):
        assert t1.feed(p) == (i == len(payloads) - 1), f"done at packet {i}"
    wire = stream_of(payloads)
    t2 = ResponseTracker(caps, mode)
    assert t2.feed_data(wire) and t2.consumed == len(wire)
    t3 = ResponseTracker(caps, mode)
    for i in range(len(wire)):
        assert t3.feed_data(wire[i : i + 1]) == (i == len(wire) - 1), f"done at byte {i}"
    for t in (t2, t3):
        assert t.state is TrackerState.DONE
        assert (t.status_flags, t.failed, t.error, t.result_sets) == (
            t1.status_flags,
            t1.failed,
            t1.error,
            t1.result_sets,
        )
        assert t.session_state_changes == t1.session_state_changes
        assert t.last_ok == t1.last_ok
    return t1


def result_set(
    ncols: int, rows: list[list[bytes | None]], status: int, caps: int, changes=None
) -> list[bytes]:
    out = [c.lenenc_int(ncols), *[COLDEF] * ncols]
    if not caps & c.CLIENT_DEPRECATE_EOF:
        out.append(c.build_eof(0, status & ~MORE))
    out += [c.build_text_row(list(r)) for r in rows]
    if caps & c.CLIENT_DEPRECATE_EOF:
        out.append(
            c.build_ok(
                status_flags=status,
                session_state_changes=changes,
                capabilities=caps,
                eof_header=True,
            )
        )
    else:
        out.append(c.build_eof(0, status))
    return out


def test_tracker_simple_ok() -> None:
    t = run_tracker([c.build_ok(1, 5, IN_TRANS | AC, capabilities=BASE)], BASE)
    assert t.status_flags == IN_TRANS | AC and not t.failed and t.result_sets == 1
    assert t.last_ok == c.OkPacket(1, 5, IN_TRANS | AC, 0, "", [])


def test_tracker_err() -> None:
    t = run_tracker([ERR_ACCESS], BASE)
    assert t.failed and t.error is not None and t.error.errno == 1045
    assert t.status_flags is None


@pytest.mark.parametrize("caps", [BASE, DEP], ids=["eof", "deprecate_eof"])
def test_tracker_one_result_set(caps: int) -> None:
    payloads = result_set(2, [[b"1", b"a"], [None, b"\xfe" * 20], [b"3", b""]], IN_TRANS, caps)
    t = run_tracker(payloads, caps)
    assert t.status_flags == IN_TRANS and t.result_sets == 1 and not t.failed


def test_tracker_result_set_session_state_under_deprecate_eof() -> None:
    changes: list[c.SessionStateChange] = [(c.SESSION_TRACK_SCHEMA, "other")]
    t = run_tracker(result_set(1, [[b"x"]], AC, DEP, changes), DEP)
    assert t.session_state_changes == changes


@pytest.mark.parametrize("caps", [BASE, DEP], ids=["eof", "deprecate_eof"])
def test_tracker_stored_procedure_multi_results(caps: int) -> None:
    payloads = [
        *result_set(1, [[b"1"]], AC | MORE, caps),
        *result_set(3, [], AC | MORE, caps),
        *result_set(2, [[b"a", None]] * 4, AC | MORE, caps),
        c.build_ok(0, 0, AC, capabilities=caps),  # the CALL's own final OK
    ]
    t = run_tracker(payloads, caps)
    assert t.result_sets == 4 and t.status_flags == AC


def test_tracker_multi_statement_oks_accumulate_session_changes() -> None:
    payloads = [
        c.build_ok(
            status_flags=MORE,
            session_state_changes=[(0, ("autocommit", "OFF"))],
            capabilities=BASE,
        ),
        c.build_ok(
            status_flags=IN_TRANS,
            session_state_changes=[(1, "db2"), (0, ("time_zone", "UTC"))],
            capabilities=BASE,
        ),
    ]
    t = run_tracker(payloads, BASE)
    assert t.session_state_changes == [
        (0, ("autocommit", "OFF")),
        (1, "db2"),
        (0, ("time_zone", "UTC")),
    ]
    assert t.status_flags == IN_TRANS | c.SERVER_SESSION_STATE_CHANGED
    assert t.last_ok is not None and t.last_ok.session_state_changes[0] == (1, "db2")


@pytest.mark.parametrize("caps", [BASE, DEP], ids=["eof", "deprecate_eof"])
def test_tracker_err_in_the_middle(caps: int) -> None:
    rows = result_set(1, [[b"1"], [b"2"]], AC, caps)[:-1]  # killed before the end
    t = run_tracker([*rows, c.build_err(1317, "70100", "Query execution was interrupted")], caps)
    assert t.failed and t.error is not None and t.error.errno == 1317
    # ERR after an OK announcing more results: the status seen so far is kept
    t = run_tracker([c.build_ok(status_flags=IN_TRANS | MORE, capabilities=caps), ERR_ACCESS], caps)
    assert t.failed and t.status_flags == IN_TRANS | MORE


def test_tracker_row_starting_with_fe_is_not_an_end() -> None:
    # without DEPRECATE_EOF: a 0xFE row of 9+ bytes is a row
    t = ResponseTracker(BASE)
    for p in result_set(1, [], AC, BASE)[:-1]:
        t.feed(p)
    assert t.state is TrackerState.ROWS
    assert not t.feed(b"\xfe" + (20).to_bytes(8, "little") + b"x" * 20)
    # with DEPRECATE_EOF: 0xFE and a (first-fragment) length of 0xFFFFFF is a row
    t = ResponseTracker(DEP)
    t.feed(b"\x01")
    t.feed(COLDEF)
    assert not t.feed_head(MAX_PAYLOAD + 10, b"\xfe" + (MAX_PAYLOAD + 1).to_bytes(8, "little"))
    assert t.feed(c.build_ok(capabilities=DEP, eof_header=True))


@pytest.mark.parametrize("caps", [BASE, DEP], ids=["eof", "deprecate_eof"])
def test_tracker_16mib_row_starting_with_fe_through_the_walker(caps: int) -> None:
    # The value itself is full of bytes that look like EOF packets / headers.
    value = (b"\x05\x00\x00\x07\xfe\x00\x00\x02\x00" * (0x1000000 // 9 + 1))[:0x1000000]
    payloads = result_set(1, [[value], [b"after"]], IN_TRANS, caps)
    assert payloads[-3][0] == 0xFE  # the big row starts with 0xFE (8-byte length)
    wire = stream_of(payloads)
    t = ResponseTracker(caps)
    size = 1 << 20
    chunks = [wire[i : i + size] for i in range(0, len(wire), size)]
    for i, chunk in enumerate(chunks):
        assert t.feed_data(chunk) == (i == len(chunks) - 1)
    assert t.status_flags == IN_TRANS and t.consumed == len(chunks[-1])


def test_tracker_local_infile() -> None:
    t = ResponseTracker(BASE | c.CLIENT_LOCAL_FILES)
    assert not t.feed_data(c.encode_packet(1, b"\xfb/tmp/data.csv"))
    assert t.state is TrackerState.INFILE and t.waiting_for_client
    assert t.infile_name == "/tmp/data.csv"
    with pytest.raises(ProtocolError):
        t.feed_data(c.encode_packet(2, c.build_ok(capabilities=BASE)))
    client = stream_of([b"1,a\n" * 1000, b"2,b\n", b""], seq=2)
    # client bytes in awkward chunks; the empty packet ends the upload
    assert not t.feed_client_data(client[:3])
    assert not t.feed_client_data(client[3:4005])
    assert t.feed_client_data(client[4005:])
    assert t.consumed == len(client) - 4005
    assert t.state is TrackerState.FIRST and not t.done
    assert t.feed_data(c.encode_packet(5, c.build_ok(2, 0, AC, capabilities=BASE)))
    assert t.last_ok is not None and t.last_ok.affected_rows == 2


def test_tracker_local_infile_in_multi_statement_with_packet_api() -> None:
    t = ResponseTracker(BASE)
    assert not t.feed(b"\xfbf.csv")
    with pytest.raises(ProtocolError):
        t.feed(b"\x00\x00\x00\x02\x00\x00\x00")
    assert not t.client_infile_packet(10)
    assert t.client_infile_packet(0)
    assert not t.feed(c.build_ok(status_flags=MORE | AC, capabilities=BASE))
    for p in result_set(1, [[b"1"]], AC, BASE):
        t.feed(p)
    assert t.done and t.result_sets == 2
    with pytest.raises(ProtocolError):
        t.client_infile_packet(0)


@pytest.mark.parametrize(
    ("payload", "caps"),
    [
        (c.build_ok(capabilities=BASE), BASE),
        (c.build_eof(0, AC), BASE),  # COM_SET_OPTION answers with EOF
        (c.build_ok(capabilities=DEP, eof_header=True), DEP),
        (ERR_ACCESS, BASE),
    ],
)
def test_tracker_single_reply(payload: bytes, caps: int) -> None:
    t = run_tracker([payload], caps, ResponseMode.SINGLE)
    assert t.failed == (payload[0] == 0xFF)
    if not t.failed:
        assert t.status_flags == AC


def test_tracker_single_reply_rejects_result_set() -> None:
    with pytest.raises(ProtocolError):
        ResponseTracker(BASE, ResponseMode.SINGLE).feed(b"\x01")


@pytest.mark.parametrize("caps", [BASE, DEP], ids=["eof", "deprecate_eof"])
def test_tracker_field_list(caps: int) -> None:
    end = c.build_ok(capabilities=caps, eof_header=True) if caps & c.CLIENT_DEPRECATE_EOF else None
    t = run_tracker([COLDEF, COLDEF, end or c.build_eof()], caps, ResponseMode.FIELD_LIST)
    assert t.status_flags == AC


def test_tracker_statistics() -> None:
    stats = b"Uptime: 5  Threads: 1  Questions: 2  Slow queries: 0  Opens: 17"
    run_tracker([stats], BASE, ResponseMode.STATISTICS)


@pytest.mark.parametrize("caps", [BASE, DEP], ids=["eof", "deprecate_eof"])
def test_tracker_stmt_prepare(caps: int) -> None:
    dep = bool(caps & c.CLIENT_DEPRECATE_EOF)
    ok = b"\x00" + struct.pack("<IHHBH", 9, 1, 2, 0, 0)
    payloads = [ok, COLDEF, COLDEF]
    if not dep:
        payloads.append(c.build_eof())
    payloads.append(COLDEF)
    if not dep:
        payloads.append(c.build_eof())
    t = run_tracker(payloads, caps, ResponseMode.STMT_PREPARE)
    assert t.prepare_ok == c.StmtPrepareOk(9, 1, 2, 0)
    # no parameters, no columns: the prepare-OK alone
    run_tracker([b"\x00" + struct.pack("<IHHBH", 10, 0, 0, 0, 0)], caps, ResponseMode.STMT_PREPARE)
    # params only
    only_params = [b"\x00" + struct.pack("<IHHBH", 11, 0, 1, 0, 0), COLDEF]
    if not dep:
        only_params.append(c.build_eof())
    run_tracker(only_params, caps, ResponseMode.STMT_PREPARE)
    t = run_tracker([ERR_ACCESS], caps, ResponseMode.STMT_PREPARE)
    assert t.failed


@pytest.mark.parametrize("caps", [BASE, DEP], ids=["eof", "deprecate_eof"])
def test_tracker_stmt_execute_binary_rows(caps: int) -> None:
    out = [b"\x02", COLDEF, COLDEF]
    if not caps & c.CLIENT_DEPRECATE_EOF:
        out.append(c.build_eof())
    out += [b"\x00\x00\x01\x00\x00\x00\x03abc", b"\x00\x0c" + b"\xfe" * 8]  # 0x00-led rows
    out.append(
        c.build_ok(status_flags=IN_TRANS, capabilities=caps, eof_header=True)
        if caps & c.CLIENT_DEPRECATE_EOF
        else c.build_eof(0, IN_TRANS)
    )
    t = run_tracker(out, caps, ResponseMode.STMT_EXECUTE)
    assert t.status_flags == IN_TRANS
    run_tracker([c.build_ok(1, 0, AC, capabilities=caps)], caps, ResponseMode.STMT_EXECUTE)


def test_tracker_stmt_execute_cursor_and_fetch() -> None:
    cursor = c.SERVER_STATUS_CURSOR_EXISTS | AC
    t = run_tracker([b"\x01", COLDEF, c.build_eof(0, cursor)], BASE, ResponseMode.STMT_EXECUTE)
    assert t.status_flags == cursor
    # under DEPRECATE_EOF the metadata ends with an OK (0xFE) carrying CURSOR_EXISTS
    run_tracker(
        [b"\x01", COLDEF, c.build_ok(status_flags=cursor, capabilities=DEP, eof_header=True)],
        DEP,
        ResponseMode.STMT_EXECUTE,
    )
    last = c.SERVER_STATUS_LAST_ROW_SENT | AC
    t = run_tracker(
        [b"\x00\x00\x01", b"\x00\x00\x02", c.build_eof(0, last)], BASE, ResponseMode.STMT_FETCH
    )
    assert t.status_flags == last


def test_tracker_no_response_mode() -> None:
    t = ResponseTracker(BASE, ResponseMode.NO_RESPONSE)
    assert t.done
    with pytest.raises(ProtocolError):
        t.feed_data(b"\x01\x00\x00\x01\x00")


def test_tracker_mariadb_progress_and_cache_metadata() -> None:
    caps = BASE | c.MARIADB_CLIENT_PROGRESS | c.MARIADB_CLIENT_CACHE_METADATA
    progress = b"\xff\xff\xff\x01\x01\x00\x10\x00\x07stage 1"
    payloads = [progress, b"\x01\x00", c.build_eof(0, AC), b"\x011", c.build_eof(0, AC)]
    t = run_tracker(payloads, caps)
    assert not t.failed
    # metadata flag 1: column definitions follow
    run_tracker([b"\x01\x01", COLDEF, c.build_eof(), b"\x011", c.build_eof()], caps)
    # without the PROGRESS capability an 0xFFFF errno is just an error
    t = ResponseTracker(BASE)
    assert t.feed(progress) and t.failed


def test_tracker_reuse_and_trailing_bytes() -> None:
    t = ResponseTracker(DEP)
    wire = stream_of([c.build_ok(status_flags=IN_TRANS, capabilities=DEP)])
    extra = b"\x01\x00\x00\x01\x00"
    assert t.feed_data(wire + extra)
    assert t.consumed == len(wire)
    with pytest.raises(ProtocolError):
        t.feed_data(extra)
    t.start(ResponseMode.QUERY)
    assert not t.done and t.status_flags is None and t.session_state_changes == []
    half = stream_of(result_set(2, [[b"a", b"b"]], AC, DEP))
    assert not t.feed_data(half[:10])
    t.start(ResponseMode.QUERY)  # abandoned mid-packet: the walker is reset
    assert t.feed_data(stream_of(result_set(1, [[b"x"]], AC, DEP)))
    t.start(ResponseMode.SINGLE, BASE)
    assert t.capabilities == BASE and t.feed(c.build_eof())


def test_tracker_malformed() -> None:
    for payloads, mode in [
        ([b"\xfe\x00\x00\x02\x00"], ResponseMode.QUERY),  # 0xFE cannot start a result
        ([b""], ResponseMode.QUERY),
        ([b"\x00\x00"], ResponseMode.QUERY),  # truncated OK
        ([b"\xfc\x01"], ResponseMode.QUERY),  # truncated column count
        ([b"\x01", COLDEF, b"\x011"], ResponseMode.QUERY),  # row where EOF was due
        ([b"\x01", COLDEF, b"\xfe\x00"], ResponseMode.QUERY),  # truncated EOF
        ([b"\xff\x01"], ResponseMode.QUERY),  # truncated ERR
        ([b"\x01", b"x" * 10], ResponseMode.STMT_PREPARE),
    ]:
        t = ResponseTracker(BASE, mode)
        with pytest.raises(ProtocolError):
            for p in payloads:
                t.feed(p)
    t = ResponseTracker(BASE)
    t.feed(c.build_ok(capabilities=BASE))
    with pytest.raises(ProtocolError):
        t.feed(c.build_ok(capabilities=BASE))


@given(st.lists(st.binary(max_size=40), max_size=8), st.booleans())
def test_tracker_fuzz_only_protocol_errors(payloads: list[bytes], dep: bool) -> None:
    t = ResponseTracker(DEP if dep else BASE)
    try:
        for p in payloads:
            if t.done or t.waiting_for_client:
                break
            t.feed(p)
    except ProtocolError:
        pass


@st.composite
def responses(draw: st.DrawFn) -> tuple[int, list[bytes], int, int]:
    caps = draw(st.sampled_from([BASE, DEP]))
    n = draw(st.integers(min_value=1, max_value=4))
    payloads: list[bytes] = []
    status = 0
    for i in range(n):
        status = draw(st.sampled_from([0, AC, IN_TRANS, IN_TRANS | AC]))
        if i < n - 1:
            status |= MORE
        if draw(st.booleans()):
            ncols = draw(st.integers(min_value=1, max_value=3))
            cell = st.one_of(st.none(), st.binary(max_size=300))
            rows = draw(st.lists(st.lists(cell, min_size=ncols, max_size=ncols), max_size=4))
            payloads += result_set(ncols, rows, status, caps)
        else:
            payloads.append(c.build_ok(status_flags=status, capabilities=caps))
    return caps, payloads, status, n


@given(responses(), st.lists(st.integers(min_value=1, max_value=100_000), max_size=12))
@settings(max_examples=200)
def test_tracker_any_chunking_same_end(
    resp: tuple[int, list[bytes], int, int], cuts: list[int]
) -> None:
    caps, payloads, final_status, nresults = resp
    wire = stream_of(payloads)
    chunks = _cut(wire, [1 + x % (len(wire) - 1) for x in cuts] if len(wire) > 1 else [])
    t = ResponseTracker(caps)
    for i, chunk in enumerate(chunks):
        assert t.feed_data(chunk) == (i == len(chunks) - 1)
    assert t.status_flags == final_status
    assert t.result_sets == nresults
    assert t.consumed == len(chunks[-1])
    ref = ResponseTracker(caps)
    for p in payloads:
        ref.feed(p)
    assert ref.done and ref.status_flags == final_status


def test_tracker_every_split_offset() -> None:
    payloads = [
        *result_set(2, [[b"1", None], [b"x" * 260, b""]], AC | MORE, BASE),
        c.build_ok(status_flags=IN_TRANS, session_state_changes=[(1, "db")], capabilities=BASE),
    ]
    wire = stream_of(payloads)
    for i in range(1, len(wire)):
        t = ResponseTracker(BASE)
        assert not t.feed_data(wire[:i]), i
        assert t.feed_data(wire[i:]), i
        assert t.status_flags == IN_TRANS | c.SERVER_SESSION_STATE_CHANGED
        assert t.session_state_changes == [(1, "db")]


# ---------------------------------------------------------------------------------------------
# Parsers never raise anything but ProtocolError
# ---------------------------------------------------------------------------------------------
@given(st.binary(max_size=120))
def test_parsers_fuzz_only_protocol_errors(data: bytes) -> None:
    for fn in (
        c.parse_handshake,
        c.parse_handshake_response,
        lambda d: c.parse_ok(d, BASE),
        lambda d: c.parse_ok(d, DEP & ~c.CLIENT_PROTOCOL_41 | c.CLIENT_TRANSACTIONS),
        c.parse_err,
        c.parse_eof,
        c.parse_auth_switch_request,
        c.parse_auth_more_data,
        c.parse_session_state,
        c.parse_stmt_prepare_ok,
        lambda d: c.parse_text_row(d, 3),
        lambda d: c.read_lenenc_str(d, 0),
        lambda d: c.read_nul_str(d, 0),
    ):
        try:
            fn(data)
        except ProtocolError:
            pass


# ---------------------------------------------------------------------------------------------
# scan_query_response: the whole-response shortcut must agree with the tracker or abstain
# ---------------------------------------------------------------------------------------------
def _tracker_verdict(wire: bytes, caps: int) -> int:
    """What the ResponseTracker says of ``wire`` as one chunk: the final status if it holds
    exactly one complete, successful response, else -1."""
    t = ResponseTracker(caps)
    try:
        done = t.feed_data(wire)
    except ProtocolError:
        return -1
    if not done or t.consumed != len(wire) or t.failed or t.status_flags is None:
        return -1
    return t.status_flags


def _scan(wire: bytes, caps: int) -> int:
    return c.scan_query_response(wire, bool(caps & c.CLIENT_DEPRECATE_EOF))


@pytest.mark.parametrize("caps", [BASE, DEP])
def test_scan_takes_the_common_shapes(caps: int) -> None:
    ok = stream_of([c.build_ok(affected_rows=3, last_insert_id=7, status_flags=AC,
                               capabilities=caps)])
    assert _scan(ok, caps) == AC
    one_row = stream_of(result_set(1, [[b"x" * 120]], AC, caps))
    assert _scan(one_row, caps) == AC
    many = stream_of(result_set(3, [[b"1", None, b""]] * 50, IN_TRANS | AC, caps))
    assert _scan(many, caps) == IN_TRANS | AC
    empty = stream_of(result_set(2, [], AC, caps))
    assert _scan(empty, caps) == AC
    for wire in (ok, one_row, many, empty):
        assert _scan(wire, caps) == _tracker_verdict(wire, caps)


@pytest.mark.parametrize("caps", [BASE, DEP])
def test_scan_abstains_where_the_tracker_must_decide(caps: int) -> None:
    whole = stream_of(result_set(1, [[b"abc"]], AC, caps))
    cases = {
        "err": stream_of([c.build_err(1146, "42S02", "no such table")]),
        "err after rows": stream_of(result_set(1, [[b"abc"]], AC, caps)[:-1]
                                    + [c.build_err(1317, "70100", "interrupted")]),
        "more results": stream_of([*result_set(1, [[b"a"]], AC | MORE, caps),
                                   c.build_ok(status_flags=AC, capabilities=caps)]),
        "ok with more results": stream_of([c.build_ok(status_flags=AC | MORE, capabilities=caps),
                                           c.build_ok(status_flags=AC, capabilities=caps)]),
        "session state": stream_of([c.build_ok(status_flags=AC, capabilities=caps,
                                               session_state_changes=[(1, "db")])]),
        "local infile": stream_of([b"\xfb/tmp/x.csv"]),
        "wide affected rows": stream_of([c.build_ok(affected_rows=70000, status_flags=AC,
                                                    capabilities=caps)]),
        "incomplete": whole[:-1],
        "header only": whole[:3],
        "trailing bytes": whole + b"\x01",
        "251 columns": stream_of(result_set(251, [], AC, caps)),
        "too big": stream_of(result_set(1, [[b"x" * 200]] * 100, AC, caps)),
    }
    for name, wire in cases.items():
        assert _scan(wire, caps) == -1, name


def test_scan_cut_anywhere_abstains() -> None:
    wire = stream_of(result_set(2, [[b"1", None], [b"x" * 260, b""]], AC, BASE))
    assert _scan(wire, BASE) == AC
    for i in range(len(wire)):
        assert _scan(wire[:i], BASE) == -1, i


@given(responses())
@settings(max_examples=300)
def test_scan_agrees_with_the_tracker(resp: tuple[int, list[bytes], int, int]) -> None:
    caps, payloads, final_status, nresults = resp
    wire = stream_of(payloads)
    got = _scan(wire, caps)
    if got != -1:
        assert got == _tracker_verdict(wire, caps) == final_status
        assert nresults == 1
    else:
        # A lone OK or result set (these have no session-state data) is always taken.
        assert nresults > 1 or len(wire) > c.QUICK_SCAN_LIMIT


@given(st.binary(max_size=200), st.booleans())
def test_scan_fuzz_never_raises_and_agrees(data: bytes, dep: bool) -> None:
    caps = DEP if dep else BASE
    got = _scan(data, caps)
    if got != -1:
        assert got == _tracker_verdict(data, caps)
