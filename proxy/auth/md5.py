"""PostgreSQL md5 password authentication (AuthenticationMD5Password), pure functions.

Owns the pg_authid ``md5...`` hash, the salted response a client sends, and its verification.
A "password" argument may be the plaintext or the stored ``md5`` + 32-hex form, as in PgBouncer.
The ``*_hash`` functions take only the stored form (auth pass-through: the secret an auth_query
returned) and refuse anything else, so a secret of another kind is never hashed as a password.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = [
    "is_md5_hash",
    "md5_hash",
    "md5_response",
    "md5_response_from_hash",
    "verify_md5",
    "verify_md5_hash",
]

_PREFIX = "md5"
_HASH_LEN = len(_PREFIX) + 32  # "md5" + 32 hex digits
_HEX = frozenset("0123456789abcdef")


def _md5hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _utf8(s: str) -> bytes:
    # surrogateescape: passwords from os.environ may carry undecodable bytes that way, and
    # PostgreSQL hashes raw bytes, so they must round-trip unchanged.
    return s.encode("utf-8", "surrogateescape")


def is_md5_hash(password: str) -> bool:
    """True if ``password`` is already a stored ``md5<32 lowercase hex>`` hash.

    PostgreSQL makes the same assumption when such a string is given to CREATE ROLE ...
    PASSWORD, so a plaintext password of that exact shape cannot exist there either.
    """
    return (
        len(password) == _HASH_LEN
        and password.startswith(_PREFIX)
        and _HEX.issuperset(password[len(_PREFIX) :])
    )


def md5_hash(user: str, password: str) -> str:
    """The pg_authid form: ``"md5" + md5hex(password + user)`` (returned as is if already one)."""
    if is_md5_hash(password):
        return password
    return _PREFIX + _md5hex(_utf8(password) + _utf8(user))


def md5_response_from_hash(hash_text: str, salt: bytes) -> bytes:
    """What a client sends in PasswordMessage (without the trailing NUL), from the stored hash.

    ``b"md5" + md5hex(hash_text[3:] + salt)``: the challenge needs only the stored hash.
    ValueError unless ``hash_text`` is ``md5`` + 32 lowercase hex digits and ``salt`` 4 bytes.
    """
    if len(salt) != 4:
        raise ValueError("md5 salt must be 4 bytes")
    if not is_md5_hash(hash_text):
        raise ValueError("not a PostgreSQL md5 hash ('md5' followed by 32 lowercase hex digits)")
    inner = hash_text[len(_PREFIX) :].encode("ascii")
    return b"md5" + _md5hex(inner + salt).encode("ascii")


def verify_md5_hash(response: bytes, hash_text: str, salt: bytes) -> bool:
    """Check a client's md5 response against the stored ``md5...`` hash.

    Constant-time comparison, so response timing says nothing about how close a guess was.
    A malformed ``hash_text`` (a bad stored secret, not a bad response) raises ValueError.
    """
    if response.endswith(b"\0"):
        # Tolerate a caller that passes the PasswordMessage body with its terminator.
        response = response[:-1]
    expected = md5_response_from_hash(hash_text, salt)
    return hmac.compare_digest(response, expected)


def md5_response(user: str, password: str, salt: bytes) -> bytes:
    """What a client sends in PasswordMessage (without the trailing NUL).

    ``b"md5" + md5hex(md5hex(password + user) + salt)``; only the stored hash is needed, so
    ``password`` may be either the plaintext or the stored ``md5...`` form.
    """
    return md5_response_from_hash(md5_hash(user, password), salt)


def verify_md5(response: bytes, user: str, password: str, salt: bytes) -> bool:
    """Check a client's md5 response against a plaintext or stored-hash password."""
    return verify_md5_hash(response, md5_hash(user, password), salt)
