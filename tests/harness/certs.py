"""Test certificates made at run time (never commit keys): a CA, server and client certificates
signed by it, and the broken ones the error tests need.

``make_pki(directory)`` writes everything as PEM files (keys mode 0600, unencrypted PKCS#8) and
returns a ``Pki`` of paths::

    from tests.harness.certs import make_pki

    pki = make_pki(tmp_path / "pki")                 # ~20 ms: EC P-256 keys
    pki.ca                                           # CA certificate: ca_file / sslrootcert
    pki.server.cert, pki.server.key                  # SAN DNS:localhost, IP:127.0.0.1
    pki.client("app_cert").cert                      # client certificate, CN = the user name
    pki.expired                                      # server certificate (same SANs) that expired
    pki.wrong_host                                   # server certificate for wrong-host.invalid only
    pki.other_ca, pki.other_server, pki.other_client # a second CA and certificates signed by it

Every server certificate carries the same SANs as ``pki.server`` unless it exists to be wrong,
so a test can swap one in and see exactly one failure (wrong CA, expired, wrong host name).
Client certificates are issued for ``client_users`` (default: ``app_tls``, ``app_cert``,
``app_x509``; the users of the TLS-enabled test servers) and ``pki.other_client`` is one for
the first of them signed by the other CA.

More certificates (e.g. a renewed one for a reload test) come from ``pki.authority``::

    renewed = pki.authority.issue_files(tmp_path, "renewed", "localhost",
                                        dns=("localhost",), ips=("127.0.0.1",))

``install_server_files(directory, pki.ca, pki.server, owner=(uid, gid))`` copies a server's
certificate, key and CA into a directory that a database server running as another user can
read (the TLS-enabled ``PgServer`` and ``MariaDbServer`` use it; see their ``enable_tls``).

``key_type="rsa"`` makes RSA-2048 keys instead (slower: ~50 ms each); PostgreSQL, MariaDB,
libpq, PyMySQL and Python's ssl all accept the default EC keys.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertAuthority",
    "CertKey",
    "DEFAULT_CLIENT_USERS",
    "DEFAULT_SERVER_DNS",
    "DEFAULT_SERVER_IPS",
    "Pki",
    "ServerFiles",
    "install_server_files",
    "make_pki",
]

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_SERVER_DNS: tuple[str, ...] = ("localhost",)
DEFAULT_SERVER_IPS: tuple[str, ...] = ("127.0.0.1",)
DEFAULT_CLIENT_USERS: tuple[str, ...] = ("app_tls", "app_cert", "app_x509")
WRONG_HOST = "wrong-host.invalid"

_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class CertKey:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path

    def __iter__(self) -> Iterator[str]:
        """``cert, key = pair`` and ``ctx.load_cert_chain(*pair)`` work (as str paths)."""
        return iter((str(self.cert), str(self.key)))


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, org: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # the umask may have cut bits; be exact
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)  # atomic: a reloading reader never sees half a file
    return path


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertAuthority:
    """An in-memory CA that issues leaf certificates (and can write them as files)."""

    def __init__(self, cert: x509.Certificate, key: PrivateKey, key_type: KeyType) -> None:
        self.cert = cert
        self.key = key
        self.key_type = key_type

    @classmethod
    def create(cls, common_name: str = "poolproxy test CA", key_type: KeyType = "ec",
               days: int = 30) -> CertAuthority:
        key = _new_key(key_type)
        name = _name(common_name, "poolproxy tests")
        now = dt.datetime.now(dt.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + days * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key, key_type)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        server: bool = True,
        client: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_type: KeyType | None = None,
    ) -> tuple[x509.Certificate, PrivateKey]:
        """A leaf certificate for ``common_name`` (valid from yesterday for 30 days unless
        ``not_before``/``not_after`` say otherwise) and its new key."""
        kt = key_type or self.key_type
        key = _new_key(kt)
        now = dt.datetime.now(dt.UTC)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, "poolproxy tests"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=(kt == "rsa"),
                data_encipherment=False, key_agreement=(kt == "ec"), key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key

    def write_ca(self, directory: Path, name: str) -> Path:
        """Write the CA certificate as ``<name>.crt``; its key as ``<name>.key`` (0600)."""
        _write(Path(directory) / f"{name}.key", _key_pem(self.key), 0o600)
        return _write(Path(directory) / f"{name}.crt", self.cert_pem, 0o644)

    def issue_files(self, directory: Path, name: str, common_name: str, **kwargs: object) -> CertKey:
        """``issue(common_name, **kwargs)`` written as ``<name>.crt`` (0644) and ``<name>.key``
        (0600) in ``directory``."""
        cert, key = self.issue(common_name, **kwargs)  # type: ignore[arg-type]
        directory = Path(directory)
        return CertKey(
            cert=_write(directory / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM),
                        0o644),
            key=_write(directory / f"{name}.key", _key_pem(key), 0o600),
        )


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files ``make_pki`` wrote; see the module doc."""

    directory: Path
    ca: Path
    ca_key: Path
    server: CertKey
    clients: Mapping[str, CertKey]
    expired: CertKey
    wrong_host: CertKey
    other_ca: Path
    other_server: CertKey
    other_client: CertKey
    server_dns: tuple[str, ...]
    server_ips: tuple[str, ...]
    authority: CertAuthority = field(repr=False, compare=False)
    other_authority: CertAuthority = field(repr=False, compare=False)

    def client(self, user: str) -> CertKey:
        """The client certificate whose CN is ``user`` (issued by ``make_pki``)."""
        try:
            return self.clients[user]
        except KeyError:
            raise KeyError(f"no client certificate for {user!r}; make_pki(client_users=...) "
                           f"made {sorted(self.clients)}") from None


def make_pki(
    directory: Path | str,
    *,
    server_dns: Iterable[str] = DEFAULT_SERVER_DNS,
    server_ips: Iterable[str] = DEFAULT_SERVER_IPS,
    client_users: Iterable[str] = DEFAULT_CLIENT_USERS,
    key_type: KeyType = "ec",
) -> Pki:
    """Create the CA, the other CA and all certificates in ``directory`` (created 0755)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    dns, ips, users = tuple(server_dns), tuple(server_ips), tuple(client_users)
    if not users:
        raise ValueError("make_pki needs at least one client user")
    common_name = dns[0] if dns else ips[0] if ips else "poolproxy test server"
    ca = CertAuthority.create("poolproxy test CA", key_type)
    other = CertAuthority.create("poolproxy other test CA", key_type)
    now = dt.datetime.now(dt.UTC)

    def server_files(authority: CertAuthority, name: str, **kwargs: object) -> CertKey:
        kwargs.setdefault("dns", dns)
        kwargs.setdefault("ips", ips)
        return authority.issue_files(directory, name, common_name, **kwargs)

    clients = {
        user: ca.issue_files(directory, f"client-{user}", user, server=False, client=True)
        for user in users
    }
    return Pki(
        directory=directory,
        ca=ca.write_ca(directory, "ca"),
        ca_key=directory / "ca.key",
        server=server_files(ca, "server"),
        clients=MappingProxyType(clients),
        expired=server_files(ca, "expired", not_before=now - 30 * _DAY, not_after=now - _DAY),
        wrong_host=ca.issue_files(directory, "wrong-host", WRONG_HOST, dns=(WRONG_HOST,)),
        other_ca=other.write_ca(directory, "other-ca"),
        other_server=server_files(other, "other-server"),
        other_client=other.issue_files(directory, f"other-client-{users[0]}", users[0],
                                       server=False, client=True),
        server_dns=dns,
        server_ips=ips,
        authority=ca,
        other_authority=other,
    )


@dataclass(frozen=True)
class ServerFiles:
    """A database server's own copies of its certificate, key and CA certificate."""

    cert: Path
    key: Path
    ca: Path


def install_server_files(
    directory: Path, ca: Path, server: CertKey, owner: tuple[int, int] | None = None
) -> ServerFiles:
    """Copy ``server`` (certificate + key) and ``ca`` into ``directory`` as ``server.crt``,
    ``server.key`` (0600) and ``ca.crt``, owned by ``owner`` (uid, gid) when given: PostgreSQL
    insists that its key belongs to it (or to root) and is not group/world readable.

    The files are replaced atomically, so a server reloading them never reads half a file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    if owner is not None:
        os.chown(directory, *owner)
    return ServerFiles(
        cert=_write(directory / "server.crt", Path(server.cert).read_bytes(), 0o644, owner),
        key=_write(directory / "server.key", Path(server.key).read_bytes(), 0o600, owner),
        ca=_write(directory / "ca.crt", Path(ca).read_bytes(), 0o644, owner),
    )
