"""Sans-IO MySQL/MariaDB client/server protocol 41: packet framing, handshake, OK/ERR/EOF, and
response-end tracking (ResponseTracker) for transaction pooling.

Bytes in, values out and back; no I/O here (no asyncio/socket/ssl imports, a test enforces it).

Conventions
-----------
* Every parser raises :class:`ProtocolError` (a ``ValueError``) on truncated or malformed input,
  never ``IndexError`` / ``struct.error``.
* Capabilities: the wire carries the standard 32 capability bits and, for MariaDB, 32 more
  "extended" bits in bytes that MySQL reserves (present when the server clears bit 0,
  ``CLIENT_MYSQL`` == ``CLIENT_LONG_PASSWORD``).  :class:`Handshake` and :class:`HandshakeResponse`
  keep both as on the wire (``capabilities``: lower 32 bits, ``mariadb_ext_caps``: the extended
  32 bits, unshifted) and expose ``all_capabilities`` = ``capabilities | mariadb_ext_caps << 32``.
  The ``MARIADB_CLIENT_*`` constants are 64-bit values (``1 << 32`` ...) as in MariaDB's headers,
  so test them against ``all_capabilities``.  :class:`ResponseTracker` takes the 64-bit value.
* Identifiers and strings (user, database, plugin, variable names) are decoded as UTF-8 with
  ``surrogateescape`` so that they round-trip losslessly through the ``build_*`` functions.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview

# --------------------------------------------------------------------------------------------
# Capability flags (lower 32 bits: MySQL and MariaDB)
# --------------------------------------------------------------------------------------------
CLIENT_LONG_PASSWORD = 1 << 0
CLIENT_MYSQL = CLIENT_LONG_PASSWORD  # MariaDB: a server that clears it sends extended caps
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_LONG_FLAG = 1 << 2
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_NO_SCHEMA = 1 << 4
CLIENT_COMPRESS = 1 << 5
CLIENT_ODBC = 1 << 6
CLIENT_LOCAL_FILES = 1 << 7
CLIENT_IGNORE_SPACE = 1 << 8
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_INTERACTIVE = 1 << 10
CLIENT_SSL = 1 << 11
CLIENT_IGNORE_SIGPIPE = 1 << 12
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_RESERVED = 1 << 14
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PS_MULTI_RESULTS = 1 << 18
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
CLIENT_SESSION_TRACK = 1 << 23
CLIENT_DEPRECATE_EOF = 1 << 24
CLIENT_OPTIONAL_RESULTSET_METADATA = 1 << 25
CLIENT_ZSTD_COMPRESSION_ALGORITHM = 1 << 26
CLIENT_QUERY_ATTRIBUTES = 1 << 27
CLIENT_MULTI_FACTOR_AUTHENTICATION = 1 << 28
CLIENT_CAPABILITY_EXTENSION = 1 << 29
CLIENT_SSL_VERIFY_SERVER_CERT = 1 << 30
CLIENT_REMEMBER_OPTIONS = 1 << 31

# MariaDB extended capabilities (carried in the handshake's reserved bytes; 64-bit values).
MARIADB_CLIENT_PROGRESS = 1 << 32
MARIADB_CLIENT_COM_MULTI = 1 << 33
MARIADB_CLIENT_STMT_BULK_OPERATIONS = 1 << 34
MARIADB_CLIENT_EXTENDED_TYPE_INFO = 1 << 35
MARIADB_CLIENT_CACHE_METADATA = 1 << 36
MARIADB_CLIENT_BULK_UNIT_RESULTS = 1 << 37

# --------------------------------------------------------------------------------------------
# Server status flags (OK / EOF packets)
# --------------------------------------------------------------------------------------------
SERVER_STATUS_IN_TRANS = 1 << 0
SERVER_STATUS_AUTOCOMMIT = 1 << 1
SERVER_MORE_RESULTS_EXISTS = 1 << 3
SERVER_QUERY_NO_GOOD_INDEX_USED = 1 << 4
SERVER_QUERY_NO_INDEX_USED = 1 << 5
SERVER_STATUS_CURSOR_EXISTS = 1 << 6
SERVER_STATUS_LAST_ROW_SENT = 1 << 7
SERVER_STATUS_DB_DROPPED = 1 << 8
SERVER_STATUS_NO_BACKSLASH_ESCAPES = 1 << 9
SERVER_STATUS_METADATA_CHANGED = 1 << 10
SERVER_QUERY_WAS_SLOW = 1 << 11
SERVER_PS_OUT_PARAMS = 1 << 12
SERVER_STATUS_IN_TRANS_READONLY = 1 << 13
SERVER_SESSION_STATE_CHANGED = 1 << 14

# --------------------------------------------------------------------------------------------
# Command bytes (first byte of a client command packet)
# --------------------------------------------------------------------------------------------
COM_SLEEP = 0x00
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_CREATE_DB = 0x05
COM_DROP_DB = 0x06
COM_REFRESH = 0x07
COM_SHUTDOWN = 0x08
COM_STATISTICS = 0x09
COM_PROCESS_INFO = 0x0A
COM_CONNECT = 0x0B
COM_PROCESS_KILL = 0x0C
COM_DEBUG = 0x0D
COM_PING = 0x0E
COM_TIME = 0x0F
COM_DELAYED_INSERT = 0x10
COM_CHANGE_USER = 0x11
COM_BINLOG_DUMP = 0x12
COM_TABLE_DUMP = 0x13
COM_CONNECT_OUT = 0x14
COM_REGISTER_SLAVE = 0x15
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_DAEMON = 0x1D
COM_BINLOG_DUMP_GTID = 0x1E
COM_RESET_CONNECTION = 0x1F
COM_STMT_BULK_EXECUTE = 0xFA  # MariaDB
COM_MULTI = 0xFE  # MariaDB (deprecated)

# COM_SET_OPTION arguments
MYSQL_OPTION_MULTI_STATEMENTS_ON = 0
MYSQL_OPTION_MULTI_STATEMENTS_OFF = 1

# COM_STMT_EXECUTE flags
CURSOR_TYPE_NO_CURSOR = 0
CURSOR_TYPE_READ_ONLY = 1
CURSOR_TYPE_FOR_UPDATE = 2
CURSOR_TYPE_SCROLLABLE = 4

# --------------------------------------------------------------------------------------------
# Session state tracking (OK packet, CLIENT_SESSION_TRACK)
# --------------------------------------------------------------------------------------------
SESSION_TRACK_SYSTEM_VARIABLES = 0
SESSION_TRACK_SCHEMA = 1
SESSION_TRACK_STATE_CHANGE = 2
SESSION_TRACK_GTIDS = 3
SESSION_TRACK_TRANSACTION_CHARACTERISTICS = 4
SESSION_TRACK_TRANSACTION_STATE = 5  # MariaDB calls it SESSION_TRACK_TRANSACTION_TYPE

# --------------------------------------------------------------------------------------------
# Packet header bytes, auth markers, charsets, sizes
# --------------------------------------------------------------------------------------------
OK_HEADER = 0x00
AUTH_MORE_DATA_HEADER = 0x01
LOCAL_INFILE_HEADER = 0xFB
EOF_HEADER = 0xFE
AUTH_SWITCH_HEADER = 0xFE
ERR_HEADER = 0xFF
NULL_VALUE = 0xFB  # a NULL column in a text row

# caching_sha2_password "auth more data" status bytes
CACHING_SHA2_REQUEST_PUBLIC_KEY = 0x02
CACHING_SHA2_FAST_AUTH_SUCCESS = 0x03
CACHING_SHA2_PERFORM_FULL_AUTH = 0x04

LATIN1_SWEDISH_CI = 8
UTF8MB3_GENERAL_CI = 33
UTF8MB4_GENERAL_CI = 45
BINARY_CHARSET = 63
UTF8MB4_0900_AI_CI = 255

MAX_PAYLOAD = 0xFFFFFF  # a physical packet of this length is continued by the next one
DEFAULT_MAX_PACKET = 1 << 30  # MySQL's largest max_allowed_packet (1 GiB)
SCRAMBLE_LENGTH = 20

_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_P16 = struct.Struct("<H").pack
_P32 = struct.Struct("<I").pack
_EOF_BODY = struct.Struct("<HH")


class ProtocolError(ValueError):
    """Truncated, malformed or unexpected protocol data."""


# --------------------------------------------------------------------------------------------
# Basic types: length-encoded integers/strings, NUL-terminated strings
# --------------------------------------------------------------------------------------------
def read_lenenc_int(buf: Buffer, pos: int = 0) -> tuple[int, int]:
    """Read a length-encoded integer at ``pos``; return ``(value, new_pos)``.

    0xFB (NULL in rows) and 0xFF (ERR) are not integers and raise :class:`ProtocolError`.
    """
    n = len(buf)
    if pos < 0 or pos >= n:
        raise ProtocolError("truncated length-encoded integer")
    b = buf[pos]
    if b < 0xFB:
        return b, pos + 1
    if b == 0xFC:
        if pos + 3 > n:
            raise ProtocolError("truncated length-encoded integer (2 bytes)")
        return _U16(buf, pos + 1)[0], pos + 3
    if b == 0xFD:
        if pos + 4 > n:
            raise ProtocolError("truncated length-encoded integer (3 bytes)")
        return buf[pos + 1] | buf[pos + 2] << 8 | buf[pos + 3] << 16, pos + 4
    if b == 0xFE:
        if pos + 9 > n:
            raise ProtocolError("truncated length-encoded integer (8 bytes)")
        return _U64(buf, pos + 1)[0], pos + 9
    raise ProtocolError(f"invalid length-encoded integer prefix 0x{b:02x}")


def lenenc_int(n: int) -> bytes:
    """Encode ``n`` (0 <= n < 2**64) as a length-encoded integer."""
    if n < 0:
        raise ValueError("length-encoded integers are unsigned")
    if n < 0xFB:
        return bytes((n,))
    if n < 0x10000:
        return b"\xfc" + _P16(n)
    if n < 0x1000000:
        return b"\xfd" + n.to_bytes(3, "little")
    if n < 1 << 64:
        return b"\xfe" + n.to_bytes(8, "little")
    raise ValueError("length-encoded integer out of range")


def read_lenenc_str(buf: Buffer, pos: int = 0) -> tuple[bytes, int]:
    """Read a length-encoded string at ``pos``; return ``(bytes, new_pos)``."""
    n, pos = read_lenenc_int(buf, pos)
    end = pos + n
    if end > len(buf):
        raise ProtocolError("truncated length-encoded string")
    return bytes(buf[pos:end]), end


def lenenc_str(data: bytes | str) -> bytes:
    """Encode a length-encoded string (str is UTF-8 encoded)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return lenenc_int(len(data)) + data


def read_nul_str(buf: Buffer, pos: int = 0) -> tuple[bytes, int]:
    """Read a NUL-terminated string at ``pos``; return ``(bytes without NUL, pos after NUL)``."""
    b = bytes(buf) if not isinstance(buf, bytes | bytearray) else buf
    if pos < 0 or pos > len(b):
        raise ProtocolError("truncated NUL-terminated string")
    end = b.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("NUL-terminated string without NUL")
    return bytes(b[pos:end]), end + 1


def nul_str(data: bytes | str) -> bytes:
    """Encode a NUL-terminated string (str is UTF-8 encoded)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise ValueError("NUL-terminated string contains NUL")
    return data + b"\0"


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class _Cursor:
    """Bounds-checked sequential reader for the (cold) connection-phase parsers."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: Buffer, pos: int = 0) -> None:
        self.buf = bytes(buf)
        self.pos = pos

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ProtocolError(f"truncated packet: need {n} bytes, have {self.remaining}")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        if self.pos >= len(self.buf):
            raise ProtocolError("truncated packet: need 1 byte")
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        return int(_U16(self.take(2))[0])

    def u32(self) -> int:
        return int(_U32(self.take(4))[0])

    def nul_str(self, *, eof_ok: bool = False) -> bytes:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            if not eof_ok:
                raise ProtocolError("NUL-terminated string without NUL")
            end = len(self.buf)
            out = self.buf[self.pos : end]
            self.pos = end
            return out
        out = self.buf[self.pos : end]
        self.pos = end + 1
        return out

    def lenenc_int(self) -> int:
        v, self.pos = read_lenenc_int(self.buf, self.pos)
        return v

    def lenenc_str(self) -> bytes:
        v, self.pos = read_lenenc_str(self.buf, self.pos)
        return v

    def rest(self) -> bytes:
        out = self.buf[self.pos :]
        self.pos = len(self.buf)
        return out


# --------------------------------------------------------------------------------------------
# Packet framing
# --------------------------------------------------------------------------------------------
def _header(length: int, seq: int) -> bytes:
    return _P32(length | (seq & 0xFF) << 24)


def encode_packet(seq: int, payload: Buffer) -> bytes:
    """Frame ``payload`` starting at sequence id ``seq``.

    Payloads of 0xFFFFFF bytes or more are split into 0xFFFFFF-byte packets followed by a
    shorter one (an empty one when the length is an exact multiple); sequence ids increment
    per physical packet (see :func:`seq_after`).
    """
    n = len(payload)
    if n < MAX_PAYLOAD:
        return _header(n, seq) + payload
    parts: list[Buffer] = []
    pos = 0
    while True:
        chunk = payload[pos : pos + MAX_PAYLOAD]
        parts.append(_header(len(chunk), seq))
        parts.append(chunk)
        seq += 1
        pos += MAX_PAYLOAD
        if len(chunk) < MAX_PAYLOAD:
            break
    return b"".join(parts)


def seq_after(seq: int, payload_len: int) -> int:
    """The sequence id that follows a logical packet of ``payload_len`` bytes sent at ``seq``."""
    return (seq + payload_len // MAX_PAYLOAD + 1) & 0xFF


class PacketReader:
    """Split a byte stream into complete logical packets (continuations joined).

    ``feed(data)`` returns ``[(first_seq, payload), ...]``; incomplete bytes stay buffered and
    are visible as :attr:`pending`.  A logical packet longer than ``max_packet`` raises
    :class:`ProtocolError` as soon as its headers show it (before the bytes arrive).
    """

    __slots__ = ("_buf", "_pos", "max_packet")

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_packet = max_packet

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet returned as part of a complete packet."""
        return bytes(self._buf[self._pos :])

    def clear(self) -> None:
        self._buf.clear()
        self._pos = 0

    def feed(self, data: Buffer) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = self._pos
        end = len(buf)
        limit = self.max_packet
        with memoryview(buf) as mv:
            while end - pos >= 4:
                h = _U32(buf, pos)[0]
                ln = h & 0xFFFFFF
                if ln < MAX_PAYLOAD:
                    if ln > limit:
                        raise ProtocolError(f"packet of {ln} bytes exceeds max_packet {limit}")
                    body = pos + 4
                    if body + ln > end:
                        break
                    out.append((h >> 24, bytes(mv[body : body + ln])))
                    pos = body + ln
                    continue
                # A continued packet: find all its fragments before copying anything.
                total = 0
                p = pos
                frags: list[tuple[int, int]] = []
                complete = False
                while end - p >= 4:
                    fl = _U32(buf, p)[0] & 0xFFFFFF
                    total += fl
                    if total > limit:
                        raise ProtocolError(
                            f"packet of at least {total} bytes exceeds max_packet {limit}"
                        )
                    if p + 4 + fl > end:
                        break
                    frags.append((p + 4, p + 4 + fl))
                    p += 4 + fl
                    if fl < MAX_PAYLOAD:
                        complete = True
                        break
                if not complete:
                    break
                out.append((h >> 24, b"".join(mv[a:b] for a, b in frags)))
                pos = p
        if pos >= end:
            buf.clear()
            pos = 0
        elif pos > 65536 and pos > end // 2:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return out


def make_mask(*first_bytes: int) -> bytes:
    """A 256-byte table for :meth:`PacketWalker.next_packet`: nonzero = report that first byte."""
    table = bytearray(256)
    for b in first_bytes:
        table[b] = 1
    return bytes(table)


_ALL_MASK = b"\x01" * 256
_NO_MASK = bytes(256)
_ROW_END_MASK = make_mask(EOF_HEADER, ERR_HEADER)


class PacketWalker:
    """Streaming packet-boundary walker for the forwarding hot path (no payload copies).

    Usage: ``feed(chunk)`` then call ``next_packet(mask)`` until it returns ``None`` (chunk
    exhausted; state such as a split header or a half-received packet carries over to the next
    ``feed``).  Each result is ``(first_seq, total_length, head)`` for one complete *logical*
    packet (continuations included; their inner bytes are never read as headers); ``head`` is
    the payload's first ``min(length, head_limit)`` bytes.  Packets whose first byte is not
    marked in ``mask`` (a 256-byte table from :func:`make_mask`; ``None`` = report all) are
    skipped without copying anything; empty packets have no first byte and are always reported.
    After a result, :attr:`offset` is the position in the current chunk just past that packet.
    """

    __slots__ = (
        "_buf",
        "_pos",
        "_end",
        "_hdr",
        "_in_frag",
        "_in_pkt",
        "_more",
        "_remain",
        "_seq",
        "_len",
        "_report",
        "_cap",
        "_skip",
        "head_limit",
    )

    def __init__(self, head_limit: int = 65536) -> None:
        self.head_limit = head_limit
        self._buf: Buffer = b""
        self._pos = 0
        self._end = 0
        self.reset()

    def reset(self) -> None:
        """Forget any partial packet (e.g. when a connection is reused after an abort)."""
        self._hdr = b""
        self._in_frag = False
        self._in_pkt = False
        self._more = False
        self._remain = 0
        self._seq = 0
        self._len = 0
        self._report = -1
        self._cap: bytearray | None = None
        self._skip = 0

    def skip_packets(self, n: int) -> None:
        """Skip the next ``n`` complete packets unreported, whatever their first byte (used to
        pass over column definitions without a Python call per packet)."""
        self._skip += n

    @property
    def skip_pending(self) -> int:
        return self._skip

    @property
    def offset(self) -> int:
        return self._pos

    @property
    def at_boundary(self) -> bool:
        """True when no packet is partially received."""
        return not self._in_pkt and not self._hdr

    def feed(self, data: Buffer) -> None:
        """Start walking a new chunk (any unreturned rest of the previous chunk is dropped)."""
        self._buf = data
        self._pos = 0
        self._end = len(data)

    def walk(self, data: Buffer, mask: bytes | None = None) -> list[tuple[int, int, bytes]]:
        """Convenience: feed ``data`` and return every reported packet in it."""
        self.feed(data)
        out = []
        while (p := self.next_packet(mask)) is not None:
            out.append(p)
        return out

    def next_packet(self, mask: bytes | None = None) -> tuple[int, int, bytes] | None:
        if mask is None:
            mask = _ALL_MASK
        buf = self._buf
        pos = self._pos
        end = self._end
        hl = self.head_limit
        while True:
            if not self._in_pkt and not self._hdr:
                skip = self._skip
                if skip:
                    while pos + 4 <= end:
                        h = _U32(buf, pos)[0]
                        ln = h & 0xFFFFFF
                        nxt = pos + 4 + ln
                        if ln == MAX_PAYLOAD or nxt > end:
                            break
                        pos = nxt
                        skip -= 1
                        if not skip:
                            break
                    self._skip = skip
                if not skip:
                    # Fast path: whole packets inside this chunk; unreported ones cost one
                    # header unpack each.
                    while pos + 4 <= end:
                        h = _U32(buf, pos)[0]
                        ln = h & 0xFFFFFF
                        body = pos + 4
                        nxt = body + ln
                        if ln == MAX_PAYLOAD or nxt > end:
                            break
                        if ln == 0 or mask[buf[body]]:
                            self._pos = nxt
                            return h >> 24, ln, bytes(buf[body : body + (ln if ln < hl else hl)])
                        pos = nxt
                if pos >= end:
                    self._pos = end
                    return None
            # Slow path: split header, packet crossing the chunk end, or continuation.
            if not self._in_frag:
                need = 4 - len(self._hdr)
                got = bytes(buf[pos : pos + need])
                pos += len(got)
                if len(got) < need:
                    self._hdr += got
                    self._pos = end
                    return None
                hdr = self._hdr + got if self._hdr else got
                self._hdr = b""
                h = _U32(hdr)[0]
                ln = h & 0xFFFFFF
                if not self._in_pkt:
                    self._in_pkt = True
                    self._seq = h >> 24
                    self._len = 0
                    self._report = -1
                    self._cap = None
                self._len += ln
                self._remain = ln
                self._more = ln == MAX_PAYLOAD
                self._in_frag = True
            if self._remain:
                if pos >= end:
                    self._pos = end
                    return None
                if self._report < 0:
                    if not self._skip and mask[buf[pos]]:
                        self._report = 1
                        self._cap = bytearray()
                    else:
                        self._report = 0
                take = self._remain if self._remain < end - pos else end - pos
                cap = self._cap
                if cap is not None:
                    room = hl - len(cap)
                    if room > 0:
                        cap += buf[pos : pos + (take if take < room else room)]
                pos += take
                self._remain -= take
                if self._remain:
                    self._pos = end
                    return None
            self._in_frag = False
            if self._more:
                continue
            self._in_pkt = False
            if self._skip:
                self._skip -= 1
                self._cap = None
            elif self._report != 0:
                cap = self._cap
                self._cap = None
                self._pos = pos
                return self._seq, self._len, bytes(cap) if cap is not None else b""


# --------------------------------------------------------------------------------------------
# Connection phase: handshake, handshake response, SSLRequest, auth switch
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Handshake:
    """HandshakeV10 (server greeting).  See the module docstring for the capability fields."""

    protocol_version: int
    server_version: str
    connection_id: int
    auth_plugin_data: bytes  # full scramble (normally 20 bytes), without the trailing NUL
    capabilities: int  # standard 32 bits
    charset: int
    status_flags: int
    auth_plugin_name: str
    mariadb_ext_caps: int = 0  # MariaDB extended 32 bits (unshifted); 0 for MySQL

    @property
    def all_capabilities(self) -> int:
        return self.capabilities | self.mariadb_ext_caps << 32

    @property
    def is_mariadb(self) -> bool:
        return "MariaDB" in self.server_version or self.server_version.startswith("5.5.5-")


def parse_handshake(payload: Buffer) -> Handshake:
    """Parse a HandshakeV10 payload (an ERR greeting raises ProtocolError with its message)."""
    c = _Cursor(payload)
    proto = c.u8()
    if proto == ERR_HEADER:
        err = parse_err(payload)
        raise ProtocolError(f"server refused the connection: {err.errno} {err.message}")
    if proto != 10:
        raise ProtocolError(f"unsupported handshake protocol version {proto}")
    version = _dec(c.nul_str())
    conn_id = c.u32()
    data = c.take(8)
    c.u8()  # filler
    caps = c.u16()
    charset = status = 0
    plugin = ""
    ext = 0
    if c.remaining:
        charset = c.u8()
        status = c.u16()
        caps |= c.u16() << 16
        data_len = c.u8()
        reserved = c.take(10)
        if not caps & CLIENT_MYSQL:
            ext = int(_U32(reserved, 6)[0])
        if caps & CLIENT_SECURE_CONNECTION:
            part2 = c.take(min(max(13, data_len - 8), c.remaining))
            if part2.endswith(b"\0"):
                part2 = part2[:-1]
            data += part2
        if caps & CLIENT_PLUGIN_AUTH:
            # Some old servers omit the final NUL (MySQL bug #59453).
            plugin = _dec(c.nul_str(eof_ok=True))
    return Handshake(
        protocol_version=proto,
        server_version=version,
        connection_id=conn_id,
        auth_plugin_data=data,
        capabilities=caps,
        charset=charset,
        status_flags=status,
        auth_plugin_name=plugin,
        mariadb_ext_caps=ext,
    )


def build_handshake(
    server_version: str,
    connection_id: int,
    auth_plugin_data: bytes,
    capabilities: int,
    charset: int = UTF8MB4_GENERAL_CI,
    status_flags: int = SERVER_STATUS_AUTOCOMMIT,
    auth_plugin_name: str = "mysql_native_password",
    mariadb_ext_caps: int = 0,
    protocol_version: int = 10,
) -> bytes:
    """Build a HandshakeV10 payload (what we send to clients).

    ``capabilities`` is the lower 32 bits (higher bits are ignored); ``mariadb_ext_caps`` the
    MariaDB extended 32 bits, unshifted, which need ``CLIENT_MYSQL`` clear in ``capabilities``.
    """
    if len(auth_plugin_data) != SCRAMBLE_LENGTH:
        raise ValueError("auth_plugin_data must be the 20-byte scramble")
    caps = capabilities & 0xFFFFFFFF
    if mariadb_ext_caps and caps & CLIENT_MYSQL:
        raise ValueError("MariaDB extended capabilities require CLIENT_MYSQL (bit 0) clear")
    plugin_auth = bool(caps & CLIENT_PLUGIN_AUTH)
    out = bytearray()
    out.append(protocol_version)
    out += nul_str(server_version)
    out += _P32(connection_id & 0xFFFFFFFF)
    out += auth_plugin_data[:8]
    out.append(0)
    out += _P16(caps & 0xFFFF)
    out.append(charset & 0xFF)
    out += _P16(status_flags)
    out += _P16(caps >> 16)
    out.append(len(auth_plugin_data) + 1 if plugin_auth else 0)
    out += bytes(6)
    out += _P32(mariadb_ext_caps & 0xFFFFFFFF)
    if caps & CLIENT_SECURE_CONNECTION:
        out += auth_plugin_data[8:] + b"\0"
    if plugin_auth:
        out += nul_str(auth_plugin_name)
    return bytes(out)


@dataclass(slots=True)
class HandshakeResponse:
    """HandshakeResponse41 (client login).  ``database`` is None when none was given."""

    capabilities: int  # standard 32 bits
    max_packet: int
    charset: int
    username: str
    auth_response: bytes
    database: str | None = None
    auth_plugin_name: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    mariadb_ext_caps: int = 0  # MariaDB extended 32 bits (unshifted)

    @property
    def all_capabilities(self) -> int:
        return self.capabilities | self.mariadb_ext_caps << 32


SSL_REQUEST_LENGTH = 32


def is_ssl_request(payload: Buffer) -> bool:
    """True for a 32-byte SSLRequest (a truncated HandshakeResponse41 with CLIENT_SSL)."""
    return len(payload) == SSL_REQUEST_LENGTH and bool(_U32(payload)[0] & CLIENT_SSL)


def parse_handshake_response(payload: Buffer) -> HandshakeResponse:
    c = _Cursor(payload)
    caps = c.u32()
    if not caps & CLIENT_PROTOCOL_41:
        raise ProtocolError("pre-4.1 HandshakeResponse320 is not supported")
    max_packet = c.u32()
    charset = c.u8()
    filler = c.take(23)
    ext = int(_U32(filler, 19)[0])
    if not c.remaining:
        raise ProtocolError("SSLRequest or truncated HandshakeResponse41: no user name")
    username = _dec(c.nul_str())
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = c.lenenc_str()
    elif caps & CLIENT_SECURE_CONNECTION:
        auth = c.take(c.u8())
    else:
        auth = c.nul_str(eof_ok=True)
    database: str | None = None
    if caps & CLIENT_CONNECT_WITH_DB and c.remaining:
        database = _dec(c.nul_str(eof_ok=True)) or None
    plugin: str | None = None
    if caps & CLIENT_PLUGIN_AUTH and c.remaining:
        plugin = _dec(c.nul_str(eof_ok=True))
    attrs: dict[str, str] = {}
    if caps & CLIENT_CONNECT_ATTRS and c.remaining:
        blob = _Cursor(c.take(c.lenenc_int()))
        while blob.remaining:
            k = _dec(blob.lenenc_str())
            attrs[k] = _dec(blob.lenenc_str())
    return HandshakeResponse(
        capabilities=caps,
        max_packet=max_packet,
        charset=charset,
        username=username,
        auth_response=auth,
        database=database,
        auth_plugin_name=plugin,
        attrs=attrs,
        mariadb_ext_caps=ext,
    )


def _login_prefix(capabilities: int, max_packet: int, charset: int, mariadb_ext_caps: int) -> bytes:
    return (
        _P32(capabilities & 0xFFFFFFFF)
        + _P32(max_packet)
        + bytes((charset & 0xFF,))
        + bytes(19)
        + _P32(mariadb_ext_caps & 0xFFFFFFFF)
    )


def build_ssl_request(
    capabilities: int,
    max_packet: int = MAX_PAYLOAD,
    charset: int = UTF8MB4_GENERAL_CI,
    mariadb_ext_caps: int = 0,
) -> bytes:
    """The 32-byte SSLRequest payload (CLIENT_SSL is always set)."""
    return _login_prefix(capabilities | CLIENT_SSL, max_packet, charset, mariadb_ext_caps)


def build_handshake_response(
    capabilities: int,
    username: str,
    auth_response: bytes = b"",
    database: str | None = None,
    auth_plugin_name: str | None = None,
    attrs: dict[str, str] | None = None,
    max_packet: int = MAX_PAYLOAD,
    charset: int = UTF8MB4_GENERAL_CI,
    mariadb_ext_caps: int = 0,
) -> bytes:
    """Build a HandshakeResponse41 payload; optional fields are written as the flags say."""
    caps = capabilities & 0xFFFFFFFF
    if not caps & CLIENT_PROTOCOL_41:
        raise ValueError("HandshakeResponse41 needs CLIENT_PROTOCOL_41")
    if database and not caps & CLIENT_CONNECT_WITH_DB:
        raise ValueError("a database needs CLIENT_CONNECT_WITH_DB")
    if attrs and not caps & CLIENT_CONNECT_ATTRS:
        raise ValueError("connection attributes need CLIENT_CONNECT_ATTRS")
    out = bytearray(_login_prefix(caps, max_packet, charset, mariadb_ext_caps))
    out += nul_str(username)
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        out += lenenc_str(auth_response)
    elif caps & CLIENT_SECURE_CONNECTION:
        if len(auth_response) > 255:
            raise ValueError("auth response too long without CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA")
        out.append(len(auth_response))
        out += auth_response
    else:
        out += nul_str(auth_response)
    if caps & CLIENT_CONNECT_WITH_DB:
        out += nul_str(database or "")
    if caps & CLIENT_PLUGIN_AUTH:
        out += nul_str(auth_plugin_name or "")
    if caps & CLIENT_CONNECT_ATTRS:
        blob = b"".join(lenenc_str(k) + lenenc_str(v) for k, v in (attrs or {}).items())
        out += lenenc_str(blob)
    return bytes(out)


def build_auth_switch_request(plugin: str, data: bytes) -> bytes:
    """0xFE + plugin name + plugin data + NUL (servers terminate the scramble with NUL)."""
    return b"\xfe" + nul_str(plugin) + data + b"\0"


def parse_auth_switch_request(payload: Buffer) -> tuple[str, bytes]:
    """Return ``(plugin_name, data)``; one trailing NUL of the data is removed.

    A bare 0xFE (old-style switch) yields ``("mysql_old_password", b"")``.
    """
    if not payload or payload[0] != AUTH_SWITCH_HEADER:
        raise ProtocolError("not an AuthSwitchRequest")
    if len(payload) == 1:
        return "mysql_old_password", b""
    c = _Cursor(payload, 1)
    plugin = _dec(c.nul_str(eof_ok=True))
    data = c.rest()
    if data.endswith(b"\0"):
        data = data[:-1]
    return plugin, data


def build_auth_more_data(data: bytes) -> bytes:
    return b"\x01" + data


def parse_auth_more_data(payload: Buffer) -> bytes:
    if not payload or payload[0] != AUTH_MORE_DATA_HEADER:
        raise ProtocolError("not an AuthMoreData packet")
    return bytes(payload[1:])


# --------------------------------------------------------------------------------------------
# Generic response packets: OK, ERR, EOF
# --------------------------------------------------------------------------------------------
SessionStateValue: TypeAlias = str | bool | tuple[str, str] | bytes
SessionStateChange: TypeAlias = tuple[int, SessionStateValue]


@dataclass(slots=True)
class OkPacket:
    """OK packet.  ``session_state_changes`` is a list of ``(type, value)``:

    * SESSION_TRACK_SYSTEM_VARIABLES: ``(name, value)`` (one entry per variable)
    * SESSION_TRACK_SCHEMA: schema name (str)
    * SESSION_TRACK_STATE_CHANGE: bool
    * SESSION_TRACK_GTIDS, _TRANSACTION_CHARACTERISTICS, _TRANSACTION_STATE: str
    * unknown types: the raw entry data (bytes)
    """

    affected_rows: int = 0
    last_insert_id: int = 0
    status_flags: int = SERVER_STATUS_AUTOCOMMIT
    warnings: int = 0
    info: str = ""
    session_state_changes: list[SessionStateChange] = field(default_factory=list)


@dataclass(slots=True)
class ErrPacket:
    errno: int
    sqlstate: str
    message: str


@dataclass(slots=True)
class EofPacket:
    warnings: int
    status_flags: int


def parse_session_state(blob: Buffer) -> list[SessionStateChange]:
    """Parse the session-state-info block of an OK packet (without its outer length)."""
    out: list[SessionStateChange] = []
    pos = 0
    n = len(blob)
    while pos < n:
        kind = blob[pos]
        data, pos = read_lenenc_str(blob, pos + 1)
        if kind == SESSION_TRACK_SYSTEM_VARIABLES:
            p = 0
            while p < len(data):
                name, p = read_lenenc_str(data, p)
                value, p = read_lenenc_str(data, p)
                out.append((kind, (_dec(name), _dec(value))))
        elif kind in (
            SESSION_TRACK_SCHEMA,
            SESSION_TRACK_TRANSACTION_CHARACTERISTICS,
            SESSION_TRACK_TRANSACTION_STATE,
        ):
            value, _ = read_lenenc_str(data, 0)
            out.append((kind, _dec(value)))
        elif kind == SESSION_TRACK_STATE_CHANGE:
            value, _ = read_lenenc_str(data, 0)
            out.append((kind, value == b"1"))
        elif kind == SESSION_TRACK_GTIDS:
            if not data:
                raise ProtocolError("empty GTID session-track entry")
            value, _ = read_lenenc_str(data, 1)  # data[0] is the encoding specification
            out.append((kind, _dec(value)))
        else:
            out.append((kind, data))
    return out


def build_session_state(changes: list[SessionStateChange]) -> bytes:
    """Inverse of :func:`parse_session_state`."""
    out = bytearray()
    for kind, value in changes:
        if kind == SESSION_TRACK_SYSTEM_VARIABLES:
            if not isinstance(value, tuple):
                raise ValueError("system variable changes are (name, value) pairs")
            data = lenenc_str(value[0]) + lenenc_str(value[1])
        elif kind == SESSION_TRACK_STATE_CHANGE:
            data = lenenc_str(b"1" if value else b"0")
        elif kind == SESSION_TRACK_GTIDS:
            if not isinstance(value, str | bytes):
                raise ValueError("GTID changes are strings")
            data = b"\x00" + lenenc_str(value)
        elif isinstance(value, str):
            data = lenenc_str(value)
        elif isinstance(value, bytes):
            data = value
        else:
            raise ValueError(f"bad session state value for type {kind}")
        out.append(kind)
        out += lenenc_str(data)
    return bytes(out)


def parse_ok(payload: Buffer, capabilities: int = CLIENT_PROTOCOL_41) -> OkPacket:
    """Parse an OK packet (header 0x00, or 0xFE as the end of rows under DEPRECATE_EOF)."""
    n = len(payload)
    if n < 3 or payload[0] not in (OK_HEADER, EOF_HEADER):
        raise ProtocolError("not an OK packet")
    affected, pos = read_lenenc_int(payload, 1)
    last_id, pos = read_lenenc_int(payload, pos)
    status = warnings = 0
    if capabilities & CLIENT_PROTOCOL_41:
        if pos + 4 > n:
            raise ProtocolError("truncated OK packet")
        status, warnings = _EOF_BODY.unpack_from(payload, pos)
        pos += 4
    elif capabilities & CLIENT_TRANSACTIONS:
        if pos + 2 > n:
            raise ProtocolError("truncated OK packet")
        status = _U16(payload, pos)[0]
        pos += 2
    info = b""
    changes: list[SessionStateChange] = []
    if capabilities & CLIENT_SESSION_TRACK:
        if pos < n:  # servers omit the info string when there is nothing after it
            info, pos = read_lenenc_str(payload, pos)
        if status & SERVER_SESSION_STATE_CHANGED and pos < n:
            blob, pos = read_lenenc_str(payload, pos)
            changes = parse_session_state(blob)
    else:
        info = bytes(payload[pos:])
    return OkPacket(affected, last_id, status, warnings, info.decode("utf-8", "replace"), changes)


def build_ok(
    affected_rows: int = 0,
    last_insert_id: int = 0,
    status_flags: int = SERVER_STATUS_AUTOCOMMIT,
    warnings: int = 0,
    info: str = "",
    session_state_changes: list[SessionStateChange] | None = None,
    *,
    capabilities: int = CLIENT_PROTOCOL_41,
    eof_header: bool = False,
) -> bytes:
    """Build an OK payload.  ``eof_header`` makes the 0xFE form (end of rows, DEPRECATE_EOF).

    Session state changes are only sent with CLIENT_SESSION_TRACK, and then set
    SERVER_SESSION_STATE_CHANGED in the status flags.
    """
    out = bytearray((EOF_HEADER if eof_header else OK_HEADER,))
    out += lenenc_int(affected_rows)
    out += lenenc_int(last_insert_id)
    info_b = info.encode("utf-8")
    if capabilities & CLIENT_SESSION_TRACK:
        if session_state_changes:
            status_flags |= SERVER_SESSION_STATE_CHANGED
        out += _EOF_BODY.pack(status_flags, warnings)
        if info_b or session_state_changes:
            out += lenenc_str(info_b)
        if session_state_changes:
            out += lenenc_str(build_session_state(session_state_changes))
    else:
        out += _EOF_BODY.pack(status_flags, warnings)
        out += info_b
    return bytes(out)


def parse_err(payload: Buffer, capabilities: int = CLIENT_PROTOCOL_41) -> ErrPacket:
    """Parse an ERR packet.  The '#'+SQLSTATE marker is optional (early handshake errors lack
    it); without it the SQLSTATE is reported as HY000."""
    n = len(payload)
    if n < 3 or payload[0] != ERR_HEADER:
        raise ProtocolError("not an ERR packet")
    errno = _U16(payload, 1)[0]
    if n >= 9 and payload[3] == 0x23:  # '#'
        sqlstate = bytes(payload[4:9]).decode("ascii", "replace")
        msg = bytes(payload[9:])
    else:
        sqlstate = "HY000"
        msg = bytes(payload[3:])
    return ErrPacket(errno, sqlstate, msg.decode("utf-8", "replace"))


def build_err(errno: int, sqlstate: str, message: str) -> bytes:
    """ERR payload, always in the protocol-41 form with '#' and a 5-character SQLSTATE."""
    state = sqlstate.encode("ascii")
    if len(state) != 5:
        raise ValueError("SQLSTATE must be 5 characters")
    return b"\xff" + _P16(errno) + b"#" + state + message.encode("utf-8")


def is_progress_report(payload: Buffer) -> bool:
    """MariaDB progress report (MARIADB_CLIENT_PROGRESS): an ERR header with errno 0xFFFF."""
    return len(payload) >= 3 and payload[0] == 0xFF and payload[1] == 0xFF and payload[2] == 0xFF


def is_eof(payload: Buffer) -> bool:
    """A classic EOF packet: 0xFE header and payload shorter than 9 bytes (a text row whose
    first column has an 8-byte length also starts with 0xFE but is far longer)."""
    return 0 < len(payload) < 9 and payload[0] == EOF_HEADER


def is_result_end(first_byte: int, length: int, capabilities: int) -> bool:
    """Does a packet in the rows part of a result set end it (EOF, or 0xFE-OK)?

    Without CLIENT_DEPRECATE_EOF: 0xFE and length < 9.  With it the terminator is an OK packet
    with a 0xFE header, which may be long (session state); a row starting with 0xFE is at least
    16 MiB, so the rule is 0xFE and length < 0xFFFFFF.
    """
    if first_byte != EOF_HEADER:
        return False
    if capabilities & CLIENT_DEPRECATE_EOF:
        return length < MAX_PAYLOAD
    return length < 9


def parse_eof(payload: Buffer) -> EofPacket:
    if not is_eof(payload):
        raise ProtocolError("not an EOF packet")
    if len(payload) < 5:  # pre-4.1 EOF: header only
        return EofPacket(0, 0)
    w, s = _EOF_BODY.unpack_from(payload, 1)
    return EofPacket(w, s)


def build_eof(warnings: int = 0, status_flags: int = SERVER_STATUS_AUTOCOMMIT) -> bytes:
    return b"\xfe" + _EOF_BODY.pack(warnings, status_flags)


def _end_status(head: Buffer, capabilities: int) -> int:
    """Status flags of a 0xFE terminator (EOF, or OK under DEPRECATE_EOF)."""
    if capabilities & CLIENT_DEPRECATE_EOF:
        return parse_ok(head, capabilities).status_flags
    return parse_eof(head).status_flags


# --------------------------------------------------------------------------------------------
# Command phase helpers
# --------------------------------------------------------------------------------------------
def build_command(command: int, argument: bytes | str = b"") -> bytes:
    """A command payload: the command byte then its argument (str is UTF-8 encoded)."""
    if isinstance(argument, str):
        argument = argument.encode("utf-8", "surrogateescape")
    return bytes((command,)) + argument


def parse_infile_request(payload: Buffer) -> str:
    """The file name of a LOCAL INFILE request (0xFB + name)."""
    if not payload or payload[0] != LOCAL_INFILE_HEADER:
        raise ProtocolError("not a LOCAL INFILE request")
    return _dec(bytes(payload[1:]))


def parse_column_count(payload: Buffer) -> int:
    n, _ = read_lenenc_int(payload, 0)
    if n == 0:
        raise ProtocolError("column count of 0")
    return n


def parse_text_row(payload: Buffer, ncols: int) -> list[bytes | None]:
    """Values of a text-protocol result row (NULL -> None)."""
    out: list[bytes | None] = []
    pos = 0
    n = len(payload)
    for _ in range(ncols):
        if pos >= n:
            raise ProtocolError("truncated text row")
        if payload[pos] == NULL_VALUE:
            out.append(None)
            pos += 1
            continue
        v, pos = read_lenenc_str(payload, pos)
        out.append(v)
    if pos != n:
        raise ProtocolError("trailing bytes after text row")
    return out


def build_text_row(values: list[bytes | str | None]) -> bytes:
    out = bytearray()
    for v in values:
        if v is None:
            out.append(NULL_VALUE)
        else:
            out += lenenc_str(v)
    return bytes(out)


@dataclass(slots=True)
class StmtPrepareOk:
    statement_id: int
    num_columns: int
    num_params: int
    warnings: int
    metadata_follows: bool = True


def parse_stmt_prepare_ok(payload: Buffer, capabilities: int = 0) -> StmtPrepareOk:
    if len(payload) < 9 or payload[0] != OK_HEADER:
        raise ProtocolError("not a COM_STMT_PREPARE OK packet")
    stmt_id = _U32(payload, 1)[0]
    ncols = _U16(payload, 5)[0]
    nparams = _U16(payload, 7)[0]
    warnings = _U16(payload, 10)[0] if len(payload) >= 12 else 0
    meta = True
    if capabilities & CLIENT_OPTIONAL_RESULTSET_METADATA and len(payload) >= 13:
        meta = payload[12] != 0
    return StmtPrepareOk(stmt_id, ncols, nparams, warnings, meta)


# --------------------------------------------------------------------------------------------
# Response-end detection
# --------------------------------------------------------------------------------------------
class ResponseMode(enum.Enum):
    """What shape of server response a command produces."""

    QUERY = "query"  # COM_QUERY: OK | ERR | LOCAL INFILE | text result sets, multi-results
    STMT_EXECUTE = "stmt_execute"  # binary result sets; a cursor ends after the metadata
    SINGLE = "single"  # exactly one OK / ERR / EOF packet (COM_PING, COM_INIT_DB, ...)
    FIELD_LIST = "field_list"  # column definitions until EOF (or ERR)
    STATISTICS = "statistics"  # one string packet (or ERR)
    STMT_PREPARE = "stmt_prepare"  # prepare-OK, param defs [+EOF], column defs [+EOF]
    STMT_FETCH = "stmt_fetch"  # binary rows until EOF / 0xFE-OK (or ERR)
    NO_RESPONSE = "no_response"  # COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA, COM_QUIT


class TrackerState(enum.Enum):
    FIRST = "first"  # expecting the first packet of a (next) result
    COLUMN_DEFS = "column_defs"
    COLUMNS_EOF = "columns_eof"  # EOF after column definitions (no DEPRECATE_EOF)
    ROWS = "rows"
    INFILE = "infile"  # waiting for the client's LOCAL INFILE data and its empty packet
    PARAM_DEFS = "param_defs"
    PARAMS_EOF = "params_eof"
    DONE = "done"


_FIRST = TrackerState.FIRST
_COLUMN_DEFS = TrackerState.COLUMN_DEFS
_COLUMNS_EOF = TrackerState.COLUMNS_EOF
_ROWS = TrackerState.ROWS
_INFILE = TrackerState.INFILE
_PARAM_DEFS = TrackerState.PARAM_DEFS
_PARAMS_EOF = TrackerState.PARAMS_EOF
_DONE = TrackerState.DONE
_M_QUERY = ResponseMode.QUERY
_M_EXECUTE = ResponseMode.STMT_EXECUTE
_M_SINGLE = ResponseMode.SINGLE
_M_STATISTICS = ResponseMode.STATISTICS
_M_PREPARE = ResponseMode.STMT_PREPARE

_COMMAND_MODES: dict[int, ResponseMode] = {
    COM_QUERY: ResponseMode.QUERY,
    COM_PROCESS_INFO: ResponseMode.QUERY,
    COM_STMT_EXECUTE: ResponseMode.STMT_EXECUTE,
    COM_STMT_BULK_EXECUTE: ResponseMode.STMT_EXECUTE,
    COM_FIELD_LIST: ResponseMode.FIELD_LIST,
    COM_STATISTICS: ResponseMode.STATISTICS,
    COM_STMT_PREPARE: ResponseMode.STMT_PREPARE,
    COM_STMT_FETCH: ResponseMode.STMT_FETCH,
    COM_STMT_CLOSE: ResponseMode.NO_RESPONSE,
    COM_STMT_SEND_LONG_DATA: ResponseMode.NO_RESPONSE,
    COM_QUIT: ResponseMode.NO_RESPONSE,
    COM_INIT_DB: ResponseMode.SINGLE,
    COM_PING: ResponseMode.SINGLE,
    COM_RESET_CONNECTION: ResponseMode.SINGLE,
    COM_STMT_RESET: ResponseMode.SINGLE,
    COM_SET_OPTION: ResponseMode.SINGLE,
    COM_REFRESH: ResponseMode.SINGLE,
    COM_PROCESS_KILL: ResponseMode.SINGLE,
    COM_DEBUG: ResponseMode.SINGLE,
    COM_CREATE_DB: ResponseMode.SINGLE,
    COM_DROP_DB: ResponseMode.SINGLE,
    COM_SHUTDOWN: ResponseMode.SINGLE,
}


def response_mode_for_command(command: int) -> ResponseMode | None:
    """The response shape of a command byte; None if the tracker can't follow it
    (COM_CHANGE_USER's auth exchange, replication, COM_MULTI, unknown commands)."""
    return _COMMAND_MODES.get(command)


#: Responses larger than this are left to the ResponseTracker: a big result rarely arrives in
#: one chunk, and scanning a chunk that turns out incomplete would be wasted work.
QUICK_SCAN_LIMIT = 16384
_QUICK_END_FLAGS = SERVER_MORE_RESULTS_EXISTS | SERVER_SESSION_STATE_CHANGED


def scan_query_response(data: bytes, deprecate_eof: bool) -> int:
    """Status flags of a COM_QUERY response that ``data`` holds exactly and completely, or -1.

    The hot-path shortcut for what the :class:`ResponseTracker` would find in one chunk with
    one plain OK, or one text result set (column count < 251 sent as one byte, definitions,
    the EOF after them unless ``deprecate_eof``, rows, and a final EOF/OK), each with one-byte
    affected-rows and insert-id and without SERVER_MORE_RESULTS_EXISTS or session-state data.
    Anything else -- ERR, LOCAL INFILE, multi-results, metadata-less result sets,
    continuation packets, bytes after the end, an incomplete response -- returns -1 without
    side effects, and the caller feeds the chunk to the tracker instead.
    """
    n = len(data)
    if n < 5 or n > QUICK_SCAN_LIMIT:
        return -1
    ln = _U32(data, 0)[0] & 0xFFFFFF
    first = data[4]
    if first == OK_HEADER:
        if ln + 4 != n or ln < 7 or data[5] >= 0xFB or data[6] >= 0xFB:
            return -1
        status = data[7] | data[8] << 8
        return -1 if status & _QUICK_END_FLAGS else status
    if ln != 1 or first >= 0xFB:  # 0xFB LOCAL INFILE, 0xFC.. wider counts, 0xFE, 0xFF ERR
        return -1
    pos = 5
    for _ in range(first):  # column definitions: skipped by their headers
        if pos + 4 > n:
            return -1
        pos += 4 + (_U32(data, pos)[0] & 0xFFFFFF)
    if not deprecate_eof:
        if pos + 9 > n or data[pos + 4] != EOF_HEADER or _U32(data, pos)[0] & 0xFFFFFF != 5:
            return -1
        pos += 9
    while pos + 4 < n:
        ln = _U32(data, pos)[0] & 0xFFFFFF
        nxt = pos + 4 + ln
        if ln == MAX_PAYLOAD or nxt > n:
            return -1
        head = data[pos + 4] if ln else 0
        if head == EOF_HEADER and (ln < 9 if not deprecate_eof else True):
            # The end: classic EOF (0xFE, warnings, status) or, with DEPRECATE_EOF, an OK
            # with a 0xFE header (0xFE, affected rows, insert id, status): the status is at
            # payload offset 3 in both, given one-byte integers in the OK.
            if nxt != n or ln < 5 or (deprecate_eof and (data[pos + 5] >= 0xFB
                                                        or data[pos + 6] >= 0xFB)):
                return -1
            status = data[pos + 7] | data[pos + 8] << 8
            return -1 if status & _QUICK_END_FLAGS else status
        if head == ERR_HEADER:
            return -1
        pos = nxt
    return -1


class ResponseTracker:
    """Sans-IO state machine that finds the end of one command's response.

    Feed it complete payloads (:meth:`feed`), packet heads from your own walker
    (:meth:`feed_head`), or raw server bytes exactly as forwarded (:meth:`feed_data`, the
    hot path: column definitions and rows are skipped by header inside the walker, without a
    Python call or a copy per packet).  ``capabilities`` is the negotiated 64-bit value
    (MariaDB extended bits in the upper half).  Reuse one tracker per server connection and
    call :meth:`start` for each command.

    After the response: :attr:`done`; :attr:`failed` / :attr:`error` if an ERR ended it;
    :attr:`status_flags` of the final OK/EOF (after an ERR: the last status seen in this
    response, or None if none was -- treat it conservatively); :attr:`session_state_changes`
    from *every* OK of the response, in order (a multi-statement query has several);
    :attr:`last_ok` (parsed lazily); :attr:`result_sets`.  In state INFILE
    (:attr:`waiting_for_client`) forward the client's packets and report them with
    :meth:`feed_client_data` / :meth:`client_infile_packet` until the empty packet; the
    server then answers like a fresh query (OK / ERR, possibly with more results).
    """

    __slots__ = (
        "mode",
        "capabilities",
        "state",
        "done",
        "failed",
        "error",
        "status_flags",
        "infile_name",
        "prepare_ok",
        "result_sets",
        "consumed",
        "_changes",
        "_last_ok",
        "_last_ok_raw",
        "_deprecate_eof",
        "_meta_flag",
        "_progress",
        "_track",
        "_p41",
        "_cols_left",
        "_params_left",
        "_walker",
        "_client_walker",
    )

    def __init__(self, capabilities: int, mode: ResponseMode = ResponseMode.QUERY) -> None:
        self._walker = PacketWalker()
        self._client_walker: PacketWalker | None = None
        self.start(mode, capabilities)

    def start(self, mode: ResponseMode, capabilities: int | None = None) -> None:
        """Reset for the response to a new command (no allocation)."""
        if capabilities is not None:
            self.capabilities = capabilities
            self._deprecate_eof = bool(capabilities & CLIENT_DEPRECATE_EOF)
            self._meta_flag = bool(
                capabilities & (CLIENT_OPTIONAL_RESULTSET_METADATA | MARIADB_CLIENT_CACHE_METADATA)
            )
            self._progress = bool(capabilities & MARIADB_CLIENT_PROGRESS)
            self._track = bool(capabilities & CLIENT_SESSION_TRACK)
            self._p41 = bool(capabilities & CLIENT_PROTOCOL_41)
        self.mode = mode
        self.done = False
        self.failed = False
        self.error: ErrPacket | None = None
        self.status_flags: int | None = None
        self.infile_name: str | None = None
        self.prepare_ok: StmtPrepareOk | None = None
        self.result_sets = 0
        self.consumed = 0
        self._changes: list[SessionStateChange] | None = None
        self._last_ok: OkPacket | None = None
        self._last_ok_raw: bytes | None = None
        self._cols_left = 0
        self._params_left = 0
        w = self._walker
        if w._in_pkt or w._hdr or w._skip:
            w.reset()  # a previous response was abandoned mid-packet
        if mode is _M_QUERY or mode is _M_EXECUTE:
            self.state = _FIRST
        elif mode is ResponseMode.NO_RESPONSE:
            self.state = _DONE
            self.done = True
        elif mode is ResponseMode.FIELD_LIST or mode is ResponseMode.STMT_FETCH:
            self.state = _ROWS
        else:
            self.state = _FIRST

    @property
    def waiting_for_client(self) -> bool:
        """LOCAL INFILE: the server waits for the client's file data."""
        return self.state is _INFILE

    @property
    def session_state_changes(self) -> list[SessionStateChange]:
        if self._changes is None:
            self._changes = []
        return self._changes

    @property
    def last_ok(self) -> OkPacket | None:
        if self._last_ok is None and self._last_ok_raw is not None:
            self._last_ok = parse_ok(self._last_ok_raw, self.capabilities)
        return self._last_ok

    # -- input -------------------------------------------------------------------------------
    def feed(self, payload: bytes) -> bool:
        """One complete logical server packet; returns :attr:`done`."""
        self._packet(len(payload), payload)
        return self.done

    def feed_head(self, length: int, head: bytes) -> bool:
        """A packet's total length and its first bytes: the whole payload for OK/ERR/EOF, the
        column-count and COM_STMT_PREPARE-OK packets; the first byte for anything else."""
        self._packet(length, head)
        return self.done

    def feed_data(self, data: Buffer) -> bool:
        """Raw server bytes in stream order (any chunking); returns :attr:`done`.

        :attr:`consumed` is then the number of bytes of ``data`` that belong to this response
        (less than ``len(data)`` only if the server sent more after the end or after a LOCAL
        INFILE request).
        """
        if self.state is _DONE or self.state is _INFILE:
            raise ProtocolError(f"unexpected server data in state {self.state.value}")
        w = self._walker
        w.feed(data)
        while True:
            st = self.state
            if st is _ROWS:
                pkt = w.next_packet(_ROW_END_MASK)
            elif st is _COLUMN_DEFS and self.mode is not _M_PREPARE:
                # Definitions are never inspected: let the walker skip them.  The state after
                # them is never DONE here, so advancing now cannot end the response early.
                w.skip_packets(self._cols_left)
                self._cols_left = 0
                self._after_columns()
                continue
            else:
                pkt = w.next_packet(None)
            if pkt is None:
                self.consumed = len(data)
                return False
            self._packet(pkt[1], pkt[2])
            if self.state is _DONE or self.state is _INFILE:
                self.consumed = w.offset
                return self.done

    def client_infile_packet(self, length: int) -> bool:
        """Report one client packet during LOCAL INFILE; True when it was the empty one."""
        if self.state is not _INFILE:
            raise ProtocolError("not waiting for LOCAL INFILE data")
        if length == 0:
            self.state = _FIRST
            return True
        return False

    def feed_client_data(self, data: Buffer) -> bool:
        """Raw client bytes during LOCAL INFILE; True once the terminating empty packet has
        been seen (:attr:`consumed` = bytes of ``data`` up to and including it)."""
        if self.state is not _INFILE:
            raise ProtocolError("not waiting for LOCAL INFILE data")
        w = self._client_walker
        if w is None:
            w = self._client_walker = PacketWalker(head_limit=0)
        w.feed(data)
        # Only empty packets are reported: file data is skipped, never copied.
        pkt = w.next_packet(_NO_MASK)
        if pkt is None:
            self.consumed = len(data)
            return False
        self.consumed = w.offset
        self.state = _FIRST
        return True

    # -- state machine -----------------------------------------------------------------------
    def _packet(self, length: int, head: Buffer) -> None:
        st = self.state
        first = head[0] if length else -1
        if st is _ROWS:
            if first == EOF_HEADER:
                if self._deprecate_eof:
                    if length < MAX_PAYLOAD:
                        self._ok(head)
                        self._end_result()
                elif length < 9:
                    self.status_flags = _eof_flags(head)
                    self._end_result()
            elif first == ERR_HEADER:
                self._err(head)
            return
        if first == ERR_HEADER and st is not _INFILE and st is not _DONE:
            self._err(head)
            return
        if st is _FIRST:
            self._first(length, head, first)
        elif st is _COLUMN_DEFS:
            self._cols_left -= 1
            if self._cols_left <= 0:
                self._after_columns()
        elif st is _COLUMNS_EOF:
            if not (first == EOF_HEADER and length < 9):
                raise ProtocolError("expected EOF after column definitions")
            status = self.status_flags = _eof_flags(head)
            if self.mode is _M_PREPARE:
                self._finish()
            elif self.mode is _M_EXECUTE and status & SERVER_STATUS_CURSOR_EXISTS:
                self._finish()  # cursor opened: rows come later via COM_STMT_FETCH
            else:
                self.state = _ROWS
        elif st is _PARAM_DEFS:
            self._params_left -= 1
            if self._params_left <= 0:
                if self._deprecate_eof:
                    self._prepare_columns()
                else:
                    self.state = _PARAMS_EOF
        elif st is _PARAMS_EOF:
            if not (first == EOF_HEADER and length < 9):
                raise ProtocolError("expected EOF after parameter definitions")
            self.status_flags = _eof_flags(head)
            self._prepare_columns()
        elif st is _INFILE:
            raise ProtocolError("server sent a packet while waiting for LOCAL INFILE data")
        else:
            raise ProtocolError("server sent a packet after the end of the response")

    def _first(self, length: int, head: Buffer, first: int) -> None:
        mode = self.mode
        if mode is _M_QUERY or mode is _M_EXECUTE:
            if first == OK_HEADER:
                self._ok(head)
                self._end_result()
            elif first == LOCAL_INFILE_HEADER:
                self.infile_name = parse_infile_request(head)
                self.state = _INFILE
            elif first == EOF_HEADER or first == -1:
                raise ProtocolError("unexpected packet at the start of a result")
            else:
                n, pos = read_lenenc_int(head, 0)
                if n == 0:
                    raise ProtocolError("column count of 0")
                if self._meta_flag and pos < len(head) and head[pos] == 0:
                    self._after_columns()  # metadata not resent (cached / optional metadata)
                else:
                    self._cols_left = n
                    self.state = _COLUMN_DEFS
        elif mode is _M_STATISTICS:
            self._finish()
        elif mode is _M_SINGLE:
            if first == OK_HEADER:
                self._ok(head)
            elif first == EOF_HEADER and length < MAX_PAYLOAD:  # COM_SET_OPTION, COM_DEBUG
                if self._deprecate_eof:
                    self._ok(head)
                else:
                    self.status_flags = _eof_flags(head)
            else:
                raise ProtocolError(f"unexpected packet 0x{first & 0xFF:02x} in a single reply")
            self._finish()
        elif mode is _M_PREPARE:
            if first != OK_HEADER:
                raise ProtocolError(f"unexpected packet 0x{first & 0xFF:02x} for COM_STMT_PREPARE")
            ok = self.prepare_ok = parse_stmt_prepare_ok(head, self.capabilities)
            if ok.num_params and ok.metadata_follows:
                self._params_left = ok.num_params
                self.state = _PARAM_DEFS
            else:
                self._prepare_columns()
        else:
            raise ProtocolError(f"no packet expected in mode {mode.value}")

    def _after_columns(self) -> None:
        if not self._deprecate_eof:
            self.state = _COLUMNS_EOF
        elif self.mode is _M_PREPARE:
            self._finish()
        else:
            self.state = _ROWS

    def _prepare_columns(self) -> None:
        ok = self.prepare_ok
        assert ok is not None
        if ok.num_columns and ok.metadata_follows:
            self._cols_left = ok.num_columns
            self.state = _COLUMN_DEFS
        else:
            self._finish()

    def _ok(self, head: Buffer) -> None:
        if len(head) < 7:
            raise ProtocolError("truncated OK packet")
        if self._p41 and head[1] < 0xFB and head[2] < 0xFB:
            # Fast path: one-byte affected-rows / insert-id, so the status is at offset 3.
            status = head[3] | head[4] << 8
            if not (status & SERVER_SESSION_STATE_CHANGED and self._track):
                self.status_flags = status
                self._last_ok = None
                self._last_ok_raw = head if type(head) is bytes else bytes(head)
                return
        ok = parse_ok(head, self.capabilities)
        self._last_ok = ok
        self._last_ok_raw = None
        self.status_flags = ok.status_flags
        if ok.session_state_changes:
            if self._changes is None:
                self._changes = []
            self._changes.extend(ok.session_state_changes)

    def _err(self, head: Buffer) -> None:
        if self._progress and is_progress_report(head):
            return  # MariaDB progress report: informational, the response goes on
        self.error = parse_err(head, self.capabilities)
        self.failed = True
        self._finish()

    def _end_result(self) -> None:
        self.result_sets += 1
        status = self.status_flags
        if (
            status is not None
            and status & SERVER_MORE_RESULTS_EXISTS
            and (self.mode is _M_QUERY or self.mode is _M_EXECUTE)
        ):
            self.state = _FIRST
        else:
            self._finish()

    def _finish(self) -> None:
        self.state = _DONE
        self.done = True


def _eof_flags(head: Buffer) -> int:
    """Status flags of a classic EOF packet (0 for the header-only pre-4.1 form)."""
    n = len(head)
    if n >= 5:
        return head[3] | head[4] << 8
    if n == 1:
        return 0
    raise ProtocolError("truncated EOF packet")
