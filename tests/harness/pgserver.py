"""Throwaway PostgreSQL servers for the test suite (``initdb`` + ``pg_ctl`` on a free port).

``PgServer.create()`` builds a fresh cluster in a temp dir, configures it for speed and for the
authentication methods the proxy must handle (trust, md5, scram-sha-256), starts it and creates
the roles and databases the tests use. PostgreSQL refuses to run as root, so when the tests run
as root the server runs as the ``postgres`` system user (or a ``poolproxy-test`` user created on
the fly). This module also holds the small helpers the MariaDB harness shares.

TLS (optional; the defaults above are untouched): ``PgServer.create(basedir, tls=pki)`` starts a
server with ``ssl = on``, and ``server.enable_tls(pki)`` turns it on in a running server (files
+ config + ``pg_reload_conf()``; no restart). ``pki`` comes from ``tests.harness.certs.make_pki``.
The server presents ``pki.server`` (or ``server_cert=``, e.g. ``pki.expired``, to test a client's
refusal), trusts ``pki.ca`` for client certificates, and gets two roles only TLS reaches::

    hostssl   all app_tls  127.0.0.1/32 scram-sha-256   # TLS_USER / TLS_PASSWORD
    hostnossl all app_tls  127.0.0.1/32 reject
    hostssl   all app_cert 127.0.0.1/32 cert            # CERT_USER: client certificate, CN=app_cert
    hostnossl all app_cert 127.0.0.1/32 reject

Both may use database ``app``. Every other rule stays as above. Connect with
``psycopg.connect(server.tls_dsn())`` (sslmode=verify-full, sslrootcert=pki.ca; for
``app_cert`` also sslcert/sslkey) or ``server.dsn(..., sslmode="require")`` (extra conninfo
keywords); ``server.presented_certificate()`` is the DER certificate it currently presents.
Use a server of your own for TLS (a module fixture; ``create`` takes about a second) rather
than the shared ``pg_server``, whose pg_hba.conf other tests check.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ports import free_port
from .procs import poll, read_log

if TYPE_CHECKING:
    from .certs import CertKey, Pki, ServerFiles

FALLBACK_SERVICE_USER = "poolproxy-test"

# sun_path is 108 bytes on Linux; keep some room for the socket file name itself.
_MAX_SOCKET_DIR_LEN = 80

PG_HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all app_md5 127.0.0.1/32 md5
host all app_trust 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""

#: Roles that only TLS reaches (see the module doc); created by create(tls=...) / enable_tls().
TLS_USER = "app_tls"
TLS_PASSWORD = "tls-secret"
CERT_USER = "app_cert"

PG_HBA_TLS = f"""\
hostssl all {TLS_USER} 127.0.0.1/32 scram-sha-256
hostnossl all {TLS_USER} 127.0.0.1/32 reject
hostssl all {CERT_USER} 127.0.0.1/32 cert
hostnossl all {CERT_USER} 127.0.0.1/32 reject
"""

BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "400",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
}


# --------------------------------------------------------------------------- shared helpers


@dataclass(frozen=True)
class ServiceUser:
    """The unprivileged account a database server runs as when the tests run as root."""

    name: str
    uid: int
    gid: int


def service_user(preferred: str) -> ServiceUser | None:
    """Return the account to run a server as, or None to run as ourselves (when not root).

    Uses ``preferred`` (``postgres``, ``mysql``) when it exists, else ``poolproxy-test``, which
    is created as a system user if needed.
    """
    if os.geteuid() != 0:
        return None
    for name in (preferred, FALLBACK_SERVICE_USER):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return ServiceUser(pw.pw_name, pw.pw_uid, pw.pw_gid)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home",
         "--shell", "/usr/sbin/nologin", FALLBACK_SERVICE_USER],
        capture_output=True, text=True, check=False,
    )
    try:  # a concurrent test session may have created it first; that is fine
        pw = pwd.getpwnam(FALLBACK_SERVICE_USER)
    except KeyError:
        raise RuntimeError(
            f"cannot create system user {FALLBACK_SERVICE_USER!r}: {result.stderr.strip()}"
        ) from None
    return ServiceUser(pw.pw_name, pw.pw_uid, pw.pw_gid)


def make_traversable(path: Path, user: ServiceUser | None) -> None:
    """Let ``user`` reach ``path``: add o+x to every parent directory that it cannot search.

    pytest's temp dirs are mode 0700 and owned by root; the server user must traverse them.
    """
    if user is None:
        return
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == user.uid or st.st_mode & stat.S_IXOTH:
            continue
        os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def prepare_dir(path: Path, user: ServiceUser | None, mode: int = 0o755) -> Path:
    """Create ``path`` (owned by ``user`` when given) and make it reachable by that user."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if user is not None:
        os.chown(path, user.uid, user.gid)
    make_traversable(path, user)
    return path


def socket_dir_for(preferred: Path, user: ServiceUser | None) -> Path:
    """``preferred`` if a Unix socket path in it fits in sun_path, else a short dir in /tmp."""
    if len(str(preferred)) <= _MAX_SOCKET_DIR_LEN:
        return preferred
    return prepare_dir(Path(tempfile.mkdtemp(prefix="pp-sock-", dir="/tmp")), user)


def run_as(
    user: ServiceUser | None, cmd: list[str], *, cwd: Path, log: Path | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd`` as ``user`` (None: as ourselves); raise with its output when it fails."""
    env = _server_env(cwd)
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
    # Output goes to a file, not a pipe: pg_ctl's postmaster must not inherit (and hold) a pipe.
    out_path = log if log is not None else cwd / "command.log"
    with open(out_path, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        start = out.tell()
        result = subprocess.run(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, timeout=timeout, check=False, **kwargs,
        )
    if result.returncode != 0:
        text = out_path.read_bytes()[start:].decode(errors="replace")
        raise RuntimeError(
            f"command failed with exit code {result.returncode}: {' '.join(cmd)}\n{text[-4000:]}"
        )
    return result


def log_tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    return "\n".join(read_log(path).splitlines()[-lines:])


def _server_env(home: Path) -> dict[str, str]:
    # Drop libpq/MySQL client variables of the caller so that they cannot redirect our tools.
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("PG", "MYSQL", "MARIADB")) and k not in ("LANG", "LANGUAGE")
        and not k.startswith("LC_")
    }
    env.update(LC_ALL="C", HOME=str(home))
    return env


# --------------------------------------------------------------------------- PostgreSQL


def pg_bindir() -> Path:
    """Directory holding initdb/pg_ctl/postgres: the newest /usr/lib/postgresql/*/bin, else
    ``pg_config --bindir``, else PATH."""

    def version(path: str) -> tuple[int, ...]:
        m = re.search(r"/postgresql/([\d.]+)/bin", path)
        return tuple(int(x) for x in m.group(1).split(".") if x) if m else (0,)

    candidates = sorted(
        (p for p in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(f"{p}/initdb")),
        key=version, reverse=True,
    )
    if candidates:
        return Path(candidates[0])
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if out.returncode == 0 and (bindir / "initdb").exists():
            return bindir
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; "
        "install the 'postgresql' package (scripts/test.sh does this)"
    )


def _quote_conninfo(value: str) -> str:
    if value and re.fullmatch(r"[A-Za-z0-9_.\-/]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PgServer:
    """A PostgreSQL cluster in a temp dir, listening on 127.0.0.1:<port>; see the module doc."""

    host: str
    port: int
    datadir: Path

    def __init__(self, rootdir: Path, port: int, user: ServiceUser | None) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.rootdir = rootdir
        self.datadir = rootdir / "data"
        self.logfile = rootdir / "postgresql.log"
        self.socket_dir = socket_dir_for(self.datadir, user)
        self.service_user = user
        self.bindir = pg_bindir()
        self._running = False
        #: Set by enable_tls(): the certificates in use and the server's copies of its files.
        self.pki: Pki | None = None
        self.tls_files: ServerFiles | None = None
        atexit.register(self._stop_at_exit)

    # -- lifecycle

    @classmethod
    def create(
        cls, basedir: Path, settings: dict[str, str] | None = None, *, tls: Pki | None = None,
        server_cert: CertKey | None = None,
    ) -> PgServer:
        """initdb + configure + start + create roles and databases; returns a running server.

        ``tls``: start with TLS on and the TLS-only roles (see the module doc);
        ``server_cert``: the certificate to present instead of ``tls.server``."""
        user = service_user("postgres")
        port = free_port()
        rootdir = prepare_dir(Path(basedir) / f"pg-{port}", user)
        server = cls(rootdir, port, user)
        server._initdb()
        server._configure(settings or {})
        if tls is not None:
            server._install_tls(tls, server_cert)
        server.start()
        try:
            server._bootstrap()
            if tls is not None:
                server._bootstrap_tls()
        except Exception:
            server.stop("immediate")
            raise
        return server

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self._running:
            return
        try:
            run_as(self.service_user, [
                str(self.bindir / "pg_ctl"), "start", "-D", str(self.datadir),
                "-l", str(self.logfile), "-w", "-t", "60",
            ], cwd=self.rootdir, log=self.rootdir / "pg_ctl.log")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- postgresql.log ---\n{log_tail(self.logfile)}") from None
        self._running = True
        self._wait_accepting(30.0)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart | fast | immediate) and wait until it is gone."""
        if not self._running:
            return
        run_as(self.service_user, [
            str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", mode,
            "-w", "-t", "60",
        ], cwd=self.rootdir, log=self.rootdir / "pg_ctl.log")
        self._running = False

    def restart(self) -> None:
        """Stop (fast) and start again on the same port; returns once it accepts connections."""
        self.stop("fast")
        self.start()

    @property
    def running(self) -> bool:
        return self._running

    # -- client helpers

    def dsn(
        self, user: str = "postgres", password: str | None = None, dbname: str = "postgres",
        port: int | None = None, host: str | None = None, **params: str,
    ) -> str:
        """A libpq conninfo string (``port``/``host`` default to this server's); ``params``
        are further conninfo keywords (``sslmode="require"``, ``sslrootcert=...``)."""
        parts = {
            "host": host or self.host,
            "port": str(port if port is not None else self.port),
            "user": user,
            "dbname": dbname,
        }
        if password is not None:
            parts["password"] = password
        parts.update({k: str(v) for k, v in params.items()})
        return " ".join(f"{k}={_quote_conninfo(v)}" for k, v in parts.items())

    def execute(self, sql: str, params: tuple = (), dbname: str = "postgres") -> list[tuple]:
        """Run one statement as the superuser (autocommit); the rows it returns, or []."""
        import psycopg

        with psycopg.connect(self.dsn(dbname=dbname), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql, params or None)
            return list(cur.fetchall()) if cur.description is not None else []

    def backend_count(self, usename: str, datname: str | None = None) -> int:
        """Client backends of ``usename`` (in ``datname`` if given), not counting our own."""
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        params: tuple = (usename,)
        if datname is not None:
            sql += " AND datname = %s"
            params += (datname,)
        return int(self.execute(sql, params)[0][0])

    def wait_backend_count(
        self, usename: str, expected: int, datname: str | None = None, timeout: float = 5.0
    ) -> int:
        """Poll ``backend_count`` until it equals ``expected`` or ``timeout`` passes; returns
        the last count (backends exit asynchronously after their client disconnects)."""
        return poll(lambda: self.backend_count(usename, datname), lambda n: n == expected, timeout)

    def log_text(self) -> str:
        """The server log (postgresql.log)."""
        return read_log(self.logfile)

    # -- TLS (optional; see the module doc)

    def enable_tls(self, pki: Pki, server_cert: CertKey | None = None,
                   timeout: float = 10.0) -> None:
        """Turn TLS on (or swap the certificate it presents): install the files, set ``ssl``
        and the TLS-only pg_hba rules, reload, and create the TLS roles. On a running server
        this returns once new connections get the new certificate; on a stopped one it takes
        effect at the next start."""
        self._install_tls(pki, server_cert)
        if not self._running:
            return
        self.execute("SELECT pg_reload_conf()")
        assert self.tls_files is not None
        expected = _pem_to_der(self.tls_files.cert)
        presented = poll(self._presented_or_none, lambda der: der == expected, timeout)
        if presented != expected:
            raise RuntimeError(
                f"PostgreSQL on port {self.port} does not present the new certificate after "
                f"pg_reload_conf():\n{log_tail(self.logfile)}")
        self._bootstrap_tls()

    def tls_dsn(
        self, user: str = TLS_USER, password: str | None = None, dbname: str = "app",
        sslmode: str = "verify-full", client_cert: bool | None = None, **params: str,
    ) -> str:
        """A conninfo for a TLS connection: ``sslrootcert`` is the test CA (for the verify-*
        modes); the password of
        ``TLS_USER`` is filled in; ``client_cert`` (default: for ``CERT_USER``) adds the
        user's client certificate from the pki (``sslcert``/``sslkey``)."""
        if self.pki is None:
            raise RuntimeError("TLS is not enabled on this server (create(tls=...) / enable_tls)")
        if password is None and user == TLS_USER:
            password = TLS_PASSWORD
        extra: dict[str, str] = {"sslmode": sslmode}
        if sslmode.startswith("verify"):
            # Only then: libpq checks the certificate under sslmode=require too when it is given
            # a root certificate (its legacy rule), which would make require mean verify-ca.
            extra["sslrootcert"] = str(self.pki.ca)
        if client_cert or (client_cert is None and user == CERT_USER):
            pair = self.pki.client(user)
            extra.update(sslcert=str(pair.cert), sslkey=str(pair.key))
        extra.update(params)
        return " ".join([self.dsn(user, password, dbname),
                         *(f"{k}={_quote_conninfo(v)}" for k, v in extra.items())])

    def presented_certificate(self, timeout: float = 5.0) -> bytes:
        """The DER certificate a TLS client gets now (SSLRequest, then a handshake that checks
        nothing)."""
        import socket
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest
            answer = sock.recv(1)
            if answer != b"S":
                raise RuntimeError(f"PostgreSQL answered SSLRequest with {answer!r}")
            with ctx.wrap_socket(sock) as tls_sock:
                der = tls_sock.getpeercert(binary_form=True)
        assert der is not None
        return der

    def _presented_or_none(self) -> bytes | None:
        try:
            return self.presented_certificate()
        except (OSError, RuntimeError):
            return None

    def __repr__(self) -> str:
        return f"<PgServer {self.host}:{self.port} {self.datadir}>"

    # -- internals

    def _initdb(self) -> None:
        run_as(self.service_user, [
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
            "--no-sync", "--no-instructions",
        ], cwd=self.rootdir, log=self.rootdir / "initdb.log")

    def _configure(self, settings: dict[str, str]) -> None:
        values = dict(BASE_SETTINGS)
        values["port"] = str(self.port)
        values["unix_socket_directories"] = str(self.socket_dir)
        values.update(settings)
        lines = ["", "# poolproxy test harness"]
        for key, value in values.items():
            lines.append(f"{key} = '{str(value).replace(chr(39), chr(39) * 2)}'")
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n".join(lines) + "\n")
        (self.datadir / "pg_hba.conf").write_text(PG_HBA)

    def _wait_accepting(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=5):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL on port {self.port} does not accept connections: {exc}\n"
                        f"{log_tail(self.logfile)}"
                    ) from None
                time.sleep(0.1)

    def _bootstrap(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            for sql in (
                "SET password_encryption = 'scram-sha-256'",
                # CREATEDB: Django's test runner creates and drops test_app as this user.
                "CREATE ROLE app LOGIN CREATEDB PASSWORD 'app-secret'",
                "CREATE ROLE app2 LOGIN PASSWORD 'app2-secret'",
                "CREATE ROLE app_trust LOGIN",
                "SET password_encryption = 'md5'",
                "CREATE ROLE app_md5 LOGIN PASSWORD 'md5-secret'",
                "RESET password_encryption",
                "CREATE DATABASE app OWNER app",
                "CREATE DATABASE app2 OWNER app2",
                "GRANT ALL ON DATABASE app TO app_md5, app_trust, app2",
            ):
                conn.execute(sql)
        with psycopg.connect(self.dsn(dbname="app"), autocommit=True) as conn:
            conn.execute("GRANT ALL ON SCHEMA public TO app_md5, app_trust, app2")

    def _install_tls(self, pki: Pki, server_cert: CertKey | None) -> None:
        from .certs import install_server_files

        user = self.service_user
        self.tls_files = install_server_files(
            self.rootdir / "tls", pki.ca, server_cert or pki.server,
            owner=(user.uid, user.gid) if user is not None else None)
        self.pki = pki
        settings = {
            "ssl": "on",
            "ssl_cert_file": str(self.tls_files.cert),
            "ssl_key_file": str(self.tls_files.key),
            "ssl_ca_file": str(self.tls_files.ca),
            "ssl_min_protocol_version": "TLSv1.2",
        }
        lines = ["", "# poolproxy test harness: TLS"]
        for key, value in settings.items():
            lines.append(f"{key} = '{value.replace(chr(39), chr(39) * 2)}'")
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n".join(lines) + "\n")
        hba = self.datadir / "pg_hba.conf"
        text = hba.read_text()
        if PG_HBA_TLS not in text:
            hba.write_text(PG_HBA_TLS + text)

    def _bootstrap_tls(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            for name, password in ((TLS_USER, TLS_PASSWORD), (CERT_USER, None)):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
                if exists.fetchone() is not None:
                    continue
                conn.execute("SET password_encryption = 'scram-sha-256'")
                if password is None:
                    conn.execute(f"CREATE ROLE {name} LOGIN")
                else:
                    conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
                conn.execute(f"GRANT ALL ON DATABASE app TO {name}")
        with psycopg.connect(self.dsn(dbname="app"), autocommit=True) as conn:
            conn.execute(f"GRANT ALL ON SCHEMA public TO {TLS_USER}, {CERT_USER}")

    def _stop_at_exit(self) -> None:
        # Safety net for interrupted sessions: never leave a postmaster running.
        if self._running:
            try:
                self.stop("immediate")
            except Exception:
                pass


def _pem_to_der(path: Path) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(path.read_text())
