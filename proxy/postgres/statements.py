"""Classifies SQL text for session state PostgreSQL does not report (the reasons to pin a client).

Transaction pooling hands a client a different server per transaction, so anything that outlives
the transaction on the server and is not announced by ParameterStatus would silently stay behind
(or go missing). We recognise those statements and pin the client to its server. The scan is
conservative: when in doubt we pin, because pinning costs pooling, while a miss leaks state.
"""

from __future__ import annotations

import enum
import re

# Cheap pre-filter: a statement that starts with one of these words, or a function call that
# takes a session-level lock or sets a setting. Most queries fail this search in ~1 µs.
_SUSPECT = re.compile(
    rb"(?:^|;)[\s(]*(?:(?:/\*.*?\*/|--[^\n]*(?:\n|$))[\s(]*)*"
    rb"(?:set|reset|listen|declare|create|prepare|load)\b"
    rb"|advisory_lock|set_config|\binto\s+temp",
    re.IGNORECASE | re.DOTALL,
)
#: Substrings that must be present for `_SUSPECT` to possibly match (a C-speed first pass).
_TRIGGERS = re.compile(rb"set|listen|declare|create|prepare|load|advisory|into")
_COMMENTS = re.compile(rb"/\*.*?\*/|--[^\n]*", re.DOTALL)
_SET_CONFIG = re.compile(rb"set_config\s*\(\s*'([^']*)'\s*,[^,]*,\s*(true|false)\s*\)", re.IGNORECASE)
_ADVISORY = re.compile(rb"pg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE)
_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_$]*|\"(?:[^\"]|\"\")*\"")

#: Settings whose leak to another client changes only performance, never results: asyncpg
#: switches jit off around its type introspection and back with set_config(..., false).
_HARMLESS = frozenset(("jit",))
#: Aliases the SET grammar accepts for reported parameters.
_SET_ALIASES = {"time zone": "timezone", "names": "client_encoding"}


class PinReason(enum.StrEnum):
    """Why a client stays on its server outside a transaction (values are metric labels)."""

    SET = "set"
    SET_ROLE = "set_role"
    LISTEN = "listen"
    CURSOR_WITH_HOLD = "cursor_with_hold"
    ADVISORY_LOCK = "advisory_lock"
    TEMP_TABLE = "temp_table"
    PREPARE = "prepare"
    PREPARED_STATEMENT = "prepared_statement"
    LOAD = "load"


def _words(stmt: bytes, count: int) -> list[str]:
    return [m.group(0).decode("utf-8", "replace").strip('"').lower()
            for m in _WORD.finditer(stmt, 0)][:count]


def _split_statements(sql: bytes) -> list[bytes]:
    # Splitting on ';' ignores quoting, so a ';' inside a literal may produce a bogus piece;
    # that can only add pins, never hide a statement.
    return [s.strip() for s in _COMMENTS.sub(b" ", sql).split(b";") if s.strip()]


def classify(sql: bytes, tracked: frozenset[str]) -> PinReason | None:
    """Return a `PinReason` if running `sql` leaves unreported session state, else None.

    `tracked` holds lower-cased names of parameters the server reports and poolproxy replays
    (SET of those is safe: ParameterStatus tells us the new value).
    """
    low = sql.lower()
    if not _TRIGGERS.search(low) or not _SUSPECT.search(sql):
        return None
    reason: PinReason | None = None
    for m in _SET_CONFIG.finditer(sql):
        name = m.group(1).decode("utf-8", "replace").lower()
        if m.group(2).lower() == b"false" and name not in tracked and name not in _HARMLESS:
            return PinReason.SET
    if _ADVISORY.search(sql):
        return PinReason.ADVISORY_LOCK
    for stmt in _split_statements(sql):
        reason = _classify_statement(stmt, tracked)
        if reason:
            return reason
    return None


def _classify_statement(stmt: bytes, tracked: frozenset[str]) -> PinReason | None:
    words = _words(stmt, 6)
    if not words:
        return None
    first = words[0]
    if first == "set":
        rest = words[1:]
        if rest and rest[0] == "local":
            return None
        if rest and rest[0] == "session":
            rest = rest[1:]
            if rest and rest[0] == "characteristics":
                return PinReason.SET
            if rest and rest[0] == "authorization":
                return PinReason.SET_ROLE
        if not rest:
            return PinReason.SET
        if rest[0] in ("transaction", "constraints"):
            return None  # scoped to the current transaction
        if rest[0] == "role":
            return PinReason.SET_ROLE
        name = rest[0]
        if name == "time" and len(rest) > 1 and rest[1] == "zone":
            name = "time zone"
        name = _SET_ALIASES.get(name, name)
        return None if name in tracked or name in _HARMLESS else PinReason.SET
    if first == "reset":
        name = words[1] if len(words) > 1 else ""
        if name == "time" and len(words) > 2 and words[2] == "zone":
            name = "timezone"
        # RESET ALL removes state; what it changes that matters is reported by ParameterStatus
        # (a client with unreported state is pinned already).
        return None if name in tracked or name == "all" or name in _HARMLESS else PinReason.SET
    if first == "listen":
        return PinReason.LISTEN
    if first == "declare":
        return PinReason.CURSOR_WITH_HOLD if re.search(rb"\bwith\s+hold\b", stmt, re.I) else None
    if first == "create":
        if len(words) > 1 and (words[1] in ("temp", "temporary") or (
                words[1] in ("global", "local") and len(words) > 2
                and words[2] in ("temp", "temporary"))):
            if re.search(rb"\bon\s+commit\s+drop\b", stmt, re.I):
                return None  # gone when the transaction ends
            return PinReason.TEMP_TABLE
        return None
    if first == "prepare":
        return PinReason.PREPARE
    if first == "load":
        return PinReason.LOAD
    if first == "select" and re.search(rb"\binto\s+(?:temp|temporary)\b", stmt, re.I):
        return PinReason.TEMP_TABLE
    return None
