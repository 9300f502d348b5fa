"""Protocol-level prepared statements in transaction mode: who has prepared what, where.

A client's named statement maps to a `Statement` of its pool's `Registry`, keyed by what the
client's Parse said (query text and parameter type OIDs): two clients preparing the same SQL
share one `Statement`, and one server-side name (`poolproxy_<n>`) whatever they called it.
Each server connection keeps the statements it has prepared in a `ServerStatements` LRU of
at most `max_prepared_statements`; a statement missing there is prepared again (its Parse
injected) the next time a client needs it on that server. Sans-IO: the client session
(client.py) decides what to send and which replies to forward, swallow or synthesize.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from ..core.requests import (
    FORWARD,
    PLAIN_BATCH,
    REPLACE,
    RESULT,
    SWALLOW,
    SYNTHESIZE,
    Action,
    Batch,
    Done,
    RequestQueue,
)
from ..core.statements import StatementRegistry, registry_of

#: Server-side statement names start with this; clients' own names never reach a server.
NAME_PREFIX = b"poolproxy_"
#: A client's statement names are kept per client; past this many, Parse fails with 54000
#: (program_limit_exceeded) instead of growing poolproxy's memory without bound.
MAX_CLIENT_STATEMENTS = 10000
#: Longer statement names are refused with 42622 (name_too_long): PostgreSQL truncates SQL
#: identifiers at 63 bytes, and a protocol-level name has no reason to be longer.
MAX_NAME = 1024


class Statement:
    """One distinct prepared statement of a pool (query text + parameter types)."""

    __slots__ = ("key", "name", "parse_body", "refs", "__weakref__")

    def __init__(self, key: bytes, name: bytes) -> None:
        self.key = key  # Parse body after the statement name: query\\0 + parameter types
        self.name = name  # the server-side name
        self.parse_body = name + b"\x00" + key  # a Parse of it, ready to send
        self.refs = 0  # client names and servers holding it; unused when 0

    def __repr__(self) -> str:
        return f"<Statement {self.name.decode()} refs={self.refs}>"


class Registry(StatementRegistry):
    """The statements of one pool, by key and by server-side name."""

    __slots__ = ("_by_name", "_next")

    def __init__(self, stats: Any) -> None:
        super().__init__(stats)
        self._by_name: dict[bytes, Statement] = {}
        self._next = 0

    def get(self, key: bytes) -> Statement:
        stmt: Statement | None = self._by_key.get(key)
        if stmt is None:
            self._next += 1
            stmt = Statement(key, NAME_PREFIX + str(self._next).encode())
            self._by_key[key] = self._by_name[stmt.name] = stmt
        return stmt

    def query_of(self, name: bytes) -> bytes | None:
        """The query text of the server-side statement `name` (None if unknown)."""
        stmt = self._by_name.get(name)
        return None if stmt is None else stmt.key.split(b"\x00", 1)[0]

    def _forget(self, stmt: Statement) -> None:
        del self._by_name[stmt.name]


def statement_registry(pool: Any) -> Registry:
    """The pool's registry (made on first use)."""
    return registry_of(pool, Registry)


class ServerStatements:
    """The statements prepared on one server connection, least recently used first."""

    __slots__ = ("lru", "registry", "stale")

    def __init__(self, registry: Registry) -> None:
        #: The statements, least recently used first (truthy while there are any).
        self.lru: OrderedDict[Statement, None] = OrderedDict()
        self.registry = registry
        #: Prepared here but refused by the server since (its plan went stale after DDL): to be
        #: closed before the server's next request.
        self.stale: list[Statement] = []

    def __len__(self) -> int:
        return len(self.lru)

    def __contains__(self, stmt: Statement) -> bool:
        return stmt in self.lru

    def touch(self, stmt: Statement) -> bool:
        """Mark `stmt` used; False if it is not prepared on this server."""
        if stmt in self.lru:
            self.lru.move_to_end(stmt)
            return True
        return False

    def add(self, stmt: Statement, limit: int) -> list[Statement]:
        """`stmt` is being prepared here; returns the least recently used statements to close
        so that at most `limit` stay (never `stmt` itself)."""
        if stmt not in self.lru:
            self.registry.placed(stmt)
        self.lru[stmt] = None
        self.lru.move_to_end(stmt)
        evicted: list[Statement] = []
        while len(self.lru) > max(limit, 1):
            old, _ = self.lru.popitem(last=False)
            self.registry.removed(old)
            evicted.append(old)
        return evicted

    def restore(self, stmt: Statement) -> None:
        """`stmt` is prepared here after all (its evicting Close was skipped)."""
        if stmt not in self.lru:
            self.registry.placed(stmt)
            self.lru[stmt] = None
            self.lru.move_to_end(stmt, last=False)

    def refused(self, stmts: list[Statement]) -> None:
        """The server refused the plan of one of `stmts` (0A000 after DDL): close them before
        its next request, so that the next use prepares them again."""
        for stmt in stmts:
            if stmt in self.lru and stmt not in self.stale:
                self.stale.append(stmt)

    def unsure(self) -> None:
        """Something deallocated one of these statements behind poolproxy's back (an SQL
        DEALLOCATE of a server-side name): close them all before the next request."""
        self.refused(list(self.lru))

    def forget(self, stmt: Statement) -> None:
        """`stmt` is no longer prepared here (closed, failed, or its plan went stale)."""
        if stmt in self.lru:
            del self.lru[stmt]
            self.registry.removed(stmt)

    def clear(self) -> None:
        """The server's statements are all gone (DISCARD ALL, DEALLOCATE ALL, connection end)."""
        for stmt in self.lru:
            self.registry.removed(stmt)
        self.lru.clear()
        self.stale.clear()


class ClientStatements:
    """A client's statement names and what they stand for."""

    __slots__ = ("_names", "registry")

    def __init__(self, registry: Registry) -> None:
        self._names: dict[bytes, Statement] = {}
        self.registry = registry

    def __len__(self) -> int:
        return len(self._names)

    def get(self, name: bytes) -> Statement | None:
        return self._names.get(name)

    def add(self, name: bytes, stmt: Statement) -> None:
        old = self._names.get(name)
        self.registry.hold(stmt)
        self._names[name] = stmt
        if old is not None:
            self.registry.release(old)

    def remove(self, name: bytes) -> None:
        stmt = self._names.pop(name, None)
        if stmt is not None:
            self.registry.release(stmt)

    def name_of(self, server_name: bytes) -> bytes | None:
        """The client's (last given) name for the statement the server calls `server_name`."""
        found = None
        for name, stmt in self._names.items():
            if stmt.name == server_name:
                found = name
        return found

    def items(self) -> list[tuple[bytes, Statement]]:
        return list(self._names.items())

    def clear(self) -> None:
        for stmt in self._names.values():
            self.registry.release(stmt)
        self._names.clear()


# --------------------------------------------------------------------------- framing

# Frontend message types (ints, as indexing bytes gives).
_P, _B, _D, _C, _E, _S, _H, _Q, _F, _X = b"PBDCESHQFX"
_SYNC = b"S\x00\x00\x00\x04"
_COPY_DATA, _COPY_DONE, _COPY_FAIL = b"dcf"
#: Messages that may name a statement: held back until complete (poolproxy may rename it).
HELD = frozenset((_P, _B, _D, _C))
#: A held message may be this big at most (a Parse of a huge query, a Bind of huge values);
#: PostgreSQL's own limit is 1 GiB.
MAX_HELD = 64 << 20
#: Frame flags.
PARTIAL = 1  # a piece of a message whose end has not arrived (streamed through)

Frame = tuple[int, bytes, int]  # (message type, bytes, flags); type -1: a continuation piece


def _names_nothing(t: int, data: bytes, pos: int, n: int) -> bool:
    """Whether the incomplete message at `pos` visibly names no statement (an unnamed Parse or a
    Bind of the unnamed statement): it may stream through instead of being held."""
    body = pos + 5
    if t == _P:
        return body < n and data[body] == 0
    if t == _B:
        end = data.find(b"\x00", body, n)
        return 0 <= end < n - 1 and data[end + 1] == 0
    return False


class Framer:
    """Cuts a client's byte stream into whole messages. Messages that name a statement are held
    back until complete; others that do not fit a chunk pass through in pieces."""

    __slots__ = ("_held", "_held_len", "_need", "_rest")

    def __init__(self) -> None:
        self._held: list[bytes] = []  # pieces of a message held back until complete
        self._held_len = 0
        self._need = 0  # its whole length (-1: its header is incomplete)
        self._rest = 0  # bytes of a streamed message still to pass through

    @property
    def in_message(self) -> bool:
        return bool(self._held or self._rest)

    def feed(self, data: bytes) -> list[Frame]:
        """The frames in `data`; raises ValueError on a malformed or oversized message."""
        frames: list[Frame] = []
        if self._held:
            if self._need < 0:  # a header split across chunks: a few bytes
                data = b"".join(self._held) + data
            else:
                missing = self._need - self._held_len
                if len(data) < missing:
                    self._held.append(data)
                    self._held_len += len(data)
                    return frames
                msg = b"".join(self._held) + data[:missing]
                frames.append((msg[0], msg, 0))
                data = data[missing:]
            self._held = []
            self._held_len = 0
        pos = 0
        n = len(data)
        if self._rest:
            take = min(self._rest, n)
            frames.append((-1, data[:take], PARTIAL if take < self._rest else 0))
            self._rest -= take
            pos = take
        while pos < n:
            if n - pos < 5:
                self._hold(data[pos:], -1)
                break
            t = data[pos]
            length = int.from_bytes(data[pos + 1:pos + 5], "big")
            if length < 4 or length > 0x3FFFFFFF:
                raise ValueError(f"invalid message length {length} for type {chr(t)!r}")
            end = pos + 1 + length
            if end <= n:
                frames.append((t, data[pos:end] if pos or end < n else data, 0))
                pos = end
                continue
            if t in HELD and not _names_nothing(t, data, pos, n):
                if length > MAX_HELD:
                    raise ValueError(f"{chr(t)!r} message of {length} bytes is over poolproxy's "
                                     f"limit of {MAX_HELD >> 20} MiB for statement messages")
                self._hold(data[pos:], length + 1)
            else:
                frames.append((t, data[pos:], PARTIAL))
                self._rest = end - n
            break
        return frames

    def _hold(self, piece: bytes, need: int) -> None:
        self._held = [piece]
        self._held_len = len(piece)
        self._need = need


# --------------------------------------------------------------------------- routing


def _cstr(body: bytes, pos: int) -> tuple[bytes, int]:
    end = body.find(b"\x00", pos)
    if end < 0:
        raise ValueError("missing string terminator")
    return body[pos:end], end + 1


def _msg(t: bytes, body: bytes) -> bytes:
    return t + (len(body) + 4).to_bytes(4, "big") + body


PARSE_COMPLETE = _msg(b"1", b"")
CLOSE_COMPLETE = _msg(b"3", b"")
#: A statement no server ever has.
MISSING = NAME_PREFIX + b"missing"
#: Requests that make the server fail where the client's request would have failed, so that
#: the server itself skips the rest of the batch (and rolls an implicit transaction back) as it
#: would for the client's. A Parse that fails in analysis: in a failed transaction block the
#: server answers 25P02 first, as it would to the client's Parse. A Bind of a statement no
#: server has: 26000, whatever the transaction state, as for the client's Bind or Describe.
_FAILING_PARSE = _msg(b"P", MISSING + b"\x00SELECT poolproxy_no_such_column\x00\x00\x00")
_FAILING_BIND = _msg(b"B", b"\x00" + MISSING + b"\x00" + bytes(6))


#: SQL DEALLOCATE of one name or ALL, alone in a Query (anything fancier goes to the server).
_DEALLOCATE = re.compile(rb'\s*deallocate\s+(?:prepare\s+)?("(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)\s*;?\s*$',
                         re.IGNORECASE)


def error_response(sqlstate: str, message: str) -> bytes:
    fields = (b"SERROR\x00VERROR\x00C" + sqlstate.encode() + b"\x00M"
              + message.encode("utf-8", "replace") + b"\x00\x00")
    return _msg(b"E", fields)


_ABORTED = error_response("25P02", "current transaction is aborted, commands ignored until end "
                                   "of transaction block")


#: A Router's queue between route() calls (never written to): idle clients keep no queue.
_NO_QUEUE = RequestQueue()


class Router:
    """Rewrites one client's messages for the server it holds, keeping the client's statement
    names apart from the server's: renames, prepares missing statements first, answers Parse
    and Close from what it knows, and records in the server's request queue which replies to
    forward, swallow, synthesize or replace. A batch where nothing but renaming happens stays a
    plain batch (no per-message steps), so the server forwards its replies at full speed.
    Sans-IO: `route()` returns the bytes to send."""

    __slots__ = ("client", "registry", "stats", "_q", "_kinds", "_tracked", "_stmts",
                 "_failed_block", "_copy")

    def __init__(self, client: ClientStatements, registry: Registry) -> None:
        self.client = client
        self.registry = registry
        self.stats = registry.stats
        # State of one route() call: the queue, the reply-bearing messages of the current
        # batch not yet tracked as steps, whether the batch is tracked, the statements it
        # binds, whether the server is known to be in a failed transaction block, and whether
        # it is in COPY FROM STDIN (it ignores Sync until CopyDone or CopyFail).
        self._q: RequestQueue = _NO_QUEUE  # route() sets the server's
        self._kinds: list[int] = []
        self._tracked = False
        self._stmts: list[Statement] | None = None
        self._failed_block = False
        self._copy = False

    def bind_execute_sync(self, data: bytes, server: ServerStatements,
                          requests: RequestQueue) -> bytes | None:
        """The hot path of a prepared statement's execution: `data` is exactly Bind (of a
        statement this client named, already prepared on the server), Describe of its portal
        (libpq's PQexecPrepared sends one) or not, Execute and Sync, and
        nothing is open in the queue. Returns the bytes for the server (the Bind renamed), or
        None when `data` is anything else, for `route` to handle."""
        n = len(data)
        blen = int.from_bytes(data[1:5], "big")
        bind_end = pos = 1 + blen
        if pos + 10 > n or data[n - 5:] != _SYNC or requests.open is not None or server.stale:
            return None
        if data[pos] == _D and data[pos + 5] == 0x50:  # Describe of the portal (libpq sends it)
            pos += 1 + int.from_bytes(data[pos + 1:pos + 5], "big")
            if pos + 10 > n:
                return None
        if data[pos] != _E or pos + 1 + int.from_bytes(data[pos + 1:pos + 5], "big") != n - 5:
            return None
        at = data.find(b"\x00", 5, bind_end) + 1
        end = data.find(b"\x00", at, bind_end)
        if at <= 0 or end <= at:
            return None  # malformed, or the unnamed statement
        stmt = self.client.get(data[at:end])
        if stmt is None or not server.touch(stmt):
            return None
        self.stats.binds += 1
        batch = Batch(FORWARD, True)
        batch.extra = [stmt]
        requests.append(batch)
        length = blen - (end - at) + len(stmt.name)
        return b"B" + length.to_bytes(4, "big") + data[5:at] + stmt.name + data[end:]

    def route(self, frames: list[Frame], server: ServerStatements, requests: RequestQueue,
              limit: int, failed_block: bool = False,
              copy_mode: bool = False) -> tuple[bytes, list[bytes]]:
        """(bytes for the server, replies due to the client at once) for `frames`.
        `failed_block`: the server is idle in a failed transaction block (nothing owed);
        `copy_mode`: it is in COPY FROM STDIN."""
        out: list[bytes] = []
        now: list[bytes] = []
        self._q = requests
        batch = requests.open
        self._tracked = batch is not None and batch.steps is not None
        self._stmts = batch.extra if batch is not None else None
        self._kinds = []
        self._failed_block = failed_block
        self._copy = copy_mode
        while server.stale:  # closed before anything else reaches the server
            stmt = server.stale.pop()
            server.forget(stmt)
            out.append(_msg(b"C", b"S" + stmt.name + b"\x00"))
            self._track()
            requests.add_step(_C, SWALLOW)
        kinds = self._kinds
        for t, data, flags in frames:
            if flags or t < 0:
                if t >= 0:
                    self._plain(t)
                out.append(data)
            elif t == _B:
                self._bind(data, server, limit, out)
            elif t == _E:  # the usual case first: no call
                out.append(data)
                if self._tracked:
                    requests.add_forward(t)
                else:
                    kinds.append(t)
            elif t == _S:
                out.append(data)
                if not self._copy:  # a Sync during COPY is ignored
                    self._sync()
                    kinds = self._kinds
            elif t == _P:
                self._parse(data, server, limit, out, now)
            elif t == _D:
                self._describe(data, server, limit, out)
            elif t == _C:
                self._close(data, out, now)
            elif t == _Q and self.client._names and b"LLOCATE" in data.upper():
                self._query(data, out)
            else:
                self._plain(t)
                out.append(data)
            kinds = self._kinds
        if self._kinds or (self._stmts and not self._tracked):
            self._track()  # the batch stays open: later messages may need steps
        return b"".join(out), now

    # ------------------------------------------------------------------ batches
    def _plain(self, t: int) -> None:
        """A message whose reply, if any, is forwarded as it is."""
        if t == _S or t == _Q or t == _F:
            if not (self._copy and t == _S):  # a Sync during COPY is ignored
                self._sync()
        elif t == _COPY_DONE or t == _COPY_FAIL:
            self._copy = False
        elif t == _X or t == _H or t == _COPY_DATA:
            pass  # no reply of their own
        elif self._tracked:
            self._q.add_forward(t)
        else:
            self._kinds.append(t)

    def _sync(self) -> None:
        requests = self._q
        stmts = self._stmts
        if self._tracked or requests.open is not None:
            batch = requests.sync()
            if stmts:
                batch.extra = stmts
        elif stmts:
            batch = Batch(FORWARD, True)
            batch.extra = stmts
            requests.append(batch)
        else:
            requests.append(PLAIN_BATCH)
        self._kinds = []
        self._tracked = False
        self._stmts = None
        self._failed_block = False  # what the server's state is after a sync point is unknown

    def _track(self) -> None:
        """From here on the batch's replies are handled message by message: the messages so
        far in it become forwarded steps."""
        if not self._tracked:
            batch = self._q.track(self._kinds)
            batch.extra = self._stmts
            self._kinds = []
            self._tracked = True

    def _bound(self, stmt: Statement) -> None:
        """`stmt` is bound in this batch (after DDL the server may refuse its plan: 0A000)."""
        if self._stmts is None:
            self._stmts = [stmt]
            if self._tracked:
                self._q[-1].extra = self._stmts
        else:
            self._stmts.append(stmt)

    # ------------------------------------------------------------------ one message each
    def _fail(self, out: list[bytes], failing: bytes, reply: bytes) -> None:
        """Make the server fail here (see `_FAILING_PARSE`) and give the client `reply` in
        place of the server's error (unless that is 25P02: the transaction had failed)."""
        self._track()
        out.append(failing)
        self._q.add_step(failing[0], REPLACE, reply)

    def _prepare_on(self, stmt: Statement, server: ServerStatements, limit: int,
                    out: list[bytes], action: Action, undo: Done | None = None) -> None:
        """Send a Parse of `stmt` (first the Closes of what it evicts)."""
        self._track()
        requests = self._q
        for old in server.add(stmt, limit):
            out.append(_msg(b"C", b"S" + old.name + b"\x00"))
            requests.add_step(_C, SWALLOW, b"", _readd(server, old))
        self.stats.server_parses += 1

        def done(ok: bool) -> None:
            if not ok:
                server.forget(stmt)
                if undo is not None:
                    undo(False)

        out.append(_msg(b"P", stmt.parse_body))
        requests.add_step(_P, action, b"", done)

    def _parse(self, data: bytes, server: ServerStatements, limit: int, out: list[bytes],
               now: list[bytes]) -> None:
        body = data[5:]
        name, at = _cstr(body, 0)
        if not name:
            self._plain(_P)
            out.append(data)
            return
        shown = name.decode("utf-8", "replace")
        client = self.client
        if len(name) > MAX_NAME:
            self._fail(out, _FAILING_PARSE, error_response(
                "42622", f"prepared statement name is too long ({len(name)} bytes; poolproxy "
                         f"takes up to {MAX_NAME})"))
            return
        if client.get(name) is not None:
            self._fail(out, _FAILING_PARSE, error_response(
                "42P05", f'prepared statement "{shown}" already exists'))
            return
        if len(client) >= MAX_CLIENT_STATEMENTS:
            self._fail(out, _FAILING_PARSE, error_response(
                "54000", f"too many prepared statements in this session (poolproxy keeps up to "
                         f"{MAX_CLIENT_STATEMENTS} per client; close the ones you no longer use)"))
            return
        stmt = self.registry.get(body[at:])
        client.add(name, stmt)
        self.stats.client_parses += 1

        def undo(ok: bool) -> None:  # a failed (or skipped) Parse records nothing
            if not ok and client.get(name) is stmt:
                client.remove(name)

        if self._failed_block:
            # A failed transaction block refuses any Parse (25P02): let the server say so.
            self._track()
            out.append(_FAILING_PARSE)
            self._q.add_step(_P, REPLACE, _ABORTED, undo)
        elif server.touch(stmt):
            self._track()
            now.extend(self._q.add_step(_P, SYNTHESIZE, PARSE_COMPLETE, undo))
        else:
            self._prepare_on(stmt, server, limit, out, FORWARD, undo)

    def _named(self, name: bytes, server: ServerStatements, limit: int,
               out: list[bytes]) -> Statement | None:
        """The client's statement `name`, prepared on this server; None (and a 26000 sent in
        its place) if the client has no such statement."""
        stmt = self.client._names.get(name)
        if stmt is None:
            self._fail(out, _FAILING_BIND, error_response(
                "26000", f'prepared statement "{name.decode("utf-8", "replace")}" does not exist'))
            return None
        if not server.touch(stmt):
            self._prepare_on(stmt, server, limit, out, SWALLOW)
        return stmt

    def _bind(self, data: bytes, server: ServerStatements, limit: int,
              out: list[bytes]) -> None:
        # Bind: portal name, statement name, then formats and values.
        at = data.find(b"\x00", 5) + 1
        end = data.find(b"\x00", at)
        if at <= 0 or end < 0:
            raise ValueError("malformed Bind message")
        if end == at:  # the unnamed statement
            self._plain(_B)
            out.append(data)
            return
        stmt = self._named(data[at:end], server, limit, out)
        if stmt is None:
            return
        self.stats.binds += 1
        self._bound(stmt)
        rest = data[end:]  # from the name's terminator on
        length = at - 1 + len(stmt.name) + len(rest)  # 4 + portal\0 + name + rest
        out.append(b"B" + length.to_bytes(4, "big") + data[5:at] + stmt.name + rest)
        self._plain(_B)

    def _describe(self, data: bytes, server: ServerStatements, limit: int,
                  out: list[bytes]) -> None:
        name, _ = _cstr(data, 6)
        if data[5] != 0x53 or not name:  # a portal, or the unnamed statement
            self._plain(_D)
            out.append(data)
            return
        stmt = self._named(name, server, limit, out)
        if stmt is None:
            return
        out.append(_msg(b"D", b"S" + stmt.name + b"\x00"))
        self._plain(_D)

    def _close(self, data: bytes, out: list[bytes], now: list[bytes]) -> None:
        name, _ = _cstr(data, 6)
        if data[5] != 0x53 or not name:
            self._plain(_C)
            out.append(data)
            return
        client = self.client
        stmt = client.get(name)
        client.remove(name)  # only this client's name: the statement may serve others

        def undo(ok: bool) -> None:  # skipped after an error: the name lives on
            if not ok and stmt is not None and client.get(name) is None:
                client.add(name, stmt)

        self._track()
        now.extend(self._q.add_step(_C, SYNTHESIZE, CLOSE_COMPLETE, undo))

    def _query(self, data: bytes, out: list[bytes]) -> None:
        """SQL `DEALLOCATE [PREPARE] name | ALL`, alone in a Query, acts on this client's names
        and never on a server's statements (other clients may use them): it is answered for the
        client, after a stand-in `SELECT` that gives the server the same chance to refuse it
        (in a failed transaction block). Any other DEALLOCATE goes to the server as it is."""
        m = _DEALLOCATE.match(data, 5, len(data) - 1)
        if m is None:
            self._plain(_Q)
            out.append(data)
            return
        word = m.group(1)
        if word[:1] == b'"':  # a quoted identifier is taken as it is
            name, every = word[1:-1].replace(b'""', b'"'), False
        else:  # an unquoted one is folded to lower case
            name = word.lower()
            every = name == b"all"
        client = self.client
        undo: Done
        if every:
            tag = b"DEALLOCATE ALL"
            names = client.items()
            client.clear()

            def undo(ok: bool) -> None:
                if not ok:
                    for n, stmt in names:
                        if client.get(n) is None:
                            client.add(n, stmt)
        elif client.get(name) is not None:
            tag = b"DEALLOCATE"
            stmt = client.get(name)
            client.remove(name)

            def undo(ok: bool) -> None:
                if not ok and stmt is not None and client.get(name) is None:
                    client.add(name, stmt)
        else:
            self._plain(_Q)
            out.append(data)
            return
        self._track()
        out.append(_msg(b"Q", b"SELECT\x00"))
        self._q.add_step(_Q, RESULT, _msg(b"C", tag + b"\x00"), undo)
        self._sync()


def _readd(server: ServerStatements, stmt: Statement) -> Done:
    """An evicting Close that the server skipped (after an error): the statement is still
    prepared there."""
    def done(ok: bool) -> None:
        if not ok:
            server.restore(stmt)
    return done
