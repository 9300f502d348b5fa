"""The harness's TLS-enabled PostgreSQL and MariaDB really enforce TLS for their TLS-only users
(no proxy here: these are the servers the proxy's TLS tests will stand on).

The TLS servers are their own (``create(tls=pki)``, about a second each), apart from the shared
``pg_server``/``mariadb_server``: the session fixtures ``tls_pki``, ``tls_pg`` and
``tls_mariadb`` in tests/conftest.py, which the proxy's TLS tests use too::

    pki = make_pki(tmp_path_factory.mktemp("pki"))
    pg = PgServer.create(servers_basedir, tls=pki)       # app_tls: hostssl only; app_cert: cert
    psycopg.connect(pg.tls_dsn())                         # sslmode=verify-full, sslrootcert=CA
    maria = MariaDbServer.create(servers_basedir, tls=pki)  # app_tls REQUIRE SSL, app_x509
    maria.connect_tls()                                   # PyMySQL, ssl={"ca": CA}

It also checks that the certificate a server presents can be swapped for the broken ones of
the pki (expired, wrong host, another CA) and that clients then fail as they should, and that
TLS can be turned on in a server that was started without it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import psycopg
import pymysql
import pytest

from tests.harness import MariaDbServer, PgServer
from tests.harness.certs import Pki
from tests.harness.mariadb import TLS_PASSWORD as MY_TLS_PASSWORD
from tests.harness.mariadb import TLS_USER as MY_TLS_USER
from tests.harness.mariadb import X509_USER
from tests.harness.pgserver import CERT_USER, TLS_PASSWORD, TLS_USER


def _pem_to_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


# --------------------------------------------------------------------------- PostgreSQL

SSL_ROW = "SELECT ssl, version, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def test_pg_tls_user_connects_with_verify_full(tls_pg: PgServer, tls_pki: Pki) -> None:
    dsn = tls_pg.dsn(TLS_USER, TLS_PASSWORD, "app", sslmode="verify-full",
                     sslrootcert=str(tls_pki.ca))
    assert dsn == tls_pg.tls_dsn()
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        in_tls, version, client_dn = conn.execute(SSL_ROW).fetchone()  # type: ignore[misc]
        assert in_tls is True and version in ("TLSv1.2", "TLSv1.3") and client_dn is None
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            TLS_USER, "app")
        assert conn.pgconn.ssl_in_use
    # verify-full against the host name too (the certificate names localhost and 127.0.0.1).
    with psycopg.connect(tls_pg.tls_dsn(hostaddr="127.0.0.1", host="localhost")) as conn:
        assert conn.execute(SSL_ROW).fetchone()[0] is True  # type: ignore[index]


def test_pg_tls_user_is_refused_without_tls(tls_pg: PgServer) -> None:
    with pytest.raises(psycopg.OperationalError) as exc_info:
        psycopg.connect(tls_pg.dsn(TLS_USER, TLS_PASSWORD, "app", sslmode="disable"),
                        connect_timeout=10)
    assert 'pg_hba.conf rejects connection for host "127.0.0.1", user "app_tls"' in str(
        exc_info.value)
    assert "no encryption" in str(exc_info.value)
    # The other roles keep their rules: plaintext still works for them.
    with psycopg.connect(tls_pg.dsn("app", "app-secret", "app", sslmode="disable")) as conn:
        assert conn.execute(SSL_ROW).fetchone()[0] is False  # type: ignore[index]


def test_pg_cert_user_needs_a_client_certificate(tls_pg: PgServer, tls_pki: Pki) -> None:
    with psycopg.connect(tls_pg.tls_dsn(CERT_USER), connect_timeout=10) as conn:
        in_tls, _, client_dn = conn.execute(SSL_ROW).fetchone()  # type: ignore[misc]
        assert in_tls is True and client_dn.endswith(f"CN={CERT_USER}")
    with pytest.raises(psycopg.OperationalError, match="requires a valid client certificate"):
        psycopg.connect(tls_pg.tls_dsn(CERT_USER, client_cert=False), connect_timeout=10)
    # A certificate for another user (CN=app_tls) does not do either.
    other = tls_pki.client(TLS_USER)
    with pytest.raises(psycopg.OperationalError, match="certificate authentication failed"):
        psycopg.connect(tls_pg.tls_dsn(CERT_USER, client_cert=False, sslcert=str(other.cert),
                                       sslkey=str(other.key)), connect_timeout=10)


def test_pg_presents_the_broken_certificates_on_request(tls_pg: PgServer, tls_pki: Pki) -> None:
    """enable_tls(server_cert=...) swaps what the server presents (pg_reload_conf, no restart);
    libpq's verify modes then fail exactly as the certificate deserves."""

    def refused(dsn: str) -> str:
        with pytest.raises(psycopg.OperationalError) as exc_info:
            psycopg.connect(dsn, connect_timeout=10)
        return str(exc_info.value)

    try:
        tls_pg.enable_tls(tls_pki, server_cert=tls_pki.expired)
        assert tls_pg.presented_certificate() == _pem_to_der(tls_pki.expired.cert)
        assert "certificate verify failed" in refused(tls_pg.tls_dsn())
        psycopg.connect(tls_pg.tls_dsn(sslmode="require")).close()  # require checks nothing

        tls_pg.enable_tls(tls_pki, server_cert=tls_pki.wrong_host)
        message = refused(tls_pg.tls_dsn())
        assert 'server certificate for "wrong-host.invalid"' in message
        assert 'does not match host name "127.0.0.1"' in message
        psycopg.connect(tls_pg.tls_dsn(sslmode="verify-ca")).close()  # no name check

        tls_pg.enable_tls(tls_pki, server_cert=tls_pki.other_server)
        assert "certificate verify failed" in refused(tls_pg.tls_dsn(sslmode="verify-ca"))
    finally:
        tls_pg.enable_tls(tls_pki)
    assert tls_pg.presented_certificate() == _pem_to_der(tls_pki.server.cert)
    psycopg.connect(tls_pg.tls_dsn()).close()


def test_pg_enable_tls_on_a_running_server(servers_basedir: Path, tls_pki: Pki) -> None:
    server = PgServer.create(servers_basedir)
    try:
        assert server.execute("SHOW ssl") == [("off",)]
        server.enable_tls(tls_pki)  # pg_reload_conf(): the postmaster keeps running
        assert server.execute("SHOW ssl") == [("on",)]
        with psycopg.connect(server.tls_dsn()) as conn:
            assert conn.execute(SSL_ROW).fetchone()[0] is True  # type: ignore[index]
        with pytest.raises(psycopg.OperationalError, match="no encryption"):
            psycopg.connect(server.dsn(TLS_USER, TLS_PASSWORD, "app", sslmode="disable"))
    finally:
        server.stop()


# --------------------------------------------------------------------------- MariaDB


def status(conn: pymysql.connections.Connection, name: str) -> str:
    with conn.cursor() as cur:
        cur.execute("SHOW STATUS LIKE %s", (name,))
        row = cur.fetchone()
    return row[1] if row else ""


def test_mariadb_tls_user_connects_with_the_ca(tls_mariadb: MariaDbServer, tls_pki: Pki) -> None:
    conn = pymysql.connect(host=tls_mariadb.host, port=tls_mariadb.port, user=MY_TLS_USER,
                           password=MY_TLS_PASSWORD, database="app", connect_timeout=10,
                           ssl={"ca": str(tls_pki.ca)})
    try:
        assert status(conn, "Ssl_cipher") != ""
        assert status(conn, "Ssl_version") in ("TLSv1.2", "TLSv1.3")
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone() == (f"{MY_TLS_USER}@%",)
    finally:
        conn.close()
    conn = tls_mariadb.connect_tls()
    try:
        assert status(conn, "Ssl_cipher") != ""
    finally:
        conn.close()


def test_mariadb_tls_user_is_refused_without_tls(tls_mariadb: MariaDbServer) -> None:
    # PyMySQL 1.2 would use TLS on its own when the server offers it: say no explicitly.
    with pytest.raises(pymysql.err.OperationalError) as exc_info:
        tls_mariadb.connect(MY_TLS_USER, MY_TLS_PASSWORD, "app", ssl_disabled=True)
    assert exc_info.value.args[0] == 1045
    conn = tls_mariadb.connect("app", "app-secret", "app", ssl_disabled=True)
    try:
        assert status(conn, "Ssl_cipher") == ""  # the other users keep plaintext
    finally:
        conn.close()


def test_mariadb_x509_user_needs_a_client_certificate(tls_mariadb: MariaDbServer) -> None:
    conn = tls_mariadb.connect_tls(X509_USER)
    try:
        assert status(conn, "Ssl_cipher") != ""
    finally:
        conn.close()
    with pytest.raises(pymysql.err.OperationalError) as exc_info:
        tls_mariadb.connect_tls(X509_USER, client_cert=False)
    assert exc_info.value.args[0] == 1045


def test_mariadb_presents_the_broken_certificates_on_request(
    tls_mariadb: MariaDbServer, tls_pki: Pki
) -> None:
    try:
        tls_mariadb.enable_tls(tls_pki, server_cert=tls_pki.expired)  # FLUSH SSL, no restart
        with pytest.raises(pymysql.err.OperationalError, match="certificate has expired"):
            tls_mariadb.connect_tls()
        tls_mariadb.enable_tls(tls_pki, server_cert=tls_pki.wrong_host)
        with pytest.raises(pymysql.err.OperationalError, match="IP address mismatch"):
            tls_mariadb.connect_tls()
    finally:
        tls_mariadb.enable_tls(tls_pki)
    tls_mariadb.connect_tls().close()


def test_mariadb_enable_tls_on_a_running_server(servers_basedir: Path, tls_pki: Pki) -> None:
    server = MariaDbServer.create(servers_basedir)
    try:
        assert server.execute("SHOW VARIABLES LIKE 'have_ssl'") == [("have_ssl", "DISABLED")]
        server.enable_tls(tls_pki)  # the first time: a restart
        assert server.execute("SHOW VARIABLES LIKE 'have_ssl'") == [("have_ssl", "YES")]
        conn = server.connect_tls()
        try:
            assert status(conn, "Ssl_cipher") != ""
        finally:
            conn.close()
    finally:
        server.stop()
