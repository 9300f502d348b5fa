"""Byte-level tests of proxy.auth: SCRAM-SHA-256, PostgreSQL md5, mysql_native, caching_sha2.

Expected values come from published vectors (RFC 7677), from independent computation with
hashlib / shell tools, or from independent implementations (libpq via psycopg, scramp,
PyMySQL) where installed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import subprocess
import sys

import pytest

from proxy.auth import caching_sha2, md5, mysql_native, scram
from proxy.auth.caching_sha2 import (
    FAST_AUTH_SUCCESS,
    PERFORM_FULL_AUTH,
    REQUEST_PUBLIC_KEY,
    rsa_encrypt_password,
    scramble_caching_sha2,
    verify_caching_sha2,
    xor_password_for_full_auth,
)
from proxy.auth.md5 import md5_hash, md5_response, verify_md5
from proxy.auth.mysql_native import scramble_native, verify_native
from proxy.auth.scram import (
    MECHANISM,
    ScramClient,
    ScramError,
    ScramServer,
    ScramVerifier,
    make_verifier,
    mock_verifier,
    parse_verifier,
    salted_password,
    saslprep,
)
from tests.unit.rfc7677 import (
    RFC_CLIENT_FINAL,
    RFC_CLIENT_FIRST,
    RFC_CLIENT_NONCE,
    RFC_PASSWORD,
    RFC_SALT,
    RFC_SERVER_FINAL,
    RFC_SERVER_FIRST,
    RFC_SERVER_NONCE,
)

# ---------------------------------------------------------------------------------------------
# SCRAM-SHA-256: RFC 7677 section 3 test vector
# ---------------------------------------------------------------------------------------------


def rfc_verifier() -> ScramVerifier:
    return make_verifier(RFC_PASSWORD, RFC_SALT, 4096)


def test_scram_rfc7677_client_side() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, username="user")
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)  # does not raise


def test_scram_rfc7677_server_side() -> None:
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL


def test_scram_verifier_keys_match_independent_derivation() -> None:
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    v = rfc_verifier()
    assert salted_password("pencil", RFC_SALT, 4096) == salted
    assert v.stored_key == hashlib.sha256(client_key).digest()
    assert v.server_key == server_key
    assert (v.salt, v.iterations) == (RFC_SALT, 4096)


def test_scram_client_first_is_what_postgres_clients_send() -> None:
    client = ScramClient("pw")
    # libpq sends an empty user name and an 18-byte random nonce in base64.
    m = re.fullmatch(rb"n,,n=,r=([A-Za-z0-9+/=]{24})", client.client_first())
    assert m is not None
    assert ScramClient("pw").client_first() != client.client_first()  # nonce is random


def test_scram_client_escapes_username() -> None:
    client = ScramClient("pw", nonce="abc", username="a,b=c")
    assert client.client_first() == b"n,,n=a=2Cb=3Dc,r=abc"


def run_exchange(client: ScramClient, server: ScramServer) -> None:
    server_first = server.handle_client_first(client.client_first())
    client_final = client.handle_server_first(server_first)
    client.verify_server_final(server.handle_client_final(client_final))


def test_scram_round_trip_right_password() -> None:
    verifier = make_verifier("correct horse", iterations=4096)
    assert len(verifier.salt) == 16
    run_exchange(ScramClient("correct horse"), ScramServer(verifier))


def test_scram_round_trip_non_ascii_password() -> None:
    # Same password after SASLprep (NBSP -> space), so both sides derive the same key.
    verifier = make_verifier("p\u00e4ss word")
    run_exchange(ScramClient("p\u00e4ss\u00a0word"), ScramServer(verifier))


def test_scram_round_trip_wrong_password() -> None:
    verifier = make_verifier("correct horse")
    client = ScramClient("battery staple")
    server = ScramServer(verifier)
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(ScramError, match="password authentication failed"):
        server.handle_client_final(client_final)


def test_scram_server_rejects_tampered_proof() -> None:
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    server.handle_client_first(RFC_CLIENT_FIRST)
    proof = bytearray(base64.b64decode(RFC_CLIENT_FINAL.rsplit(b"p=", 1)[1]))
    proof[0] ^= 1
    tampered = RFC_CLIENT_FINAL.rsplit(b"p=", 1)[0] + b"p=" + base64.b64encode(bytes(proof))
    with pytest.raises(ScramError, match="password authentication failed"):
        server.handle_client_final(tampered)


def test_scram_server_accepts_y_header_and_checks_binding_data() -> None:
    verifier = make_verifier("pw")
    server = ScramServer(verifier, nonce="SERVERNONCE")
    first = server.handle_client_first(b"y,,n=,r=CLIENTNONCE")
    assert first.startswith(b"r=CLIENTNONCESERVERNONCE,s=")
    # With "y,," the c= attribute must be base64("y,,") = "eSws", so "biws" is rejected.
    server2 = ScramServer(verifier, nonce="SERVERNONCE")
    server2.handle_client_first(b"y,,n=,r=CLIENTNONCE")
    with pytest.raises(ScramError, match="channel binding"):
        server2.handle_client_final(b"c=biws,r=CLIENTNONCESERVERNONCE,p=" + b"A" * 44)


def test_scram_server_y_header_full_exchange() -> None:
    # Build a correct y,, client-final by hand to show the proof covers c=eSws.
    password = "pw"
    verifier = make_verifier(password, salt=b"saltsaltsaltsalt")
    server = ScramServer(verifier, nonce="S")
    bare = b"n=,r=C"
    server_first = server.handle_client_first(b"y,," + bare)
    without_proof = b"c=eSws,r=CS"
    auth = bare + b"," + server_first + b"," + without_proof
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", b"saltsaltsaltsalt", 4096)
    ck = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    sig = hmac.new(hashlib.sha256(ck).digest(), auth, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(ck, sig, strict=True))
    final = server.handle_client_final(without_proof + b",p=" + base64.b64encode(proof))
    sk = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert final == b"v=" + base64.b64encode(hmac.new(sk, auth, hashlib.sha256).digest())


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"n",
        b"n,",
        b"n,,",
        b"n,,n=",
        b"n,,r=abc",
        b"n,,n=,r=",
        b"n,,n=,x=abc",
        b"x,,n=,r=abc",
        b"n,,n=,r=ab,c",
        b"n,,n=,r=a\x7fb",
        b"n,,n=,r=\xc3\xa4",
        b"n,,n=,r=\xff\xfe",
        b"n,,m=ext,n=,r=abc",
        b"n,a=someone,n=,r=abc",
        b"p=tls-server-end-point,,n=,r=abc",
        b"p,,n=,r=abc",
        b"n,,,n=,r=abc",
        b"n,,n=,r=abc,",
        b"n,,=,r=abc",
    ],
)
def test_scram_server_malformed_client_first(message: bytes) -> None:
    with pytest.raises(ScramError):
        ScramServer(make_verifier("pw", salt=b"s" * 16)).handle_client_first(message)


def test_scram_server_channel_binding_error_message() -> None:
    server = ScramServer(make_verifier("pw", salt=b"s" * 16))
    with pytest.raises(ScramError, match="channel binding is not supported"):
        server.handle_client_first(b"p=tls-server-end-point,,n=,r=abc")


def test_scram_server_ignores_username_and_optional_extensions() -> None:
    server = ScramServer(make_verifier("pw", salt=b"s" * 16), nonce="S")
    assert server.handle_client_first(b"n,,n=whoever,r=C,x=ext") == (
        b"r=CS,s=" + base64.b64encode(b"s" * 16) + b",i=4096"
    )


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"c=biws",
        b"c=biws,r=" + RFC_CLIENT_NONCE.encode() + RFC_SERVER_NONCE.encode(),
        b"r=x,c=biws,p=" + b"A" * 44,
        RFC_CLIENT_FINAL.replace(b"p=", b"x="),
        RFC_CLIENT_FINAL.replace(b"c=biws", b"c=!!!!"),
        RFC_CLIENT_FINAL.replace(b"c=biws", b"c=eSws"),  # y,, binding after an n,, header
        RFC_CLIENT_FINAL.replace(b"c=biws", b"c=cCws"),  # "p,,"
        RFC_CLIENT_FINAL.rsplit(b"p=", 1)[0] + b"p=not*base64",
        RFC_CLIENT_FINAL.rsplit(b"p=", 1)[0] + b"p=" + base64.b64encode(b"short"),
        RFC_CLIENT_FINAL.rsplit(b"p=", 1)[0] + b"p=",
        RFC_CLIENT_FINAL + b",x=trailing",
        RFC_CLIENT_FINAL + b"\xff",
        b"\xff\xfe\xfd",
        b",,,",
    ],
)
def test_scram_server_malformed_client_final(message: bytes) -> None:
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramError):
        server.handle_client_final(message)


def test_scram_server_rejects_nonce_mismatch() -> None:
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    server.handle_client_first(RFC_CLIENT_FIRST)
    # A valid-looking message for another server nonce (e.g. a replayed exchange).
    with pytest.raises(ScramError, match="nonce mismatch"):
        server.handle_client_final(RFC_CLIENT_FINAL.replace(b"$k0,", b"$k1,"))


def test_scram_server_state_machine() -> None:
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    with pytest.raises(ScramError):
        server.handle_client_final(RFC_CLIENT_FINAL)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramError):
        server.handle_client_first(RFC_CLIENT_FIRST)
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    with pytest.raises(ScramError):  # one proof per exchange
        server.handle_client_final(RFC_CLIENT_FINAL)


def test_scram_server_one_attempt_even_after_failure() -> None:
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramError):
        server.handle_client_final(RFC_CLIENT_FINAL.replace(b"p=dHz", b"p=dHy"))
    with pytest.raises(ScramError):  # no second guess on the same exchange
        server.handle_client_final(RFC_CLIENT_FINAL)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # does not extend our nonce
        b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # no server part
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=!!!,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=abc",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ==",
        b"m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqO\xc3\xa4,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqO\xff,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"e=other-error",
    ],
)
def test_scram_client_malformed_server_first(message: bytes) -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    with pytest.raises(ScramError):
        client.handle_server_first(message)


def test_scram_client_nonce_mismatch_message() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    with pytest.raises(ScramError, match="nonce mismatch"):
        client.handle_server_first(b"r=XOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")


@pytest.mark.parametrize(
    "message",
    [
        b"v=" + base64.b64encode(b"\x00" * 32),  # wrong signature
        RFC_SERVER_FINAL[:-2] + b"Q=",  # off by a bit
        b"e=invalid-proof",
        b"e=other-error",
        b"",
        b"v=!!!",
        b"x=abc",
        b"\xff",
    ],
)
def test_scram_client_rejects_bad_server_final(message: bytes) -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, username="user")
    client.handle_server_first(RFC_SERVER_FIRST)
    with pytest.raises(ScramError):
        client.verify_server_final(message)


def test_scram_client_reports_server_error_text() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, username="user")
    client.handle_server_first(RFC_SERVER_FIRST)
    with pytest.raises(ScramError, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


def test_scram_client_state_machine() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, username="user")
    with pytest.raises(ScramError):
        client.verify_server_final(RFC_SERVER_FINAL)
    client.handle_server_first(RFC_SERVER_FIRST)
    with pytest.raises(ScramError):
        client.handle_server_first(RFC_SERVER_FIRST)


def test_scram_bad_nonce_arguments() -> None:
    with pytest.raises(ValueError):
        ScramClient("pw", nonce="a,b")
    with pytest.raises(ValueError):
        ScramServer(make_verifier("pw", salt=b"s" * 16), nonce="")
    with pytest.raises(ValueError):
        ScramServer(make_verifier("pw", salt=b"s" * 16), nonce="n\u00e4")


def test_salted_password_is_cached() -> None:
    salted_password.cache_clear()
    salt = b"cache-test-salt!"
    first = salted_password("cached", salt, 4096)
    before = salted_password.cache_info().hits
    # The client side of every server login goes through this cache.
    client = ScramClient("cached", nonce="N")
    client.handle_server_first(b"r=NS,s=" + base64.b64encode(salt) + b",i=4096")
    assert salted_password.cache_info().hits == before + 1
    assert first == hashlib.pbkdf2_hmac("sha256", b"cached", salt, 4096)
    maxsize = salted_password.cache_info().maxsize
    assert maxsize is not None and maxsize >= 256  # bounded, but holds every pool's keys


def test_parse_verifier_round_trip() -> None:
    v = make_verifier("secret", iterations=4096)
    text = v.to_text()
    assert re.fullmatch(
        r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}", text
    )
    assert parse_verifier(text) == v
    assert MECHANISM == "SCRAM-SHA-256"


def test_parse_verifier_known_text() -> None:
    # The RFC 7677 keys, in pg_authid form, computed independently.
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    text = (
        f"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
        f"{base64.b64encode(stored).decode()}:{base64.b64encode(server).decode()}"
    )
    assert parse_verifier(text) == rfc_verifier()
    # And a parsed verifier authenticates the RFC exchange.
    srv = ScramServer(parse_verifier(text), nonce=RFC_SERVER_NONCE)
    srv.handle_client_first(RFC_CLIENT_FIRST)
    assert srv.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL


@pytest.mark.parametrize(
    "text",
    [
        "",
        "md553f48b7c4b76a86ce72276c5755f217d",
        "SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=",
        "SCRAM-SHA-256$abc:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:!!!$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$QUJD:" + "A" * 43 + "=",  # StoredKey not 32 bytes
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=$extra",
    ],
)
def test_parse_verifier_malformed(text: str) -> None:
    with pytest.raises(ScramError):
        parse_verifier(text)


def test_mock_verifier_stable_salt_and_always_fails() -> None:
    a, b = mock_verifier("ghost"), mock_verifier("ghost")
    assert a.salt == b.salt and len(a.salt) == 16
    assert mock_verifier("other").salt != a.salt
    client = ScramClient("anything")
    server = ScramServer(a)
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(ScramError, match="password authentication failed"):
        server.handle_client_final(client_final)


@pytest.mark.parametrize(
    ("raw", "prepared"),
    [
        # RFC 4013 section 3 examples that succeed.
        ("I\u00adX", "IX"),  # soft hyphen mapped to nothing
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),  # NFKC
        # Non-ASCII spaces map to U+0020.
        ("pass\u00a0word", "pass word"),
        ("a\u3000b\u2003c", "a b c"),
        ("p\u00e4ss", "p\u00e4ss"),
        ("\u0627\u0628", "\u0627\u0628"),  # RandALCat only: allowed
        ("", ""),
    ],
)
def test_saslprep_maps_and_normalises(raw: str, prepared: str) -> None:
    assert saslprep(raw) == prepared


@pytest.mark.parametrize(
    "raw",
    [
        "\u0007",  # RFC 4013 example: prohibited (ASCII control) -> error in the RFC
        "\u0627\u0031",  # RFC 4013 example: bidi violation
        "a\u0221b",  # unassigned in Unicode 3.2 (A.1)
        "x\ue000",  # private use (C.3)
        "\u0627a\u0628",  # RandALCat mixed with LCat
        "\u00ad",  # empty after mapping
        "ab\udcffcd",  # an undecodable byte carried by surrogateescape (C.5)
    ],
)
def test_saslprep_falls_back_to_raw_like_postgres(raw: str) -> None:
    # PostgreSQL uses the password as is when it is not valid for SASLprep; so must we.
    assert saslprep(raw) == raw


def test_scram_password_with_invalid_utf8_uses_raw_bytes() -> None:
    raw = "pw\udcff"  # os.environ's spelling of b"pw\xff"
    salt = b"0123456789abcdef"
    assert salted_password(raw, salt, 4096) == hashlib.pbkdf2_hmac("sha256", b"pw\xff", salt, 4096)


# --- independent implementations as oracles ----------------------------------------------------

LIBPQ_PASSWORDS = [
    "pencil",
    "p\u00e4ssw\u00f6rd",
    "pass\u00a0word",
    "I\u00adX",
    "\u2168\u00aa",
    "a\u0221b",
    "\u0627\u0031",
    "\u0007bell",
    "\u00ad",
]


@pytest.mark.parametrize("password", LIBPQ_PASSWORDS)
def test_scram_verifier_matches_libpq(password: str) -> None:
    pq = pytest.importorskip("psycopg.pq")
    # PQencryptPasswordConn with an explicit algorithm never talks to the server, so an
    # unconnected handle is enough; libpq applies its own SASLprep and picks a random salt.
    conn = pq.PGconn.connect_start(b"host=/nonexistent/poolproxy-test dbname=x")
    try:
        text = conn.encrypt_password(password.encode(), b"ignored", b"scram-sha-256").decode()
    finally:
        conn.finish()
    libpq_verifier = parse_verifier(text)
    ours = make_verifier(password, libpq_verifier.salt, libpq_verifier.iterations)
    assert ours == libpq_verifier
    assert ours.to_text() == text
    run_exchange(ScramClient(password), ScramServer(libpq_verifier))


def test_md5_hash_matches_libpq() -> None:
    pq = pytest.importorskip("psycopg.pq")
    conn = pq.PGconn.connect_start(b"host=/nonexistent/poolproxy-test dbname=x")
    try:
        text = conn.encrypt_password(b"secret", b"postgres", b"md5").decode()
    finally:
        conn.finish()
    assert md5_hash("postgres", "secret") == text


def test_scram_our_server_with_scramp_client() -> None:
    scramp = pytest.importorskip("scramp")
    # scramp insists on a non-empty user name; ours ignores it as PostgreSQL does.
    client = scramp.ScramClient(["SCRAM-SHA-256"], "user", "s3cr\u00e9t")
    server = ScramServer(make_verifier("s3cr\u00e9t"))
    server_first = server.handle_client_first(client.get_client_first().encode())
    client.set_server_first(server_first.decode())
    final = server.handle_client_final(client.get_client_final().encode())
    client.set_server_final(final.decode())  # raises if our signature were wrong


def test_scram_our_client_with_scramp_server() -> None:
    scramp = pytest.importorskip("scramp")
    mech = scramp.ScramMechanism("SCRAM-SHA-256")
    auth_info = mech.make_auth_info("s3cr\u00e9t", iteration_count=4096, salt=b"0123456789abcdef")
    server = mech.make_server(lambda _username: auth_info)
    client = ScramClient("s3cr\u00e9t", username="user")  # scramp rejects an empty n=
    server.set_client_first(client.client_first().decode())
    client_final = client.handle_server_first(server.get_server_first().encode())
    server.set_client_final(client_final.decode())
    client.verify_server_final(server.get_server_final().encode())
    # scramp's stored keys equal ours for the same salt.
    v = make_verifier("s3cr\u00e9t", b"0123456789abcdef", 4096)
    assert (v.salt, v.stored_key, v.server_key, v.iterations) == auth_info


def test_scram_scramp_rejects_our_wrong_password() -> None:
    scramp = pytest.importorskip("scramp")
    mech = scramp.ScramMechanism("SCRAM-SHA-256")
    auth_info = mech.make_auth_info("right", iteration_count=4096)
    server = mech.make_server(lambda _username: auth_info)
    client = ScramClient("wrong", username="user")
    server.set_client_first(client.client_first().decode())
    client_final = client.handle_server_first(server.get_server_first().encode())
    with pytest.raises(scramp.ScramException):
        server.set_client_final(client_final.decode())


# ---------------------------------------------------------------------------------------------
# PostgreSQL md5
# ---------------------------------------------------------------------------------------------

MD5_SALT = b"\x01\x02\x03\x04"


def independent_md5_response(user: bytes, password: bytes, salt: bytes) -> bytes:
    inner = hashlib.md5(password + user).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()


def test_md5_known_vector() -> None:
    # Literals computed with md5sum(1): md5("secretpostgres"), then md5(hex + 01020304).
    assert md5_hash("postgres", "secret") == "md553f48b7c4b76a86ce72276c5755f217d"
    expected = b"md5bb41a296aab6baccb36ff243a562abff"
    assert independent_md5_response(b"postgres", b"secret", MD5_SALT) == expected
    assert md5_response("postgres", "secret", MD5_SALT) == expected
    assert verify_md5(expected, "postgres", "secret", MD5_SALT)


def test_md5_non_ascii() -> None:
    expected = independent_md5_response("j\u00f6rg".encode(), "p\u00e4ss".encode(), b"abcd")
    assert md5_response("j\u00f6rg", "p\u00e4ss", b"abcd") == expected


def test_md5_stored_hash_form_accepted() -> None:
    stored = "md553f48b7c4b76a86ce72276c5755f217d"
    expected = b"md5bb41a296aab6baccb36ff243a562abff"
    assert md5.is_md5_hash(stored)
    assert md5_hash("postgres", stored) == stored
    assert md5_response("postgres", stored, MD5_SALT) == expected
    assert verify_md5(expected, "postgres", stored, MD5_SALT)
    assert not verify_md5(expected, "postgres", "md5" + "0" * 32, MD5_SALT)


@pytest.mark.parametrize(
    "candidate",
    ["md5" + "0" * 31, "md5" + "0" * 33, "md5" + "G" * 32, "md5" + "A" * 32, "MD5" + "a" * 32],
)
def test_md5_not_a_stored_hash(candidate: str) -> None:
    assert not md5.is_md5_hash(candidate)
    expected = independent_md5_response(b"u", candidate.encode(), MD5_SALT)
    assert md5_response("u", candidate, MD5_SALT) == expected


def test_md5_rejects_wrong_inputs() -> None:
    good = md5_response("postgres", "secret", MD5_SALT)
    assert not verify_md5(good, "postgres", "Secret", MD5_SALT)
    assert not verify_md5(good, "postgre", "secret", MD5_SALT)
    assert not verify_md5(good, "postgres", "secret", b"\x01\x02\x03\x05")
    assert not verify_md5(b"", "postgres", "secret", MD5_SALT)
    assert not verify_md5(good.upper(), "postgres", "secret", MD5_SALT)
    assert verify_md5(good + b"\0", "postgres", "secret", MD5_SALT)  # terminator tolerated


def test_md5_salt_must_be_four_bytes() -> None:
    with pytest.raises(ValueError):
        md5_response("u", "p", b"abc")


# ---------------------------------------------------------------------------------------------
# mysql_native_password
# ---------------------------------------------------------------------------------------------

NONCE20 = bytes(range(1, 21))


def independent_native(password: bytes, nonce: bytes) -> bytes:
    s1 = hashlib.sha1(password).digest()
    s2 = hashlib.sha1(s1).digest()
    h = hashlib.sha1(nonce + s2).digest()
    return bytes(a ^ b for a, b in zip(s1, h, strict=True))


def test_native_known_vector() -> None:
    # Literal computed with openssl sha1: "secret", nonce 0x01..0x14.
    expected = bytes.fromhex("b32bb3a583e1340c0a1108d58b1be49781ad8c2f")
    assert independent_native(b"secret", NONCE20) == expected
    assert scramble_native("secret", NONCE20) == expected
    assert verify_native(expected, "secret", NONCE20)


def test_native_strips_nul_terminated_nonce() -> None:
    assert scramble_native("secret", NONCE20 + b"\0") == scramble_native("secret", NONCE20)
    assert verify_native(scramble_native("secret", NONCE20), "secret", NONCE20 + b"\0")


def test_native_non_ascii_password() -> None:
    assert scramble_native("p\u00e4ss", NONCE20) == independent_native(
        "p\u00e4ss".encode(), NONCE20
    )


def test_native_empty_password() -> None:
    assert scramble_native("", NONCE20) == b""
    assert verify_native(b"", "", NONCE20)
    assert not verify_native(scramble_native("x", NONCE20), "", NONCE20)
    assert not verify_native(b"", "secret", NONCE20)


def test_native_rejects_wrong_password_and_nonce() -> None:
    good = scramble_native("secret", NONCE20)
    assert not verify_native(good, "secreT", NONCE20)
    assert not verify_native(good, "secret", bytes(20))
    assert not verify_native(good[:-1], "secret", NONCE20)


@pytest.mark.parametrize("password", ["secret", "p\u00e4ss", "x" * 100])
def test_native_matches_pymysql(password: str) -> None:
    auth = pytest.importorskip("pymysql._auth")
    ours = scramble_native(password, NONCE20 + b"\0")
    assert ours == auth.scramble_native_password(password.encode(), NONCE20)
    assert mysql_native.NONCE_LEN == 20


# ---------------------------------------------------------------------------------------------
# caching_sha2_password
# ---------------------------------------------------------------------------------------------


def test_caching_sha2_constants() -> None:
    assert (REQUEST_PUBLIC_KEY, FAST_AUTH_SUCCESS, PERFORM_FULL_AUTH) == (2, 3, 4)


def test_caching_sha2_known_vector() -> None:
    # Literal computed with openssl sha256: "secret", nonce 0x01..0x14.
    expected = bytes.fromhex("746ebe205d56a0707acb3e796e834e0dd7b1d61743b26bd5202c7a623230c7c9")
    p1 = hashlib.sha256(b"secret").digest()
    p3 = hashlib.sha256(hashlib.sha256(p1).digest() + NONCE20).digest()
    assert bytes(a ^ b for a, b in zip(p1, p3, strict=True)) == expected
    assert scramble_caching_sha2("secret", NONCE20) == expected
    assert scramble_caching_sha2("secret", NONCE20 + b"\0") == expected
    assert verify_caching_sha2(expected, "secret", NONCE20)


def test_caching_sha2_empty_and_wrong() -> None:
    assert scramble_caching_sha2("", NONCE20) == b""
    assert verify_caching_sha2(b"", "", NONCE20)
    assert not verify_caching_sha2(b"", "secret", NONCE20)
    good = scramble_caching_sha2("secret", NONCE20)
    assert not verify_caching_sha2(good, "", NONCE20)
    assert not verify_caching_sha2(good, "Secret", NONCE20)
    assert not verify_caching_sha2(good, "secret", bytes(20))
    # Not interchangeable with mysql_native_password.
    assert not verify_caching_sha2(scramble_native("secret", NONCE20), "secret", NONCE20)


@pytest.mark.parametrize("password", ["secret", "p\u00e4ss", "x" * 100])
def test_caching_sha2_matches_pymysql(password: str) -> None:
    auth = pytest.importorskip("pymysql._auth")
    assert scramble_caching_sha2(password, NONCE20) == auth.scramble_caching_sha2(
        password.encode(), NONCE20
    )


def test_xor_password_for_full_auth() -> None:
    password = "a" * 25  # longer than the nonce: the nonce repeats
    plain = b"a" * 25 + b"\0"
    expected = bytes(b ^ NONCE20[i % 20] for i, b in enumerate(plain))
    assert xor_password_for_full_auth(password, NONCE20) == expected
    assert xor_password_for_full_auth(password, NONCE20 + b"\0") == expected
    assert xor_password_for_full_auth("", NONCE20) == bytes([NONCE20[0]])
    with pytest.raises(ValueError):
        xor_password_for_full_auth("pw", b"")


@pytest.fixture(scope="module")
def rsa_key():  # type: ignore[no-untyped-def]
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def oaep_sha1():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


@pytest.mark.parametrize("fmt", ["SubjectPublicKeyInfo", "PKCS1"])
def test_rsa_encrypt_password_round_trip(rsa_key, fmt: str) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, getattr(serialization.PublicFormat, fmt)
    )
    # MySQL sends "BEGIN PUBLIC KEY"; some servers/tools use "BEGIN RSA PUBLIC KEY".
    assert pem.startswith(b"-----BEGIN PUBLIC KEY" if fmt != "PKCS1" else b"-----BEGIN RSA")
    ciphertext = rsa_encrypt_password("s3cr\u00e9t", NONCE20 + b"\0", pem)
    assert len(ciphertext) == 256
    plain = rsa_key.decrypt(ciphertext, oaep_sha1())
    assert plain == xor_password_for_full_auth("s3cr\u00e9t", NONCE20)
    unxored = bytes(b ^ NONCE20[i % 20] for i, b in enumerate(plain))
    assert unxored == "s3cr\u00e9t".encode() + b"\0"
    # OAEP is randomised: the same input encrypts differently each time.
    assert rsa_encrypt_password("s3cr\u00e9t", NONCE20, pem) != ciphertext


def test_rsa_encrypt_matches_pymysql_plaintext(rsa_key) -> None:  # type: ignore[no-untyped-def]
    auth = pytest.importorskip("pymysql._auth")
    from cryptography.hazmat.primitives import serialization

    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = rsa_key.decrypt(auth.sha2_rsa_encrypt(b"secret", NONCE20, pem), oaep_sha1())
    ours = rsa_key.decrypt(rsa_encrypt_password("secret", NONCE20, pem), oaep_sha1())
    assert ours == theirs


def test_rsa_encrypt_rejects_non_rsa_key() -> None:
    ec = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")
    from cryptography.hazmat.primitives import serialization

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError):
        rsa_encrypt_password("pw", NONCE20, pem)
    with pytest.raises(ValueError):
        rsa_encrypt_password("pw", NONCE20, b"not a pem")


# ---------------------------------------------------------------------------------------------
# The auth package is pure: no event loop or sockets
# ---------------------------------------------------------------------------------------------


def test_auth_modules_import_no_io() -> None:
    code = (
        "import sys\n"
        "import proxy.auth.scram, proxy.auth.md5, proxy.auth.mysql_native, "
        "proxy.auth.caching_sha2\n"
        "bad = sorted({'asyncio', 'socket', 'ssl', 'uvloop'} & set(sys.modules))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
    assert scram.__doc__ and md5.__doc__ and mysql_native.__doc__ and caching_sha2.__doc__
