"""psycopg helpers for the PostgreSQL tests that share one pooled server between clients
(test_pg_params.py, test_pg_session_state.py): a proxy with ``pool_size: 1``, connecting as
app through it, one-value queries, and resetting the pooled server between tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from .pgserver import PgServer
from .proxyproc import ProxyProcess, make_config, pg_listener


def pool_of_one_proxy(pg: PgServer, workdir: Path, query_wait: float) -> Iterator[ProxyProcess]:
    """For a fixture to ``yield from``: a running proxy whose listener ``pg`` has a single
    server connection (``pool_size: 1``, ``query_wait_timeout`` of ``query_wait`` seconds; no
    admin HTTP server); it is stopped when the fixture is torn down."""
    config = make_config(
        pg_listener(pg, pool_size=1, query_wait_timeout=f"{query_wait}s"), admin=False)
    proc = ProxyProcess(config, workdir)
    proc.start()
    yield proc
    proc.stop()


def connect(proxy: ProxyProcess, **kwargs: Any) -> psycopg.Connection:
    """A psycopg connection as app to database app through listener ``pg`` (autocommit unless
    given; psycopg otherwise at its defaults)."""
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(
        host="127.0.0.1", port=proxy.port("pg"), user="app", password="app-secret",
        dbname="app", connect_timeout=10, **kwargs)


def one(conn: psycopg.Connection, sql: str, params: tuple | None = None) -> Any:
    """The first column of the first row of ``sql`` (which must return a row)."""
    row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def discard_all(proxy: ProxyProcess) -> None:
    """DISCARD ALL on the pooled server through a fresh client, ignoring errors: a state leak
    that one test detects (and fails on) must not make the following tests fail too."""
    try:
        with psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                             password="app-secret", dbname="app", autocommit=True,
                             connect_timeout=5) as conn:
            conn.execute("DISCARD ALL")
    except psycopg.Error:
        pass
