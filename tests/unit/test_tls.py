"""Unit tests for proxy/tls.py: mode semantics, settings validation, the context builders for
every mode, errors that name the broken file's key, and reload keeping the old context.

Certificates come from ``tests.harness.certs.make_pki`` (made per module, in a temp dir).
Handshakes run in memory (two ``ssl.SSLObject``s joined by ``MemoryBIO``s), so a verification
failure shows up as the exact ``SSLError`` a socket would raise, with no socket or thread; one
test does the same over loopback with uvloop to show the contexts work with its transports.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from proxy import tls
from proxy.tls import TlsContextHolder, TlsError, TlsSettings
from tests.harness.certs import CertKey, Pki, make_pki

MODES = tls.MODES


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def listener(pki: Pki, mode: str, cert: CertKey | None = None, ca: Path | None = None
             ) -> TlsSettings:
    """client_tls settings presenting ``cert`` (default: the good server certificate)."""
    cert = cert or pki.server
    return TlsSettings(mode, str(cert.cert), str(cert.key), str(ca or pki.ca))


def upstream(pki: Pki, mode: str, *, ca: Path | None = None, client: CertKey | None = None,
             server_name: str | None = None) -> TlsSettings:
    """server_tls settings trusting ``ca`` (default: the test CA)."""
    return TlsSettings(mode, str(client.cert) if client else None,
                       str(client.key) if client else None,
                       str(ca or pki.ca) if tls.verifies_peer(mode) else None, server_name)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              server_hostname: str | None = "127.0.0.1") -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A complete handshake in memory, then one byte each way (with TLS 1.3 the server's
    verdict on a client certificate only reaches the client after the handshake). Raises the
    first side's ``SSLError``."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    cli = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    done = {"srv": False, "cli": False}
    for _ in range(10):
        for name, obj in (("cli", cli), ("srv", srv)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), done
    cli.write(b"q")
    s_in.write(c_out.read())
    assert srv.read(1) == b"q"
    srv.write(b"r")
    c_in.write(s_out.read())
    assert cli.read(1) == b"r"
    return srv, cli


def verify_error(exc_info: pytest.ExceptionInfo[ssl.SSLError]) -> str:
    exc = exc_info.value
    return getattr(exc, "verify_message", None) or str(exc)


# --------------------------------------------------------------------------- mode semantics


def test_mode_predicates_follow_the_table() -> None:
    table = {  # offers, wants, requires, verifies, checks name, attempts
        "disable": (False, False, False, False, False, (False,)),
        "allow": (True, False, False, False, False, (False, True)),
        "prefer": (True, True, False, False, False, (True, False)),
        "require": (True, True, True, False, False, (True,)),
        "verify-ca": (True, True, True, True, False, (True,)),
        "verify-full": (True, True, True, True, True, (True,)),
    }
    assert tuple(table) == MODES
    for mode, expected in table.items():
        got = (tls.offers_tls(mode), tls.wants_tls(mode), tls.requires_tls(mode),
               tls.verifies_peer(mode), tls.checks_name(mode), tls.connection_attempts(mode))
        assert got == expected, mode
    assert not TlsSettings().enabled and TlsSettings("allow").enabled


def test_looks_like_tls() -> None:
    client_hello_start = bytes([0x16, 0x03, 0x01, 0x02, 0x00])
    startup = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # an SSLRequest
    assert tls.looks_like_tls(client_hello_start) is True
    assert tls.looks_like_tls(startup) is False
    assert tls.looks_like_tls(b"") is None
    assert tls.looks_like_tls(b"\x16") is None
    assert tls.looks_like_tls(b"\x16\x03") is None
    assert tls.looks_like_tls(b"\x16\x04\x00") is False
    assert tls.looks_like_tls(memoryview(client_hello_start)[:3]) is True


def test_server_hostname_and_common_name() -> None:
    assert tls.server_hostname(TlsSettings("verify-full"), "db.internal") == "db.internal"
    assert tls.server_hostname(TlsSettings("verify-full", server_name="db"), "10.0.0.5") == "db"
    assert tls.server_hostname(TlsSettings("require"), "10.0.0.5") == "10.0.0.5"
    assert tls.server_hostname(TlsSettings("require"), "/var/run/postgresql") is None
    cert = {"subject": ((("organizationName", "x"),), (("commonName", "a"),),
                        (("commonName", "app"),))}
    assert tls.peer_common_name(cert) == "app"
    assert tls.client_cert_matches_user(cert, "app")
    assert not tls.client_cert_matches_user(cert, "a")
    assert tls.peer_common_name({}) is None and tls.peer_common_name(None) is None
    assert not tls.client_cert_matches_user({}, "app")


# --------------------------------------------------------------------------- settings


def test_settings_from_mapping() -> None:
    parse = tls.settings_from_mapping
    assert parse(None, "client_tls") == TlsSettings()
    assert parse({"mode": "Require", "cert_file": "/c", "key_file": "/k"}, "client_tls",
                 "listeners[0].client_tls") == TlsSettings("require", "/c", "/k")
    assert parse({"mode": "verify-full", "ca_file": "/ca", "server_name": "db"},
                 "server_tls") == TlsSettings("verify-full", ca_file="/ca", server_name="db")
    cases = [
        ({"mode": "verify_full"}, "server_tls",
         "listeners[0].server_tls.mode: must be one of disable, allow, prefer, require, verify-ca,"
         " verify-full (did you mean verify-full?)"),
        ({"mode": "on"}, "client_tls", "listeners[0].client_tls.mode: must be one of"),
        ({"mode": "require", "certfile": "/c"}, "client_tls",
         "listeners[0].client_tls.certfile: unknown key"),
        ({"mode": "require", "server_name": "x"}, "client_tls",
         "listeners[0].client_tls.server_name: unknown key (only server_tls has it)"),
        ({"mode": "require", "cert_file": 1}, "client_tls",
         "listeners[0].client_tls.cert_file: must be a string"),
        ({"mode": "require", "cert_file": " "}, "client_tls",
         "listeners[0].client_tls.cert_file: must not be empty"),
        ({"mode": "require", "cert_file": "/c"}, "client_tls",
         "listeners[0].client_tls.key_file: is required when mode is require"),
        ("require", "client_tls", "listeners[0].client_tls: must be a mapping"),
    ]
    for raw, side, message in cases:
        path = f"listeners[0].{side}"
        with pytest.raises(TlsError) as exc_info:
            parse(raw, side, path)  # type: ignore[arg-type]
        assert str(exc_info.value).startswith(message), (raw, str(exc_info.value))
    assert tls.settings_to_dict(TlsSettings("require", "/c", "/k")) == {
        "mode": "require", "cert_file": "/c", "key_file": "/k"}


def test_validate_errors_name_the_key() -> None:
    def errors(settings: TlsSettings, side: tls.Side, **kw: bool) -> list[str]:
        return [str(e) for e in tls.validate(settings, side, f"l.{side}", **kw)]

    assert errors(TlsSettings(), "client_tls") == []
    assert errors(TlsSettings(), "server_tls") == []
    assert errors(TlsSettings("prefer"), "client_tls") == [
        "l.client_tls.cert_file: is required when mode is prefer (poolproxy presents this "
        "certificate to clients)",
        "l.client_tls.key_file: is required when mode is prefer (poolproxy presents this "
        "certificate to clients)",
    ]
    assert errors(TlsSettings("verify-ca", "/c", "/k"), "client_tls") == [
        "l.client_tls.ca_file: is required when mode is verify-ca (the CA that signs client "
        "certificates)"]
    assert errors(TlsSettings("require", "/c", "/k", "system"), "client_tls") == [
        "l.client_tls.ca_file: 'system' is only for server_tls; name a CA file"]
    assert errors(TlsSettings("require"), "server_tls") == []
    assert errors(TlsSettings("require", cert_file="/c"), "server_tls") == [
        "l.server_tls.key_file: is required with cert_file (the client certificate's key and "
        "certificate go together)"]
    assert errors(TlsSettings("require", key_file="/k"), "server_tls")[0].startswith(
        "l.server_tls.cert_file: is required with key_file")
    assert errors(TlsSettings("verify-full"), "server_tls")[0].startswith(
        "l.server_tls.ca_file: is required when mode is verify-full")
    assert errors(TlsSettings("verify-full", ca_file="system"), "server_tls") == []
    assert errors(TlsSettings("verify-ca", ca_file="system"), "server_tls") == [
        "l.server_tls.ca_file: 'system' needs mode verify-full (as libpq's sslrootcert=system "
        "does)"]
    assert errors(TlsSettings("verify-full", ca_file="/ca", server_name="a b"), "server_tls") == [
        "l.server_tls.server_name: must be a host name or an IP address"]
    for name in ("db.example.com", "localhost", "10.1.2.3", "::1", "db-1.internal."):
        assert errors(TlsSettings("verify-full", ca_file="/ca", server_name=name),
                      "server_tls") == [], name
    assert errors(TlsSettings("require"), "server_tls", unix_socket=True) == [
        "l.server_tls.mode: require cannot work: server.host is a Unix socket, where TLS is not "
        "used; use disable (or TCP)"]
    assert errors(TlsSettings("prefer"), "server_tls", unix_socket=True) == []
    assert errors(TlsSettings("on"), "client_tls")[0].startswith("l.client_tls.mode: must be")


def test_setting_warnings() -> None:
    assert tls.setting_warnings(TlsSettings(cert_file="/c"), "client_tls", "l.client_tls") == [
        "l.client_tls.cert_file: is set but mode is disable, so TLS is off"]
    (warning,) = tls.setting_warnings(TlsSettings("require", ca_file="/ca"), "server_tls", "l.server_tls")
    assert warning.startswith("l.server_tls.ca_file: is not used by mode require")
    (warning,) = tls.setting_warnings(TlsSettings("prefer", "/c", "/k", "/ca"), "client_tls")
    assert warning.startswith("client_tls.ca_file: is not used by mode prefer")
    (warning,) = tls.setting_warnings(TlsSettings("require", server_name="db"), "server_tls")
    assert warning.startswith("server_tls.server_name: is only checked by mode verify-full")
    assert tls.setting_warnings(TlsSettings("verify-full", ca_file="/ca", server_name="db"),
                        "server_tls") == []
    assert tls.summary(TlsSettings("verify-full", ca_file="/ca", server_name="db")) == (
        "verify-full (ca /ca, server_name db)")
    assert tls.summary(TlsSettings()) == "disable"


# --------------------------------------------------------------------------- context builders


@pytest.mark.parametrize("mode", MODES)
def test_server_context_for_every_mode(pki: Pki, mode: str) -> None:
    settings = listener(pki, mode)
    ctx = tls.build_context(settings, "client_tls", alpn=(tls.PG_ALPN,))
    if mode == "disable":
        assert ctx is None
        with pytest.raises(TlsError, match="client_tls.mode: is disable"):
            tls.server_context(settings)
        return
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
    expected = ssl.CERT_OPTIONAL if mode in ("verify-ca", "verify-full") else ssl.CERT_NONE
    assert ctx.verify_mode == expected
    # A client with a certificate gets through in every mode; one without only where none is
    # asked for.
    client = tls.client_context(upstream(pki, "verify-full", client=pki.client("app_tls")),
                                alpn=(tls.PG_ALPN,))
    srv, cli = handshake(ctx, client)
    assert srv.selected_alpn_protocol() == cli.selected_alpn_protocol() == tls.PG_ALPN
    assert srv.version() in ("TLSv1.2", "TLSv1.3")
    if expected == ssl.CERT_OPTIONAL:
        assert tls.peer_common_name(srv.getpeercert()) == "app_tls"
        # Without a certificate the handshake completes; the protocol code refuses the client
        # in its own words (see the integration tests).
        srv, _ = handshake(ctx, tls.client_context(upstream(pki, "verify-full")))
        assert not srv.getpeercert()
        # One from another CA fails the handshake.
        with pytest.raises(ssl.SSLError, match="certificate"):
            handshake(ctx, tls.client_context(upstream(pki, "verify-full",
                                                       client=pki.other_client)))
    else:
        assert not srv.getpeercert()  # None: no certificate was asked for
        handshake(ctx, tls.client_context(upstream(pki, "verify-full")))


@pytest.mark.parametrize("mode", MODES)
def test_client_context_for_every_mode(pki: Pki, mode: str) -> None:
    settings = upstream(pki, mode)
    ctx = tls.build_context(settings, "server_tls")
    if mode == "disable":
        assert ctx is None
        return
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    verifies = mode in ("verify-ca", "verify-full")
    assert ctx.verify_mode == (ssl.CERT_REQUIRED if verifies else ssl.CERT_NONE)
    assert ctx.check_hostname == (mode == "verify-full")
    good = tls.server_context(listener(pki, "require"))
    handshake(good, ctx)
    handshake(good, ctx, server_hostname="localhost")
    # The broken server certificates: only the verifying modes notice.
    for broken, verify_full_only in ((pki.expired, False), (pki.other_server, False),
                                     (pki.wrong_host, True)):
        server = tls.server_context(listener(pki, "require", broken))
        if verifies and (mode == "verify-full" or not verify_full_only):
            with pytest.raises(ssl.SSLCertVerificationError):
                handshake(server, ctx)
        else:
            handshake(server, ctx)


def test_verification_failures_say_why(pki: Pki) -> None:
    verify_ca = tls.client_context(upstream(pki, "verify-ca"))
    verify_full = tls.client_context(upstream(pki, "verify-full"))

    def server(cert: CertKey) -> ssl.SSLContext:
        return tls.server_context(listener(pki, "require", cert))

    with pytest.raises(ssl.SSLCertVerificationError) as exc_info:
        handshake(server(pki.expired), verify_ca)
    assert verify_error(exc_info) == "certificate has expired"
    with pytest.raises(ssl.SSLCertVerificationError) as exc_info:
        handshake(server(pki.other_server), verify_ca)
    assert verify_error(exc_info) == "unable to get local issuer certificate"
    with pytest.raises(ssl.SSLCertVerificationError) as exc_info:
        handshake(server(pki.wrong_host), verify_full, "127.0.0.1")
    assert "IP address mismatch" in verify_error(exc_info)
    with pytest.raises(ssl.SSLCertVerificationError) as exc_info:
        handshake(server(pki.wrong_host), verify_full, "localhost")
    assert "Hostname mismatch" in verify_error(exc_info)
    # verify-ca does not look at the name; server_name makes verify-full check another one.
    handshake(server(pki.wrong_host), verify_ca, "localhost")
    named = upstream(pki, "verify-full", server_name="wrong-host.invalid")
    handshake(server(pki.wrong_host), tls.client_context(named),
              tls.server_hostname(named, "127.0.0.1"))
    # A wrong CA file on our side is the same failure as a server certificate of another CA.
    other = tls.client_context(upstream(pki, "verify-ca", ca=pki.other_ca))
    with pytest.raises(ssl.SSLCertVerificationError) as exc_info:
        handshake(server(pki.server), other)
    assert verify_error(exc_info) == "unable to get local issuer certificate"


def test_client_certificates(pki: Pki) -> None:
    """client_tls verify-ca: a client certificate must be of the CA (a missing one passes the
    handshake and is refused by the protocol code); server_tls presents one when
    cert_file/key_file are set."""
    accept = tls.server_context(listener(pki, "verify-ca"))
    with_cert = tls.client_context(upstream(pki, "require", client=pki.client("app_cert")))
    srv, _ = handshake(accept, with_cert)
    assert tls.client_cert_matches_user(srv.getpeercert(), "app_cert")
    assert not tls.client_cert_matches_user(srv.getpeercert(), "app_tls")
    srv, _ = handshake(accept, tls.client_context(upstream(pki, "require")))
    assert not srv.getpeercert()  # missing: no certificate to match any user
    assert not tls.client_cert_matches_user(srv.getpeercert(), "app_cert")
    with pytest.raises(ssl.SSLError) as exc_info:  # a client certificate of another CA
        handshake(accept, tls.client_context(upstream(pki, "require", client=pki.other_client)))
    assert "CERTIFICATE_VERIFY_FAILED" in str(exc_info.value)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_below_1_2_is_refused(pki: Pki) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    try:
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises(ssl.SSLError):
        handshake(tls.server_context(listener(pki, "require")), old)


def test_load_errors_name_the_broken_file(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    key = serialization.load_pem_private_key(pki.server.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    combined = tmp_path / "combined.pem"
    combined.write_bytes(pki.server.cert.read_bytes() + pki.server.key.read_bytes())
    cert, key_file, ca = str(pki.server.cert), str(pki.server.key), str(pki.ca)
    path = "listeners[0].client_tls"
    cases = [
        (TlsSettings("require", str(tmp_path / "missing.crt"), key_file),
         f"{path}.cert_file: cannot read {tmp_path}/missing.crt: No such file or directory"),
        (TlsSettings("require", cert, str(tmp_path / "missing.key")),
         f"{path}.key_file: cannot read {tmp_path}/missing.key: No such file or directory"),
        (TlsSettings("require", str(garbage), key_file),
         f"{path}.cert_file: no PEM certificate in {garbage}"),
        (TlsSettings("require", key_file, key_file),
         f"{path}.cert_file: no PEM certificate in {key_file}"),
        (TlsSettings("require", cert, str(garbage)),
         f"{path}.key_file: no usable PEM private key in {garbage}"),
        (TlsSettings("require", cert, str(pki.other_server.key)),
         f"{path}.key_file: {pki.other_server.key} is not the key of the certificate in {cert}"),
        (TlsSettings("require", cert, str(encrypted)),
         f"{path}.key_file: {encrypted}: the private key is encrypted (poolproxy cannot ask "
         "for a passphrase)"),
        (TlsSettings("verify-ca", cert, key_file, str(garbage)),
         f"{path}.ca_file: no usable PEM CA certificate in {garbage} "
         "(NO_CERTIFICATE_OR_CRL_FOUND)"),
        (TlsSettings("verify-ca", cert, key_file, str(tmp_path / "missing-ca.crt")),
         f"{path}.ca_file: cannot read {tmp_path}/missing-ca.crt: No such file or directory"),
    ]
    for settings, message in cases:
        with pytest.raises(TlsError) as exc_info:
            tls.server_context(settings, path=path)
        assert str(exc_info.value) == message
        assert exc_info.value.path == message.split(": ", 1)[0]
        assert [str(e) for e in tls.check(settings, "client_tls", path)] == [message]
    # The same checks on the other side, under its own path.
    with pytest.raises(TlsError, match=r"^l\.server_tls\.ca_file: no usable PEM CA"):
        tls.client_context(TlsSettings("verify-full", ca_file=str(garbage)), path="l.server_tls")
    with pytest.raises(TlsError, match=r"^l\.server_tls\.key_file: .* is not the key"):
        tls.client_context(TlsSettings("require", cert, str(pki.other_server.key)),
                           path="l.server_tls")
    # A file holding both the certificate and the key works; so does the system trust store.
    assert tls.check(TlsSettings("require", str(combined), str(combined)), "client_tls") == []
    assert tls.check(TlsSettings("verify-full", ca_file="system"), "server_tls") == []
    assert tls.check(TlsSettings("verify-ca", cert, key_file, ca), "client_tls") == []
    assert [str(e) for e in tls.check(TlsSettings("require"), "client_tls")] == [
        "client_tls.cert_file: is required when mode is require (poolproxy presents this "
        "certificate to clients)",
        "client_tls.key_file: is required when mode is require (poolproxy presents this "
        "certificate to clients)"]


def test_certificate_warnings(pki: Pki, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    path = "l.client_tls"
    (warning,) = tls.certificate_warnings(listener(pki, "require", pki.expired), path)
    assert warning.startswith(f"{path}.cert_file: the certificate in {pki.expired.cert} expired on ")
    soon = pki.authority.issue_files(tmp_path, "soon", "localhost", dns=("localhost",),
                                     not_after=now + dt.timedelta(days=3))
    (warning,) = tls.certificate_warnings(listener(pki, "require", soon), path)
    assert " expires on " in warning
    later = pki.authority.issue_files(tmp_path, "later", "localhost", dns=("localhost",),
                                      not_before=now + dt.timedelta(days=1))
    (warning,) = tls.certificate_warnings(listener(pki, "require", later), path)
    assert " is not valid before " in warning
    assert tls.certificate_warnings(listener(pki, "require"), path) == []
    assert tls.certificate_warnings(TlsSettings(), path) == []
    assert tls.certificate_warnings(TlsSettings("require", "/missing", "/k"), path) == []


# --------------------------------------------------------------------------- reload


@pytest.fixture
def own_files(pki: Pki, tmp_path: Path) -> Iterator[CertKey]:
    """A copy of the server certificate and key that a test may break and repair."""
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    yield CertKey(cert, key)


def presented(ctx: ssl.SSLContext, pki: Pki) -> bytes:
    _, cli = handshake(ctx, tls.client_context(upstream(pki, "verify-full")))
    der = cli.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_reload_keeps_the_old_context_when_a_file_breaks(
    pki: Pki, own_files: CertKey, caplog: pytest.LogCaptureFixture
) -> None:
    path = "listeners[0].client_tls"
    settings = listener(pki, "require", own_files)
    holder = TlsContextHolder(settings, "client_tls", path, alpn=(tls.PG_ALPN,))
    first = holder.context
    assert first is not None and holder.error is None and holder.generation == 1
    assert holder.mode == "require"

    own_files.cert.write_text("-----BEGIN CERTIFICATE-----\ntruncated\n")
    with caplog.at_level(logging.ERROR, logger="poolproxy.tls"):
        error = holder.reload()
    assert error is not None
    assert str(error) == f"{path}.cert_file: no PEM certificate in {own_files.cert}"
    assert holder.error is error
    assert holder.context is first and holder.settings is settings and holder.generation == 1
    assert f"{path}.cert_file: no PEM certificate" in caplog.text
    assert "keeping the previous TLS settings (mode require)" in caplog.text
    handshake(holder.context, tls.client_context(upstream(pki, "verify-full")))  # still serves

    # A stricter mode whose CA file is missing: the old mode and context stay together.
    broken_mode = TlsSettings("verify-ca", str(pki.server.cert), str(pki.server.key),
                              str(own_files.cert.parent / "no-ca.crt"))
    error = holder.reload(broken_mode)
    assert error is not None and error.path == f"{path}.ca_file"
    assert holder.settings is settings and holder.context is first and holder.mode == "require"

    # Repaired: the next reload builds a new context.
    shutil.copy(pki.server.cert, own_files.cert)
    assert holder.reload() is None
    assert holder.context is not first and holder.error is None and holder.generation == 2


def test_reload_rereads_renewed_files(pki: Pki, own_files: CertKey) -> None:
    holder = TlsContextHolder(listener(pki, "require", own_files), "client_tls")
    assert holder.context is not None
    before = presented(holder.context, pki)
    pki.authority.issue_files(own_files.cert.parent, "server", "localhost",
                              dns=("localhost",), ips=("127.0.0.1",))  # same paths, new cert
    assert presented(holder.context, pki) == before  # nothing changes until the reload
    assert holder.reload() is None
    after = presented(holder.context, pki)
    assert after != before and after == ssl.PEM_cert_to_DER_cert(own_files.cert.read_text())


def test_reload_changes_mode(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    holder = TlsContextHolder(TlsSettings(), "client_tls", "l.client_tls")
    assert holder.context is None and holder.mode == "disable"
    with caplog.at_level(logging.INFO, logger="poolproxy.tls"):
        assert holder.reload(listener(pki, "verify-ca")) is None
    assert holder.context is not None and holder.context.verify_mode == ssl.CERT_OPTIONAL
    assert "l.client_tls: TLS settings changed: disable -> verify-ca" in caplog.text
    assert holder.reload(TlsSettings()) is None
    assert holder.context is None and holder.mode == "disable"
    side = TlsContextHolder(upstream(pki, "verify-full"), "server_tls", "l.server_tls")
    assert side.context is not None and side.context.check_hostname
    assert "verify-full" in repr(side)


def test_reload_survives_an_unforeseen_builder_error(pki: Pki) -> None:
    calls: list[TlsSettings] = []

    def builder(settings: TlsSettings, side: tls.Side, **kwargs: object) -> ssl.SSLContext | None:
        calls.append(settings)
        if len(calls) > 1:
            raise ssl.SSLError("boom")
        return tls.build_context(settings, side, **kwargs)  # type: ignore[arg-type]

    holder = TlsContextHolder(listener(pki, "require"), "client_tls", "l.client_tls",
                              builder=builder)
    first = holder.context
    error = holder.reload()
    assert error is not None and error.path == "l.client_tls"
    assert str(error).startswith("l.client_tls: cannot build the TLS context: ")
    assert holder.context is first and holder.error is error


def test_holder_refuses_to_start_with_a_broken_file(pki: Pki, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(TlsError, match=r"^l\.client_tls\.key_file: cannot read"):
        TlsContextHolder(TlsSettings("require", str(pki.server.cert), str(tmp_path / "nokey")),
                         "client_tls", "l.client_tls")
    with caplog.at_level(logging.WARNING, logger="poolproxy.tls"):
        TlsContextHolder(listener(pki, "require", pki.expired), "client_tls", "l.client_tls")
    assert "l.client_tls.cert_file: the certificate in" in caplog.text and "expired" in caplog.text


# --------------------------------------------------------------------------- over loopback


def test_contexts_over_loopback_with_uvloop(pki: Pki) -> None:
    """The contexts as uvloop transports use them: verify-full both ways, ALPN, and a
    verify-ca client refusing a server of another CA."""
    import uvloop

    async def main() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sslobj = writer.get_extra_info("ssl_object")
            cn = tls.peer_common_name(sslobj.getpeercert())
            writer.write(f"{cn} {sslobj.selected_alpn_protocol()} ".encode() + await reader.read(5))
            await writer.drain()
            writer.close()

        accept = tls.server_context(listener(pki, "verify-full"), alpn=(tls.PG_ALPN,))
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=accept)
        port = server.sockets[0].getsockname()[1]
        settings = upstream(pki, "verify-full", client=pki.client("app_tls"))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client_context(settings, alpn=(tls.PG_ALPN,)),
            server_hostname=tls.server_hostname(settings, "127.0.0.1"))
        writer.write(b"hello")
        assert await reader.read() == b"app_tls postgresql hello"
        writer.close()
        server.close()

        wrong = await asyncio.start_server(
            echo, "127.0.0.1", 0, ssl=tls.server_context(listener(pki, "require", pki.other_server)))
        port = wrong.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls.client_context(upstream(pki, "verify-ca")),
                server_hostname="127.0.0.1")
        wrong.close()

    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        runner.run(asyncio.wait_for(main(), 10))


def test_no_sockets_or_asyncio_in_tls_module() -> None:
    import ast

    tree = ast.parse(Path(tls.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "selectors", "uvloop"}, imported
