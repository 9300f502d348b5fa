"""Query helpers for the MySQL tests, over any DB-API connection (PyMySQL, mysqlclient):
all rows as tuples, the one row, and the server's ``CONNECTION_ID()``.
"""

from __future__ import annotations

from typing import Any


def rows(conn: Any, sql: str, params: Any = None) -> list[tuple]:
    """Every row of ``sql`` as a tuple ([] for a statement without a result set)."""
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()] if cur.description is not None else []
    finally:
        cur.close()


def one(conn: Any, sql: str, params: Any = None) -> tuple:
    """The single row of ``sql`` (fails unless there is exactly one)."""
    result = rows(conn, sql, params)
    assert len(result) == 1, result
    return result[0]


def conn_id(conn: Any) -> int:
    """``CONNECTION_ID()``: answered by the server, so it tells which server connection the
    client is on."""
    return int(one(conn, "SELECT CONNECTION_ID()")[0])
