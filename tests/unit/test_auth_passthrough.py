"""Byte-level tests of the auth pass-through primitives in proxy.auth.

Pass-through (PgBouncer auth_query style): the proxy knows only the server's stored secret,
recovers from a client's login what it needs to log in to the server as that client, and never
learns the password. Expected values are computed independently with hashlib/hmac, or are
literals checked with openssl/md5sum, or come from the RFC 7677 vector.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import pytest

from proxy.auth.md5 import (
    md5_hash,
    md5_response,
    md5_response_from_hash,
    verify_md5,
    verify_md5_hash,
)
from proxy.auth.mysql_native import (
    parse_native_hash,
    recover_stage1,
    scramble_from_stage1,
    scramble_native,
    verify_native,
)
from proxy.auth.scram import (
    ScramClient,
    ScramError,
    ScramServer,
    ScramVerifier,
    make_verifier,
    parse_verifier,
    salted_password,
)
from tests.unit.rfc7677 import (
    RFC_CLIENT_FINAL,
    RFC_CLIENT_NONCE,
    RFC_SALT,
    RFC_SERVER_FINAL,
    RFC_SERVER_FIRST,
)

# ---------------------------------------------------------------------------------------------
# SCRAM-SHA-256
# ---------------------------------------------------------------------------------------------


def independent_keys(password: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) per RFC 5802, straight from hashlib."""
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    return (
        hmac.new(salted, b"Client Key", hashlib.sha256).digest(),
        hmac.new(salted, b"Server Key", hashlib.sha256).digest(),
    )


def pg_secret(password: str, iterations: int = 4096) -> str:
    """A pg_authid.rolpassword text, as an auth_query would return it."""
    return make_verifier(password, iterations=iterations).to_text()


def run_exchange(client: ScramClient, server: ScramServer) -> None:
    server_first = server.handle_client_first(client.client_first())
    client_final = client.handle_server_first(server_first)
    client.verify_server_final(server.handle_client_final(client_final))


def passthrough_client(server: ScramServer, verifier: ScramVerifier) -> ScramClient:
    client_key = server.client_key
    assert client_key is not None
    return ScramClient.from_keys(
        client_key, verifier.server_key, verifier.salt, verifier.iterations
    )


def test_parse_verifier_reads_postgres_secret() -> None:
    salt = b"0123456789abcdef"
    client_key, server_key = independent_keys(b"s3cret", salt, 4096)
    stored_key = hashlib.sha256(client_key).digest()
    text = (
        f"SCRAM-SHA-256$4096:{base64.b64encode(salt).decode()}"
        f"${base64.b64encode(stored_key).decode()}:{base64.b64encode(server_key).decode()}"
    )
    v = parse_verifier(text)
    assert (v.salt, v.iterations, v.stored_key, v.server_key) == (
        salt,
        4096,
        stored_key,
        server_key,
    )
    assert v == make_verifier("s3cret", salt, 4096)
    assert v.to_text() == text


@pytest.mark.parametrize("iterations", ["\u00b2", "\u0664\u0660\u0669\u0666", "+4096", " 4096"])
def test_iteration_count_must_be_ascii_digits(iterations: str) -> None:
    # str.isdigit() accepts these; int() rejects "\u00b2" and accepts Arabic-Indic digits.
    text = "SCRAM-SHA-256$" + iterations + ":c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "="
    with pytest.raises(ScramError):
        parse_verifier(text)
    client = ScramClient("pw", nonce="N")
    with pytest.raises(ScramError, match="iteration count"):
        client.handle_server_first(b"r=NS,s=c2FsdA==,i=" + iterations.encode())


def test_server_client_key_is_the_proven_key() -> None:
    salt = b"saltsaltsaltsalt"
    verifier = parse_verifier(make_verifier("correct horse", salt, 4096).to_text())
    server = ScramServer(verifier)
    assert server.client_key is None
    run_exchange(ScramClient("correct horse"), server)
    client_key, _ = independent_keys(b"correct horse", salt, 4096)
    assert server.client_key == client_key
    assert hashlib.sha256(server.client_key).digest() == verifier.stored_key


def test_server_client_key_stays_none_on_failure() -> None:
    server = ScramServer(make_verifier("correct horse"))
    client = ScramClient("battery staple")
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(ScramError, match="password authentication failed"):
        server.handle_client_final(client_final)
    assert server.client_key is None


def test_passthrough_login_with_recovered_key() -> None:
    text = pg_secret("p\u00e4ss word")
    # The client logs in to us; we hold only the secret the auth_query returned.
    front = ScramServer(parse_verifier(text))
    run_exchange(ScramClient("p\u00e4ss\u00a0word"), front)  # SASLprep: NBSP -> space
    # We log in to the server (which stores the same secret) without the password.
    back_verifier = parse_verifier(text)
    back = ScramServer(back_verifier)
    run_exchange(passthrough_client(front, back_verifier), back)  # raises on any failure
    assert back.client_key == front.client_key


def test_passthrough_reproduces_rfc7677_bytes() -> None:
    client_key, server_key = independent_keys(b"pencil", RFC_SALT, 4096)
    client = ScramClient.from_keys(
        client_key, server_key, RFC_SALT, 4096, username="user", nonce=RFC_CLIENT_NONCE
    )
    assert client.client_first() == b"n,,n=user,r=" + RFC_CLIENT_NONCE.encode()
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)


def test_passthrough_client_runs_no_pbkdf2() -> None:
    client_key, server_key = independent_keys(b"pencil", RFC_SALT, 4096)
    before = salted_password.cache_info()
    client = ScramClient.from_keys(
        client_key, server_key, RFC_SALT, 4096, username="user", nonce=RFC_CLIENT_NONCE
    )
    client.handle_server_first(RFC_SERVER_FIRST)
    after = salted_password.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)


def test_passthrough_wrong_password_gives_no_key() -> None:
    verifier = make_verifier("right")
    front = ScramServer(verifier)
    client = ScramClient("wrong")
    client_final = client.handle_server_first(front.handle_client_first(client.client_first()))
    with pytest.raises(ScramError):
        front.handle_client_final(client_final)
    assert front.client_key is None
    # A ClientKey for another password is refused by the real server.
    wrong_key, _ = independent_keys(b"wrong", verifier.salt, verifier.iterations)
    impostor = ScramClient.from_keys(
        wrong_key, verifier.server_key, verifier.salt, verifier.iterations
    )
    back = ScramServer(verifier)
    client_final = impostor.handle_server_first(back.handle_client_first(impostor.client_first()))
    with pytest.raises(ScramError, match="password authentication failed"):
        back.handle_client_final(client_final)


def test_passthrough_checks_server_signature_with_server_key() -> None:
    verifier = make_verifier("pw")
    front = ScramServer(verifier)
    run_exchange(ScramClient("pw"), front)
    assert front.client_key is not None
    client = ScramClient.from_keys(
        front.client_key, bytes(32), verifier.salt, verifier.iterations
    )
    back = ScramServer(verifier)
    client_final = client.handle_server_first(back.handle_client_first(client.client_first()))
    server_final = back.handle_client_final(client_final)  # the proof itself is right
    with pytest.raises(ScramError, match="server signature is invalid"):
        client.verify_server_final(server_final)


def test_passthrough_stale_salt_raises() -> None:
    old = make_verifier("pw", salt=b"old-salt-old-sal")
    front = ScramServer(old)
    run_exchange(ScramClient("pw"), front)
    # The password was changed (same password, new salt) after our secret was read.
    back = ScramServer(make_verifier("pw", salt=b"new-salt-new-sal"))
    client = passthrough_client(front, old)
    with pytest.raises(ScramError, match="stale"):
        client.handle_server_first(back.handle_client_first(client.client_first()))


def test_passthrough_stale_iterations_raises() -> None:
    salt = b"same-salt-same-s"
    old = make_verifier("pw", salt=salt, iterations=4096)
    front = ScramServer(old)
    run_exchange(ScramClient("pw"), front)
    back = ScramServer(make_verifier("pw", salt=salt, iterations=4097))
    client = passthrough_client(front, old)
    with pytest.raises(ScramError, match="stale"):
        client.handle_server_first(back.handle_client_first(client.client_first()))


def test_from_keys_rejects_bad_arguments() -> None:
    key = bytes(32)
    with pytest.raises(ValueError):
        ScramClient.from_keys(key[:31], key, b"salt", 4096)
    with pytest.raises(ValueError):
        ScramClient.from_keys(key, key + b"x", b"salt", 4096)
    with pytest.raises(ValueError):
        ScramClient.from_keys(key, key, b"", 4096)
    with pytest.raises(ValueError):
        ScramClient.from_keys(key, key, b"salt", 0)
    with pytest.raises(ValueError):
        ScramClient.from_keys(key, key, b"salt", 4096, nonce="a,b")
    assert ScramClient.from_keys(key, key, b"salt", 4096, "a,b").client_first().startswith(
        b"n,,n=a=2Cb,r="
    )


def test_from_keys_does_not_show_keys_in_repr() -> None:
    client_key = b"\x01" * 32
    client = ScramClient.from_keys(client_key, b"\x02" * 32, b"salt", 4096)
    assert repr(client_key) not in repr(vars(client))


# ---------------------------------------------------------------------------------------------
# mysql_native_password
# ---------------------------------------------------------------------------------------------

# MySQL's PASSWORD('secret'); checked with `printf secret | openssl sha1 -binary | openssl sha1`.
SECRET_HASH = "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"


def stage1_of(password: str) -> bytes:
    return hashlib.sha1(password.encode()).digest()


def stage2_of(password: str) -> bytes:
    return hashlib.sha1(stage1_of(password)).digest()


def test_parse_native_hash_known_vector() -> None:
    assert parse_native_hash(SECRET_HASH) == stage2_of("secret")
    assert parse_native_hash(SECRET_HASH.lower()) == stage2_of("secret")
    assert len(parse_native_hash(SECRET_HASH)) == 20


def test_parse_native_hash_empty_password() -> None:
    assert parse_native_hash("") == b""


@pytest.mark.parametrize(
    "text",
    [
        "*",
        SECRET_HASH[:-1],
        SECRET_HASH + "0",
        SECRET_HASH[1:],
        SECRET_HASH[1:] + "0",
        "#" + SECRET_HASH[1:],
        " " + SECRET_HASH,
        SECRET_HASH + "\n",
        "*" + "G" * 40,
        "*14E6 5567ABDB5135D0CFD9A70B3032C179A49EE7",
        "*" + "\uff10" * 40,  # fullwidth digits
        "$A$005$" + "x" * 40,  # a caching_sha2_password hash
        "md553f48b7c4b76a86ce72276c5755f217d",
    ],
)
def test_parse_native_hash_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_native_hash(text)


@pytest.mark.parametrize("password", ["secret", "p\u00e4ss", "x" * 100])
def test_recover_stage1_from_client_response(password: str) -> None:
    nonce = secrets.token_bytes(20)
    response = scramble_native(password, nonce)
    assert recover_stage1(response, stage2_of(password), nonce) == stage1_of(password)


def test_recover_stage1_known_vector() -> None:
    nonce = bytes(range(1, 21))
    response = bytes.fromhex("b32bb3a583e1340c0a1108d58b1be49781ad8c2f")  # "secret", openssl
    stage2 = parse_native_hash(SECRET_HASH)
    assert recover_stage1(response, stage2, nonce) == stage1_of("secret")
    assert scramble_from_stage1(stage1_of("secret"), nonce) == response


def test_recover_stage1_rejects_wrong_response() -> None:
    nonce = secrets.token_bytes(20)
    stage2 = stage2_of("secret")
    assert recover_stage1(scramble_native("Secret", nonce), stage2, nonce) is None
    good = scramble_native("secret", nonce)
    assert recover_stage1(good, stage2, secrets.token_bytes(20)) is None  # other nonce
    assert recover_stage1(good[:-1], stage2, nonce) is None
    assert recover_stage1(good + b"\0", stage2, nonce) is None
    assert recover_stage1(b"", stage2, nonce) is None  # empty response, non-empty password
    flipped = bytes([good[0] ^ 1]) + good[1:]
    assert recover_stage1(flipped, stage2, nonce) is None


def test_recover_then_log_in_elsewhere() -> None:
    password = "s3cr\u00e9t"
    nonce1, nonce2 = secrets.token_bytes(20), secrets.token_bytes(20)
    stage1 = recover_stage1(scramble_native(password, nonce1), stage2_of(password), nonce1)
    assert stage1 is not None
    response = scramble_from_stage1(stage1, nonce2)
    assert response == scramble_native(password, nonce2)
    assert verify_native(response, password, nonce2)


def test_nul_terminated_nonce() -> None:
    nonce = secrets.token_bytes(20)
    nonce21 = nonce + b"\0"
    stage2 = stage2_of("secret")
    response = scramble_native("secret", nonce21)
    assert response == scramble_native("secret", nonce)
    assert recover_stage1(response, stage2, nonce21) == stage1_of("secret")
    assert recover_stage1(response, stage2, nonce) == stage1_of("secret")
    assert scramble_from_stage1(stage1_of("secret"), nonce21) == response


def test_empty_password() -> None:
    nonce = secrets.token_bytes(20)
    stage2 = parse_native_hash("")
    assert recover_stage1(b"", stage2, nonce) == b""
    assert recover_stage1(scramble_native("x", nonce), stage2, nonce) is None
    assert scramble_from_stage1(b"", nonce) == b"" == scramble_native("", nonce)


def test_stage_lengths_checked() -> None:
    nonce = secrets.token_bytes(20)
    with pytest.raises(ValueError):
        scramble_from_stage1(b"\x01" * 19, nonce)
    with pytest.raises(ValueError):
        recover_stage1(b"\x01" * 20, b"\x02" * 19, nonce)


# ---------------------------------------------------------------------------------------------
# PostgreSQL md5
# ---------------------------------------------------------------------------------------------

MD5_SALT = b"\x01\x02\x03\x04"
SECRET_MD5 = "md553f48b7c4b76a86ce72276c5755f217d"  # md5sum of "secretpostgres"


def test_md5_response_from_hash_known_vector() -> None:
    expected = b"md5bb41a296aab6baccb36ff243a562abff"
    inner = SECRET_MD5[3:].encode()
    assert b"md5" + hashlib.md5(inner + MD5_SALT).hexdigest().encode() == expected
    assert md5_response_from_hash(SECRET_MD5, MD5_SALT) == expected
    assert verify_md5_hash(expected, SECRET_MD5, MD5_SALT)
    assert verify_md5_hash(expected + b"\0", SECRET_MD5, MD5_SALT)


@pytest.mark.parametrize(
    ("user", "password", "salt"),
    [
        ("postgres", "secret", MD5_SALT),
        ("j\u00f6rg", "p\u00e4ss", b"abcd"),
        ("u", "", b"\x00\x00\x00\x00"),
        ("app", "x" * 200, b"\xff\xfe\xfd\xfc"),
    ],
)
def test_md5_from_hash_equals_password_path(user: str, password: str, salt: bytes) -> None:
    stored = md5_hash(user, password)
    response = md5_response(user, password, salt)
    assert md5_response_from_hash(stored, salt) == response
    assert verify_md5_hash(response, stored, salt)
    assert verify_md5(response, user, password, salt)


def test_verify_md5_hash_rejects_wrong_response() -> None:
    good = md5_response_from_hash(SECRET_MD5, MD5_SALT)
    assert not verify_md5_hash(good, SECRET_MD5, b"\x01\x02\x03\x05")
    assert not verify_md5_hash(good, "md5" + "0" * 32, MD5_SALT)
    assert not verify_md5_hash(b"", SECRET_MD5, MD5_SALT)
    assert not verify_md5_hash(good.upper(), SECRET_MD5, MD5_SALT)
    assert not verify_md5_hash(md5_response("postgres", "Secret", MD5_SALT), SECRET_MD5, MD5_SALT)


@pytest.mark.parametrize(
    "hash_text",
    [
        "secret",  # a plaintext password
        "",
        SECRET_MD5.upper(),
        "md5" + SECRET_MD5[3:].upper(),
        SECRET_MD5[:-1],
        SECRET_MD5 + "0",
        "MD5" + SECRET_MD5[3:],
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
    ],
)
def test_md5_from_hash_refuses_non_hash(hash_text: str) -> None:
    with pytest.raises(ValueError, match="md5 hash"):
        md5_response_from_hash(hash_text, MD5_SALT)
    with pytest.raises(ValueError, match="md5 hash"):
        verify_md5_hash(b"md5" + b"0" * 32, hash_text, MD5_SALT)


def test_md5_from_hash_salt_must_be_four_bytes() -> None:
    with pytest.raises(ValueError, match="salt"):
        md5_response_from_hash(SECRET_MD5, b"abc")
    with pytest.raises(ValueError, match="salt"):
        md5_response("u", "p", b"abcde")
