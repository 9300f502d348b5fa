"""At-most-once: could a request that lost its server have made a lasting change?

When a server connection dies before its answer arrives, poolproxy may replay the request on
another server only if it cannot have taken effect; otherwise the client must hear "outcome
unknown". No reply byte is no evidence: an autocommit statement commits before it answers.
The protocol packages turn their requests into a sequence of `Effect`s (statement by statement,
from SQL text and protocol messages); `may_have_committed` runs the transaction-block state
machine over them. Unknown statements count as writes: when in doubt, the answer is "maybe".
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable


class Effect(enum.Enum):
    """What one statement or protocol message can do to data that outlives the session."""

    NONE = "none"  # session-only or a no-op: dies with the session (SET, SHOW, Sync, ping)
    BEGIN = "begin"  # opens an explicit transaction block
    BEGIN_COMMITS = "begin_commits"  # opens a block, committing an open one first (MySQL)
    ROLLBACK = "rollback"  # ends the block, undoing it
    COMMIT = "commit"  # makes the open block durable (no-op outside one)
    WRITE = "write"  # may change data: durable at once unless inside an open block
    DURABLE = "durable"  # durable even inside a block (MySQL DDL, unknown prepared statements)


def may_have_committed(effects: Iterable[Effect], in_block: bool) -> bool:
    """True if running `effects` in order, starting inside an explicit transaction block or not,
    could have made a change durable before the server died (the server rolls an open block
    back when its session ends)."""
    for effect in effects:
        if effect is Effect.NONE:
            continue
        if effect is Effect.BEGIN:
            in_block = True
        elif effect is Effect.BEGIN_COMMITS:
            if in_block:
                return True
            in_block = True
        elif effect is Effect.ROLLBACK:
            in_block = False
        elif effect is Effect.COMMIT:
            if in_block:
                return True
        elif effect is Effect.WRITE:
            if not in_block:
                return True
        else:
            return True
    return False


# --------------------------------------------------------------------------- SQL lexing

#: PostgreSQL: standard strings ('' escapes), E'' strings (backslash escapes), quoted
#: identifiers, dollar quotes, line and (nested, approximated as flat) block comments.
_PG_LEXEMES = re.compile(
    rb"[eE]'(?:[^'\\]|\\.|'')*'?"
    rb"|'(?:[^']|'')*'?"
    rb'|"(?:[^"]|"")*"?'
    rb"|(\$[A-Za-z_]?[A-Za-z0-9_]*\$).*?(?:\1|$)"
    rb"|/\*.*?(?:\*/|$)|--[^\n]*",
    re.S,
)
#: MySQL: backslash escapes in strings, backticks, `#` and `-- ` comments; /*! ... */ is code.
_MY_LEXEMES = re.compile(
    rb"'(?:[^'\\]|\\.|'')*'?"
    rb'|"(?:[^"\\]|\\.|"")*"?'
    rb"|`(?:[^`]|``)*`?"
    rb"|/\*(?!M?!).*?(?:\*/|$)|--(?:\s[^\n]*|$)|#[^\n]*",
    re.S,
)
_MY_EXEC_COMMENT = re.compile(rb"/\*M?!\d*(.*?)(?:\*/|$)", re.S)


def _masker(m: re.Match[bytes]) -> bytes:
    tok = m.group(0)
    if tok[:1] in (b"/", b"-", b"#"):
        return b" "
    return b"''"  # a literal or quoted identifier: its content never matters here


def split_statements(sql: bytes, mysql: bool = False) -> list[bytes]:
    """The statements of a query string, lower-cased, with literals masked to `''`, quoted
    identifiers likewise, and comments removed (MySQL executable comments kept as code)."""
    if mysql:
        if b"/*" in sql:
            sql = _MY_EXEC_COMMENT.sub(lambda m: b" " + m.group(1) + b" ", sql)
        masked = _MY_LEXEMES.sub(_masker, sql)
    else:
        masked = _PG_LEXEMES.sub(_masker, sql)
    return [s.strip().lower() for s in masked.split(b";") if s.strip()]


_WORDS = re.compile(rb"[a-z_][a-z0-9_$]*")


def leading_words(stmt: bytes, count: int = 4) -> list[bytes]:
    """The first `count` words of a split statement (parentheses before them skipped)."""
    out = []
    for m in _WORDS.finditer(stmt.lstrip(b"( \t\r\n")):
        out.append(m.group(0))
        if len(out) >= count:
            break
    return out


_LITERAL_SELECT = re.compile(
    rb"select\s+(?:(?:-?\d+(?:\.\d+)?|''|true|false|null)(?:\s+(?:as\s+)?[a-z_][a-z0-9_]*)?"
    rb"\s*(?:,\s*|$))+")


def is_literal_select(stmt: bytes) -> bool:
    """`SELECT 1`, `SELECT 'x' AS a, 2`: a SELECT of constants only, which cannot call
    anything (no function, operator or table) and so cannot have a side effect."""
    return _LITERAL_SELECT.fullmatch(stmt) is not None
