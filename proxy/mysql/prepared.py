"""MySQL/MariaDB prepared statements shared by all clients of a pool (COM_STMT_*), sans-IO.

A statement is prepared per connection on a MySQL server, with an id the server chooses. In
transaction mode a client's statements must outlive the server it prepared them on, so:
- the pool's `Registry` maps (schema, query text) to a `Statement` holding the server's
  COM_STMT_PREPARE_OK response (ids zeroed): a client preparing a known statement is answered
  from it, with an id of its own, without borrowing a server;
- each server connection's `ServerStatements` maps statements to that server's own ids (and
  the parameter types it last received), least recently used first, bounded by
  `max_prepared_statements` (evicted ones are closed with COM_STMT_CLOSE, which has no reply);
- each client's `ClientStatements` maps the ids poolproxy gave it to statements, with what the
  server would keep per statement for it: the parameter types it last sent (a client may send
  them once and then execute with `new_params_bound_flag=0`), its COM_STMT_SEND_LONG_DATA
  chunks until the next execute, and whether a cursor is open.

The functions below read and rewrite the packets involved (payloads without the 4-byte packet
header unless said otherwise).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ..core.statements import StatementRegistry, registry_of
from .messages import build_err
from .wire import (
    COM_STMT_CLOSE,
    PacketReader,
    ProtocolError,
    encode_packet,
)

#: The id MariaDB's clients use for "the statement prepared last" (prepare and execute sent
#: together, without waiting for the id).
LAST_PREPARED = 0xFFFFFFFF
#: Statements one client may hold (MySQL's own global limit, max_prepared_stmt_count, is 16382
#: by default): beyond it COM_STMT_PREPARE fails with ER_MAX_PREPARED_STMT_COUNT_REACHED.
MAX_CLIENT_STATEMENTS = 10000
#: COM_STMT_SEND_LONG_DATA bytes poolproxy keeps per statement until its execute.
MAX_LONG_DATA = 64 << 20
#: The fixed part of COM_STMT_EXECUTE: command, statement id, flags, iteration count.
EXECUTE_HEAD = 10
CURSOR_TYPE_MASK = 0x0F

ER_UNKNOWN_STMT_HANDLER = 1243
ER_MAX_PREPARED_STMT_COUNT_REACHED = 1461
ER_STMT_HAS_NO_OPEN_CURSOR = 1421
ER_NET_PACKET_TOO_LARGE = 1153


class Statement:
    """One distinct statement of a pool: its text, the schema it was prepared in, and the
    server's COM_STMT_PREPARE_OK response (payloads, the id zeroed)."""

    __slots__ = ("key", "schema", "sql", "response", "params", "columns", "refs")

    def __init__(self, key: tuple[str, bytes], response: list[bytes]) -> None:
        self.key = key
        self.schema, self.sql = key
        self.response = response
        head = response[0]
        self.columns = head[5] | head[6] << 8
        self.params = head[7] | head[8] << 8
        self.refs = 0  # clients' ids and servers' copies that refer to it

    def __repr__(self) -> str:
        return f"<Statement {self.sql[:40]!r} params={self.params} refs={self.refs}>"


class Registry(StatementRegistry):
    """The statements of one pool by (schema, query text)."""

    __slots__ = ()

    def get(self, key: tuple[str, bytes]) -> Statement | None:
        return self._by_key.get(key)  # type: ignore[no-any-return]

    def add(self, key: tuple[str, bytes], response: list[bytes]) -> Statement:
        """The statement for `key`, made from a server's prepare response if it is new."""
        stmt: Statement | None = self._by_key.get(key)
        if stmt is None:
            head = response[0]
            stmt = self._by_key[key] = Statement(key, [head[:1] + b"\0\0\0\0" + head[5:],
                                                       *response[1:]])
        return stmt


def statement_registry(pool: Any) -> Registry:
    """The pool's registry (made on first use)."""
    return registry_of(pool, Registry)


class ServerStatement:
    """A statement as one server connection has it: the server's id, the parameter types
    it last received."""

    __slots__ = ("id", "types")

    def __init__(self, stmt_id: int) -> None:
        self.id = stmt_id
        self.types: bytes | None = None


class ServerStatements:
    """The statements prepared on one server connection, least recently used first."""

    __slots__ = ("lru", "registry", "limit")

    def __init__(self, registry: Registry, limit: int) -> None:
        self.lru: OrderedDict[Statement, ServerStatement] = OrderedDict()
        self.registry = registry
        self.limit = limit

    def __len__(self) -> int:
        return len(self.lru)

    def get(self, stmt: Statement) -> ServerStatement | None:
        entry = self.lru.get(stmt)
        if entry is not None:
            self.lru.move_to_end(stmt)
        return entry

    def add(self, stmt: Statement, stmt_id: int) -> list[int]:
        """The server prepared `stmt` as `stmt_id`; returns the server ids to close (the least
        recently used beyond the limit, or `stmt_id` itself if `stmt` was there already)."""
        if stmt in self.lru:
            self.lru.move_to_end(stmt)
            return [stmt_id]
        self.lru[stmt] = ServerStatement(stmt_id)
        self.registry.placed(stmt)
        evicted = []
        while len(self.lru) > self.limit:
            old, entry = self.lru.popitem(last=False)
            self.registry.removed(old)
            evicted.append(entry.id)
        return evicted

    def drop(self, stmt: Statement) -> int | None:
        """Forget `stmt` here; returns its server id (to close) if it was prepared."""
        entry = self.lru.pop(stmt, None)
        if entry is None:
            return None
        self.registry.removed(stmt)
        return entry.id

    def clear(self) -> None:
        """The server's statements are gone (connection closed or reset)."""
        for stmt in self.lru:
            self.registry.removed(stmt)
        self.lru.clear()


class ClientStatement:
    """A statement as one client has it."""

    __slots__ = ("stmt", "types", "long_data", "long_size", "cursor")

    def __init__(self, stmt: Statement) -> None:
        self.stmt = stmt
        self.types: bytes | None = None  # the parameter types the client last sent
        self.long_data: list[bytes] = []  # COM_STMT_SEND_LONG_DATA payloads since the execute
        self.long_size = 0  # their size; -1 once over MAX_LONG_DATA (the execute then fails)
        self.cursor = False  # a cursor is open on the client's server

    def add_long_data(self, payload: bytes) -> None:
        if self.long_size < 0:
            return
        self.long_size += len(payload)
        if self.long_size > MAX_LONG_DATA:
            self.long_data = []
            self.long_size = -1
            return
        self.long_data.append(payload)

    def reset_long_data(self) -> None:
        self.long_data = []
        self.long_size = 0


class ClientStatements:
    """One client's statements by the ids poolproxy gave it."""

    __slots__ = ("by_id", "registry", "last", "_next")

    def __init__(self, registry: Registry) -> None:
        self.by_id: dict[int, ClientStatement] = {}
        self.registry = registry
        self.last = 0  # the id given last (MariaDB's LAST_PREPARED refers to it)
        self._next = 0

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, stmt_id: int) -> ClientStatement | None:
        return self.by_id.get(self.last if stmt_id == LAST_PREPARED else stmt_id)

    def add(self, stmt: Statement) -> int:
        self._next += 1
        if self._next >= LAST_PREPARED:
            self._next = 1
        while self._next in self.by_id:
            self._next += 1
        self.by_id[self._next] = ClientStatement(stmt)
        self.registry.hold(stmt)
        self.last = self._next
        return self._next

    def close(self, stmt_id: int) -> ClientStatement | None:
        entry = self.by_id.pop(self.last if stmt_id == LAST_PREPARED else stmt_id, None)
        if entry is not None:
            self.registry.release(entry.stmt)
        return entry

    def clear(self) -> None:
        for entry in self.by_id.values():
            self.registry.release(entry.stmt)
        self.by_id.clear()


# --------------------------------------------------------------------------------------------
# Packets
# --------------------------------------------------------------------------------------------
def statement_id(payload: bytes) -> int:
    """The statement id of a COM_STMT_* command (or of a COM_STMT_PREPARE_OK)."""
    if len(payload) < 5:
        raise ProtocolError("statement command too short")
    return payload[1] | payload[2] << 8 | payload[3] << 16 | payload[4] << 24


def with_id(payload: bytes, stmt_id: int) -> bytes:
    """`payload` (a COM_STMT_* command or a PREPARE_OK) with its statement id replaced."""
    return payload[:1] + stmt_id.to_bytes(4, "little") + payload[5:]


def split_packets(data: bytes) -> list[bytes]:
    """The payloads of whole packets `data` (a captured response)."""
    return [payload for _seq, payload in PacketReader().feed(data)]


def prepare_response(stmt: Statement, stmt_id: int, status: int) -> bytes:
    """The COM_STMT_PREPARE response for `stmt` as the client's statement `stmt_id`, from the
    one the server sent; EOF packets carry the client's current `status` flags."""
    out = []
    seq = 1
    for i, payload in enumerate(stmt.response):
        if i == 0:
            payload = with_id(payload, stmt_id)
        elif payload[:1] == b"\xfe" and len(payload) == 5:  # EOF: warnings, status
            payload = payload[:3] + status.to_bytes(2, "little")
        out.append(encode_packet(seq & 0xFF, payload))
        seq += 1
    return b"".join(out)


def execute_types(payload: bytes, params: int) -> tuple[int, bytes | None]:
    """COM_STMT_EXECUTE of a statement with `params` parameters: (offset of its
    new_params_bound_flag, the types it sends or None); offset -1 when it has no parameters."""
    if params <= 0:
        return -1, None
    flag = EXECUTE_HEAD + (params + 7) // 8
    if len(payload) <= flag:
        raise ProtocolError("COM_STMT_EXECUTE too short for its parameters")
    if payload[flag] != 1:
        return flag, None
    end = flag + 1 + 2 * params
    if len(payload) < end:
        raise ProtocolError("COM_STMT_EXECUTE too short for its parameter types")
    return flag, payload[flag + 1:end]


def supply_types(payload: bytes, flag: int, types: bytes) -> bytes:
    """COM_STMT_EXECUTE `payload` (new_params_bound_flag=0 at `flag`) sending `types` after all,
    for a server that has not received them."""
    return payload[:flag] + b"\x01" + types + payload[flag + 1:]


def close_packet(server_id: int) -> bytes:
    """COM_STMT_CLOSE of a server's statement (it has no reply)."""
    return encode_packet(0, bytes((COM_STMT_CLOSE,)) + server_id.to_bytes(4, "little"))


def err_reply(errno: int, sqlstate: str, message: str, seq: int = 1) -> bytes:
    """An ERR packet answering a command (whole, header included)."""
    return encode_packet(seq, build_err(errno, sqlstate, message))


def unknown_statement(stmt_id: int, where: str) -> bytes:
    """MySQL's own error for an id the client never got (or closed)."""
    return err_reply(ER_UNKNOWN_STMT_HANDLER, "HY000",
                     f"Unknown prepared statement handler ({stmt_id}) given to {where}")
