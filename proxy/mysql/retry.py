"""At-most-once for MySQL/MariaDB: what the commands in flight to a lost server could have done.

`command_effects` turns the commands sent to the server and not yet answered into `Effect`s
for `effects.may_have_committed`. MySQL commits implicitly on DDL, LOCK TABLES, a new BEGIN
and more, so inside a block only plain DML counts as undone by a rollback; anything else is
durable. Writes to non-transactional tables (MyISAM) are never undone, whatever the block: the
rule assumes transactional tables (InnoDB, the default), and the client's error says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..core.effects import Effect, is_literal_select, leading_words, split_statements
from . import codec

#: Commands that change no data: pings, schema changes, preparing and closing statements.
_NO_EFFECT_COMMANDS = frozenset((
    codec.COM_PING, codec.COM_INIT_DB, codec.COM_STMT_PREPARE, codec.COM_STMT_CLOSE,
    codec.COM_STMT_RESET, codec.COM_STMT_SEND_LONG_DATA, codec.COM_SET_OPTION,
    codec.COM_FIELD_LIST, codec.COM_STATISTICS, codec.COM_QUIT, codec.COM_SLEEP,
))
_DML = frozenset((b"select", b"insert", b"update", b"delete", b"replace", b"with", b"values",
                  b"table", b"do"))
_AUTOCOMMIT = re.compile(rb"(?:@@(?:session\.|local\.)?|(?:session|local)\s+)?autocommit\s*:?=\s*(\w+)")
_ON = frozenset((b"1", b"on", b"true"))
_QUERY = bytes((codec.COM_QUERY,))


def _set_effect(stmt: bytes) -> Effect:
    if b"global" in stmt or b"persist" in stmt:
        return Effect.DURABLE
    m = _AUTOCOMMIT.search(stmt)
    if m:
        # autocommit=1 commits an open transaction; autocommit=0 opens one (without a commit).
        return Effect.COMMIT if m.group(1) in _ON else Effect.BEGIN
    return Effect.WRITE if b"(" in stmt else Effect.NONE


def statement_effect(stmt: bytes) -> Effect:
    """The effect of one statement from `effects.split_statements(..., mysql=True)`."""
    words = leading_words(stmt, 2)
    if not words:
        return Effect.NONE
    first = words[0]
    second = words[1] if len(words) > 1 else b""
    if first == b"begin":
        # BEGIN NOT ATOMIC ... END is MariaDB's anonymous compound statement, not a block.
        return Effect.DURABLE if second == b"not" else Effect.BEGIN_COMMITS
    if first == b"start" and second == b"transaction":
        return Effect.BEGIN_COMMITS
    if first == b"commit":
        return Effect.COMMIT
    if first == b"rollback":
        return Effect.NONE if second == b"to" else Effect.ROLLBACK
    if first in (b"savepoint", b"release", b"show", b"use", b"help"):
        return Effect.NONE
    if first == b"set":
        return Effect.NONE if second == b"transaction" else _set_effect(stmt)
    if first in _DML:
        if b"outfile" in stmt or b"dumpfile" in stmt:
            return Effect.DURABLE  # SELECT ... INTO OUTFILE writes a file
        return Effect.NONE if is_literal_select(stmt) else Effect.WRITE
    return Effect.DURABLE  # DDL, LOCK/UNLOCK TABLES, CALL, LOAD DATA, XA, ...


def autocommit_set(packets: Iterable[bytes]) -> bool | None:
    """The autocommit value the last `SET autocommit` among `commands` asks for, if any: after
    a lost server, the client's session continues as it expects (a lost `SET autocommit=1`
    must not leave later writes uncommitted)."""
    value: bool | None = None
    for packet in packets:
        if packet[4:5] == _QUERY and b"autocommit" in packet[5:].lower():
            for stmt in split_statements(packet[5:], mysql=True):
                if stmt.startswith(b"set"):
                    m = _AUTOCOMMIT.search(stmt)
                    if m:
                        value = m.group(1) in _ON
    return value


def command_effects(packets: Iterable[bytes]) -> list[Effect]:
    """The effects of whole command packets (header included), in order."""
    out: list[Effect] = []
    for packet in packets:
        cmd = packet[4] if len(packet) > 4 else codec.COM_SLEEP
        if cmd == codec.COM_QUERY:
            out.extend(statement_effect(s) for s in split_statements(packet[5:], mysql=True))
        elif cmd == codec.COM_RESET_CONNECTION:
            out.append(Effect.ROLLBACK)
        elif cmd not in _NO_EFFECT_COMMANDS:
            out.append(Effect.DURABLE)  # COM_STMT_EXECUTE of an unknown statement, ...
    return out
