"""MySQL session state tracked per client: replayable SET variables, schema, and pin reasons.

Works from the SQL text the client sends (as ProxySQL does), so it covers clients with and
without CLIENT_SESSION_TRACK. `analyse()` reports, for one COM_QUERY, the session variables it
sets (replayed on other servers later), a USE, or a reason the client must stay pinned to its
server because the state cannot be replayed (user variables, temporary tables, locks, ...).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field


class PinReason(enum.StrEnum):
    """Why a MySQL client is held on one server outside a transaction (metric label values)."""

    USER_VARIABLE = "user_variable"
    TEMP_TABLE = "temp_table"
    LOCK_TABLES = "lock_tables"
    GET_LOCK = "get_lock"
    SQL_PREPARE = "sql_prepare"
    STMT_PREPARE = "stmt_prepare"
    UNRECOGNISED_SET = "unrecognised_set"
    SESSION_FUNCTION = "session_function"
    SET_OPTION = "set_option"
    TRANSACTION_NEXT = "set_transaction"


@dataclass
class Analysis:
    pin: PinReason | None = None
    #: (key, SQL assignment text) in statement order; key "names" stands for SET NAMES/CHARSET.
    sets: list[tuple[str, str]] = field(default_factory=list)
    use: str | None = None


_TRIGGERS = re.compile(rb"set|@|temporary|lock|prepare|execute|use|last_insert_id|found_rows"
                       rb"|row_count|sql_calc_found_rows|handler|/\*m?!")
_USER_VAR = re.compile(rb"(?<![@\w])@(?!@)[\w$.`'\"]")
_LOCK_FUNCS = re.compile(rb"\b(?:get_lock|release_lock|release_all_locks)\s*\(", re.I)
_SESSION_FUNCS = re.compile(rb"\b(?:last_insert_id|found_rows|row_count)\s*\(\s*\)|\bsql_calc_found_rows\b",
                            re.I)
_TEMP = re.compile(rb"\bcreate\s+(?:or\s+replace\s+)?temporary\s+table\b", re.I)
#: (keyword that must occur, pattern that confirms it, reason). bytes.find runs at memchr
#: speed, so a multi-megabyte INSERT only pays a regex scan if the keyword really is there.
_PIN_PATTERNS = (
    (b"@", _USER_VAR, PinReason.USER_VARIABLE),
    (b"lock", _LOCK_FUNCS, PinReason.GET_LOCK),
    (b"last_insert_id", _SESSION_FUNCS, PinReason.SESSION_FUNCTION),
    (b"found_rows", _SESSION_FUNCS, PinReason.SESSION_FUNCTION),
    (b"row_count", _SESSION_FUNCS, PinReason.SESSION_FUNCTION),
    (b"temporary", _TEMP, PinReason.TEMP_TABLE),
)


def _pin_reason(masked: bytes) -> PinReason | None:
    low = masked.lower()
    for keyword, pattern, reason in _PIN_PATTERNS:
        if keyword in low and pattern.search(low):
            return reason
    return None
_LOCK_TABLES = re.compile(rb"^\s*lock\s+tables?\b", re.I)
_PREPARE = re.compile(rb"^\s*(?:prepare|execute|deallocate\s+prepare)\b", re.I)
_HANDLER = re.compile(rb"^\s*handler\b", re.I)
_USE = re.compile(rb"^\s*use\s+(`(?:[^`]|``)+`|[\w$]+)\s*$", re.I)
_SET = re.compile(rb"^\s*set\s+(.*)$", re.I | re.S)
_SET_TX = re.compile(rb"^\s*(?:(session|global|local)\s+)?transaction\b(.*)$", re.I | re.S)
_NAMES = re.compile(rb"^\s*(?:names|character\s+set|charset)\b", re.I)
# One `[SESSION|LOCAL|@@session.|@@local.|@@]name = value` assignment; value: a literal, number,
# identifier, DEFAULT, ON/OFF -- not an expression (those we cannot safely replay).
_ASSIGN = re.compile(
    rb"^\s*(session\s+|local\s+|global\s+|persist\s+|persist_only\s+"
    rb"|@@session\.|@@local\.|@@global\.|@@persist\.|@@persist_only\.|@@)?"
    rb"`?([a-z_][a-z0-9_]*)`?\s*(?::=|=)\s*"
    rb"('(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|-?\d+(?:\.\d+)?|[a-z_][a-z0-9_]*)\s*$",
    re.I | re.S,
)
#: MySQL/MariaDB executable comments: the server runs their body (/*!50003 ... */, /*M!100100 ...*/).
_EXEC_COMMENT = re.compile(rb"/\*M?!\d*(.*?)\*/", re.S)
#: Session variables a client may set that we do not replay because poolproxy owns them.
_NOT_REPLAYED = frozenset(("autocommit",))
_CHARSET_VARS = frozenset(("character_set_client", "character_set_connection",
                           "character_set_results", "collation_connection"))


def _split_assignments(text: bytes) -> list[bytes]:
    parts: list[bytes] = []
    depth = 0
    quote = 0
    start = 0
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == 0x5C:
                i += 1
            elif c == quote:
                quote = 0
        elif c in (0x27, 0x22, 0x60):
            quote = c
        elif c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
        elif c == 0x2C and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


#: String literals and comments, in one pass so that a quote inside a comment or a comment
#: marker inside a string is read correctly. /*! ... */ is MySQL's executable comment: code.
_LEXEMES = re.compile(
    # Unrolled loops ([^'\\]* runs between escapes) keep big literals at C speed.
    rb"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'?"
    rb'|"[^"\\]*(?:(?:\\.|"")[^"\\]*)*"?'
    rb"|/\*(?!!).*?(?:\*/|$)|--(?:\s[^\n]*|$)|#[^\n]*",
    re.S,
)


def _mask(sql: bytes) -> tuple[bytes, bytes]:
    """Return (masked, plain): `masked` has string contents replaced by 'x' and comments by
    spaces, `plain` only has comments blanked. Both keep every offset of `sql`."""

    def masked(m: re.Match[bytes]) -> bytes:
        tok = m.group(0)
        if tok[:1] in (b"'", b'"'):
            return tok[:1] + b"x" * (len(tok) - 2) + tok[-1:] if len(tok) >= 2 else tok
        return b" " * len(tok)

    def plain(m: re.Match[bytes]) -> bytes:
        tok = m.group(0)
        return tok if tok[:1] in (b"'", b'"') else b" " * len(tok)

    return _LEXEMES.sub(masked, sql), _LEXEMES.sub(plain, sql)


def analyse(sql: bytes) -> Analysis:
    """Classify one COM_QUERY text (see the module docstring)."""
    return session_effects(sql) or Analysis()


def session_effects(sql: bytes) -> Analysis | None:
    """:func:`analyse`, but None for a statement with no effect on the session (most of them:
    the per-query path then allocates nothing)."""
    if not _TRIGGERS.search(sql.lower()):
        return None
    result = _analyse(sql)
    return result if (result.pin or result.sets or result.use) else None


def _analyse(sql: bytes) -> Analysis:
    result = Analysis()
    if b"/*" in sql:
        sql = _EXEC_COMMENT.sub(lambda m: b" " + m.group(1) + b" ", sql)
    text, plain = _mask(sql)
    reason = _pin_reason(text)
    if reason:
        result.pin = reason
        return result
    start = 0
    for piece in text.split(b";"):
        end = start + len(piece)
        stmt = piece.strip()
        original = plain[start:end].strip()
        start = end + 1
        if not stmt:
            continue
        if _LOCK_TABLES.match(stmt):
            result.pin = PinReason.LOCK_TABLES
            return result
        if _PREPARE.match(stmt):
            result.pin = PinReason.SQL_PREPARE
            return result
        if _HANDLER.match(stmt):
            result.pin = PinReason.UNRECOGNISED_SET
            return result
        m = _USE.match(original)
        if m:
            name = m.group(1)
            if name.startswith(b"`"):
                name = name[1:-1].replace(b"``", b"`")
            result.use = name.decode("utf-8", "replace")
            continue
        m = _SET.match(original)
        if m:
            reason = _analyse_set(m.group(1), result)
            if reason:
                result.pin = reason
                return result
    return result


def _analyse_set(body: bytes, result: Analysis) -> PinReason | None:
    tx = _SET_TX.match(body)
    if tx:
        scope = (tx.group(1) or b"").lower()
        if scope == b"global":
            return None
        if scope in (b"session", b"local"):
            rest = b" ".join(tx.group(2).split()).lower()
            iso = re.match(rb"isolation\s+level\s+(read\s+uncommitted|read\s+committed|repeatable\s+read"
                           rb"|serializable)\s*$", rest)
            if iso:
                level = iso.group(1).decode().upper().replace(" ", "-")
                result.sets.append(("transaction_isolation",
                                    f"@@session.transaction_isolation = '{level}'"))
                return None
            mode = re.match(rb"(read\s+only|read\s+write)\s*$", rest)
            if mode:
                ro = "1" if mode.group(1).startswith(b"read only") else "0"
                result.sets.append(("transaction_read_only",
                                    f"@@session.transaction_read_only = {ro}"))
                return None
            return PinReason.UNRECOGNISED_SET
        # SET TRANSACTION without scope applies to the next transaction only: keep the server.
        return PinReason.TRANSACTION_NEXT
    scope_global = False  # a GLOBAL/SESSION keyword carries over to later assignments
    for part in _split_assignments(body):
        part = part.strip()
        if _NAMES.match(part):
            result.sets = [(k, v) for k, v in result.sets if k not in _CHARSET_VARS]
            result.sets.append(("names", "NAMES " + part.split(None, 1)[1].decode("utf-8", "replace")
                                if part.lower().startswith(b"names")
                                else part.decode("utf-8", "replace")))
            continue
        m = _ASSIGN.match(part)
        if not m:
            return PinReason.UNRECOGNISED_SET
        scope = (m.group(1) or b"").strip().lower()
        if scope in (b"global", b"persist", b"persist_only"):
            scope_global = True
        elif scope in (b"session", b"local"):
            scope_global = False
        this_global = scope_global if not scope.startswith(b"@@") else scope in (
            b"@@global.", b"@@persist.", b"@@persist_only.")
        if this_global:  # SET GLOBAL / PERSIST: not session state
            continue
        name = m.group(2).decode().lower()
        if name in _NOT_REPLAYED:
            continue
        if name == "tx_isolation":
            name = "transaction_isolation"
        elif name == "tx_read_only":
            name = "transaction_read_only"
        value = m.group(3).decode("utf-8", "replace")
        result.sets.append((name, f"@@session.{name} = {value}"))
    return None


def replay_sql(target: dict[str, str], current: dict[str, str],
               names_default: str = "NAMES DEFAULT") -> str | None:
    """The SET that turns a server's tracked variables `current` into a client's `target`.

    `names_default` restores the character set the server connection logged in with (plain
    NAMES DEFAULT would use the server's global default instead). NAMES resets the individual
    character-set variables, so when any of them differs, NAMES goes first and the client's
    own character-set variables are set again after it."""
    parts: list[str] = []
    charset_keys = _CHARSET_VARS | {"names"}
    if any(current.get(k) != target.get(k) for k in charset_keys):
        parts.append(target.get("names", names_default))
        parts.extend(target[k] for k in sorted(_CHARSET_VARS) if k in target)
    for key in current:
        if key not in target and key not in charset_keys:
            parts.append(f"@@session.{key} = DEFAULT")
    for key, text in target.items():
        if key not in charset_keys and current.get(key) != text:
            parts.append(text)
    if not parts:
        return None
    return "SET " + ", ".join(parts)
