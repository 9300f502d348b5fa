"""Clients at PEP 249's default, autocommit off, share a pool: a server is held from a
transaction's first statement to its COMMIT/ROLLBACK and goes back to the pool in between;
the next server gets the session's autocommit value first (and a client that keeps
autocommit on never sees a server some other client left with it off). Any statement begins
the transaction, as on a direct connection, and COMMIT or ROLLBACK ends it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest

from tests.harness import MariaDbServer, ProxyProcess, make_config, mysql_listener
from tests.harness.myclient import conn_id, one


@pytest.fixture(scope="module")
def proxy(mariadb_server: MariaDbServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ProxyProcess]:
    config = make_config(mysql_listener(mariadb_server, pool_size=1, query_wait_timeout="2s"),
                         admin=False)
    proc = ProxyProcess(config, tmp_path_factory.mktemp("mysql_autocommit_proxy"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module", autouse=True)
def table(mariadb_server: MariaDbServer) -> None:
    mariadb_server.execute("DROP TABLE IF EXISTS app.ac_rows")
    mariadb_server.execute("CREATE TABLE app.ac_rows (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")


def connect(proxy: ProxyProcess, **kw: object) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=proxy.port("mysql"), user="app",
                           password="app-secret", database="app", **kw)  # type: ignore[arg-type]


def test_autocommit_off_clients_share_one_server(proxy: ProxyProcess,
                                                 mariadb_server: MariaDbServer) -> None:
    """Two PyMySQL clients at their defaults and one at autocommit on, over a pool of one:
    each transaction runs whole on the server, and each session keeps its own autocommit."""
    a, b = connect(proxy), connect(proxy)
    c = connect(proxy, autocommit=True)
    try:
        for k in range(3):
            for n, conn in enumerate((a, b)):
                with conn.cursor() as cur:
                    assert one(conn, "SELECT @@autocommit") == (0,)
                    cur.execute("INSERT INTO ac_rows VALUES (%s, %s)", (k * 10 + n, k))
                    cur.execute("SELECT COUNT(*) FROM ac_rows WHERE id = %s", (k * 10 + n,))
                    assert cur.fetchone() == (1,)
                conn.commit()  # ends the transaction: the only server is free again
                assert one(c, "SELECT @@autocommit") == (1,)
                assert conn_id(c) == conn_id(conn)  # one server for all
                conn.commit()  # conn_id(conn) began a transaction (autocommit is off)
        with a.cursor() as cur:
            cur.execute("INSERT INTO ac_rows VALUES (100, 0)")
        a.rollback()
        assert mariadb_server.execute("SELECT COUNT(*) FROM app.ac_rows WHERE id = 100") == [(0,)]
        assert mariadb_server.execute("SELECT COUNT(*) FROM app.ac_rows") == [(6,)]
    finally:
        a.close()
        b.close()
        c.close()


def test_open_transaction_holds_the_server(proxy: ProxyProcess) -> None:
    """Until the commit, the autocommit-off client's transaction keeps the only server: the
    other client waits for it (and gets it after the commit)."""
    a, b = connect(proxy), connect(proxy, autocommit=True)
    try:
        with a.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM ac_rows")  # opens a transaction (InnoDB read)
        with pytest.raises(pymysql.err.OperationalError):  # query_wait_timeout ends it
            one(b, "SELECT 1")
        a.commit()
        b.close()
        b = connect(proxy, autocommit=True)
        assert one(b, "SELECT 1") == (1,)
    finally:
        a.close()
        b.close()
