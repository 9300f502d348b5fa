"""Sans-IO PostgreSQL v3 wire codec: message framing, the few messages poolproxy inspects, builders.

No asyncio, sockets or ssl here (a test enforces it). The hot path uses `MessageScanner`, which
walks message headers without copying bodies and hands back only the messages we must look at.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

PROTOCOL_V3 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

#: PostgreSQL itself refuses startup packets above this size (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000
#: PostgreSQL's largest possible message (MaxAllocSize); anything declared longer is garbage.
MAX_MESSAGE = 0x3FFFFFFF

# Message type bytes as ints (what indexing bytes gives), named after the protocol docs.
MSG_READY_FOR_QUERY = 0x5A  # 'Z'
MSG_PARAMETER_STATUS = 0x53  # 'S' (backend)
MSG_ERROR = 0x45  # 'E' (backend)
MSG_COMMAND_COMPLETE = 0x43  # 'C' (backend)
MSG_NOTICE = 0x4E  # 'N'
MSG_COPY_IN = 0x47  # 'G'
MSG_COPY_OUT = 0x48  # 'H' (backend)
MSG_COPY_BOTH = 0x57  # 'W'
MSG_AUTH = 0x52  # 'R'
MSG_BACKEND_KEY = 0x4B  # 'K'
MSG_NOTIFICATION = 0x41  # 'A'

MSG_QUERY = 0x51  # 'Q'
MSG_PARSE = 0x50  # 'P'
MSG_BIND = 0x42  # 'B'
MSG_EXECUTE = 0x45  # 'E' (frontend)
MSG_SYNC = 0x53  # 'S' (frontend)
MSG_FLUSH = 0x48  # 'H' (frontend)
MSG_TERMINATE = 0x58  # 'X'
MSG_COPY_DATA = 0x64  # 'd'
MSG_COPY_DONE = 0x63  # 'c'
MSG_COPY_FAIL = 0x66  # 'f'
MSG_PASSWORD = 0x70  # 'p' (PasswordMessage, SASLInitialResponse, SASLResponse)

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_HDR = struct.Struct("!cI")
_I32 = struct.Struct("!I")
_II = struct.Struct("!II")
_unpack_i32 = _I32.unpack_from


class ProtocolError(ValueError):
    """The peer sent bytes that are not valid protocol; the message says what was wrong."""


# --------------------------------------------------------------------------- framing


#: Scanners are made per connection with a few constant arguments: share what they keep, so an
#: idle connection does not hold its own copies.
_SETS: dict[frozenset[int], frozenset[int]] = {}
_KEEP: dict[tuple[tuple[int, int], ...], dict[int, int]] = {}


def _shared_set(values: Iterable[int]) -> frozenset[int]:
    found = frozenset(values)
    return _SETS.setdefault(found, found)


class MessageScanner:
    """Walks typed messages (`type byte + int32 length + body`) across arbitrary chunking.

    `feed()` returns None when the chunk held nothing of interest, else a list of
    `(type, body, end)` where `end` is the offset in *this* chunk just past the message. Bodies
    are only materialised for types in `keep_body` (truncated to `max_body` bytes, or to the
    cap `keep_body` maps the type to: enough to classify a query or read a statement name,
    never a memory hazard); other interesting types get an empty body. Everything else is
    skipped by arithmetic, so the cost is one header read per message.

    `interesting` may be replaced between feeds: a message that was being skipped when it
    became interesting still yields its (bodiless) event when it ends.
    """

    __slots__ = ("interesting", "keep_body", "max_body", "_skip", "_skip_type", "_hdr", "_cur",
                 "_buf", "_need", "_trunc", "max_message", "last", "transparent", "started_mid")

    def __init__(self, interesting: Iterable[int], keep_body: Iterable[int] | Mapping[int, int] = (),
                 max_body: int = 1 << 20, max_message: int = MAX_MESSAGE,
                 transparent: Iterable[int] = ()) -> None:
        self.interesting = _shared_set(interesting)
        #: Message types that do not update `last` (the frontend's Flush asks for output but
        #: changes nothing about what the client has synced; Terminate ends the stream, and
        #: what came before it still decides whether a batch was left unsynced).
        self.transparent = _shared_set(transparent)
        #: Types whose bodies are kept, and how many bytes of each at most (read-only: one
        #: mapping is shared by every scanner made with the same arguments).
        keep = tuple(sorted(keep_body.items() if isinstance(keep_body, Mapping)
                            else dict.fromkeys(keep_body, max_body).items()))
        shared = _KEEP.get(keep)
        if shared is None:
            shared = _KEEP[keep] = dict(keep)
        self.keep_body: dict[int, int] = shared
        self.max_body = max_body
        self.max_message = max_message
        self._skip = 0  # bytes of an uninteresting message body still to pass over
        self._skip_type = -1  # the type of that message
        self._hdr = b""  # an incomplete header carried over from the previous chunk
        self._cur = -1  # type of an interesting message whose body is still arriving
        self._buf = bytearray()
        self._need = 0  # body bytes of `_cur` still to arrive
        self._trunc = 0  # body bytes of `_cur` still to arrive but not kept (over max_body)
        self.last = -1  # type of the last message whose header has been seen
        #: The last chunk fed began in the middle of a message.
        self.started_mid = False

    @property
    def in_message(self) -> bool:
        """True while the stream stops in the middle of a message."""
        return bool(self._skip or self._hdr or self._cur >= 0)

    def feed(self, data: bytes) -> list[tuple[int, bytes, int]] | None:
        n = len(data)
        pos = 0
        events: list[tuple[int, bytes, int]] | None = None
        self.started_mid = bool(self._skip or self._cur >= 0 or self._hdr)
        if self._skip:
            if self._skip > n:
                self._skip -= n
                return None
            pos = self._skip
            self._skip = 0
            if self._skip_type in self.interesting:  # it became interesting meanwhile
                events = [(self._skip_type, b"", pos)]
        elif self._cur >= 0:
            pos, done = self._continue_body(data)
            if done is None:
                return None
            events = [done]
        elif self._hdr:
            need = 5 - len(self._hdr)
            if n < need:
                self._hdr += data
                return None
            hdr = self._hdr + data[:need]
            self._hdr = b""
            pos = need
            t = hdr[0]
            if t not in self.transparent:
                self.last = t
            length = _unpack_i32(hdr, 1)[0]
            if length < 4 or length > self.max_message:
                raise ProtocolError(f"invalid message length {length} for type {chr(t)!r}")
            body_len = length - 4
            if t in self.interesting:
                if body_len == 0:
                    events = [(t, b"", pos)]
                else:
                    self._start_body(t, body_len)
                    pos, done = self._continue_body(data, pos)
                    if done is None:
                        return None
                    events = [done]
            else:
                if pos + body_len > n:
                    self._skip = pos + body_len - n
                    self._skip_type = t
                    return None
                pos += body_len
        interesting = self.interesting
        keep = self.keep_body
        max_message = self.max_message
        last = -1
        transparent = self.transparent
        while pos < n:
            if n - pos < 5:
                self._hdr = bytes(data[pos:])
                break
            t = data[pos]
            if t not in transparent:
                last = t
            length = _unpack_i32(data, pos + 1)[0]
            if length < 4 or length > max_message:
                raise ProtocolError(f"invalid message length {length} for type {chr(t)!r}")
            end = pos + 1 + length
            if t in interesting:
                if end <= n:
                    if events is None:
                        events = []
                    cap = keep.get(t)
                    if cap is not None:
                        events.append((t, data[pos + 5:min(end, pos + 5 + cap)], end))
                    else:
                        events.append((t, b"", end))
                else:
                    self._start_body(t, length - 4)
                    _, done = self._continue_body(data, pos + 5)
                    # A message that did not fit cannot complete in this chunk.
                    assert done is None
                    break
            elif end > n:
                self._skip = end - n
                self._skip_type = t
                break
            pos = end
        if last >= 0:
            self.last = last
        return events

    def _start_body(self, t: int, body_len: int) -> None:
        self._cur = t
        self._buf = bytearray()
        cap = self.keep_body.get(t)
        if cap is not None:
            kept = min(body_len, cap)
            self._need = kept
            self._trunc = body_len - kept
        else:
            self._need = 0
            self._trunc = body_len

    def _continue_body(self, data: bytes, pos: int = 0) -> tuple[int, tuple[int, bytes, int] | None]:
        n = len(data)
        if self._need:
            take = min(self._need, n - pos)
            self._buf += data[pos:pos + take]
            self._need -= take
            pos += take
            if self._need:
                return pos, None
        if self._trunc:
            take = min(self._trunc, n - pos)
            self._trunc -= take
            pos += take
            if self._trunc:
                return pos, None
        t = self._cur
        self._cur = -1
        body = bytes(self._buf)
        self._buf = bytearray()
        return pos, (t, body, pos)


class MessageReader:
    """Buffers whole typed messages; for the login phases, where every message matters."""

    __slots__ = ("_buf", "max_message")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self.max_message = max_message

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        buf = self._buf
        pos = 0
        n = len(buf)
        while n - pos >= 5:
            t = buf[pos]
            length = _unpack_i32(buf, pos + 1)[0]
            if length < 4 or length > self.max_message:
                raise ProtocolError(f"invalid message length {length} for type {chr(t)!r}")
            end = pos + 1 + length
            if end > n:
                break
            out.append((t, bytes(buf[pos + 5:end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

    def take_rest(self) -> bytes:
        """Bytes received past the last complete message (handed over when the phase ends)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


class StartupReader:
    """Frames the untyped first packet(s) of a frontend connection: `int32 length + payload`."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes | None:
        """Add bytes; return one whole startup payload (without the length) once complete."""
        self._buf += data
        if len(self._buf) < 4:
            return None
        length = _unpack_i32(self._buf, 0)[0]
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolError(f"invalid startup packet length {length}")
        if len(self._buf) < length:
            return None
        payload = bytes(self._buf[4:length])
        del self._buf[:length]
        return payload

    def empty(self) -> bool:
        """Nothing of a packet has arrived yet."""
        return not self._buf

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


# --------------------------------------------------------------------------- startup packets


class StartupMessage:
    """A parsed StartupMessage: protocol version and its key/value parameters."""

    __slots__ = ("protocol", "params")

    def __init__(self, protocol: int, params: dict[str, str]) -> None:
        self.protocol = protocol
        self.params = params


class SpecialRequest:
    """SSLRequest, GSSENCRequest or CancelRequest (code identifies which)."""

    __slots__ = ("code", "pid", "secret")

    def __init__(self, code: int, pid: int = 0, secret: int = 0) -> None:
        self.code = code
        self.pid = pid
        self.secret = secret


def parse_startup(payload: bytes) -> StartupMessage | SpecialRequest:
    """Parse a startup-phase payload (what `StartupReader.feed` returned)."""
    if len(payload) < 4:
        raise ProtocolError("startup packet too short")
    code = _unpack_i32(payload, 0)[0]
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        return SpecialRequest(code)
    if code == CANCEL_REQUEST_CODE:
        if len(payload) != 12:
            raise ProtocolError("invalid cancel request length")
        pid, secret = _II.unpack_from(payload, 4)
        return SpecialRequest(code, pid, secret)
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                            "poolproxy speaks protocol 3.0")
    parts = payload[4:].split(b"\x00")
    # A well-formed list ends with an empty key: "k\0v\0...\0\0" splits to [..., '', ''].
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"" or len(parts) % 2:
        raise ProtocolError("malformed startup packet")
    params: dict[str, str] = {}
    try:
        for i in range(0, len(parts) - 2, 2):
            key = parts[i].decode("utf-8")
            if not key:
                raise ProtocolError("malformed startup packet: empty parameter name")
            params[key] = parts[i + 1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("startup packet is not valid UTF-8") from exc
    return StartupMessage(code, params)


def startup_message(params: Mapping[str, str]) -> bytes:
    body = bytearray(_I32.pack(PROTOCOL_V3))
    for key, value in params.items():
        body += key.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return _I32.pack(len(body) + 4) + bytes(body)


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST_CODE)


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!IIII", 16, CANCEL_REQUEST_CODE, pid, secret)


# --------------------------------------------------------------------------- builders


def message(t: bytes, body: bytes = b"") -> bytes:
    return t + _I32.pack(len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\x00"


def auth_request(code: int, data: bytes = b"") -> bytes:
    return message(b"R", _I32.pack(code) + data)


def auth_sasl(mechanisms: Iterable[str]) -> bytes:
    return auth_request(AUTH_SASL, b"".join(cstr(m) for m in mechanisms) + b"\x00")


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", _II.pack(pid, secret))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def password_message(data: bytes) -> bytes:
    return message(b"p", data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


TERMINATE = message(b"X")
SYNC = message(b"S")


def error_response(sqlstate: str, msg: str, *, severity: str = "ERROR", detail: str | None = None,
                   hint: str | None = None) -> bytes:
    fields = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(sqlstate), b"M" + cstr(msg)]
    if detail:
        fields.append(b"D" + cstr(detail))
    if hint:
        fields.append(b"H" + cstr(hint))
    return message(b"E", b"".join(fields) + b"\x00")


def notice_response(msg: str, severity: str = "NOTICE", sqlstate: str = "00000") -> bytes:
    fields = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(msg)
    return message(b"N", fields + b"\x00")


# Result sets for the admin console and for local answers.
def row_description(columns: Iterable[tuple[str, int]]) -> bytes:
    cols = list(columns)
    body = bytearray(struct.pack("!H", len(cols)))
    for name, type_oid in cols:
        size = {16: 1, 20: 8, 21: 2, 23: 4, 701: 8}.get(type_oid, -1)
        body += cstr(name) + struct.pack("!IhIhih", 0, 0, type_oid, size, -1, 0)
    return message(b"T", bytes(body))


def data_row(values: Iterable[object]) -> bytes:
    vals = list(values)
    body = bytearray(struct.pack("!H", len(vals)))
    for v in vals:
        if v is None:
            body += struct.pack("!i", -1)
        else:
            raw = str(v).encode("utf-8")
            body += struct.pack("!i", len(raw)) + raw
    return message(b"D", bytes(body))


def parse_data_row(body: bytes) -> list[str | None]:
    """A DataRow's columns as text (None for NULL); the inverse of `data_row`'s body."""
    count = int.from_bytes(body[:2], "big")
    out: list[str | None] = []
    pos = 2
    for _ in range(count):
        length = int.from_bytes(body[pos:pos + 4], "big", signed=True)
        pos += 4
        if length < 0:
            out.append(None)
        else:
            out.append(body[pos:pos + length].decode("utf-8", "replace"))
            pos += length
    return out


def extended_query(sql: str, params: Iterable[str]) -> bytes:
    """Parse, Bind, Execute and Sync of `sql` (unnamed statement and portal) with text
    parameters: values travel apart from the SQL, never quoted into it."""
    values = list(params)
    bind = bytearray(b"\x00\x00\x00\x00" + struct.pack("!H", len(values)))
    for value in values:
        raw = value.encode("utf-8", "surrogateescape")
        bind += struct.pack("!i", len(raw)) + raw
    bind += b"\x00\x00"
    return b"".join((message(b"P", b"\x00" + cstr(sql) + b"\x00\x00"),
                     message(b"B", bytes(bind)), message(b"E", b"\x00\x00\x00\x00\x00"),
                     message(b"S")))


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


# --------------------------------------------------------------------------- parsers


def parse_error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse body -> {field code: value} (e.g. 'C' -> SQLSTATE)."""
    fields: dict[str, str] = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    parts = body.split(b"\x00")
    if len(parts) < 3:
        raise ProtocolError("malformed ParameterStatus")
    return parts[0].decode("utf-8", "replace"), parts[1].decode("utf-8", "replace")


def parse_auth(body: bytes) -> tuple[int, bytes]:
    if len(body) < 4:
        raise ProtocolError("malformed authentication request")
    return _unpack_i32(body, 0)[0], body[4:]


def parse_sasl_mechanisms(data: bytes) -> list[str]:
    return [m.decode() for m in data.split(b"\x00") if m]


def parse_sasl_initial(body: bytes) -> tuple[str, bytes]:
    """SASLInitialResponse body -> (mechanism, initial client response)."""
    nul = body.find(b"\x00")
    if nul < 0 or len(body) < nul + 5:
        raise ProtocolError("malformed SASLInitialResponse")
    mech = body[:nul].decode("ascii", "replace")
    length = struct.unpack_from("!i", body, nul + 1)[0]
    data = body[nul + 5:]
    if length != -1 and length != len(data):
        raise ProtocolError("malformed SASLInitialResponse length")
    return mech, data


def parse_query(body: bytes) -> bytes:
    """Query body -> SQL text bytes (without the terminating NUL)."""
    nul = body.find(b"\x00")
    return body if nul < 0 else body[:nul]


def parse_parse(body: bytes) -> tuple[bytes, bytes]:
    """Parse body -> (statement name, SQL text); tolerant of a truncated (capped) body."""
    nul = body.find(b"\x00")
    if nul < 0:
        return body, b""
    name = body[:nul]
    rest = body[nul + 1:]
    end = rest.find(b"\x00")
    return name, rest if end < 0 else rest[:end]


def parse_backend_key(body: bytes) -> tuple[int, int]:
    if len(body) < 8:
        raise ProtocolError("malformed BackendKeyData")
    pid, secret = _II.unpack_from(body, 0)
    return pid, secret
