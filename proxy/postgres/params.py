"""ParameterStatus tracking: which reported parameters poolproxy replays, and the SQL to do it.

PostgreSQL reports these parameters (GUC_REPORT) whenever they change, so poolproxy always
knows each client's values and each server's values; on checkout it re-sets the difference in
one statement whose replies the server session swallows.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Reported parameters a client may change and we replay (canonical spelling, as reported).
SYNC_PARAMS: tuple[str, ...] = (
    "client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings",
    "application_name", "search_path", "default_transaction_read_only",
)
_CANONICAL = {name.lower(): name for name in SYNC_PARAMS}


def canonical_param(name: str) -> str | None:
    """The canonical spelling of a replayable parameter, or None if we cannot carry it."""
    return _CANONICAL.get(name.lower())


_ALL_TRACKED: frozenset[str] = frozenset(_CANONICAL)
#: One set per distinct answer (servers report the same parameters): clients share them.
_TRACKED: dict[frozenset[str], frozenset[str]] = {}


def tracked_lower(reported: Mapping[str, str] | None = None) -> frozenset[str]:
    """Lower-case names whose SET is safe in transaction mode (see statements.classify): the
    replayable parameters, limited to those the server reports when `reported` is given.
    The result is shared (every idle client keeps one)."""
    if reported is None:
        return _ALL_TRACKED
    found = frozenset(name.lower() for name in SYNC_PARAMS if name in reported)
    return _TRACKED.setdefault(found, found)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sync_sql(diff: Mapping[str, str]) -> str:
    """One statement that sets every parameter in `diff` for the session.

    set_config() takes the value as postgresql.conf would, so list-valued settings such as
    search_path survive the round trip (a quoted SET value would become a single element)."""
    calls = ", ".join(f"pg_catalog.set_config({_literal(k)}, {_literal(v)}, false)"
                      for k, v in diff.items())
    return f"SELECT {calls}"
