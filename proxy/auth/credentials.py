"""What poolproxy logs in to a database with when no password is configured, and how it checks
a client against a secret that came from the database (auth.query) or from the client itself
(auth.type passthrough).

- `ScramKeys`: PostgreSQL SCRAM-SHA-256 pass-through. The ClientKey recovered from a client's
  proof plus the ServerKey, salt and iterations of the secret log in to the server
  (`scram.ScramClient.from_keys`); no password is ever known.
- `NativeStage1`: MySQL mysql_native_password pass-through: SHA1(password), recovered from a
  client's scramble with the stored SHA1(SHA1(password)), answers any later server nonce.
- A plain ``str`` is a password (or a PostgreSQL ``md5...`` hash, which md5 auth accepts as is).
- `PasswordVerifier`: what passthrough keeps to check a returning client without a server
  login: a keyed SHA-256 of the password (the key is random per process), never the password.

No I/O here.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

__all__ = ["Credential", "NativeStage1", "PasswordVerifier", "ScramKeys"]


@dataclass(frozen=True, slots=True)
class ScramKeys:
    client_key: bytes
    server_key: bytes
    salt: bytes
    iterations: int

    def __repr__(self) -> str:  # never show key material in logs
        return f"<ScramKeys i={self.iterations}>"


@dataclass(frozen=True, slots=True)
class NativeStage1:
    stage1: bytes

    def __repr__(self) -> str:
        return "<NativeStage1>"


Credential = str | ScramKeys | NativeStage1

_KEY = os.urandom(32)


class PasswordVerifier:
    """Checks a later cleartext password against the one a server accepted."""

    __slots__ = ("_digest",)

    def __init__(self, password: str) -> None:
        self._digest = self._hash(password)

    @staticmethod
    def _hash(password: str) -> bytes:
        return hmac.new(_KEY, password.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).digest()

    def matches(self, password: str) -> bool:
        return hmac.compare_digest(self._digest, self._hash(password))
