"""MySQL/MariaDB ``mysql_native_password`` scramble, pure functions.

Owns computing the 20-byte auth response a client sends and verifying one against a
plaintext password: ``SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw)))``.

Auth pass-through: the server stores only ``SHA1(SHA1(pw))`` (mysql.user.authentication_string,
``*`` + 40 hex digits). Given that, a client's response reveals ``SHA1(pw)``
(:func:`recover_stage1`), which is all :func:`scramble_from_stage1` needs to log in to a server
as the same user without knowing the password.
"""

from __future__ import annotations

import hashlib
import hmac
import string

__all__ = [
    "NONCE_LEN",
    "parse_native_hash",
    "recover_stage1",
    "scramble_from_stage1",
    "scramble_native",
    "verify_native",
]

NONCE_LEN = 20  # the server's auth-plugin-data ("scramble") is 20 bytes
_SHA1_LEN = 20
_HASH_TEXT_LEN = 1 + 2 * _SHA1_LEN  # "*" + 40 hex digits
_HEX = frozenset(string.hexdigits)


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data, usedforsecurity=False).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _nonce20(nonce: bytes) -> bytes:
    # The handshake and AuthSwitchRequest carry the scramble NUL-terminated (21 bytes); the
    # terminator is not part of what the server hashes.
    if len(nonce) == NONCE_LEN + 1 and nonce[-1] == 0:
        return nonce[:-1]
    return nonce


def parse_native_hash(text: str) -> bytes:
    """``SHA1(SHA1(pw))`` from an authentication_string ``*<40 hex>`` (either case).

    An empty string is MySQL's stored form of the empty password and gives ``b""``, which
    :func:`recover_stage1` understands; anything else raises ValueError.
    """
    if not text:
        return b""
    if len(text) != _HASH_TEXT_LEN or text[0] != "*" or not _HEX.issuperset(text[1:]):
        raise ValueError("not a mysql_native_password hash ('*' followed by 40 hex digits)")
    return bytes.fromhex(text[1:])


def scramble_from_stage1(stage1: bytes, nonce: bytes) -> bytes:
    """The client's auth response from ``SHA1(pw)``; ``b""`` (empty password) gives ``b""``."""
    if not stage1:
        # The protocol sends an empty response for an empty password, not a hash of "".
        return b""
    if len(stage1) != _SHA1_LEN:
        raise ValueError("mysql_native_password SHA1(password) must be 20 bytes")
    return _xor(stage1, _sha1(_nonce20(nonce) + _sha1(stage1)))


def scramble_native(password: str, nonce: bytes) -> bytes:
    """The client's auth response for ``password``; ``b""`` for an empty password."""
    stage1 = _sha1(password.encode("utf-8", "surrogateescape")) if password else b""
    return scramble_from_stage1(stage1, nonce)


def verify_native(response: bytes, password: str, nonce: bytes) -> bool:
    """Check a client's auth response; an empty password matches only an empty response."""
    expected = scramble_native(password, nonce)
    # compare_digest: no timing hint about how many leading bytes of a guess were right.
    return hmac.compare_digest(response, expected)


def recover_stage1(response: bytes, stored_stage2: bytes, nonce: bytes) -> bytes | None:
    """``SHA1(pw)`` from a client's auth response and the stored ``SHA1(SHA1(pw))``.

    Returns None when the response does not prove the password (wrong password, wrong
    nonce, wrong length). An empty ``stored_stage2`` is the empty password: only an empty
    response matches it, and the result is then ``b""``.
    """
    if not stored_stage2:
        return b"" if not response else None
    if len(stored_stage2) != _SHA1_LEN:
        raise ValueError("mysql_native_password SHA1(SHA1(password)) must be 20 bytes")
    if len(response) != _SHA1_LEN:
        return None
    stage1 = _xor(response, _sha1(_nonce20(nonce) + stored_stage2))
    # compare_digest: no timing hint about how close a forged response came.
    if not hmac.compare_digest(_sha1(stage1), stored_stage2):
        return None
    return stage1
