"""SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, sans-IO.

Owns SASLprep, the PBKDF2 key cache, pg_authid verifiers, and the two sides of the exchange:
``ScramServer`` (we verify a client) and ``ScramClient`` (we log in to a PostgreSQL server).
Channel binding is not supported (gs2 header ``n,,`` or ``y,,``).

Auth pass-through (PgBouncer auth_query style): a ``ScramServer`` that accepted a client exposes
the ClientKey recovered from its proof, and ``ScramClient.from_keys`` logs in to a server with
that ClientKey and the ServerKey from the same stored secret, without knowing the password.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass

from .credentials import ScramKeys

__all__ = [
    "MECHANISM",
    "ScramClient",
    "ScramError",
    "ScramServer",
    "ScramVerifier",
    "make_verifier",
    "mock_verifier",
    "parse_verifier",
    "salted_password",
    "saslprep",
]

MECHANISM = "SCRAM-SHA-256"

# PostgreSQL's default; servers may use more (scram_iterations since PG 16).
DEFAULT_ITERATIONS = 4096
_KEY_LEN = 32  # SHA-256 digest size: StoredKey, ServerKey and ClientProof are all this long
_NONCE_BYTES = 18  # same as PostgreSQL: 18 random bytes -> 24 base64 characters
_SALT_BYTES = 16  # same as PostgreSQL's SCRAM_DEFAULT_SALT_LEN

# The gs2 headers we accept. "y" means "the client could bind but believes the server cannot",
# which is true for us (we never advertise SCRAM-SHA-256-PLUS), so it is not a downgrade.
_GS2_HEADERS = (b"n,,", b"y,,")


class ScramError(Exception):
    """Malformed SCRAM message, unsupported feature, or failed authentication."""


# --------------------------------------------------------------------------------------------
# SASLprep (RFC 4013), with PostgreSQL's leniency
# --------------------------------------------------------------------------------------------


def _prohibited(ch: str) -> bool:
    # RFC 4013 section 2.3 (prohibited output) plus A.1 (unassigned code points: we are a
    # "stored strings" profile, as PostgreSQL is, because verifiers are stored).
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def saslprep(s: str) -> str:
    """Prepare a password with SASLprep; return ``s`` unchanged where SASLprep would fail.

    PostgreSQL (server and libpq) uses the raw password bytes when the password is not a valid
    SASLprep string, so a strict implementation would fail to log in with passwords PostgreSQL
    accepts. We mirror pg_saslprep(): pure ASCII passes through untouched, the prohibition and
    bidi checks run on the mapped (pre-normalisation) characters, and an empty result counts
    as invalid.
    """
    if s.isascii():
        # Nothing in ASCII is mapped or changed by NFKC; libpq short-circuits the same way.
        return s
    # 1) Map: non-ASCII spaces (C.1.2) to SPACE, "commonly mapped to nothing" (B.1) removed.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in s if not stringprep.in_table_b1(ch)
    )
    if not mapped:
        return s
    # 3) Prohibit and 4) bidi. PostgreSQL checks these on the mapped input rather than the
    # normalised output; doing the same keeps our verifiers identical to the server's.
    if any(_prohibited(ch) for ch in mapped):
        return s
    if any(stringprep.in_table_d1(ch) for ch in mapped):
        if any(stringprep.in_table_d2(ch) for ch in mapped):
            return s
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return s
    # 2) Normalise (NFKC). Every character left is assigned in Unicode 3.2, and normalisation
    # of assigned characters is stable across Unicode versions, so the current tables agree.
    return unicodedata.normalize("NFKC", mapped)


def _utf8(s: str) -> bytes:
    # surrogateescape: os.environ decodes undecodable bytes that way, so a "${VAR}" password
    # with invalid UTF-8 round-trips to the exact bytes PostgreSQL was given.
    return s.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------------------------
# Key derivation and verifiers
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(SASLprep(password), salt, i) = PBKDF2-HMAC-SHA-256.

    Cached because PBKDF2 with 4096+ iterations costs milliseconds of CPU; a pool that logs
    in to the same server with the same (password, salt, iterations) must pay it only once,
    not per server connection on the event loop.
    """
    return hashlib.pbkdf2_hmac("sha256", _utf8(saslprep(password)), salt, iterations, _KEY_LEN)


def _hmac(key: bytes, msg: bytes) -> bytes:
    # hmac.digest: OpenSSL's one-shot HMAC, without the Python-level HMAC object.
    return hmac.digest(key, msg, "sha256")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse_iterations(text: str) -> int | None:
    # ASCII digits only: str.isdigit() also accepts e.g. "\u00b2", which int() then rejects.
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value >= 1 else None


def _unb64(text: str | bytes, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ScramError(f"invalid base64 in SCRAM {what}") from exc


@dataclass(frozen=True)
class ScramVerifier:
    """What the server stores for a user: enough to verify a proof, not to recover it."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_text(self) -> str:
        """The pg_authid.rolpassword form (the inverse of :func:`parse_verifier`)."""
        return (
            f"{MECHANISM}${self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )


def make_verifier(
    password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> ScramVerifier:
    """Derive a verifier from a plaintext password (random 16-byte salt unless given)."""
    if iterations < 1:
        raise ValueError("SCRAM iteration count must be positive")
    if salt is None:
        salt = secrets.token_bytes(_SALT_BYTES)
    salted = salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramVerifier(
        salt=salt,
        iterations=iterations,
        stored_key=_sha256(client_key),
        server_key=_hmac(salted, b"Server Key"),
    )


# A per-process secret so that mock verifiers are stable within a run but unpredictable.
_MOCK_SECRET = secrets.token_bytes(32)


def mock_verifier(username: str) -> ScramVerifier:
    """A verifier for an unknown user that no proof can satisfy.

    Lets the server run a full exchange (and fail it like a wrong password) instead of
    revealing that the user does not exist; the salt is stable per user name, as PostgreSQL's
    mock salt is, so repeated probes see nothing different. No PBKDF2 is run.
    """
    seed = _hmac(_MOCK_SECRET, _utf8(username))
    return ScramVerifier(
        salt=seed[:_SALT_BYTES],
        iterations=DEFAULT_ITERATIONS,
        stored_key=secrets.token_bytes(_KEY_LEN),
        server_key=secrets.token_bytes(_KEY_LEN),
    )


def parse_verifier(text: str) -> ScramVerifier:
    """Parse ``SCRAM-SHA-256$<iter>:<b64salt>$<b64StoredKey>:<b64ServerKey>``.

    This is the pg_authid.rolpassword / pg_shadow.passwd form, as an auth_query returns it.
    """
    parts = text.split("$")
    if len(parts) != 3 or parts[0] != MECHANISM:
        raise ScramError("not a SCRAM-SHA-256 verifier")
    iter_text, sep1, salt_text = parts[1].partition(":")
    stored_text, sep2, server_text = parts[2].partition(":")
    iterations = _parse_iterations(iter_text)
    if not sep1 or not sep2 or iterations is None:
        raise ScramError("malformed SCRAM-SHA-256 verifier")
    salt = _unb64(salt_text, "verifier salt")
    stored_key = _unb64(stored_text, "verifier StoredKey")
    server_key = _unb64(server_text, "verifier ServerKey")
    if not salt or len(stored_key) != _KEY_LEN or len(server_key) != _KEY_LEN:
        raise ScramError("malformed SCRAM-SHA-256 verifier")
    return ScramVerifier(salt, iterations, stored_key, server_key)


# --------------------------------------------------------------------------------------------
# Message parsing helpers
# --------------------------------------------------------------------------------------------


def _new_nonce() -> str:
    return _b64(secrets.token_bytes(_NONCE_BYTES))


_PRINTABLE = re.compile(r"[!-+\--~]*")


def _is_printable(value: str) -> bool:
    # RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except ','. Nonces must be
    # this, and checking it up front also guarantees that .encode("ascii") cannot fail later.
    return _PRINTABLE.fullmatch(value) is not None


def _decode(data: bytes, what: str) -> str:
    # SCRAM messages are UTF-8; a decoding error is a malformed message, not a crash.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScramError(f"invalid UTF-8 in SCRAM {what}") from exc


def _split_attrs(text: str, what: str) -> list[tuple[str, str]]:
    """Split ``a=..,b=..`` into (name, value) pairs; names are single ASCII letters."""
    attrs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not ("a" <= part[0] <= "z" or "A" <= part[0] <= "Z"):
            raise ScramError(f"malformed SCRAM {what}")
        attrs.append((part[0], part[2:]))
    return attrs


def _escape_username(name: str) -> str:
    # RFC 5802 saslname: ',' and '=' must be escaped as =2C and =3D.
    return name.replace("=", "=3D").replace(",", "=2C")


# --------------------------------------------------------------------------------------------
# Server side: we verify a client
# --------------------------------------------------------------------------------------------


class ScramServer:
    """Server half of one SCRAM-SHA-256 exchange (sans-IO, use once).

    The caller feeds the SASLInitialResponse data to :meth:`handle_client_first`, sends the
    result as AuthenticationSASLContinue, feeds the SASLResponse data to
    :meth:`handle_client_final` and sends the result as AuthenticationSASLFinal. After a
    successful exchange :attr:`client_key` holds the client's ClientKey (for pass-through).
    """

    def __init__(self, verifier: ScramVerifier, nonce: str | None = None) -> None:
        self._verifier = verifier
        self._server_nonce = nonce if nonce is not None else _new_nonce()
        if not self._server_nonce or not _is_printable(self._server_nonce):
            raise ValueError("SCRAM server nonce must be non-empty printable ASCII without ','")
        self._gs2_header: bytes | None = None
        self._client_first_bare: bytes | None = None
        self._server_first: bytes | None = None
        self._nonce: str | None = None  # client nonce + server nonce
        self._done = False
        self._client_key: bytes | None = None

    @property
    def client_key(self) -> bytes | None:
        """The ClientKey the client proved, or None until an exchange has succeeded.

        Recovered as ClientProof XOR HMAC(StoredKey, AuthMessage); its SHA-256 equals the
        verifier's StoredKey (that is the proof check). Together with the verifier's ServerKey
        it lets :meth:`ScramClient.from_keys` log in as this user. Treat it like a password.
        """
        return self._client_key

    def handle_client_first(self, data: bytes) -> bytes:
        """Parse client-first-message; return server-first-message."""
        if self._gs2_header is not None:
            raise ScramError("SCRAM client-first-message received twice")
        flag = data[:1]
        if flag == b"p":
            raise ScramError("SCRAM channel binding is not supported by this server")
        if flag not in (b"n", b"y"):
            raise ScramError("malformed SCRAM client-first-message (gs2 header)")
        if data[1:3] != b",,":
            # "a=" authzid: PostgreSQL rejects it too; anything else is garbage.
            if data[1:4] == b",a=":
                raise ScramError("SCRAM authorization identity is not supported")
            raise ScramError("malformed SCRAM client-first-message (gs2 header)")
        bare = data[3:]
        attrs = _split_attrs(_decode(bare, "client-first-message"), "client-first-message")
        if attrs[0][0] == "m":
            raise ScramError("SCRAM client requires an unsupported extension")
        # PostgreSQL ignores the user name here (it came in the startup packet) and clients
        # send it empty, so we only check that the attribute is present.
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            raise ScramError("malformed SCRAM client-first-message")
        client_nonce = attrs[1][1]
        if not client_nonce or not _is_printable(client_nonce):
            raise ScramError("malformed SCRAM client nonce")
        # Any further attributes are optional extensions, which RFC 5802 says to ignore.
        self._gs2_header = data[:3]
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        v = self._verifier
        self._server_first = b"r=%s,s=%s,i=%d" % (
            self._nonce.encode("ascii"),
            base64.b64encode(v.salt),
            v.iterations,
        )
        return self._server_first

    def handle_client_final(self, data: bytes) -> bytes:
        """Verify client-final-message; return server-final-message ``v=...``."""
        if self._server_first is None or self._client_first_bare is None:
            raise ScramError("SCRAM client-final-message before client-first-message")
        if self._done:
            raise ScramError("SCRAM client-final-message received twice")
        self._done = True  # one attempt per exchange, whatever the outcome
        text = _decode(data, "client-final-message")
        attrs = _split_attrs(text, "client-final-message")
        if len(attrs) < 3 or attrs[0][0] != "c" or attrs[1][0] != "r" or attrs[-1][0] != "p":
            raise ScramError("malformed SCRAM client-final-message")
        # c= must be exactly the gs2 header the client sent first (no channel binding data).
        if _unb64(attrs[0][1], "channel binding") != self._gs2_header:
            raise ScramError("SCRAM channel binding check failed")
        if attrs[1][1] != self._nonce:
            raise ScramError("SCRAM nonce mismatch")
        proof = _unb64(attrs[-1][1], "client proof")
        if len(proof) != _KEY_LEN:
            raise ScramError("malformed SCRAM client proof")
        # The proof covers everything up to (not including) ",p=".
        without_proof = data[: data.rindex(b",p=")]
        auth_message = b",".join((self._client_first_bare, self._server_first, without_proof))
        v = self._verifier
        client_key = _xor(proof, _hmac(v.stored_key, auth_message))
        if not hmac.compare_digest(_sha256(client_key), v.stored_key):
            raise ScramError("password authentication failed")
        self._client_key = client_key
        return b"v=" + base64.b64encode(_hmac(v.server_key, auth_message))


# --------------------------------------------------------------------------------------------
# Client side: we log in to a PostgreSQL server
# --------------------------------------------------------------------------------------------


class ScramClient:
    """Client half of one SCRAM-SHA-256 exchange (sans-IO, use once).

    ``username`` defaults to empty as libpq sends it (the server takes the user from the
    startup packet); it exists so the RFC 7677 test vector, which uses ``n=user``, can be
    reproduced exactly. Build it from a password, or with :meth:`from_keys` from a ClientKey
    and ServerKey when the password is unknown.
    """

    def __init__(self, password: str, nonce: str | None = None, username: str = "") -> None:
        self._secret: str | ScramKeys = password
        self._nonce = nonce if nonce is not None else _new_nonce()
        if not self._nonce or not _is_printable(self._nonce):
            raise ValueError("SCRAM client nonce must be non-empty printable ASCII without ','")
        self._client_first_bare = b"n=%s,r=%s" % (
            _utf8(_escape_username(username)),
            self._nonce.encode("ascii"),
        )
        self._server_signature: bytes | None = None
        self._finished = False

    @classmethod
    def from_keys(
        cls,
        client_key: bytes,
        server_key: bytes,
        salt: bytes,
        iterations: int,
        username: str = "",
        nonce: str | None = None,
    ) -> ScramClient:
        """A client that proves ``client_key`` instead of deriving keys from a password.

        ``client_key`` is what :attr:`ScramServer.client_key` recovered from a client's
        login; ``server_key``, ``salt`` and ``iterations`` come from the same stored secret
        (:class:`ScramVerifier`). The server must announce exactly that salt and iteration
        count, otherwise its secret has changed since ours was read and the exchange fails
        with :class:`ScramError` before any proof is sent.
        """
        if len(client_key) != _KEY_LEN or len(server_key) != _KEY_LEN:
            raise ValueError("SCRAM ClientKey and ServerKey must be 32 bytes")
        if not salt:
            raise ValueError("SCRAM salt must not be empty")
        if iterations < 1:
            raise ValueError("SCRAM iteration count must be positive")
        client = cls("", nonce=nonce, username=username)
        client._secret = ScramKeys(client_key, server_key, salt, iterations)
        return client

    def _keys_for(self, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        """(ClientKey, ServerKey) for the salt and iteration count the server announced."""
        secret = self._secret
        if isinstance(secret, str):
            salted = salted_password(secret, salt, iterations)
            return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")
        if salt != secret.salt or iterations != secret.iterations:
            raise ScramError(
                "SCRAM salt or iteration count from the server does not match the stored "
                "secret (the secret is stale: was the password changed?)"
            )
        return secret.client_key, secret.server_key

    def client_first(self) -> bytes:
        """The client-first-message (data of SASLInitialResponse)."""
        return b"n,," + self._client_first_bare

    def handle_server_first(self, data: bytes) -> bytes:
        """Parse server-first-message; return client-final-message with the proof."""
        if self._server_signature is not None:
            raise ScramError("SCRAM server-first-message received twice")
        attrs = _split_attrs(_decode(data, "server-first-message"), "server-first-message")
        if attrs[0][0] == "m":
            raise ScramError("SCRAM server requires an unsupported extension")
        if len(attrs) < 3 or [a[0] for a in attrs[:3]] != ["r", "s", "i"]:
            raise ScramError("malformed SCRAM server-first-message")
        nonce, salt_text, iter_text = attrs[0][1], attrs[1][1], attrs[2][1]
        # The server must extend our nonce; otherwise this is not an answer to our message
        # (or is a replay), and continuing would sign someone else's exchange.
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise ScramError("SCRAM nonce mismatch")
        if not _is_printable(nonce):
            raise ScramError("malformed SCRAM server nonce")
        salt = _unb64(salt_text, "salt")
        if not salt:
            raise ScramError("malformed SCRAM salt")
        iterations = _parse_iterations(iter_text)
        if iterations is None:
            raise ScramError("malformed SCRAM iteration count")

        client_key, server_key = self._keys_for(salt, iterations)
        # c=biws is base64("n,,"): no channel binding.
        without_proof = b"c=biws,r=" + nonce.encode("ascii")
        auth_message = b",".join((self._client_first_bare, data, without_proof))
        proof = _xor(client_key, _hmac(_sha256(client_key), auth_message))
        self._server_signature = _hmac(server_key, auth_message)
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify_server_final(self, data: bytes) -> None:
        """Check server-final-message; raise ScramError unless the server proved the key."""
        if self._server_signature is None:
            raise ScramError("SCRAM server-final-message before server-first-message")
        if self._finished:
            raise ScramError("SCRAM server-final-message received twice")
        self._finished = True
        text = _decode(data, "server-final-message")
        if text.startswith("e="):
            raise ScramError(f"SCRAM authentication failed on the server: {text[2:]}")
        attrs = _split_attrs(text, "server-final-message")
        if attrs[0][0] != "v":
            raise ScramError("malformed SCRAM server-final-message")
        signature = _unb64(attrs[0][1], "server signature")
        # A wrong signature means the server does not know the password: it may be an
        # impostor, so the connection must not be used.
        if not hmac.compare_digest(signature, self._server_signature):
            raise ScramError("SCRAM server signature is invalid")
