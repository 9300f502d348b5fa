"""Byte-level tests for the sans-IO PostgreSQL codec (proxy/postgres/codec.py) and for the
session-state classifier (proxy/postgres/statements.py)."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.postgres import codec as c
from proxy.postgres.codec import (
    MessageReader,
    MessageScanner,
    ProtocolError,
    SpecialRequest,
    StartupMessage,
    StartupReader,
    parse_startup,
)
from proxy.postgres.params import tracked_lower
from proxy.postgres.statements import PinReason, classify

#: The source (c.__file__ is the extension module when the compiled modules are in use).
CODEC_PATH = Path(c.__file__).with_name("codec.py")

T, D, C, Z, S, E, N, K = (ord(x) for x in "TDCZSENK")


def msg(t: bytes | str, body: bytes = b"") -> bytes:
    if isinstance(t, str):
        t = t.encode()
    return t + struct.pack("!I", len(body) + 4) + body


def row_description(*names: str) -> bytes:
    body = struct.pack("!H", len(names))
    for name in names:
        # table oid, column no, type oid (int4), size, typmod, format
        body += name.encode() + b"\x00" + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0)
    return msg("T", body)


def data_row(*values: bytes | None) -> bytes:
    body = struct.pack("!H", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return msg("D", body)


# What PostgreSQL sends for `SET application_name = 'x'; SELECT a, b FROM t` (5 rows), with a
# NOTICE thrown in: every framing case (empty body, 1-byte body, long body) appears.
BACKEND_MESSAGES: list[bytes] = [
    msg("C", b"SET\x00"),
    msg("S", b"application_name\x00x\x00"),
    msg("N", b"SNOTICE\x00C00000\x00Mhello\x00\x00"),
    row_description("a", "b"),
    *[data_row(str(i).encode(), None if i % 2 else b"v" * (i * 7)) for i in range(5)],
    msg("C", b"SELECT 5\x00"),
    msg("Z", b"I"),
    msg("S", b"TimeZone\x00Europe/Berlin\x00"),
    msg("I"),  # EmptyQueryResponse: a message with an empty body
    msg("Z", b"T"),
]
STREAM = b"".join(BACKEND_MESSAGES)

INTERESTING = (Z, S, C, E)
KEEP = (Z, S)


def reference_events(stream: bytes, interesting=INTERESTING, keep=KEEP, max_body=1 << 20
                     ) -> list[tuple[int, bytes, int]]:
    """(type, kept body, absolute end offset) of every interesting message, computed naively."""
    out = []
    pos = 0
    while pos < len(stream):
        t = stream[pos]
        length = struct.unpack_from("!I", stream, pos + 1)[0]
        end = pos + 1 + length
        if t in interesting:
            body = stream[pos + 5:end][:max_body] if t in keep else b""
            out.append((t, body, end))
        pos = end
    return out


def header_ends(stream: bytes) -> list[tuple[int, int, int]]:
    """(header end offset, message end offset, type) of every message."""
    out = []
    pos = 0
    while pos < len(stream):
        length = struct.unpack_from("!I", stream, pos + 1)[0]
        out.append((pos + 5, pos + 1 + length, stream[pos]))
        pos += 1 + length
    return out


def feed_chunks(scanner: MessageScanner, stream: bytes, cuts: list[int]
                ) -> list[tuple[int, bytes, int]]:
    """Feed `stream` split at `cuts`; return events with `end` made absolute, checking that
    every `end` lies inside the chunk that produced it, and `last`/`in_message` after each."""
    bounds = [0, *sorted(set(cuts)), len(stream)]
    events: list[tuple[int, bytes, int]] = []
    headers = header_ends(stream)
    message_ends = {e for _, e, _ in headers} | {0}
    for a, b in zip(bounds, bounds[1:], strict=False):
        if a == b:
            continue
        chunk = stream[a:b]
        got = scanner.feed(chunk)
        for t, body, end in got or ():
            assert 0 < end <= len(chunk), (t, end, len(chunk))
            assert isinstance(body, bytes)
            events.append((t, body, a + end))
        assert scanner.in_message == (b not in message_ends), (a, b)
        seen = [t for hdr_end, _, t in headers if hdr_end <= b]
        assert scanner.last == (seen[-1] if seen else -1), (a, b)
    return events


# --------------------------------------------------------------------------- sans-IO


def test_codec_imports_no_io_modules() -> None:
    tree = ast.parse(CODEC_PATH.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
            else:  # a relative import could pull the I/O in through a sibling
                imported.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "__import__", "dynamic import in the sans-IO codec"
    forbidden = {"asyncio", "socket", "ssl", "selectors", "uvloop", "importlib"}
    assert not imported & forbidden, imported & forbidden
    assert not any(name.startswith(".") for name in imported), imported


# --------------------------------------------------------------------------- MessageScanner


def test_scanner_whole_stream() -> None:
    scanner = MessageScanner(INTERESTING, keep_body=KEEP)
    events = scanner.feed(STREAM)
    assert events == reference_events(STREAM)
    # Sanity of the reference itself: the things a server session looks at.
    assert [(chr(t), body) for t, body, _ in events] == [
        ("C", b""), ("S", b"application_name\x00x\x00"), ("C", b""), ("Z", b"I"),
        ("S", b"TimeZone\x00Europe/Berlin\x00"), ("Z", b"T"),
    ]
    assert events[-1][2] == len(STREAM)
    assert not scanner.in_message
    assert scanner.last == Z


def test_scanner_returns_none_when_nothing_interesting() -> None:
    scanner = MessageScanner(INTERESTING, keep_body=KEEP)
    rows = row_description("a") + data_row(b"1") + data_row(b"2")
    assert scanner.feed(rows) is None
    assert scanner.last == D and not scanner.in_message
    assert scanner.feed(b"") is None


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_scanner_every_single_split_point(cut: int) -> None:
    scanner = MessageScanner(INTERESTING, keep_body=KEEP)
    assert feed_chunks(scanner, STREAM, [cut]) == reference_events(STREAM)


def test_scanner_every_pair_of_split_points() -> None:
    expected = reference_events(STREAM)
    # Every pair of cuts within the first messages (header and body split in both places).
    span = sum(len(m) for m in BACKEND_MESSAGES[:4]) + 3
    for i in range(1, span):
        for j in range(i + 1, span):
            scanner = MessageScanner(INTERESTING, keep_body=KEEP)
            assert feed_chunks(scanner, STREAM, [i, j]) == expected, (i, j)


def test_scanner_one_byte_chunks() -> None:
    scanner = MessageScanner(INTERESTING, keep_body=KEEP)
    events = feed_chunks(scanner, STREAM, list(range(1, len(STREAM))))
    assert events == reference_events(STREAM)
    # Every 1-byte chunk that completes an interesting message reports end == 1.
    for _, _, end in events:
        scanner2 = MessageScanner(INTERESTING, keep_body=KEEP)
        got = [scanner2.feed(STREAM[k:k + 1]) for k in range(end)]
        assert got[-1] is not None and got[-1][-1][2] == 1


def test_scanner_in_message_and_last_mid_stream() -> None:
    scanner = MessageScanner(INTERESTING, keep_body=KEEP)
    rfq = msg("Z", b"I")
    assert scanner.feed(rfq[:1]) is None
    assert scanner.in_message and scanner.last == -1  # header not complete yet
    assert scanner.feed(rfq[1:5]) is None
    assert scanner.in_message and scanner.last == Z  # header seen, body still due
    assert scanner.feed(rfq[5:]) == [(Z, b"I", 1)]
    assert not scanner.in_message
    # An uninteresting message that is being skipped also counts as "in a message".
    row = data_row(b"x" * 100)
    assert scanner.feed(row[:20]) is None
    assert scanner.in_message and scanner.last == D
    assert scanner.feed(row[20:] + rfq) == [(Z, b"I", len(row) - 20 + len(rfq))]
    assert not scanner.in_message and scanner.last == Z


def test_scanner_not_kept_bodies_are_empty() -> None:
    scanner = MessageScanner((C, Z), keep_body=())
    cc = msg("C", b"SELECT 1\x00")
    assert scanner.feed(cc + msg("Z", b"I")) == [(C, b"", len(cc)), (Z, b"", len(cc) + 6)]
    # Also when the body spans chunks.
    assert scanner.feed(cc[:7]) is None
    assert scanner.feed(cc[7:]) == [(C, b"", len(cc) - 7)]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 11, 64, 10_000])
def test_scanner_max_body_truncates_kept_bodies(chunk: int) -> None:
    long_query = msg("Q", b"SELECT '" + b"x" * 500 + b"'\x00")
    short_query = msg("Q", b"SELECT 1\x00")
    stream = long_query + short_query + msg("S") + long_query
    scanner = MessageScanner((ord("Q"), ord("S")), keep_body=(ord("Q"),), max_body=16)
    cuts = list(range(chunk, len(stream), chunk))
    events = feed_chunks(scanner, stream, cuts)
    assert events == reference_events(stream, (ord("Q"), ord("S")), (ord("Q"),), 16)
    assert [body for _, body, _ in events] == [
        b"SELECT '" + b"x" * 8, b"SELECT 1\x00", b"", b"SELECT '" + b"x" * 8]
    assert [end for _, _, end in events] == [
        len(long_query), len(long_query) + len(short_query),
        len(long_query) + len(short_query) + 5, len(stream)]


@pytest.mark.parametrize("length", [0, 1, 3, c.MAX_MESSAGE + 1, 0xFFFFFFFF])
def test_scanner_invalid_length_raises(length: int) -> None:
    bad = b"Q" + struct.pack("!I", length) + b"xxxx"
    with pytest.raises(ProtocolError, match="invalid message length"):
        MessageScanner((ord("Q"),)).feed(bad)
    # Also for an uninteresting type, after a valid message, and with the header split.
    with pytest.raises(ProtocolError):
        MessageScanner((Z,)).feed(msg("Z", b"I") + bad)
    scanner = MessageScanner((Z,))
    assert scanner.feed(msg("Z", b"I") + bad[:2]) == [(Z, b"", 6)]
    with pytest.raises(ProtocolError):
        scanner.feed(bad[2:])


def test_scanner_max_message_is_configurable() -> None:
    scanner = MessageScanner((ord("Q"),), max_message=100)
    assert scanner.feed(msg("Q", b"x" * 96)) == [(ord("Q"), b"", 101)]
    with pytest.raises(ProtocolError):
        scanner.feed(msg("Q", b"x" * 97))
    # 0x7FFFFFFF: what a hostile client declares to make us buffer forever.
    with pytest.raises(ProtocolError):
        MessageScanner((ord("Q"),), keep_body=(ord("Q"),)).feed(b"Q\x7f\xff\xff\xff" + b"x" * 10)


_types = st.sampled_from(b"TDCZSENKIQPBHXdc12")
_message = st.builds(lambda t, body: msg(bytes([t]), body), _types,
                     st.binary(max_size=40) | st.binary(min_size=200, max_size=600))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(_message, max_size=25), data=st.data(),
       max_body=st.sampled_from([1, 8, 1 << 20]))
def test_scanner_random_chunking_property(messages: list[bytes], data: st.DataObject,
                                          max_body: int) -> None:
    stream = b"".join(messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    expected = reference_events(stream, INTERESTING, KEEP, max_body)
    whole = MessageScanner(INTERESTING, keep_body=KEEP, max_body=max_body).feed(stream) or []
    assert whole == expected
    scanner = MessageScanner(INTERESTING, keep_body=KEEP, max_body=max_body)
    chunked = feed_chunks(scanner, stream, cuts)
    assert [(t, body) for t, body, _ in chunked] == [(t, body) for t, body, _ in whole]
    assert chunked == expected


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=200), data=st.data())
def test_scanner_garbage_only_raises_protocol_error(garbage: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(garbage)), max_size=10)))
    scanner = MessageScanner(INTERESTING, keep_body=KEEP, max_body=8, max_message=1 << 16)
    bounds = [0, *cuts, len(garbage)]
    try:
        for a, b in zip(bounds, bounds[1:], strict=False):
            scanner.feed(garbage[a:b])
    except ProtocolError:
        pass


# --------------------------------------------------------------------------- MessageReader


def test_message_reader_framing_bytewise() -> None:
    reader = MessageReader()
    out: list[tuple[int, bytes]] = []
    for k in range(len(STREAM)):
        out += reader.feed(STREAM[k:k + 1])
    assert out == [(m[0], m[5:]) for m in BACKEND_MESSAGES]
    assert reader.take_rest() == b""


def test_message_reader_whole_and_rest() -> None:
    reader = MessageReader()
    sasl = c.auth_sasl(["SCRAM-SHA-256"])
    extra = msg("p", b"abc")
    assert reader.feed(sasl + extra[:3]) == [(ord("R"), sasl[5:])]
    assert reader.take_rest() == extra[:3]
    assert reader.take_rest() == b""
    assert reader.feed(extra) == [(ord("p"), b"abc")]


@pytest.mark.parametrize("length", [0, 3, c.MAX_MESSAGE + 1, 0x7FFFFFFF])
def test_message_reader_invalid_length(length: int) -> None:
    with pytest.raises(ProtocolError):
        MessageReader().feed(b"p" + struct.pack("!I", length))
    with pytest.raises(ProtocolError):
        MessageReader(max_message=1 << 16).feed(b"p" + struct.pack("!I", (1 << 16) + 1))


# --------------------------------------------------------------------------- StartupReader


def startup_packet(params: dict[str, str], protocol: int = c.PROTOCOL_V3) -> bytes:
    body = struct.pack("!I", protocol)
    for k, v in params.items():
        body += k.encode() + b"\x00" + v.encode() + b"\x00"
    body += b"\x00"
    return struct.pack("!I", len(body) + 4) + body


SSL_REQUEST = struct.pack("!II", 8, c.SSL_REQUEST_CODE)
GSSENC_REQUEST = struct.pack("!II", 8, c.GSSENC_REQUEST_CODE)


def test_startup_reader_bytewise_and_pipelined() -> None:
    pkt = startup_packet({"user": "app", "database": "app"})
    reader = StartupReader()
    results = [reader.feed(pkt[k:k + 1]) for k in range(len(pkt))]
    assert results[:-1] == [None] * (len(pkt) - 1)
    assert results[-1] == pkt[4:]
    # SSLRequest followed at once by the startup packet and a first message.
    reader = StartupReader()
    query = c.query("SELECT 1")
    assert reader.feed(SSL_REQUEST + pkt + query) == SSL_REQUEST[4:]
    assert reader.feed(b"") == pkt[4:]
    assert reader.take_rest() == query
    assert reader.take_rest() == b""


@pytest.mark.parametrize("length", [0, 4, 7, c.MAX_STARTUP_PACKET + 1, 0x7FFFFFFF, 0xFFFFFFFF])
def test_startup_reader_absurd_length(length: int) -> None:
    with pytest.raises(ProtocolError, match="startup packet length"):
        StartupReader().feed(struct.pack("!I", length) + b"\x00" * 8)


def test_startup_reader_accepts_max_length() -> None:
    reader = StartupReader()
    pkt = struct.pack("!I", c.MAX_STARTUP_PACKET) + b"\x00" * (c.MAX_STARTUP_PACKET - 4)
    assert reader.feed(pkt[:-1]) is None
    assert reader.feed(pkt[-1:]) == pkt[4:]


# --------------------------------------------------------------------------- parse_startup


def test_parse_startup_message() -> None:
    params = {"user": "app", "database": "app", "application_name": "psql é",
              "options": "-c search_path=x", "client_encoding": "UTF8"}
    got = parse_startup(startup_packet(params)[4:])
    assert isinstance(got, StartupMessage)
    assert got.protocol == c.PROTOCOL_V3 == 196608
    assert got.params == params
    empty = parse_startup(startup_packet({})[4:])
    assert isinstance(empty, StartupMessage) and empty.params == {}
    # The builder and the parser agree.
    built = c.startup_message({"user": "u", "database": "d"})
    assert built == startup_packet({"user": "u", "database": "d"})
    assert StartupReader().feed(built) == built[4:]


def test_parse_ssl_and_gssenc_requests() -> None:
    ssl = parse_startup(SSL_REQUEST[4:])
    assert isinstance(ssl, SpecialRequest) and ssl.code == c.SSL_REQUEST_CODE == 80877103
    gss = parse_startup(GSSENC_REQUEST[4:])
    assert isinstance(gss, SpecialRequest) and gss.code == c.GSSENC_REQUEST_CODE == 80877104


def test_parse_cancel_request() -> None:
    pkt = struct.pack("!IIII", 16, 80877102, 12345, 0xDEADBEEF)
    assert c.cancel_request(12345, 0xDEADBEEF) == pkt
    got = parse_startup(StartupReader().feed(pkt))  # type: ignore[arg-type]
    assert isinstance(got, SpecialRequest)
    assert (got.code, got.pid, got.secret) == (c.CANCEL_REQUEST_CODE, 12345, 0xDEADBEEF)


@pytest.mark.parametrize("payload", [
    b"",
    b"\x00\x03",
    struct.pack("!I", c.CANCEL_REQUEST_CODE),  # no key
    struct.pack("!II", c.CANCEL_REQUEST_CODE, 1),  # half a key
    struct.pack("!IIII", c.CANCEL_REQUEST_CODE, 1, 2, 3),  # too long
    struct.pack("!I", 0x00020000) + b"user\x00app\x00\x00",  # protocol 2.0
    struct.pack("!I", 0x00040000) + b"user\x00app\x00\x00",  # protocol 4.0
    struct.pack("!I", 1234),
    struct.pack("!I", c.PROTOCOL_V3),  # no terminator at all
    struct.pack("!I", c.PROTOCOL_V3) + b"user",  # unterminated key
    struct.pack("!I", c.PROTOCOL_V3) + b"user\x00app",  # unterminated value
    struct.pack("!I", c.PROTOCOL_V3) + b"user\x00app\x00",  # no final NUL
    struct.pack("!I", c.PROTOCOL_V3) + b"user\x00\x00",  # key without value
    struct.pack("!I", c.PROTOCOL_V3) + b"\x00app\x00\x00",  # empty key
    struct.pack("!I", c.PROTOCOL_V3) + b"\x00\x00\x00",
    struct.pack("!I", c.PROTOCOL_V3) + b"user\x00\xff\xfe\x00\x00",  # not UTF-8
    struct.pack("!I", c.PROTOCOL_V3) + b"\xc3\x00x\x00\x00",  # not UTF-8 key
])
def test_parse_startup_malformed(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_startup(payload)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64) | st.builds(
    lambda code, rest: struct.pack("!I", code) + rest,
    st.sampled_from([c.PROTOCOL_V3, c.CANCEL_REQUEST_CODE, c.SSL_REQUEST_CODE, 0x00030001]),
    st.binary(max_size=40)))
def test_parse_startup_fuzz_only_protocol_error(payload: bytes) -> None:
    try:
        got = parse_startup(payload)
    except ProtocolError:
        return
    assert isinstance(got, StartupMessage | SpecialRequest)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_startup_reader_fuzz_only_protocol_error(data: bytes) -> None:
    reader = StartupReader()
    try:
        payload = reader.feed(data)
        if payload is not None:
            parse_startup(payload)
    except ProtocolError:
        pass


# --------------------------------------------------------------------------- builders


def test_error_response_exact_bytes() -> None:
    fields = b"SFATAL\x00VFATAL\x00C08P01\x00Mbad input\x00\x00"
    assert c.error_response("08P01", "bad input", severity="FATAL") == (
        b"E" + struct.pack("!I", 4 + len(fields)) + fields)
    assert c.error_response("57014", "x") == b"E\x00\x00\x00\x1dSERROR\x00VERROR\x00C57014\x00Mx\x00\x00"
    full = c.error_response("28P01", "no", detail="d", hint="h")
    assert full == b"E\x00\x00\x00\x24SERROR\x00VERROR\x00C28P01\x00Mno\x00Dd\x00Hh\x00\x00"
    t, body = MessageReader().feed(full)[0]
    assert t == E
    assert c.parse_error_fields(body) == {
        "S": "ERROR", "V": "ERROR", "C": "28P01", "M": "no", "D": "d", "H": "h"}
    # Non-ASCII text is UTF-8 and the length counts bytes.
    assert c.error_response("XX000", "é")[1:5] == struct.pack("!I", 4 + 26)


def test_parameter_status_exact_bytes() -> None:
    assert c.parameter_status("client_encoding", "UTF8") == (
        b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00")
    assert c.parameter_status("application_name", "") == (
        b"S\x00\x00\x00\x16application_name\x00\x00")
    assert c.parse_parameter_status(b"TimeZone\x00UTC\x00") == ("TimeZone", "UTC")
    with pytest.raises(ProtocolError):
        c.parse_parameter_status(b"TimeZone")


def test_ready_for_query_exact_bytes() -> None:
    assert c.ready_for_query() == b"Z\x00\x00\x00\x05I"
    assert c.ready_for_query(b"T") == b"Z\x00\x00\x00\x05T"
    assert c.ready_for_query(b"E") == b"Z\x00\x00\x00\x05E"


def test_auth_request_exact_bytes() -> None:
    assert c.auth_request(c.AUTH_OK) == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert c.auth_request(c.AUTH_MD5, b"\x01\x02\x03\x04") == (
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04")
    assert c.auth_request(c.AUTH_CLEARTEXT) == b"R\x00\x00\x00\x08\x00\x00\x00\x03"
    assert c.auth_sasl(["SCRAM-SHA-256"]) == (
        b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00")
    assert c.auth_request(c.AUTH_SASL_FINAL, b"v=abc") == (
        b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=abc")
    assert c.parse_auth(b"\x00\x00\x00\x0bdata") == (11, b"data")
    with pytest.raises(ProtocolError):
        c.parse_auth(b"\x00\x00")


def test_other_builders_exact_bytes() -> None:
    assert c.backend_key_data(1, 2) == b"K\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x02"
    assert c.parse_backend_key(b"\x00\x00\x00\x01\x00\x00\x00\x02") == (1, 2)
    assert c.query("SELECT 1") == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert c.TERMINATE == b"X\x00\x00\x00\x04"
    assert c.SYNC == b"S\x00\x00\x00\x04"
    assert c.command_complete("SELECT 1") == b"C\x00\x00\x00\x0dSELECT 1\x00"
    assert c.data_row([1, None, "ab"]) == (
        b"D\x00\x00\x00\x15\x00\x03\x00\x00\x00\x011\xff\xff\xff\xff\x00\x00\x00\x02ab")
    assert c.sasl_initial_response("SCRAM-SHA-256", b"n,,") == (
        b"p\x00\x00\x00\x19SCRAM-SHA-256\x00\x00\x00\x00\x03n,,")
    assert c.parse_sasl_initial(c.sasl_initial_response("SCRAM-SHA-256", b"n,,")[5:]) == (
        "SCRAM-SHA-256", b"n,,")
    assert c.parse_query(b"SELECT 1\x00") == b"SELECT 1"
    assert c.parse_parse(b"s1\x00SELECT $1\x00\x00\x00") == (b"s1", b"SELECT $1")


# --------------------------------------------------------------------------- statements.classify

TRACKED = tracked_lower()

NOT_PINNED = [
    "RESET ALL",  # removes state; reported parameters come back through ParameterStatus
    "SELECT set_config('jit', 'off', false)",  # asyncpg introspection: performance only
    "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
    "SELECT 1",
    "SET client_encoding TO 'UTF8'",
    "SET NAMES 'UTF8'",
    "set application_name = 'web'",
    "SET TimeZone = 'UTC'",
    "SET TIME ZONE 'Europe/Berlin'",
    "SET SESSION TIME ZONE 'UTC'",
    "SET DateStyle TO ISO, MDY",
    "SET \"DateStyle\" TO ISO",
    "SET IntervalStyle = postgres",
    "SET standard_conforming_strings = on",
    "SET search_path TO public, app",
    "SET SESSION search_path = public",
    "SET default_transaction_read_only = off",
    "RESET application_name",
    "RESET TIME ZONE",
    "SET LOCAL work_mem = '64MB'",
    "set local statement_timeout = 0",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET CONSTRAINTS ALL DEFERRED",
    "UPDATE counter SET n = n + 1 WHERE id = 1",
    "update t set work_mem = 1",
    "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = excluded.v",
    "SELECT pg_advisory_xact_lock(42)",
    "SELECT pg_try_advisory_xact_lock(42)",
    "SELECT pg_advisory_xact_lock_shared(1, 2)",
    "SELECT pg_advisory_unlock(42)",
    "CREATE TABLE t (id int)",
    "CREATE INDEX ON t (id)",
    "DECLARE c CURSOR FOR SELECT 1",
    "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
    "SELECT set_config('work_mem', '1MB', true)",
    "SELECT set_config('search_path', 'app', false)",
    "SELECT pg_catalog.set_config('TimeZone', 'UTC', false)",
    "SELECT pg_catalog.set_config('application_name', 'x', false), "
    "pg_catalog.set_config('DateStyle', 'ISO', false)",
    "NOTIFY chan, 'x'",
    "SELECT * INTO t2 FROM t",
    "-- SET work_mem = '1MB'\nSELECT 1",
    "SELECT 1 /* ; SET work_mem = '1MB' */",
    "BEGIN; SET LOCAL work_mem = '1MB'; SELECT 1; COMMIT",
    "SET application_name = 'a'; SET TIME ZONE 'UTC'; SELECT 1",
    "SELECT 'listen' AS word",
]

PINNED = [
    ("SET work_mem = '64MB'", PinReason.SET),
    ("set work_mem to default", PinReason.SET),
    ("SET SESSION statement_timeout = 1000", PinReason.SET),
    ("SET \"work_mem\" = '1MB'", PinReason.SET),
    ("RESET work_mem", PinReason.SET),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", PinReason.SET),
    ("SET ROLE admin", PinReason.SET_ROLE),
    ("SET SESSION AUTHORIZATION app2", PinReason.SET_ROLE),
    ("LISTEN chan", PinReason.LISTEN),
    ("listen \"Chan\"", PinReason.LISTEN),
    ("SELECT pg_advisory_lock(42)", PinReason.ADVISORY_LOCK),
    ("SELECT pg_try_advisory_lock(1, 2)", PinReason.ADVISORY_LOCK),
    ("select pg_advisory_lock_shared(7)", PinReason.ADVISORY_LOCK),
    ("SELECT x FROM t WHERE pg_try_advisory_lock (id)", PinReason.ADVISORY_LOCK),
    ("CREATE TEMP TABLE tt (id int)", PinReason.TEMP_TABLE),
    ("CREATE TEMPORARY TABLE tt AS SELECT 1", PinReason.TEMP_TABLE),
    ("create global temporary table tt (id int)", PinReason.TEMP_TABLE),
    ("CREATE LOCAL TEMP TABLE tt (id int)", PinReason.TEMP_TABLE),
    ("SELECT * INTO TEMP tt FROM t", PinReason.TEMP_TABLE),
    ("SELECT 1 AS a INTO TEMPORARY TABLE tt", PinReason.TEMP_TABLE),
    ("PREPARE s(int) AS SELECT $1", PinReason.PREPARE),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", PinReason.CURSOR_WITH_HOLD),
    ("declare c binary no scroll cursor with  hold for select 1", PinReason.CURSOR_WITH_HOLD),
    ("SELECT set_config('work_mem', '1MB', false)", PinReason.SET),
    ("SELECT pg_catalog.set_config('statement_timeout', '5s', FALSE)", PinReason.SET),
    ("LOAD 'auto_explain'", PinReason.LOAD),
    # Comments before the statement.
    ("/* app=web */ SET work_mem = '1MB'", PinReason.SET),
    ("-- leading comment\nLISTEN chan", PinReason.LISTEN),
    ("/* a */ /* b */\n-- c\n  PREPARE p AS SELECT 1", PinReason.PREPARE),
    ("  (  LISTEN chan", PinReason.LISTEN),
    # Multi-statement strings: any statement counts.
    ("SELECT 1; SET work_mem = '1MB'", PinReason.SET),
    ("BEGIN; CREATE TEMP TABLE tt (id int); COMMIT", PinReason.TEMP_TABLE),
    ("SET application_name = 'a'; LISTEN chan", PinReason.LISTEN),
    ("SELECT 1;LISTEN chan;", PinReason.LISTEN),
    ("SET LOCAL work_mem = 1; SET work_mem = 2", PinReason.SET),
    ("UPDATE t SET a = 1; /* x */ SET ROLE r", PinReason.SET_ROLE),
]


def test_tracked_names() -> None:
    assert {"client_encoding", "datestyle", "timezone", "intervalstyle",
            "standard_conforming_strings", "application_name", "search_path"} <= TRACKED
    assert "work_mem" not in TRACKED
    assert all(name == name.lower() for name in TRACKED)


@pytest.mark.parametrize("sql", NOT_PINNED)
def test_classify_not_pinned(sql: str) -> None:
    assert classify(sql.encode(), TRACKED) is None


@pytest.mark.parametrize(("sql", "reason"), PINNED)
def test_classify_pinned(sql: str, reason: str) -> None:
    assert classify(sql.encode(), TRACKED) == reason


def test_classify_depends_on_tracked_set() -> None:
    assert classify(b"SET work_mem = 1", frozenset({"work_mem"})) is None
    assert classify(b"SET application_name = 'x'", frozenset()) == PinReason.SET
    assert classify(b"SELECT set_config('work_mem', '1', false)", frozenset({"work_mem"})) is None


def test_classify_own_parameter_sync_statement_is_not_pinned() -> None:
    from proxy.postgres.params import sync_sql

    sql = sync_sql({"TimeZone": "UTC", "search_path": '"$user", public',
                    "application_name": "it's"})
    assert classify(sql.encode(), TRACKED) is None


def test_parse_data_row_reads_what_data_row_writes() -> None:
    msg = c.data_row(["app", None, "é", ""])
    assert c.parse_data_row(msg[5:]) == ["app", None, "é", ""]


def test_extended_query_frames_parse_bind_execute_sync() -> None:
    out = c.extended_query("SELECT $1", ["o'brien"])
    reader = c.MessageReader()
    msgs = reader.feed(out)
    assert [chr(t) for t, _ in msgs] == ["P", "B", "E", "S"]
    assert msgs[0][1] == b"\x00SELECT $1\x00\x00\x00"
    # unnamed portal and statement, no format codes, one parameter, no result formats
    assert msgs[1][1] == b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x07o'brien\x00\x00"
