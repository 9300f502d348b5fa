"""TLS on both legs through the proxy, with real PostgreSQL and MariaDB that enforce it.

Certificates are made at run time (tests/harness/certs.py). The servers have users only TLS may
reach (PostgreSQL ``hostssl`` only; MariaDB ``REQUIRE SSL``): through poolproxy with
``server_tls: verify-full`` they work and the server reports the session encrypted. Clients
(psycopg with verify-full, asyncpg with an SSLContext, PyMySQL and mysqlclient with a CA and
host checking) see poolproxy's certificate; a ``require`` listener refuses plaintext clients
with a clear error; a wrong CA, an expired certificate, a wrong host name and a missing client
certificate each fail with an error naming the cause while other clients keep working; a
SIGHUP after swapping certificate files gives new connections the new certificate.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import MySQLdb
import psycopg
import pymysql
import pytest

from tests.harness import (
    MariaDbServer,
    PgServer,
    ProxyProcess,
    make_config,
    mysql_listener,
    pg_listener,
    run_cli,
)
from tests.harness.certs import Pki
from tests.harness.mariadb import TLS_PASSWORD as MY_TLS_PASSWORD
from tests.harness.mariadb import TLS_USER as MY_TLS_USER
from tests.harness.pgserver import TLS_PASSWORD, TLS_USER
from tests.harness.util import metric

PG_TLS_USERS = [{"name": TLS_USER, "password": TLS_PASSWORD}]
MY_TLS_USERS = [{"name": MY_TLS_USER, "password": MY_TLS_PASSWORD}]


@pytest.fixture(scope="module")
def proxy_certs(tls_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """poolproxy's own certificate files (copies, so a test can swap them)."""
    directory = tmp_path_factory.mktemp("proxy_certs")
    shutil.copy(tls_pki.server.cert, directory / "server.crt")
    shutil.copy(tls_pki.server.key, directory / "server.key")
    shutil.copy(tls_pki.ca, directory / "ca.crt")
    return directory


def client_tls(certs: Path, mode: str = "require") -> dict[str, str]:
    out = {"mode": mode, "cert_file": str(certs / "server.crt"),
           "key_file": str(certs / "server.key")}
    if mode.startswith("verify"):
        out["ca_file"] = str(certs / "ca.crt")
    return out


def server_tls(tls_pki: Pki, mode: str = "verify-full", **extra: str) -> dict[str, str]:
    return {"mode": mode, "ca_file": str(tls_pki.ca), **extra}


@pytest.fixture(scope="module")
def proxy(tls_pg: PgServer, tls_mariadb: MariaDbServer, tls_pki: Pki, proxy_certs: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    config = make_config(
        pg_listener(tls_pg, users=PG_TLS_USERS, pool_size=2, server_tls=server_tls(tls_pki),
                    client_tls=client_tls(proxy_certs)),
        pg_listener(tls_pg, name="pg_verify", users=PG_TLS_USERS, pool_size=2,
                    server_tls=server_tls(tls_pki), client_tls=client_tls(proxy_certs, "verify-ca")),
        pg_listener(tls_pg, name="pg_plain_server", users=PG_TLS_USERS, pool_size=1,
                    client_tls=client_tls(proxy_certs, "prefer")),
        mysql_listener(tls_mariadb, users=MY_TLS_USERS, pool_size=2,
                       server_tls=server_tls(tls_pki), client_tls=client_tls(proxy_certs)),
        pg_listener(tls_pg, name="pg_wrong_ca", users=PG_TLS_USERS, pool_size=1,
                    server_tls={"mode": "verify-full", "ca_file": str(tls_pki.other_ca)}),
        pg_listener(tls_pg, name="pg_wrong_name", users=PG_TLS_USERS, pool_size=1,
                    server_tls=server_tls(tls_pki, server_name="db.example.invalid")),
        mysql_listener(tls_mariadb, name="my_wrong_ca", users=MY_TLS_USERS, pool_size=1,
                       server_tls={"mode": "verify-ca", "ca_file": str(tls_pki.other_ca)}),
        # passthrough inside TLS: no users at all in the config
        pg_listener(tls_pg, name="pg_pass", users=[], auth={"type": "passthrough"},
                    pool_size=1, server_tls=server_tls(tls_pki), client_tls=client_tls(proxy_certs)),
        mysql_listener(tls_mariadb, name="my_pass", users=[], auth={"type": "passthrough"},
                       pool_size=1, server_tls=server_tls(tls_pki),
                       client_tls=client_tls(proxy_certs)),
        admin_users=[TLS_USER],
    )
    proc = ProxyProcess(config, tmp_path_factory.mktemp("tls_proxy"))
    proc.start()
    yield proc
    proc.stop()


def pg_dsn(proxy: ProxyProcess, tls_pki: Pki, listener: str = "pg", sslmode: str = "verify-full",
           **extra: str) -> str:
    parts = [f"host=localhost port={proxy.port(listener)} user={TLS_USER} "
             f"password={TLS_PASSWORD} dbname=app connect_timeout=10 sslmode={sslmode}"]
    if sslmode.startswith("verify"):
        parts.append(f"sslrootcert={tls_pki.ca}")
    parts.extend(f"{k}={v}" for k, v in extra.items())
    return " ".join(parts)


def proxy_certificate(port: int) -> bytes:
    """The DER certificate poolproxy presents after SSLRequest (no checks)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!II", 8, 80877103))
        assert sock.recv(1) == b"S"
        with ctx.wrap_socket(sock) as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
            assert der is not None
            return der


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


# --------------------------------------------------------------------------- PostgreSQL


def test_psycopg_verify_full_through_proxy_to_hostssl_only_user(proxy: ProxyProcess,
                                                                tls_pki: Pki) -> None:
    with psycopg.connect(pg_dsn(proxy, tls_pki)) as conn:
        # The client's leg: poolproxy's certificate, verified by libpq (CA and host name).
        assert conn.info.pgconn.ssl_in_use
        # The server's leg: PostgreSQL reports this backend's session encrypted.
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl "
                           "WHERE pid = pg_backend_pid()").fetchone()
        assert row is not None and row[0] is True and row[1].startswith("TLSv1.")
        assert conn.execute("SELECT current_user").fetchone() == (TLS_USER,)
    assert proxy_certificate(proxy.port("pg")) == der(tls_pki.server.cert)
    assert metric(proxy, "poolproxy_tls_handshakes_total", listener="pg", side="client",
                  result="ok") >= 1
    assert metric(proxy, "poolproxy_tls_handshakes_total", listener="pg", side="server",
                  result="ok") >= 1


def test_console_shows_tls_of_clients_and_servers(proxy: ProxyProcess, tls_pki: Pki) -> None:
    with psycopg.connect(pg_dsn(proxy, tls_pki)) as app:
        app.execute("BEGIN")
        app.execute("SELECT 1")  # holds its server: it shows in SHOW SERVERS as active
        with psycopg.connect(pg_dsn(proxy, tls_pki).replace("dbname=app", "dbname=pgbouncer"),
                             autocommit=True) as console:
            cur = console.execute("SHOW CLIENTS")
            cols = [d.name for d in cur.description]
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
            tls_col = {r["database"]: r["tls"] for r in rows if r["listener"] == "pg"}
            assert tls_col["app"].startswith("TLSv1."), rows
            cur = console.execute("SHOW SERVERS")
            cols = [d.name for d in cur.description]
            servers = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
            assert any(s["listener"] == "pg" and s["tls"].startswith("TLSv1.")
                       for s in servers), servers
            assert all(not s["tls"] for s in servers if s["listener"] == "pg_plain_server")


def test_asyncpg_with_sslcontext(proxy: ProxyProcess, tls_pki: Pki) -> None:
    async def main() -> list[Any]:
        ctx = ssl.create_default_context(cafile=str(tls_pki.ca))
        results = []
        conns = [await asyncpg.connect(host="localhost", port=proxy.port("pg"), user=TLS_USER,
                                       password=TLS_PASSWORD, database="app", ssl=ctx)
                 for _ in range(4)]
        try:
            for i in range(20):
                for j, conn in enumerate(conns):
                    results.append(await conn.fetchval("SELECT $1::int * 2", i * 10 + j))
        finally:
            for conn in conns:
                await conn.close()
        return results

    results = asyncio.run(main())
    assert results == [(i * 10 + j) * 2 for i in range(20) for j in range(4)]


def test_require_listener_refuses_plaintext_client(proxy: ProxyProcess, tls_pki: Pki) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(pg_dsn(proxy, tls_pki, sslmode="disable"))
    assert "accepts only TLS" in str(info.value)
    # ... while a TLS client keeps working
    with psycopg.connect(pg_dsn(proxy, tls_pki)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pg_client_certificate_under_verify_ca(proxy: ProxyProcess, tls_pki: Pki) -> None:
    pair = tls_pki.client(TLS_USER)
    with psycopg.connect(pg_dsn(proxy, tls_pki, "pg_verify", sslcert=str(pair.cert),
                                sslkey=str(pair.key))) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    # No client certificate: the handshake fails, and the error says why.
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(pg_dsn(proxy, tls_pki, "pg_verify"))
    assert "certificate" in str(info.value).lower()
    # A certificate from another CA is refused too.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn(proxy, tls_pki, "pg_verify", sslcert=str(tls_pki.other_client.cert),
                               sslkey=str(tls_pki.other_client.key)))


def test_plaintext_server_leg_refused_by_hostssl_user(proxy: ProxyProcess, tls_pki: Pki) -> None:
    """Without server_tls the hostssl-only user cannot log in: the database's own refusal."""
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(pg_dsn(proxy, tls_pki, "pg_plain_server"))
    assert "no pg_hba.conf entry" in str(info.value) or "rejects" in str(info.value)


@pytest.mark.parametrize(("listener", "cause"), [
    ("pg_wrong_ca", "certificate verify failed"),
    ("pg_wrong_name", "certificate verify failed"),
])
def test_server_certificate_problems_named(proxy: ProxyProcess, tls_pki: Pki, listener: str,
                                           cause: str) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(pg_dsn(proxy, tls_pki, listener, sslmode="disable"))
    text = str(info.value)
    assert cause in text, text
    if listener == "pg_wrong_name":
        assert "db.example.invalid" in text or "hostname" in text.lower(), text
    # other clients keep working
    with psycopg.connect(pg_dsn(proxy, tls_pki)) as conn:
        assert conn.execute("SELECT 3").fetchone() == (3,)
    assert metric(proxy, "poolproxy_tls_handshakes_total", listener=listener, side="server",
                  result="failed") >= 1


def test_expired_proxy_certificate_named_by_client(tls_pg: PgServer, tls_pki: Pki,
                                                   tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(tls_pki.expired.cert, certs / "server.crt")
    shutil.copy(tls_pki.expired.key, certs / "server.key")
    config = make_config(pg_listener(tls_pg, users=PG_TLS_USERS, server_tls=server_tls(tls_pki),
                                     client_tls=client_tls(certs)))
    with ProxyProcess(config, tmp_path / "proxy") as proc:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(pg_dsn(proc, tls_pki))
        assert "certificate verify failed" in str(info.value)  # libpq's words
        # Python's client names the cause precisely.
        ctx = ssl.create_default_context(cafile=str(tls_pki.ca))
        with socket.create_connection(("127.0.0.1", proc.port("pg")), timeout=10) as sock:
            sock.sendall(struct.pack("!II", 8, 80877103))
            assert sock.recv(1) == b"S"
            with pytest.raises(ssl.SSLCertVerificationError) as verify:
                ctx.wrap_socket(sock, server_hostname="localhost")
        assert verify.value.verify_message == "certificate has expired"
        # poolproxy warned at start-up, naming the key and the file
        assert "client_tls.cert_file" in proc.log_text() and "expired" in proc.log_text()


def test_sighup_swaps_certificate_for_new_connections(tls_pg: PgServer, tls_pki: Pki,
                                                      tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(tls_pki.server.cert, certs / "server.crt")
    shutil.copy(tls_pki.server.key, certs / "server.key")
    config = make_config(pg_listener(tls_pg, users=PG_TLS_USERS, server_tls=server_tls(tls_pki),
                                     client_tls=client_tls(certs)))
    with ProxyProcess(config, tmp_path / "proxy") as proc:
        port = proc.port("pg")
        existing = psycopg.connect(pg_dsn(proc, tls_pki))
        assert proxy_certificate(port) == der(tls_pki.server.cert)
        renewed = tls_pki.authority.issue_files(tmp_path, "renewed", "localhost",
                                                dns=("localhost",), ips=("127.0.0.1",))
        shutil.copy(renewed.cert, certs / "server.crt")
        shutil.copy(renewed.key, certs / "server.key")
        proc.reload(config)
        deadline = time.monotonic() + 10
        while proxy_certificate(port) != der(renewed.cert) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proxy_certificate(port) == der(renewed.cert)
        with psycopg.connect(pg_dsn(proc, tls_pki)) as conn:
            assert conn.execute("SELECT 4").fetchone() == (4,)
        assert existing.execute("SELECT 5").fetchone() == (5,)  # the old one continues
        existing.close()
        # A broken file on reload keeps the previous context and names the key.
        (certs / "server.key").write_text("not a key")
        proc.reload(config)
        proc.wait_for_log("client_tls.key_file")
        assert proxy_certificate(port) == der(renewed.cert)


def test_direct_tls_with_alpn(proxy: ProxyProcess, tls_pki: Pki) -> None:
    """PostgreSQL 17's direct TLS: the ClientHello first, with ALPN "postgresql"."""
    ctx = ssl.create_default_context(cafile=str(tls_pki.ca))
    ctx.set_alpn_protocols(["postgresql"])
    with socket.create_connection(("127.0.0.1", proxy.port("pg")), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls_sock:
            assert tls_sock.selected_alpn_protocol() == "postgresql"
            params = b"user\x00" + TLS_USER.encode() + b"\x00database\x00app\x00\x00"
            tls_sock.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
            kind = tls_sock.recv(1)
            assert kind == b"R"  # an authentication request: the login goes on inside TLS
    # Without ALPN: refused.
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", proxy.port("pg")), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls_sock:
            params = b"user\x00" + TLS_USER.encode() + b"\x00\x00"
            tls_sock.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
            data = tls_sock.recv(4096)
            assert data[:1] == b"E" and b"ALPN" in data


def test_bad_input_on_tls_negotiation(proxy: ProxyProcess, tls_pki: Pki) -> None:
    port = proxy.port("pg")
    # Plaintext bytes right behind SSLRequest (CVE-2021-23214's buffer stuffing): refused.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!II", 8, 80877103) + b"\x00\x00\x00\x08junk")
        data = sock.recv(4096)
        assert data[:1] == b"E" and b"after SSLRequest" in data
    # Garbage instead of a ClientHello after 'S': the connection ends.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!II", 8, 80877103))
        assert sock.recv(1) == b"S"
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
        sock.settimeout(10)
        rest = b""
        try:
            while chunk := sock.recv(4096):
                rest += chunk
        except ConnectionResetError:
            pass
        assert b"S" not in rest[:1]
    # A client that stops mid-handshake, and a GSSENCRequest (refused with 'N').
    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled.sendall(struct.pack("!II", 8, 80877103))
    assert stalled.recv(1) == b"S"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!II", 8, 80877104))
        assert sock.recv(1) == b"N"
    with psycopg.connect(pg_dsn(proxy, tls_pki)) as conn:
        assert conn.execute("SELECT 6").fetchone() == (6,)
    stalled.close()


# --------------------------------------------------------------------------- MariaDB


def my_ssl(tls_pki: Pki) -> dict[str, Any]:
    return {"ca": str(tls_pki.ca)}


def test_pymysql_tls_both_legs_require_ssl_user(proxy: ProxyProcess, tls_pki: Pki) -> None:
    conn = pymysql.connect(host="localhost", port=proxy.port("mysql"), user=MY_TLS_USER,
                           password=MY_TLS_PASSWORD, database="app", ssl_ca=str(tls_pki.ca),
                           ssl_verify_identity=True, ssl_verify_cert=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = cur.fetchone()
            assert row is not None and row[1], row  # the server's leg is encrypted
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0].startswith(MY_TLS_USER + "@")
        # the client's leg too
        assert conn._sock is not None and isinstance(conn._sock, ssl.SSLSocket)
    finally:
        conn.close()


def test_mysqlclient_tls_with_host_check(proxy: ProxyProcess, tls_pki: Pki) -> None:
    # 127.0.0.1 (libmysqlclient takes "localhost" for its Unix socket); the certificate names
    # it in an IP SAN, which VERIFY_IDENTITY checks.
    conn = MySQLdb.connect(host="127.0.0.1", port=proxy.port("mysql"), user=MY_TLS_USER,
                           password=MY_TLS_PASSWORD, database="app",
                           ssl={"ca": str(tls_pki.ca)}, ssl_mode="VERIFY_IDENTITY")
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1 + 1")
        assert cur.fetchone() == (2,)
        cur.execute("SHOW STATUS LIKE 'Ssl_version'")
        assert cur.fetchone()[1].startswith("TLSv1")
    finally:
        conn.close()


def test_mysql_require_listener_refuses_plaintext(proxy: ProxyProcess, tls_pki: Pki) -> None:
    with pytest.raises(pymysql.err.OperationalError) as info:
        pymysql.connect(host="127.0.0.1", port=proxy.port("mysql"), user=MY_TLS_USER,
                        password=MY_TLS_PASSWORD, database="app", ssl_disabled=True)
    assert info.value.args[0] == 3159
    assert "insecure transport" in info.value.args[1]


def test_mysql_wrong_server_ca_named(proxy: ProxyProcess, tls_pki: Pki) -> None:
    with pytest.raises(pymysql.err.OperationalError) as info:
        pymysql.connect(host="127.0.0.1", port=proxy.port("my_wrong_ca"), user=MY_TLS_USER,
                        password=MY_TLS_PASSWORD, database="app", ssl_disabled=True)
    assert "certificate verify failed" in info.value.args[1]
    conn = pymysql.connect(host="localhost", port=proxy.port("mysql"), user=MY_TLS_USER,
                           password=MY_TLS_PASSWORD, database="app", ssl=my_ssl(tls_pki))
    conn.close()


# --------------------------------------------------------------------------- passthrough in TLS


def test_passthrough_inside_tls_both_protocols(proxy: ProxyProcess, tls_pki: Pki) -> None:
    """No user in the config: the client's password (inside TLS) logs in to the TLS-only
    users; MySQL clients send it through caching_sha2_password's full authentication."""
    for _ in range(2):  # the second login is checked against the cached verifier
        with psycopg.connect(pg_dsn(proxy, tls_pki, "pg_pass")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (TLS_USER,)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(pg_dsn(proxy, tls_pki, "pg_pass").replace(TLS_PASSWORD, "wrong"))
    assert "password authentication failed" in str(info.value)
    for _ in range(2):
        conn = pymysql.connect(host="localhost", port=proxy.port("my_pass"), user=MY_TLS_USER,
                               password=MY_TLS_PASSWORD, database="app", ssl_ca=str(tls_pki.ca),
                               ssl_verify_identity=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT CURRENT_USER()")
                assert cur.fetchone()[0].startswith(MY_TLS_USER + "@")
        finally:
            conn.close()
    with pytest.raises(pymysql.err.OperationalError) as my_info:
        pymysql.connect(host="localhost", port=proxy.port("my_pass"), user=MY_TLS_USER,
                        password="wrong", database="app", ssl_ca=str(tls_pki.ca))
    assert my_info.value.args[0] == 1045


def test_check_reports_unreadable_tls_files(tls_pki: Pki, tmp_path: Path) -> None:
    import yaml

    config = make_config(pg_listener(
        _FakeServer(),  # type: ignore[arg-type]  # --check needs no server
        users=PG_TLS_USERS,
        client_tls={"mode": "require", "cert_file": str(tmp_path / "missing.crt"),
                    "key_file": str(tls_pki.server.key)},
        server_tls={"mode": "verify-full", "ca_file": str(tls_pki.ca)}))
    path = tmp_path / "poolproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("-c", str(path), "--check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "listeners[pg].client_tls.cert_file" in result.stdout
    assert "missing.crt" in result.stdout
    # and the daemon refuses to start with it, naming the key
    proc = run_cli("-c", str(path))
    assert proc.returncode == 1
    assert "client_tls.cert_file" in proc.stderr + proc.stdout


class _FakeServer:
    host = "127.0.0.1"
    port = 5432


def test_stalled_handshake_bounded_by_client_login_timeout(tls_pg: PgServer, tls_pki: Pki,
                                                           proxy_certs: Path,
                                                           tmp_path: Path) -> None:
    config = make_config(pg_listener(tls_pg, users=PG_TLS_USERS, client_login_timeout="1s",
                                     client_tls=client_tls(proxy_certs, "prefer"),
                                     server_tls=server_tls(tls_pki)))
    with ProxyProcess(config, tmp_path / "proxy") as proc:
        port = proc.port("pg")
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(struct.pack("!II", 8, 80877103))
        assert sock.recv(1) == b"S"
        # ... then silence, in the middle of the handshake: closed after ~1 s
        started = time.monotonic()
        sock.settimeout(10)
        try:
            assert sock.recv(4096) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 5
        sock.close()
        # a plaintext client of this prefer listener works (the server leg is TLS)
        with psycopg.connect(pg_dsn(proc, tls_pki, sslmode="disable")) as conn:
            assert conn.execute("SELECT 7").fetchone() == (7,)
        # ... and the stalled client is gone from poolproxy too (not leaked mid-handshake)
        assert metric(proc, "poolproxy_client_disconnects_total", listener="pg",
                      reason="login_timeout") == 1


def test_oversized_client_certificate_is_refused(proxy: ProxyProcess, tls_pki: Pki,
                                                 tmp_path: Path) -> None:
    """A client certificate of ~150 KB (OpenSSL's limit for a peer's chain is 100 KB): the
    handshake fails, poolproxy keeps serving."""
    names = [f"n{i:05d}.{'x' * 20}.example" for i in range(5000)]
    huge = tls_pki.authority.issue_files(tmp_path, "huge", TLS_USER, dns=names, server=False,
                                         client=True)
    assert huge.cert.stat().st_size > 150_000
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn(proxy, tls_pki, "pg_verify", sslcert=str(huge.cert),
                               sslkey=str(huge.key)))
    pair = tls_pki.client(TLS_USER)
    with psycopg.connect(pg_dsn(proxy, tls_pki, "pg_verify", sslcert=str(pair.cert),
                                sslkey=str(pair.key))) as conn:
        assert conn.execute("SELECT 8").fetchone() == (8,)
    assert metric(proxy, "poolproxy_tls_handshakes_total", listener="pg_verify", side="client",
                  result="failed") >= 1


def test_reload_of_server_tls_renews_the_pool(tls_pg: PgServer, tls_pki: Pki, tmp_path: Path) -> None:
    """server_tls changed by a reload: the pool's plaintext servers are closed, new ones use
    TLS (a pool never mixes them)."""
    users = [{"name": "app", "password": "app-secret"}]
    config = make_config(pg_listener(tls_pg, users=users, pool_size=1))
    dsn_tail = "user=app password=app-secret dbname=app sslmode=disable connect_timeout=10"

    def server_ssl(proc: ProxyProcess) -> bool:
        with psycopg.connect(f"host=127.0.0.1 port={proc.port('pg')} {dsn_tail}") as conn:
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                               ).fetchone()
            assert row is not None
            return bool(row[0])

    with ProxyProcess(config, tmp_path / "proxy") as proc:
        assert server_ssl(proc) is False
        config["listeners"][0]["server_tls"] = server_tls(tls_pki, "require")
        proc.reload(config)
        proc.wait_for_log("TLS settings changed")
        assert server_ssl(proc) is True
