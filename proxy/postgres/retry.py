"""At-most-once for PostgreSQL: what the requests in flight to a lost server could have done.

`request_effects` reads the client's messages that were sent to the server and not yet answered
(simple Query texts, Parse/Bind/Execute chains) and returns their `Effect`s in order, for
`effects.may_have_committed`. Only called when a server connection is lost, never per message.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from ..core.effects import Effect, is_literal_select, leading_words, split_statements

_I32 = struct.Struct("!I")

#: Statements whose effect ends with the session (or that only prepare, describe or read
#: session state): replaying them, or losing them, changes no data.
_SESSION_ONLY = frozenset((b"set", b"reset", b"show", b"discard", b"deallocate", b"prepare",
                           b"listen", b"unlisten", b"savepoint", b"release", b"close"))


def statement_effect(stmt: bytes) -> Effect:
    """The effect of one statement from `effects.split_statements`."""
    words = leading_words(stmt, 2)
    if not words:
        return Effect.NONE
    first = words[0]
    second = words[1] if len(words) > 1 else b""
    if first == b"begin" or (first == b"start" and second == b"transaction"):
        return Effect.BEGIN
    if first in (b"commit", b"end"):
        return Effect.DURABLE if second == b"prepared" else Effect.COMMIT
    if first in (b"rollback", b"abort"):
        if second == b"prepared":
            return Effect.DURABLE
        return Effect.NONE if second == b"to" else Effect.ROLLBACK
    if first == b"prepare" and second == b"transaction":
        return Effect.COMMIT  # the block survives as a prepared transaction
    if first in _SESSION_ONLY or is_literal_select(stmt):
        return Effect.NONE
    return Effect.WRITE


def sql_effects(sql: bytes) -> list[Effect]:
    return [statement_effect(stmt) for stmt in split_statements(sql)]


def _cstr(body: bytes, pos: int) -> tuple[bytes, int]:
    end = body.find(b"\x00", pos)
    if end < 0:
        return body[pos:], len(body)
    return body[pos:end], end + 1


def request_effects(chunks: Iterable[bytes],
                    known: Callable[[bytes], bytes | None] | None = None) -> list[Effect]:
    """The effects of the whole messages in `chunks` (client -> server bytes), in order. An
    Execute of a statement prepared before these chunks is `DURABLE` unless `known` gives its
    query text (poolproxy's own prepared statements)."""
    data = b"".join(chunks)
    out: list[Effect] = []
    statements: dict[bytes, Effect] = {}
    portals: dict[bytes, Effect] = {}
    pos = 0
    n = len(data)
    while n - pos >= 5:
        t = data[pos]
        end = pos + 1 + _I32.unpack_from(data, pos + 1)[0]
        if end > n:
            break  # an incomplete message never reached the server whole: it did nothing
        body = data[pos + 5:end]
        pos = end
        if t == 0x51:  # Query
            out.extend(sql_effects(_cstr(body, 0)[0]))
        elif t == 0x50:  # Parse
            name, at = _cstr(body, 0)
            statements[name] = _strongest(sql_effects(_cstr(body, at)[0]))
        elif t == 0x42:  # Bind
            portal, at = _cstr(body, 0)
            name = _cstr(body, at)[0]
            effect = statements.get(name)
            if effect is None:
                sql = known(name) if known is not None and name else None
                effect = Effect.DURABLE if sql is None else _strongest(sql_effects(sql))
            portals[portal] = effect
        elif t == 0x45:  # Execute
            out.append(portals.get(_cstr(body, 0)[0], Effect.DURABLE))
        elif t == 0x46:  # FunctionCall
            out.append(Effect.DURABLE)
        # Sync, Flush, Describe, Close, CopyData/Done/Fail, Terminate: no effect of their own
        # (COPY's effect is the COPY statement's).
    return out


#: For a Parse holding several statements (PostgreSQL refuses that anyway): the strongest.
_RANK = {Effect.NONE: 0, Effect.ROLLBACK: 1, Effect.BEGIN: 2, Effect.BEGIN_COMMITS: 3,
         Effect.WRITE: 4, Effect.COMMIT: 5, Effect.DURABLE: 6}


def _strongest(effects: list[Effect]) -> Effect:
    return max(effects, key=_RANK.__getitem__) if effects else Effect.NONE
