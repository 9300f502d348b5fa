"""TLS for both legs: settings, their validation, SSL contexts, reload, and what each mode means.

Two sides, named by their config keys:

- ``client_tls`` (clients -> poolproxy): poolproxy is the TLS *server*; ``server_context()``.
- ``server_tls`` (poolproxy -> database): poolproxy is the TLS *client*; ``client_context()``.

Both take libpq's ``sslmode`` words (``MODES``). What they mean on each side:

=============  ==========================================  =====================================
mode           client_tls (accepting clients)              server_tls (connecting to the DB)
=============  ==========================================  =====================================
disable        refuse TLS (SSLRequest -> 'N', no           plaintext only
               CLIENT_SSL in the MySQL greeting)
allow          TLS if the client asks, else plaintext      plaintext; if the server refuses the
                                                           login, retry once with TLS
prefer         same as allow                               ask for TLS; plaintext if the server
                                                           has none
require        TLS only; no certificate check              TLS only; no certificate check
verify-ca      TLS + a client certificate signed by        TLS; the server's certificate must
               ``ca_file``                                 chain to ``ca_file``
verify-full    verify-ca, and the certificate's CN must    verify-ca, and the certificate must
               be the user name (PostgreSQL's              name ``server_name`` (default: the
               ``clientcert=verify-full``)                 configured host; IP SANs work)
=============  ==========================================  =====================================

The predicates ``offers_tls``, ``wants_tls``, ``requires_tls``, ``verifies_peer``,
``checks_name`` and ``connection_attempts`` encode this table for the protocol code.

Contexts have TLSv1.2 as the floor, no compression and no renegotiation. PostgreSQL 17's direct
TLS (the client's first bytes are a ClientHello; see ``looks_like_tls``) requires the ALPN
protocol ``postgresql`` (``PG_ALPN``): build the PostgreSQL listener's context with
``alpn=(PG_ALPN,)`` and, for a direct-TLS connection, refuse the client when
``sslobj.selected_alpn_protocol() != PG_ALPN`` after the handshake (Python's server side cannot
fail the handshake on an ALPN mismatch: it just selects nothing).

``TlsContextHolder`` keeps one side's context across reloads: a reload that fails (a missing or
broken file) keeps the previous settings *and* context, logs the error naming the key path
(``listeners[0].client_tls.cert_file: cannot read /etc/pp/server.crt: No such file or
directory``) and returns it; ``check()`` gives ``--check`` the same errors without building
anything it keeps.

No sockets or asyncio here: this module only builds ``ssl.SSLContext`` objects.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

__all__ = [
    "CLIENT_TLS",
    "DISABLED",
    "MODES",
    "PG_ALPN",
    "SERVER_TLS",
    "SIDES",
    "SYSTEM_CA",
    "Side",
    "TlsContextHolder",
    "TlsError",
    "TlsSettings",
    "build_context",
    "certificate_warnings",
    "check",
    "checks_name",
    "client_cert_matches_user",
    "client_context",
    "connection_attempts",
    "looks_like_tls",
    "offers_tls",
    "peer_common_name",
    "requires_tls",
    "server_context",
    "server_hostname",
    "setting_warnings",
    "settings_from_mapping",
    "settings_to_dict",
    "summary",
    "validate",
    "verifies_peer",
    "wants_tls",
]

log = logging.getLogger("poolproxy.tls")

Side = Literal["client_tls", "server_tls"]
CLIENT_TLS: Final = "client_tls"
SERVER_TLS: Final = "server_tls"
SIDES: Final[tuple[Side, ...]] = ("client_tls", "server_tls")

MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TLS_REQUIRED: Final = frozenset({"require", "verify-ca", "verify-full"})
_VERIFYING: Final = frozenset({"verify-ca", "verify-full"})

#: The ALPN protocol PostgreSQL 17+ uses (mandatory for direct TLS).
PG_ALPN: Final = "postgresql"
#: ``server_tls.ca_file: system``: the platform's trust store (libpq's ``sslrootcert=system``;
#: like libpq, only with ``verify-full``).
SYSTEM_CA: Final = "system"
MINIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_2
#: A certificate expiring sooner than this draws a warning (``certificate_warnings``).
EXPIRY_WARNING: Final = dt.timedelta(days=14)

_FILE_KEYS: Final = ("cert_file", "key_file", "ca_file")
_KEYS: Final[Mapping[Side, tuple[str, ...]]] = {
    "client_tls": ("mode", "cert_file", "key_file", "ca_file"),
    "server_tls": ("mode", "cert_file", "key_file", "ca_file", "server_name"),
}


class TlsError(ValueError):
    """A TLS configuration problem; ``str()`` is ``"<key path>: <message>"`` like ConfigError."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """One side's TLS settings as configured (paths as given; nothing is read here)."""

    mode: str = "disable"
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    #: server_tls only: the name to check in the database's certificate under verify-full
    #: (default: the configured host).
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        """TLS can happen at all on this side (mode is not ``disable``)."""
        return self.mode != "disable"


DISABLED: Final = TlsSettings()


# --------------------------------------------------------------------------------------------
# Mode semantics
# --------------------------------------------------------------------------------------------


def offers_tls(mode: str) -> bool:
    """client_tls: accept a client's TLS request (answer SSLRequest with 'S', accept direct TLS,
    advertise CLIENT_SSL in the MySQL greeting)."""
    return mode != "disable"


def requires_tls(mode: str) -> bool:
    """Either side: plaintext is not acceptable. client_tls: refuse a plaintext startup/login;
    server_tls: fail the connection if the server does not do TLS."""
    return mode in _TLS_REQUIRED


def wants_tls(mode: str) -> bool:
    """server_tls: open the connection by asking for TLS (send SSLRequest; set CLIENT_SSL when
    the MySQL greeting offers it). ``allow`` does not: it starts in plaintext."""
    return mode in _TLS_REQUIRED or mode == "prefer"


def verifies_peer(mode: str) -> bool:
    """The peer's certificate is required and checked against ``ca_file``."""
    return mode in _VERIFYING


def checks_name(mode: str) -> bool:
    """server_tls: the certificate must name the server; client_tls: the CN must be the user."""
    return mode == "verify-full"


def connection_attempts(mode: str) -> tuple[bool, ...]:
    """server_tls, libpq's order: whether each successive connection attempt uses TLS.

    ``allow`` -> ``(False, True)``: plaintext, and if the server refuses that login (say pg_hba
    has only ``hostssl`` for the user; MySQL ``REQUIRE SSL``) a new connection with TLS.
    ``prefer`` -> ``(True, False)``: TLS; a new plaintext connection only if the TLS handshake
    fails (a server answering SSLRequest with 'N', or a MySQL greeting without CLIENT_SSL,
    continues in plaintext on the same connection without a second attempt).
    """
    if mode == "disable":
        return (False,)
    if mode == "allow":
        return (False, True)
    if mode == "prefer":
        return (True, False)
    return (True,)


def looks_like_tls(data: bytes | bytearray | memoryview) -> bool | None:
    """Whether a client's first bytes are a TLS handshake record (PostgreSQL 17 direct TLS)
    rather than a startup packet; None while fewer than 3 bytes are in.

    A TLS record starts ``0x16 0x03 0x0N``; a PostgreSQL startup packet starts with its length,
    whose first byte is 0 for any packet PostgreSQL accepts (< 10000 bytes).
    """
    if len(data) < 1:
        return None
    if data[0] != 0x16:
        return False
    if len(data) < 3:
        return None
    return data[1] == 0x03


def peer_common_name(peercert: Mapping[str, Any] | None) -> str | None:
    """The subject CN of ``SSLObject.getpeercert()`` (the last one if there are several), or
    None: also when no certificate was checked (``getpeercert()`` is ``{}`` or None then)."""
    if not peercert:
        return None
    found: str | None = None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                found = value
    return found


def client_cert_matches_user(peercert: Mapping[str, Any] | None, user: str) -> bool:
    """client_tls verify-full: the client certificate's CN is exactly the user name."""
    return peer_common_name(peercert) == user


def server_hostname(settings: TlsSettings, host: str) -> str | None:
    """The ``server_hostname`` for ``create_connection``/``start_tls``/``wrap_bio`` toward a
    database at ``host``: ``server_name`` if set, else the host (it is both the SNI name and,
    under verify-full, the name checked; Python sends no SNI for an IP address). None for a
    Unix-socket path."""
    if settings.server_name:
        return settings.server_name
    if not host or host.startswith("/"):
        return None
    return host


# --------------------------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mode_error(value: object, path: str) -> TlsError:
    text = str(value)
    hint = ""
    normalized = text.strip().lower().replace("_", "-")
    if normalized in MODES and normalized != text:
        hint = f" (did you mean {normalized}?)"
    return TlsError(_join(path, "mode"), f"must be one of {', '.join(MODES)}{hint}")


def settings_from_mapping(raw: Mapping[str, Any] | None, side: Side, path: str | None = None
                          ) -> TlsSettings:
    """A ``TlsSettings`` from a config mapping (``None``/empty: disabled), then ``validate``.

    Raises ``TlsError`` naming the key path for unknown keys, non-string values and the first
    problem ``validate`` finds. ``mode`` is case-insensitive.
    """
    path = side if path is None else path
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise TlsError(path, "must be a mapping")
    allowed = _KEYS[side]
    values: dict[str, str] = {}
    for key, value in raw.items():
        if key not in allowed:
            extra = " (only server_tls has it)" if key == "server_name" else ""
            raise TlsError(_join(path, str(key)), f"unknown key{extra}")
        if value is None:
            continue
        if not isinstance(value, str):
            raise TlsError(_join(path, key), "must be a string (quote it in YAML)")
        if not value.strip():
            raise TlsError(_join(path, key), "must not be empty")
        values[key] = value.strip().lower() if key == "mode" else value
    if "mode" in values and values["mode"] not in MODES:
        raise _mode_error(raw.get("mode"), path)
    settings = TlsSettings(**values)
    problems = validate(settings, side, path)
    if problems:
        raise problems[0]
    return settings


def settings_to_dict(settings: TlsSettings) -> dict[str, str]:
    """The set fields of ``settings`` (for config dumps; nothing secret is in them)."""
    return {f.name: getattr(settings, f.name) for f in fields(settings)
            if getattr(settings, f.name) is not None}


def validate(settings: TlsSettings, side: Side, path: str | None = None, *,
             unix_socket: bool = False) -> list[TlsError]:
    """The problems of ``settings`` that need no file access, each naming its key path.

    ``unix_socket``: server_tls toward a Unix-socket ``server.host``, where TLS is never used
    (libpq ignores sslmode there), so a mode that requires it is an error.
    """
    path = side if path is None else path
    mode = settings.mode
    errors: list[TlsError] = []
    if mode not in MODES:
        return [_mode_error(mode, path)]
    for key in (*_FILE_KEYS, "server_name"):
        value = getattr(settings, key)
        if value is not None and not value.strip():
            errors.append(TlsError(_join(path, key), "must not be empty"))
    if errors:
        return errors
    if side == "client_tls":
        if settings.server_name is not None:
            errors.append(TlsError(_join(path, "server_name"), "only server_tls has server_name"))
        if settings.enabled:
            for key in ("cert_file", "key_file"):
                if getattr(settings, key) is None:
                    errors.append(TlsError(
                        _join(path, key),
                        f"is required when mode is {mode} (poolproxy presents this certificate "
                        "to clients)"))
        if verifies_peer(mode) and settings.ca_file is None:
            errors.append(TlsError(
                _join(path, "ca_file"),
                f"is required when mode is {mode} (the CA that signs client certificates)"))
        if settings.ca_file == SYSTEM_CA:
            errors.append(TlsError(_join(path, "ca_file"),
                                   f"{SYSTEM_CA!r} is only for server_tls; name a CA file"))
    elif side == "server_tls":
        if (settings.cert_file is None) != (settings.key_file is None):
            have, missing = (("cert_file", "key_file") if settings.key_file is None
                             else ("key_file", "cert_file"))
            errors.append(TlsError(_join(path, missing),
                                   f"is required with {have} (the client certificate's "
                                   "key and certificate go together)"))
        if verifies_peer(mode) and settings.ca_file is None:
            errors.append(TlsError(
                _join(path, "ca_file"),
                f"is required when mode is {mode} (the CA that signs the server's certificate;"
                f" '{SYSTEM_CA}' for the system's trust store)"))
        if settings.ca_file == SYSTEM_CA and mode != "verify-full":
            errors.append(TlsError(_join(path, "ca_file"),
                                   f"'{SYSTEM_CA}' needs mode verify-full (as libpq's "
                                   "sslrootcert=system does)"))
        if settings.server_name is not None and not _valid_name(settings.server_name):
            errors.append(TlsError(_join(path, "server_name"),
                                   "must be a host name or an IP address"))
        if unix_socket and requires_tls(mode):
            errors.append(TlsError(_join(path, "mode"),
                                   f"{mode} cannot work: server.host is a Unix socket, where TLS "
                                   "is not used; use disable (or TCP)"))
    else:
        raise ValueError(f"side must be one of {SIDES}, not {side!r}")
    return errors


def _valid_name(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    return all(0 < len(label) <= 63 and all(c.isalnum() or c in "-_*" for c in label)
               for label in labels)


def setting_warnings(settings: TlsSettings, side: Side, path: str | None = None) -> list[str]:
    """Settings that are valid but probably not what was meant (no file access)."""
    path = side if path is None else path
    out: list[str] = []
    mode = settings.mode
    if not settings.enabled:
        given = [k for k in (*_FILE_KEYS, "server_name") if getattr(settings, k) is not None]
        if given:
            out.append(f"{_join(path, given[0])}: is set but mode is disable, so TLS is off")
        return out
    if settings.ca_file is not None and not verifies_peer(mode):
        if side == "server_tls":
            out.append(f"{_join(path, 'ca_file')}: is not used by mode {mode} (no certificate "
                       "check, unlike libpq's legacy behaviour with a root certificate); use "
                       "verify-ca or verify-full to check the server's certificate")
        else:
            out.append(f"{_join(path, 'ca_file')}: is not used by mode {mode}; use verify-ca or "
                       "verify-full to require client certificates")
    if side == "server_tls" and settings.server_name is not None and mode != "verify-full":
        out.append(f"{_join(path, 'server_name')}: is only checked by mode verify-full (with "
                   f"{mode} it is just the SNI name)")
    return out


# --------------------------------------------------------------------------------------------
# Contexts
# --------------------------------------------------------------------------------------------


def _base_context(protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _read(path: str, key: str, filename: str) -> bytes:
    try:
        with open(filename, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TlsError(_join(path, key), f"cannot read {filename}: {exc.strerror or exc}") from None


def _no_password() -> str:
    raise TlsError("", "the private key is encrypted (poolproxy cannot ask for a passphrase)")


def _diagnose_chain(path: str, cert_file: str, key_file: str, exc: Exception) -> TlsError:
    """Name the file that is wrong after ``load_cert_chain`` failed."""
    cert_data = _read(path, "cert_file", cert_file)
    key_data = _read(path, "key_file", key_file)
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificates(cert_data)[0]
    except ValueError:
        return TlsError(_join(path, "cert_file"), f"no PEM certificate in {cert_file}")
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        return TlsError(_join(path, "key_file"),
                        f"the private key in {key_file} is encrypted (poolproxy cannot ask for a "
                        "passphrase)")
    except (ValueError, UnsupportedAlgorithm):
        return TlsError(_join(path, "key_file"), f"no usable PEM private key in {key_file}")
    if key.public_key() != cert.public_key():
        return TlsError(_join(path, "key_file"),
                        f"{key_file} is not the key of the certificate in {cert_file}")
    return TlsError(_join(path, "cert_file"), f"cannot load {cert_file} with {key_file}: {exc}")


def _load_chain(ctx: ssl.SSLContext, settings: TlsSettings, path: str) -> None:
    cert_file, key_file = settings.cert_file, settings.key_file
    assert cert_file is not None and key_file is not None
    _read(path, "cert_file", cert_file)  # a clear "cannot read" error first
    _read(path, "key_file", key_file)
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except TlsError as exc:
        raise TlsError(_join(path, "key_file"), f"{key_file}: {exc.message}") from None
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise _diagnose_chain(path, cert_file, key_file, exc) from None


def _load_ca(ctx: ssl.SSLContext, settings: TlsSettings, path: str) -> None:
    ca_file = settings.ca_file
    assert ca_file is not None
    if ca_file == SYSTEM_CA:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return
    _read(path, "ca_file", ca_file)
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TlsError(_join(path, "ca_file"),
                       f"no usable PEM CA certificate in {ca_file} ({reason})") from None


def _check_settings(settings: TlsSettings, side: Side, path: str) -> None:
    problems = validate(settings, side, path)
    if problems:
        raise problems[0]
    if not settings.enabled:
        raise TlsError(_join(path, "mode"), "is disable: there is no TLS context to build")


def server_context(settings: TlsSettings, *, alpn: Sequence[str] | None = None,
                   path: str = "client_tls") -> ssl.SSLContext:
    """The context that accepts clients (client_tls): poolproxy's certificate and key; for
    verify-ca/verify-full also ``ca_file`` and CERT_OPTIONAL, else CERT_NONE (no client
    certificate is asked for). ``alpn``: e.g. ``(PG_ALPN,)`` for a PostgreSQL listener.

    Raises ``TlsError`` naming the key (under ``path``) whose file is missing or broken.
    """
    _check_settings(settings, "client_tls", path)
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, settings, path)
    if verifies_peer(settings.mode):
        _load_ca(ctx, settings, path)
        # A certificate that is sent must chain to ca_file (else the handshake fails), but a
        # missing one is refused after the handshake by the protocol code: inside TLS the
        # client can be told why, in its protocol (PostgreSQL's "connection requires a valid
        # client certificate"), rather than losing the connection to a bare TLS alert.
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(settings: TlsSettings, *, alpn: Sequence[str] | None = None,
                   path: str = "server_tls") -> ssl.SSLContext:
    """The context for connecting to a database (server_tls), with libpq's semantics:
    allow/prefer/require: no verification (CERT_NONE, no host name check); verify-ca:
    CERT_REQUIRED against ``ca_file``, no host name check; verify-full: also the host name
    (pass ``server_hostname(settings, host)`` when wrapping). ``cert_file``/``key_file``: the
    client certificate, when given. ``alpn``: ``(PG_ALPN,)`` as libpq 17+ sends it (older
    servers ignore it; direct TLS needs it).

    Raises ``TlsError`` naming the key (under ``path``) whose file is missing or broken.
    """
    _check_settings(settings, "server_tls", path)
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    if verifies_peer(settings.mode):
        ctx.check_hostname = checks_name(settings.mode)
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_ca(ctx, settings, path)
    else:
        ctx.check_hostname = False  # before verify_mode: CERT_NONE with a name check is refused
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert_file is not None:
        _load_chain(ctx, settings, path)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def build_context(settings: TlsSettings, side: Side, *, alpn: Sequence[str] | None = None,
                  path: str | None = None) -> ssl.SSLContext | None:
    """``server_context`` for client_tls, ``client_context`` for server_tls; None when the mode
    is ``disable``."""
    path = side if path is None else path
    if not settings.enabled:
        problems = validate(settings, side, path)
        if problems:
            raise problems[0]
        return None
    if side == "client_tls":
        return server_context(settings, alpn=alpn, path=path)
    return client_context(settings, alpn=alpn, path=path)


def certificate_warnings(settings: TlsSettings, path: str, *, now: dt.datetime | None = None
                         ) -> list[str]:
    """Warnings about ``cert_file`` (expired, expiring within ``EXPIRY_WARNING``, not valid yet);
    files that cannot be read are left to the context builders' errors."""
    if not settings.enabled or settings.cert_file is None:
        return []
    try:
        with open(settings.cert_file, "rb") as f:
            data = f.read()
        from cryptography import x509

        cert = x509.load_pem_x509_certificates(data)[0]
    except (OSError, ValueError):
        return []
    now = now or dt.datetime.now(dt.UTC)
    key = _join(path, "cert_file")
    not_after = cert.not_valid_after_utc
    if not_after <= now:
        return [f"{key}: the certificate in {settings.cert_file} expired on "
                f"{not_after:%Y-%m-%d %H:%M} UTC"]
    if cert.not_valid_before_utc > now:
        return [f"{key}: the certificate in {settings.cert_file} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"]
    if not_after - now < EXPIRY_WARNING:
        return [f"{key}: the certificate in {settings.cert_file} expires on "
                f"{not_after:%Y-%m-%d %H:%M} UTC"]
    return []


def check(settings: TlsSettings, side: Side, path: str | None = None, *,
          alpn: Sequence[str] | None = None, unix_socket: bool = False) -> list[TlsError]:
    """Everything ``--check`` should report as an error: ``validate``, then building the context
    (which reads every file). Empty when the settings would load."""
    path = side if path is None else path
    problems = validate(settings, side, path, unix_socket=unix_socket)
    if problems:
        return problems
    try:
        build_context(settings, side, alpn=alpn, path=path)
    except TlsError as exc:
        return [exc]
    return []


def summary(settings: TlsSettings) -> str:
    """One line for ``--check``: ``verify-full (cert /a.crt, key /a.key, ca /ca.crt)``."""
    parts = [f"{label} {value}" for label, value in (
        ("cert", settings.cert_file), ("key", settings.key_file), ("ca", settings.ca_file),
        ("server_name", settings.server_name)) if value is not None]
    return settings.mode + (f" ({', '.join(parts)})" if parts else "")


# --------------------------------------------------------------------------------------------
# Reload
# --------------------------------------------------------------------------------------------


class TlsContextHolder:
    """One side of one listener: its settings and context, kept across reloads.

    ``TlsContextHolder(settings, "client_tls", "listeners[0].client_tls", alpn=(PG_ALPN,))``
    builds the context and raises ``TlsError`` if it cannot (startup must fail rather than run
    without the TLS the config asks for). ``reload(settings)`` re-reads every file even if the
    settings are unchanged (renewed certificates keep their paths); on failure it keeps the
    previous settings and context together, logs the error and returns it. Connections take
    ``holder.context`` when they start, so a reload changes only new connections.
    """

    def __init__(self, settings: TlsSettings, side: Side, path: str | None = None, *,
                 alpn: Sequence[str] | None = None,
                 builder: Callable[..., ssl.SSLContext | None] = build_context) -> None:
        self.side: Side = side
        self.path = side if path is None else path
        self.alpn: tuple[str, ...] | None = tuple(alpn) if alpn else None
        self._build = builder
        self.error: TlsError | None = None
        self.settings = settings
        self.context = self._make(settings)
        self.generation = 1
        for text in certificate_warnings(settings, self.path):
            log.warning("%s", text)

    def _make(self, settings: TlsSettings) -> ssl.SSLContext | None:
        return self._build(settings, self.side, alpn=self.alpn, path=self.path)

    @property
    def mode(self) -> str:
        return self.settings.mode

    def reload(self, settings: TlsSettings | None = None) -> TlsError | None:
        """Rebuild from ``settings`` (default: the current ones, re-reading the files). Returns
        None on success, else the error (the previous context stays in use)."""
        new = self.settings if settings is None else settings
        error: TlsError | None
        try:
            context = self._make(new)
        except TlsError as exc:
            error = exc
        except (OSError, ValueError) as exc:  # not foreseen by the builders; never fatal here
            error = TlsError(self.path, f"cannot build the TLS context: {exc}")
        else:
            error = None
        if error is not None:
            self.error = error
            log.error("%s; keeping the previous TLS settings (mode %s)", error, self.settings.mode)
            return error
        if new != self.settings:
            log.info("%s: TLS settings changed: %s -> %s", self.path, summary(self.settings),
                     summary(new))
        self.settings, self.context, self.error = new, context, None
        self.generation += 1
        for text in certificate_warnings(new, self.path):
            log.warning("%s", text)
        return None

    def __repr__(self) -> str:
        return f"<TlsContextHolder {self.path} {summary(self.settings)} gen={self.generation}>"

