"""What both protocols' prepared-statement registries share: a pool's distinct statements by
key, each counted by the clients and server connections that use it and forgotten when none
does, and the two figures operators see (distinct statements, statements on servers).

A statement is any object with `key` and `refs` attributes; the protocol registries add how a
statement is found or made (PostgreSQL: a server-side name; MySQL: a cached prepare response).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R", bound="StatementRegistry")


class StatementRegistry:
    """The statements of one pool by key; an entry lives while something refers to it."""

    __slots__ = ("_by_key", "stats", "on_servers")

    def __init__(self, stats: Any) -> None:
        self._by_key: dict[Any, Any] = {}
        #: The pool's counters (PoolStats: client_parses, server_parses, binds).
        self.stats = stats
        #: Statements prepared on the pool's server connections, all counted.
        self.on_servers = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def counts(self) -> tuple[int, int]:
        """(distinct statements in use, statements prepared on the pool's servers)."""
        return len(self._by_key), self.on_servers

    def hold(self, stmt: Any) -> None:
        stmt.refs += 1

    def release(self, stmt: Any) -> None:
        stmt.refs -= 1
        key = stmt.key
        if stmt.refs <= 0 and self._by_key.get(key) is stmt:
            del self._by_key[key]
            self._forget(stmt)

    def _forget(self, stmt: Any) -> None:
        """`stmt` left the registry (protocols drop their other indexes of it)."""

    def placed(self, stmt: Any) -> None:
        """`stmt` is now prepared on one more server connection."""
        self.hold(stmt)
        self.on_servers += 1

    def removed(self, stmt: Any) -> None:
        """`stmt` is no longer prepared on one server connection."""
        self.on_servers -= 1
        self.release(stmt)


def registry_of(pool: Any, make: Callable[[Any], R]) -> R:
    """The pool's registry, made with `make(stats)` on first use (pools know no protocol)."""
    registry = pool.protocol_state
    if registry is None:
        registry = pool.protocol_state = make(pool.stats)
    return registry  # type: ignore[no-any-return]
