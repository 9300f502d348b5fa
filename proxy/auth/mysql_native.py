"""MySQL/MariaDB ``mysql_native_password`` scramble, pure functions.

Owns computing the 20-byte auth response a client sends and verifying one against a
plaintext password: ``SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw)))``.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["NONCE_LEN", "scramble_native", "verify_native"]

NONCE_LEN = 20  # the server's auth-plugin-data ("scramble") is 20 bytes


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


def scramble_native(password: str, nonce: bytes) -> bytes:
    """The client's auth response for ``password``; ``b""`` for an empty password."""
    if not password:
        # The protocol sends an empty response for an empty password, not a hash of "".
        return b""
    stage1 = _sha1(password.encode("utf-8", "surrogateescape"))
    stage2 = _sha1(stage1)
    return _xor(stage1, _sha1(_nonce20(nonce) + stage2))


def verify_native(response: bytes, password: str, nonce: bytes) -> bool:
    """Check a client's auth response; an empty password matches only an empty response."""
    expected = scramble_native(password, nonce)
    # compare_digest: no timing hint about how many leading bytes of a guess were right.
    return hmac.compare_digest(response, expected)
