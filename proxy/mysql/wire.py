"""Sans-IO MySQL/MariaDB wire basics: protocol constants, length-encoded integers and strings,
and packet framing (`encode_packet`, `PacketReader`, and the header-only `PacketWalker`).

Bytes in, values out and back; no I/O here (no asyncio/socket/ssl imports, a test enforces it).
Every parser raises `ProtocolError` (a ValueError) on truncated or malformed input.
"""

from __future__ import annotations

import struct
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
