"""Sans-IO MySQL/MariaDB message packets: the connection phase (handshake, handshake response,
SSLRequest, auth switch), OK / ERR / EOF with session-state tracking, and command-phase helpers
(commands, LOCAL INFILE, text rows, COM_STMT_PREPARE_OK).

Conventions (see also wire.py): capabilities are kept as on the wire (`capabilities`: the lower
32 bits, `mariadb_ext_caps`: MariaDB's extended 32 bits, unshifted); `all_capabilities` combines
them. Identifiers decode as UTF-8 with surrogateescape so that they round-trip losslessly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from .wire import (
    _EOF_BODY,
    _P16,
    _P32,
    _U16,
    _U32,
    AUTH_MORE_DATA_HEADER,
    AUTH_SWITCH_HEADER,
    CLIENT_CONNECT_ATTRS,
    CLIENT_CONNECT_WITH_DB,
    CLIENT_DEPRECATE_EOF,
    CLIENT_MYSQL,
    CLIENT_OPTIONAL_RESULTSET_METADATA,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SESSION_TRACK,
    CLIENT_SSL,
    CLIENT_TRANSACTIONS,
    EOF_HEADER,
    ERR_HEADER,
    LOCAL_INFILE_HEADER,
    MAX_PAYLOAD,
    NULL_VALUE,
    OK_HEADER,
    SCRAMBLE_LENGTH,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_AUTOCOMMIT,
    SESSION_TRACK_GTIDS,
    SESSION_TRACK_SCHEMA,
    SESSION_TRACK_STATE_CHANGE,
    SESSION_TRACK_SYSTEM_VARIABLES,
    SESSION_TRACK_TRANSACTION_CHARACTERISTICS,
    SESSION_TRACK_TRANSACTION_STATE,
    UTF8MB4_GENERAL_CI,
    Buffer,
    ProtocolError,
    _Cursor,
    _dec,
    lenenc_int,
    lenenc_str,
    nul_str,
    read_lenenc_int,
    read_lenenc_str,
)


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
