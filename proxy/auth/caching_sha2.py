"""MySQL 8 ``caching_sha2_password``: fast-auth scramble and full-auth RSA password, pure functions.

Owns the SHA-256 scramble (fast auth), its verification, the status bytes of the
AuthMoreData exchange, and the RSA-OAEP encrypted password used for full auth over plain TCP.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "FAST_AUTH_SUCCESS",
    "PERFORM_FULL_AUTH",
    "REQUEST_PUBLIC_KEY",
    "rsa_encrypt_password",
    "scramble_caching_sha2",
    "verify_caching_sha2",
    "xor_password_for_full_auth",
]

# Second byte of an AuthMoreData (0x01) packet from the server: fast auth worked, or the
# server has no cached entry and wants the full password.
FAST_AUTH_SUCCESS = 3
PERFORM_FULL_AUTH = 4
# What the client sends (a single byte) to ask for the server's RSA public key.
REQUEST_PUBLIC_KEY = 2

_NONCE_LEN = 20


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _nonce20(nonce: bytes) -> bytes:
    # Servers send the scramble NUL-terminated (21 bytes); the NUL is not hashed or XORed.
    if len(nonce) == _NONCE_LEN + 1 and nonce[-1] == 0:
        return nonce[:-1]
    return nonce


def scramble_caching_sha2(password: str, nonce: bytes) -> bytes:
    """Fast-auth response: ``SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)``; b"" if empty.

    Note the nonce comes *after* the double hash here, unlike mysql_native_password.
    """
    if not password:
        return b""
    p1 = _sha256(_utf8(password))
    p3 = _sha256(_sha256(p1) + _nonce20(nonce))
    return bytes(a ^ b for a, b in zip(p1, p3, strict=True))


def verify_caching_sha2(response: bytes, password: str, nonce: bytes) -> bool:
    """Check a client's fast-auth response (constant time); empty matches empty only."""
    return hmac.compare_digest(response, scramble_caching_sha2(password, nonce))


def xor_password_for_full_auth(password: str, nonce: bytes) -> bytes:
    """``(password + NUL) XOR nonce`` (nonce repeated): the plaintext that full auth encrypts.

    The XOR with the per-connection scramble stops a captured ciphertext from being replayed
    on another connection.
    """
    data = _utf8(password) + b"\0"
    key = _nonce20(nonce)
    if not key:
        raise ValueError("caching_sha2_password nonce must not be empty")
    return bytes(b ^ key[i % len(key)] for i, b in enumerate(data))


def rsa_encrypt_password(password: str, nonce: bytes, public_key_pem: bytes) -> bytes:
    """Encrypt the password for full auth over an unencrypted connection.

    MySQL 8 decrypts with RSA_PKCS1_OAEP_PADDING, i.e. OAEP with SHA-1 and MGF1-SHA-1.
    Accepts both PEM forms a server may send ("PUBLIC KEY" and "RSA PUBLIC KEY").
    """
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("caching_sha2_password: the server's public key is not an RSA key")
    return key.encrypt(
        xor_password_for_full_auth(password, nonce),
        padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
        ),
    )
