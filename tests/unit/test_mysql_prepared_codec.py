"""Byte-level tests for MySQL/MariaDB prepared statements, sans-IO (proxy/mysql/prepared.py).

COM_STMT_* payloads are built by hand with struct, following the client/server protocol:
COM_STMT_EXECUTE is 0x17, stmt_id u32, flags u8, iteration_count u32, then for n > 0
parameters a NULL bitmap of (n + 7) // 8 bytes, new_params_bound_flag u8, 2 * n bytes of
types when the flag is 1, and the values. The bookkeeping classes (Registry, ServerStatements,
ClientStatements, ClientStatement) are checked for their references and evictions.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from proxy.mysql import prepared
from proxy.mysql.messages import build_err
from proxy.mysql.prepared import (
    EXECUTE_HEAD,
    LAST_PREPARED,
    ClientStatement,
    ClientStatements,
    Registry,
    ServerStatements,
    Statement,
    close_packet,
    execute_types,
    prepare_response,
    split_packets,
    statement_id,
    statement_registry,
    supply_types,
    unknown_statement,
    with_id,
)
from proxy.mysql.wire import (
    COM_STMT_CLOSE,
    COM_STMT_EXECUTE,
    COM_STMT_FETCH,
    COM_STMT_PREPARE,
    PacketReader,
    ProtocolError,
    encode_packet,
)

MYSQL_TYPE_LONG = 0x03
MYSQL_TYPE_LONGLONG = 0x08
MYSQL_TYPE_VAR_STRING = 0xFD
MYSQL_TYPE_VARCHAR = 0x0F
EOF = b"\xfe\x00\x00\x02\x00"  # warnings 0, status SERVER_STATUS_AUTOCOMMIT


# --------------------------------------------------------------------------------------------
# Payload builders
# --------------------------------------------------------------------------------------------
def execute(stmt_id: int, types: list[int] | None, values: bytes = b"", *, params: int = 0,
            nulls: bytes | None = None, flags: int = 0, iterations: int = 1) -> bytes:
    """COM_STMT_EXECUTE; `types` given means new_params_bound_flag=1 (with `len(types)`
    parameters), None means flag 0 for `params` parameters."""
    n = len(types) if types is not None else params
    out = struct.pack("<BIBI", COM_STMT_EXECUTE, stmt_id, flags, iterations)
    if n == 0:
        return out
    out += nulls if nulls is not None else bytes((n + 7) // 8)
    if types is None:
        return out + b"\x00" + values
    return out + b"\x01" + b"".join(struct.pack("<H", t) for t in types) + values


def close_cmd(stmt_id: int) -> bytes:
    return struct.pack("<BI", COM_STMT_CLOSE, stmt_id)


def fetch_cmd(stmt_id: int, rows: int) -> bytes:
    return struct.pack("<BII", COM_STMT_FETCH, stmt_id, rows)


def prepare_ok(stmt_id: int, columns: int, params: int, warnings: int = 0) -> bytes:
    return struct.pack("<BIHHBH", 0, stmt_id, columns, params, 0, warnings)


def lenenc_str(s: bytes) -> bytes:
    assert len(s) < 251
    return bytes((len(s),)) + s


def column_def(name: bytes, col_type: int, table: bytes = b"", schema: bytes = b"") -> bytes:
    """A Protocol::ColumnDefinition41 payload."""
    return (lenenc_str(b"def") + lenenc_str(schema) + lenenc_str(table) + lenenc_str(table)
            + lenenc_str(name) + lenenc_str(name) + b"\x0c"
            + struct.pack("<HIBHB", 63, 11, col_type, 0, 0) + b"\x00\x00")


PARAM_1 = column_def(b"?", MYSQL_TYPE_LONGLONG)
PARAM_2 = column_def(b"?", MYSQL_TYPE_VAR_STRING)
COLUMN_1 = column_def(b"name", MYSQL_TYPE_VAR_STRING, b"users", b"app")


def full_response(server_id: int = 77) -> list[bytes]:
    """A server's COM_STMT_PREPARE response for `SELECT name FROM users WHERE id = ? AND
    kind = ?` without CLIENT_DEPRECATE_EOF: PREPARE_OK, 2 parameters, EOF, 1 column, EOF."""
    return [prepare_ok(server_id, 1, 2, warnings=0), PARAM_1, PARAM_2, EOF, COLUMN_1, EOF]


KEY = ("app", b"SELECT name FROM users WHERE id = ? AND kind = ?")
KEY_2 = ("app", b"SELECT 1")
KEY_3 = ("other", b"SELECT 1")


def registry() -> Registry:
    return Registry(stats=None)


def make_stmt(reg: Registry, key: tuple[str, bytes], columns: int = 1,
              params: int = 0) -> Statement:
    return reg.add(key, [prepare_ok(5, columns, params)])


# --------------------------------------------------------------------------------------------
# statement_id / with_id
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (execute(0x01020304, None), 0x01020304),
        (execute(7, [MYSQL_TYPE_LONG], b"\x01\x00\x00\x00"), 7),
        (close_cmd(0xFFFFFFFF), 0xFFFFFFFF),
        (fetch_cmd(42, 100), 42),
        (prepare_ok(0xDEADBEEF, 3, 4), 0xDEADBEEF),
    ],
    ids=["execute", "execute-params", "close", "fetch", "prepare-ok"],
)
def test_statement_id(payload: bytes, expected: int) -> None:
    assert statement_id(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x19", b"\x19\x01\x00\x00", bytes((COM_STMT_EXECUTE, 1, 2, 3))],
)
def test_statement_id_short_payload(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        statement_id(payload)


def test_statement_id_exactly_five_bytes() -> None:
    assert statement_id(b"\x19\x2a\x00\x00\x00") == 42


def test_with_id_execute_keeps_the_rest() -> None:
    payload = execute(3, [MYSQL_TYPE_LONG, MYSQL_TYPE_VAR_STRING], b"\x05\x00\x00\x00\x02hi",
                      flags=1)
    out = with_id(payload, 0xA1B2C3D4)
    assert out[:5] == b"\x17\xd4\xc3\xb2\xa1"
    assert out[5:] == payload[5:]
    assert out == execute(0xA1B2C3D4, [MYSQL_TYPE_LONG, MYSQL_TYPE_VAR_STRING],
                          b"\x05\x00\x00\x00\x02hi", flags=1)
    assert statement_id(out) == 0xA1B2C3D4


def test_with_id_close() -> None:
    assert with_id(close_cmd(9), 1) == b"\x19\x01\x00\x00\x00"


def test_with_id_fetch() -> None:
    out = with_id(fetch_cmd(9, 500), 0x10000)
    assert out == b"\x1c\x00\x00\x01\x00" + struct.pack("<I", 500)


def test_with_id_prepare_ok() -> None:
    out = with_id(prepare_ok(0, 2, 3, warnings=1), 12)
    assert out == b"\x00\x0c\x00\x00\x00\x02\x00\x03\x00\x00\x01\x00"
    assert out == prepare_ok(12, 2, 3, warnings=1)


# --------------------------------------------------------------------------------------------
# execute_types / supply_types
# --------------------------------------------------------------------------------------------
def test_execute_types_without_params() -> None:
    assert execute_types(execute(1, None), 0) == (-1, None)
    # The payload is not even looked at.
    assert execute_types(b"", 0) == (-1, None)


@pytest.mark.parametrize(("params", "offset"), [(1, 11), (8, 11), (9, 12), (16, 12), (17, 13)])
def test_execute_types_flag_zero_offset(params: int, offset: int) -> None:
    payload = execute(1, None, b"\x00" * 4 * params, params=params)
    assert payload[offset] == 0
    assert offset == EXECUTE_HEAD + (params + 7) // 8
    assert execute_types(payload, params) == (offset, None)


@pytest.mark.parametrize("params", [1, 8, 9])
def test_execute_types_flag_one(params: int) -> None:
    types = [MYSQL_TYPE_LONG | (0x8000 if i % 2 else 0) for i in range(params)]  # some unsigned
    values = b"".join(struct.pack("<i", i) for i in range(params))
    payload = execute(4, types, values)
    offset = EXECUTE_HEAD + (params + 7) // 8
    expected = b"".join(struct.pack("<H", t) for t in types)
    assert len(expected) == 2 * params
    assert execute_types(payload, params) == (offset, expected)


def test_execute_types_exact_bytes() -> None:
    # Two parameters: LONGLONG unsigned (0x08, 0x80) and VARCHAR, NULL bitmap 0b10.
    payload = (b"\x17\x05\x00\x00\x00\x00\x01\x00\x00\x00" + b"\x02" + b"\x01"
               + b"\x08\x80\x0f\x00" + b"\x2a\x00\x00\x00\x00\x00\x00\x00")
    assert execute_types(payload, 2) == (11, b"\x08\x80\x0f\x00")


def test_execute_types_flag_one_without_values() -> None:
    # All parameters NULL: the types end the payload.
    payload = execute(4, [MYSQL_TYPE_LONG, MYSQL_TYPE_LONG], nulls=b"\x03")
    assert execute_types(payload, 2) == (11, b"\x03\x00\x03\x00")


@pytest.mark.parametrize(
    "payload",
    [
        b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00",  # no NULL bitmap
        b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00",  # bitmap, no flag
    ],
)
def test_execute_types_truncated_before_flag(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        execute_types(payload, 1)


@pytest.mark.parametrize("length", [11, 12])
def test_execute_types_truncated_bitmap_of_nine(length: int) -> None:
    payload = execute(1, None, params=9)  # head, 2 bitmap bytes, the flag
    assert len(payload) == 13
    assert execute_types(payload, 9) == (12, None)
    with pytest.raises(ProtocolError):
        execute_types(payload[:length], 9)


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_execute_types_truncated_types(cut: int) -> None:
    payload = execute(1, [MYSQL_TYPE_LONG, MYSQL_TYPE_VARCHAR])
    assert len(payload) == 16
    with pytest.raises(ProtocolError):
        execute_types(payload[:-cut], 2)


def test_supply_types() -> None:
    types = b"\x03\x00\xfd\x00"
    values = b"\x2a\x00\x00\x00" + b"\x03abc"
    payload = execute(6, None, values, params=2, flags=0, iterations=1)
    flag, sent = execute_types(payload, 2)
    assert (flag, sent) == (11, None)
    out = supply_types(payload, flag, types)
    assert out == (b"\x17\x06\x00\x00\x00\x00\x01\x00\x00\x00" + b"\x00" + b"\x01" + types
                   + values)
    assert out[:flag] == payload[:flag]
    assert out[flag] == 1
    assert out[flag + 1 + len(types):] == values
    assert execute_types(out, 2) == (flag, types)
    assert out == execute(6, [MYSQL_TYPE_LONG, MYSQL_TYPE_VAR_STRING], values)


def test_supply_types_nine_params() -> None:
    types = bytes(range(18))
    values = b"v" * 9
    payload = execute(6, None, values, params=9, nulls=b"\x00\x01")
    flag, sent = execute_types(payload, 9)
    assert (flag, sent) == (12, None)
    out = supply_types(payload, flag, types)
    assert out[10:12] == b"\x00\x01"
    assert execute_types(out, 9) == (12, types)
    assert out[12 + 1 + 18:] == values


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
def test_registry_add_zeroes_the_id() -> None:
    reg = registry()
    response = full_response(server_id=0x01020304)
    stmt = reg.add(KEY, response)
    assert stmt.response[0] == prepare_ok(0, 1, 2)
    assert stmt.response[0] == b"\x00\x00\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00"
    assert stmt.response[1:] == response[1:]
    assert response[0] == prepare_ok(0x01020304, 1, 2)  # the caller's list is left alone
    assert stmt.params == 2
    assert stmt.columns == 1
    assert stmt.key == KEY
    assert stmt.schema == "app"
    assert stmt.sql == KEY[1]
    assert stmt.refs == 0
    assert reg.get(KEY) is stmt
    assert len(reg) == 1


def test_statement_reads_wide_counts() -> None:
    stmt = Statement(KEY, [prepare_ok(1, 0x1234, 0x0302)])
    assert stmt.columns == 0x1234
    assert stmt.params == 0x0302


def test_registry_same_key_same_statement() -> None:
    reg = registry()
    stmt = reg.add(KEY, full_response(1))
    again = reg.add(KEY, [prepare_ok(2, 9, 9)])
    assert again is stmt
    assert again.params == 2  # the first response stays
    assert reg.add(KEY_2, [prepare_ok(3, 1, 0)]) is not stmt
    assert reg.add(KEY_3, [prepare_ok(3, 1, 0)]) is not reg.get(KEY_2)
    assert len(reg) == 3


def test_registry_hold_release() -> None:
    reg = registry()
    stmt = reg.add(KEY, full_response())
    reg.hold(stmt)
    reg.hold(stmt)
    assert stmt.refs == 2
    reg.release(stmt)
    assert stmt.refs == 1
    assert reg.get(KEY) is stmt
    reg.release(stmt)
    assert stmt.refs == 0
    assert reg.get(KEY) is None
    assert len(reg) == 0
    # A new prepare makes a new entry.
    assert reg.add(KEY, full_response()) is not stmt


def test_registry_release_of_a_replaced_statement_keeps_the_new_one() -> None:
    reg = registry()
    old = reg.add(KEY, full_response())
    reg.hold(old)
    reg.release(old)
    new = reg.add(KEY, full_response())
    reg.hold(new)
    reg.release(old)  # a stale reference must not remove the new entry
    assert reg.get(KEY) is new


def test_registry_counts() -> None:
    reg = registry()
    assert reg.counts() == (0, 0)
    a = make_stmt(reg, KEY)
    make_stmt(reg, KEY_2)
    assert reg.counts() == (2, 0)
    servers = ServerStatements(reg, limit=10)
    servers.add(a, 1)
    assert reg.counts() == (2, 1)


def test_statement_registry_made_once() -> None:
    stats = object()
    pool = SimpleNamespace(protocol_state=None, stats=stats)
    reg = statement_registry(pool)
    assert isinstance(reg, Registry)
    assert reg.stats is stats
    assert pool.protocol_state is reg
    assert statement_registry(pool) is reg


# --------------------------------------------------------------------------------------------
# ServerStatements
# --------------------------------------------------------------------------------------------
def test_server_statements_evict_lru() -> None:
    reg = registry()
    a, b, c, d = (make_stmt(reg, ("app", q)) for q in (b"a", b"b", b"c", b"d"))
    servers = ServerStatements(reg, limit=3)
    assert servers.add(a, 101) == []
    assert servers.add(b, 102) == []
    assert servers.add(c, 103) == []
    assert len(servers) == 3
    assert reg.on_servers == 3
    entry = servers.get(a)  # a is now the most recently used
    assert entry is not None
    assert entry.id == 101
    assert entry.types is None
    assert servers.add(d, 104) == [102]
    assert list(servers.lru) == [c, a, d]
    assert reg.on_servers == 3
    assert servers.get(b) is None
    assert b.refs == 0
    assert reg.get(("app", b"b")) is None  # nobody holds it any more
    assert a.refs == 1


def test_server_statements_evict_several() -> None:
    reg = registry()
    stmts = [make_stmt(reg, ("app", bytes((q,)))) for q in range(5)]
    servers = ServerStatements(reg, limit=5)
    for i, stmt in enumerate(stmts):
        assert servers.add(stmt, 200 + i) == []
    servers.limit = 2
    extra = make_stmt(reg, ("app", b"extra"))
    assert servers.add(extra, 300) == [200, 201, 202, 203]
    assert list(servers.lru) == [stmts[4], extra]
    assert reg.counts() == (2, 2)


def test_server_statements_add_existing_returns_new_id() -> None:
    reg = registry()
    a = make_stmt(reg, KEY)
    b = make_stmt(reg, KEY_2)
    servers = ServerStatements(reg, limit=5)
    servers.add(a, 1)
    servers.add(b, 2)
    assert servers.add(a, 9) == [9]
    assert list(servers.lru) == [b, a]  # a refreshed
    entry = servers.get(a)
    assert entry is not None and entry.id == 1  # the id already known stays
    assert a.refs == 1
    assert reg.on_servers == 2


def test_server_statements_drop() -> None:
    reg = registry()
    a = make_stmt(reg, KEY)
    servers = ServerStatements(reg, limit=5)
    servers.add(a, 31)
    clients = ClientStatements(reg)
    clients.add(a)
    assert a.refs == 2
    assert servers.drop(a) == 31
    assert a.refs == 1
    assert reg.on_servers == 0
    assert reg.get(KEY) is a  # the client still holds it
    assert servers.drop(a) is None
    assert len(servers) == 0


def test_server_statements_clear() -> None:
    reg = registry()
    a = make_stmt(reg, KEY)
    b = make_stmt(reg, KEY_2)
    servers = ServerStatements(reg, limit=5)
    other = ServerStatements(reg, limit=5)
    servers.add(a, 1)
    servers.add(b, 2)
    other.add(b, 7)
    clients = ClientStatements(reg)
    clients.add(a)
    assert reg.counts() == (2, 3)
    assert (a.refs, b.refs) == (2, 2)
    servers.clear()
    assert len(servers) == 0
    assert reg.counts() == (2, 1)
    assert (a.refs, b.refs) == (1, 1)
    other.clear()
    assert reg.counts() == (1, 0)
    assert reg.get(KEY) is a
    assert reg.get(KEY_2) is None
    clients.clear()
    assert reg.counts() == (0, 0)


# --------------------------------------------------------------------------------------------
# ClientStatements
# --------------------------------------------------------------------------------------------
def test_client_statements_ids() -> None:
    reg = registry()
    a = make_stmt(reg, KEY)
    b = make_stmt(reg, KEY_2)
    clients = ClientStatements(reg)
    assert clients.last == 0
    assert clients.get(LAST_PREPARED) is None
    assert clients.add(a) == 1
    assert clients.add(b) == 2
    assert clients.add(a) == 3  # the same statement prepared twice: two ids
    assert len(clients) == 3
    assert a.refs == 2
    assert b.refs == 1
    assert clients.last == 3
    first = clients.get(1)
    assert first is not None and first.stmt is a
    last = clients.get(LAST_PREPARED)
    assert last is clients.get(3)
    assert last is not None and last.stmt is a
    assert clients.get(4) is None


def test_client_statements_close() -> None:
    reg = registry()
    a = make_stmt(reg, KEY)
    clients = ClientStatements(reg)
    first = clients.add(a)
    second = clients.add(a)
    entry = clients.close(first)
    assert entry is not None and entry.stmt is a
    assert a.refs == 1
    assert reg.get(KEY) is a
    assert clients.close(first) is None
    assert a.refs == 1
    assert clients.close(second) is not None
    assert a.refs == 0
    assert reg.get(KEY) is None
    assert len(clients) == 0
    assert clients.add(make_stmt(reg, KEY)) == 3  # ids are not reused


def test_client_statements_clear() -> None:
    reg = registry()
    a = make_stmt(reg, KEY)
    b = make_stmt(reg, KEY_2)
    clients = ClientStatements(reg)
    clients.add(a)
    clients.add(b)
    clients.add(b)
    assert len(reg) == 2
    clients.clear()
    assert len(clients) == 0
    assert (a.refs, b.refs) == (0, 0)
    assert len(reg) == 0
    assert clients.get(1) is None


def test_client_statements_wrap_skips_ids_in_use() -> None:
    reg = registry()
    clients = ClientStatements(reg)
    assert clients.add(make_stmt(reg, KEY)) == 1
    assert clients.add(make_stmt(reg, KEY_2)) == 2
    clients._next = LAST_PREPARED - 1
    assert clients.add(make_stmt(reg, KEY_3)) == 3  # wrapped, 1 and 2 are taken
    assert clients.last == 3


# --------------------------------------------------------------------------------------------
# ClientStatement long data
# --------------------------------------------------------------------------------------------
def long_data(stmt_id: int, param: int, data: bytes) -> bytes:
    return struct.pack("<BIH", 0x18, stmt_id, param) + data


def test_long_data_accumulates() -> None:
    entry = ClientStatement(make_stmt(registry(), KEY, params=2))
    assert entry.long_data == []
    assert entry.long_size == 0
    assert entry.types is None
    assert entry.cursor is False
    one = long_data(1, 0, b"abc")
    two = long_data(1, 1, b"defgh")
    entry.add_long_data(one)
    entry.add_long_data(two)
    assert entry.long_data == [one, two]
    assert entry.long_size == len(one) + len(two) == 10 + 12
    entry.reset_long_data()
    assert entry.long_data == []
    assert entry.long_size == 0


def test_long_data_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepared, "MAX_LONG_DATA", 10)
    entry = ClientStatement(make_stmt(registry(), KEY, params=1))
    entry.add_long_data(b"x" * 6)
    entry.add_long_data(b"y" * 4)  # exactly the limit is still kept
    assert entry.long_data == [b"x" * 6, b"y" * 4]
    assert entry.long_size == 10
    entry.add_long_data(b"z")
    assert entry.long_data == []
    assert entry.long_size == -1
    entry.add_long_data(b"w")  # nothing more is kept until the reset
    assert entry.long_data == []
    assert entry.long_size == -1
    entry.reset_long_data()
    assert entry.long_size == 0
    entry.add_long_data(b"again")
    assert entry.long_data == [b"again"]
    assert entry.long_size == 5


def test_long_data_single_chunk_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepared, "MAX_LONG_DATA", 10)
    entry = ClientStatement(make_stmt(registry(), KEY, params=1))
    entry.add_long_data(b"q" * 11)
    assert entry.long_data == []
    assert entry.long_size == -1


# --------------------------------------------------------------------------------------------
# prepare_response / split_packets
# --------------------------------------------------------------------------------------------
def test_prepare_response_full() -> None:
    reg = registry()
    stmt = reg.add(KEY, full_response(server_id=555))
    out = prepare_response(stmt, 0x0A0B0C0D, status=0x0003)  # AUTOCOMMIT | IN_TRANS
    expected_payloads = [
        prepare_ok(0x0A0B0C0D, 1, 2),
        PARAM_1,
        PARAM_2,
        b"\xfe\x00\x00\x03\x00",
        COLUMN_1,
        b"\xfe\x00\x00\x03\x00",
    ]
    assert out == b"".join(encode_packet(i + 1, p) for i, p in enumerate(expected_payloads))
    # The header bytes by hand: 12-byte PREPARE_OK at sequence 1.
    assert out[:4] == b"\x0c\x00\x00\x01"
    assert out[4:16] == b"\x00\x0d\x0c\x0b\x0a\x01\x00\x02\x00\x00\x00\x00"
    packets = PacketReader().feed(out)
    assert [seq for seq, _ in packets] == [1, 2, 3, 4, 5, 6]
    assert [payload for _, payload in packets] == expected_payloads
    assert statement_id(packets[0][1]) == 0x0A0B0C0D
    assert split_packets(out) == expected_payloads
    # The registry's copy is unchanged.
    assert stmt.response[0] == prepare_ok(0, 1, 2)
    assert stmt.response[3] == EOF


def test_prepare_response_keeps_eof_warnings() -> None:
    stmt = Statement(KEY_2, [prepare_ok(0, 1, 0), COLUMN_1, b"\xfe\x07\x00\x02\x00"])
    packets = PacketReader().feed(prepare_response(stmt, 2, status=0x4002))
    assert packets == [
        (1, prepare_ok(2, 1, 0)),
        (2, COLUMN_1),
        (3, b"\xfe\x07\x00\x02\x40"),
    ]


def test_prepare_response_ok_only() -> None:
    stmt = Statement(KEY_2, [prepare_ok(0, 0, 0)])
    out = prepare_response(stmt, 1, status=2)
    assert out == b"\x0c\x00\x00\x01" + b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def test_prepare_response_deprecate_eof() -> None:
    # With CLIENT_DEPRECATE_EOF there are no EOF packets: the definitions are kept as they are.
    stmt = Statement(KEY, [prepare_ok(0, 1, 2), PARAM_1, PARAM_2, COLUMN_1])
    packets = PacketReader().feed(prepare_response(stmt, 4, status=0))
    assert packets == [(1, prepare_ok(4, 1, 2)), (2, PARAM_1), (3, PARAM_2), (4, COLUMN_1)]


def test_split_packets_round_trip() -> None:
    payloads = full_response()
    data = b"".join(encode_packet(i + 1, p) for i, p in enumerate(payloads))
    assert split_packets(data) == payloads
    assert split_packets(data[:-1]) == payloads[:-1]  # an incomplete last packet is left out


# --------------------------------------------------------------------------------------------
# close_packet / unknown_statement
# --------------------------------------------------------------------------------------------
def test_close_packet() -> None:
    assert close_packet(0x01020304) == b"\x05\x00\x00\x00\x19\x04\x03\x02\x01"
    assert close_packet(1) == encode_packet(0, close_cmd(1))


def test_unknown_statement() -> None:
    out = unknown_statement(7, "mysqld_stmt_execute")
    message = b"Unknown prepared statement handler (7) given to mysqld_stmt_execute"
    payload = b"\xff\xdb\x04#HY000" + message
    assert out == struct.pack("<I", len(payload) | 1 << 24) + payload
    assert out[4:] == build_err(1243, "HY000", message.decode())
    assert PacketReader().feed(out) == [(1, payload)]


def test_unknown_statement_large_id() -> None:
    out = unknown_statement(LAST_PREPARED, "mysqld_stmt_close")
    ((seq, payload),) = PacketReader().feed(out)
    assert seq == 1
    assert payload[:3] == b"\xff\xdb\x04"
    assert payload[3:9] == b"#HY000"
    assert payload[9:] == b"Unknown prepared statement handler (4294967295) given to mysqld_stmt_close"


def test_command_constants() -> None:
    assert (COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_CLOSE, COM_STMT_FETCH) == (
        0x16, 0x17, 0x19, 0x1C)
    assert LAST_PREPARED == 0xFFFFFFFF
    assert prepared.ER_UNKNOWN_STMT_HANDLER == 1243
