"""Throwaway MariaDB servers for the test suite (``mariadb-install-db`` + ``mariadbd``).

``MariaDbServer.create()`` initialises a data directory in a temp dir, runs ``mariadbd`` as a
child process on 127.0.0.1:<free port> (as the ``mysql`` system user when we are root), and
creates the users and databases the tests use. No option file of the machine is read
(``--no-defaults``), so a system MariaDB on :3306 is neither used nor disturbed.

TLS (optional; the defaults are untouched): ``MariaDbServer.create(basedir, tls=pki)`` starts
with ``ssl_cert``/``ssl_key``/``ssl_ca`` from ``tests.harness.certs.make_pki``;
``server.enable_tls(pki)`` does it to an existing server (a restart the first time; later calls,
e.g. ``enable_tls(pki, server_cert=pki.expired)``, swap the certificate with ``FLUSH SSL``).
Two users only TLS reaches, both with ``GRANT ALL ON app.*``: ``app_tls`` (``TLS_PASSWORD``,
``REQUIRE SSL``) and ``app_x509`` (``X509_PASSWORD``, ``REQUIRE X509``: a client certificate
signed by ``pki.ca``). ``server.connect_tls()`` connects with PyMySQL and
``ssl={"ca": pki.ca}`` (certificate and host name checked; ``app_x509`` also sends its client
certificate). Note that PyMySQL 1.2 uses TLS by itself whenever the server offers it ("preferred",
no certificate check): a plaintext connection needs ``ssl_disabled=True``, as in
``server.connect(TLS_USER, TLS_PASSWORD, "app", ssl_disabled=True)`` (refused: 1045). Use a
server of your own for TLS (``create`` takes about a second) rather than
restarting the shared ``mariadb_server``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .pgserver import (
    ServiceUser,
    log_tail,
    prepare_dir,
    run_as,
    service_user,
    socket_dir_for,
)
from .ports import free_port
from .procs import poll, read_log, stop_process

if TYPE_CHECKING:
    from .certs import CertKey, Pki, ServerFiles

BASE_SETTINGS: dict[str, str] = {
    "skip-name-resolve": "1",
    "max-connections": "500",
    "innodb-flush-log-at-trx-commit": "0",
    # Without option files the compiled-in default is latin1; applications (Django) expect utf8mb4.
    "character-set-server": "utf8mb4",
    "collation-server": "utf8mb4_general_ci",
    # Containers often limit io_setup(); the synchronous I/O fallback is fine for tests.
    "innodb-use-native-aio": "0",
    "innodb-buffer-pool-size": "128M",
    # Tests move results larger than one 16 MiB protocol packet.
    "max-allowed-packet": "256M",
}

_APP_USERS = {"app": "app-secret", "app2": "app2-secret"}

#: Users only TLS reaches (see the module doc); created by create(tls=...) / enable_tls().
TLS_USER = "app_tls"
TLS_PASSWORD = "tls-secret"
X509_USER = "app_x509"
X509_PASSWORD = "x509-secret"


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next(
            (f"{d}/{name}" for d in ("/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin")
             if os.access(f"{d}/{name}", os.X_OK)), None)
        if found:
            return found
    raise RuntimeError(
        f"MariaDB binaries ({' / '.join(names)}) not found; install the 'mariadb-server' "
        "package (scripts/test.sh does this)"
    )


class MariaDbServer:
    """A MariaDB server in a temp dir, listening on 127.0.0.1:<port>; see the module doc."""

    host: str
    port: int
    datadir: Path

    def __init__(
        self, rootdir: Path, port: int, user: ServiceUser | None, settings: dict[str, str]
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.rootdir = rootdir
        self.datadir = rootdir / "data"
        self.socket_path = socket_dir_for(rootdir, user) / "mysqld.sock"
        self.pid_file = rootdir / "mysqld.pid"
        self.logfile = rootdir / "mysqld.log"
        self.service_user = user
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        #: Set by enable_tls(): the certificates in use and the server's copies of its files.
        self.pki: Pki | None = None
        self.tls_files: ServerFiles | None = None
        atexit.register(self._stop_at_exit)

    # -- lifecycle

    @classmethod
    def create(
        cls, basedir: Path, settings: dict[str, str] | None = None, *, tls: Pki | None = None,
        server_cert: CertKey | None = None,
    ) -> MariaDbServer:
        """mariadb-install-db + start + create users/databases; returns a running server.

        ``tls``: start with TLS on and the TLS-only users (see the module doc);
        ``server_cert``: the certificate to present instead of ``tls.server``."""
        user = service_user("mysql")
        port = free_port()
        rootdir = prepare_dir(Path(basedir) / f"mariadb-{port}", user)
        server = cls(rootdir, port, user, dict(settings or {}))
        server._install_db()
        if tls is not None:
            server._install_tls(tls, server_cert)
        server.start()
        try:
            server._bootstrap()
            if tls is not None:
                server._bootstrap_tls()
        except Exception:
            server.stop()
            raise
        return server

    def start(self, timeout: float = 60.0) -> None:
        """Start mariadbd and wait until it accepts connections."""
        if self.is_running():
            return
        args = [
            _binary("mariadbd", "mysqld"), "--no-defaults",
            f"--datadir={self.datadir}", f"--port={self.port}", "--bind-address=127.0.0.1",
            f"--socket={self.socket_path}", f"--pid-file={self.pid_file}",
            f"--log-error={self.logfile}",
        ]
        if self.service_user is not None:
            args.append(f"--user={self.service_user.name}")
        merged = dict(BASE_SETTINGS)
        merged.update(self.settings)
        args += [f"--{key}={value}" for key, value in merged.items()]
        with open(self.rootdir / "mariadbd.out", "ab") as out:
            # A session of its own: a Ctrl-C in the terminal must not kill it behind our back.
            self._proc = subprocess.Popen(
                args, cwd=self.rootdir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._wait_accepting(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Shut mariadbd down (SIGTERM, SIGKILL after ``timeout``) and wait for it to exit."""
        if self._proc is None:
            return
        stop_process(self._proc, timeout)
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port; returns once it accepts connections."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- client helpers

    def connect(self, user: str = "root", password: str = "", database: str | None = None,
                **kwargs: Any) -> Any:
        """A PyMySQL connection over TCP (autocommit on unless given)."""
        import pymysql

        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return pymysql.connect(host=self.host, port=self.port, user=user, password=password,
                               database=database, **kwargs)

    def execute(
        self, sql: str, params: tuple | None = None, database: str | None = None
    ) -> list[tuple]:
        """Run one statement as root over TCP (autocommit); the rows it returns, or []."""
        conn = self.connect(database=database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description is not None else []
        finally:
            conn.close()

    def connection_count(self, user: str) -> int:
        """Rows of information_schema.PROCESSLIST for ``user``, not counting our own."""
        rows = self.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
            " WHERE USER = %s AND ID <> CONNECTION_ID()", (user,))
        return int(rows[0][0])

    def wait_connection_count(self, user: str, expected: int, timeout: float = 5.0) -> int:
        """Poll ``connection_count`` until it equals ``expected`` or ``timeout`` passes; returns
        the last count (the server notices a closed connection a moment later)."""
        return poll(lambda: self.connection_count(user), lambda n: n == expected, timeout)

    def log_text(self) -> str:
        """The server's error log."""
        return read_log(self.logfile)

    # -- TLS (optional; see the module doc)

    def enable_tls(self, pki: Pki, server_cert: CertKey | None = None) -> None:
        """Turn TLS on (restarting a running server that has none yet) or swap the certificate
        (``FLUSH SSL``, no restart), then create the TLS-only users."""
        had_tls = self.tls_files is not None
        self._install_tls(pki, server_cert)
        if not self.is_running():
            return
        if had_tls:
            self._bootstrap_tls("FLUSH SSL")
        else:
            self.restart()
            self._bootstrap_tls()

    def connect_tls(self, user: str = TLS_USER, password: str | None = None,
                    database: str | None = "app", *, client_cert: bool | None = None,
                    **kwargs: Any) -> Any:
        """A PyMySQL connection over TLS that checks the certificate and host name against the
        test CA; ``client_cert`` (default: for ``X509_USER``) also sends the user's client
        certificate. The passwords of the TLS users are filled in."""
        if self.pki is None:
            raise RuntimeError("TLS is not enabled on this server (create(tls=...) / enable_tls)")
        if password is None:
            password = {TLS_USER: TLS_PASSWORD, X509_USER: X509_PASSWORD}.get(user, "")
        ssl_args: dict[str, Any] = {"ca": str(self.pki.ca)}
        if client_cert or (client_cert is None and user == X509_USER):
            pair = self.pki.client(user)
            ssl_args.update(cert=str(pair.cert), key=str(pair.key))
        ssl_args.update(kwargs.pop("ssl", None) or {})
        return self.connect(user, password, database, ssl=ssl_args, **kwargs)

    def __repr__(self) -> str:
        return f"<MariaDbServer {self.host}:{self.port} {self.datadir}>"

    # -- internals

    def _install_db(self) -> None:
        cmd = [
            _binary("mariadb-install-db", "mysql_install_db"), "--no-defaults",
            f"--datadir={self.datadir}", "--auth-root-authentication-method=normal",
            "--skip-test-db", "--skip-name-resolve",
        ]
        if self.service_user is not None:
            # mariadb-install-db must start as root to chown the datadir to --user.
            cmd.append(f"--user={self.service_user.name}")
        run_as(None, cmd, cwd=self.rootdir, log=self.rootdir / "install-db.log", timeout=180)

    def _wait_accepting(self, timeout: float) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        proc = self._proc
        assert proc is not None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mariadbd exited with code {proc.returncode} during startup:\n"
                    f"{log_tail(self.logfile)}"
                )
            try:
                # The Unix socket: root@127.0.0.1 does not exist before _bootstrap().
                pymysql.connect(unix_socket=str(self.socket_path), user="root",
                                connect_timeout=2).close()
                return
            except pymysql.err.OperationalError as exc:
                if time.monotonic() > deadline:
                    self.stop(timeout=5)
                    raise RuntimeError(
                        f"mariadbd on port {self.port} did not accept connections in {timeout}s:"
                        f" {exc}\n{log_tail(self.logfile)}"
                    ) from None
                time.sleep(0.1)

    def _bootstrap(self) -> None:
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.socket_path), user="root", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT User, Host FROM mysql.user WHERE User = ''")
                anonymous = list(cur.fetchall())
                statements = [f"DROP USER ''@'{host}'" for _, host in anonymous]
                statements += [
                    "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''",
                    "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION",
                    "CREATE DATABASE app",
                    "CREATE DATABASE app2",
                ]
                for name, password in _APP_USERS.items():
                    statements += [
                        f"CREATE USER '{name}'@'%' IDENTIFIED VIA mysql_native_password"
                        f" USING PASSWORD('{password}')",
                        f"GRANT ALL ON app.* TO '{name}'@'%'",
                        f"GRANT ALL ON app2.* TO '{name}'@'%'",
                        # Django's test runner creates and drops test_<name> databases.
                        f"GRANT ALL ON `test\\_%`.* TO '{name}'@'%'",
                        f"GRANT CREATE ON *.* TO '{name}'@'%'",
                    ]
                statements.append("FLUSH PRIVILEGES")
                for sql in statements:
                    cur.execute(sql)
        finally:
            conn.close()

    def _install_tls(self, pki: Pki, server_cert: CertKey | None) -> None:
        from .certs import install_server_files

        user = self.service_user
        self.tls_files = install_server_files(
            self.rootdir / "tls", pki.ca, server_cert or pki.server,
            owner=(user.uid, user.gid) if user is not None else None)
        self.pki = pki
        self.settings.update({
            "ssl-cert": str(self.tls_files.cert),
            "ssl-key": str(self.tls_files.key),
            "ssl-ca": str(self.tls_files.ca),
        })

    def _bootstrap_tls(self, *first: str) -> None:
        statements = list(first)
        for name, password, require in ((TLS_USER, TLS_PASSWORD, "SSL"),
                                        (X509_USER, X509_PASSWORD, "X509")):
            statements += [
                f"CREATE USER IF NOT EXISTS '{name}'@'%' IDENTIFIED VIA mysql_native_password"
                f" USING PASSWORD('{password}') REQUIRE {require}",
                f"GRANT ALL ON app.* TO '{name}'@'%'",
            ]
        # One plaintext connection: PyMySQL would otherwise negotiate TLS (and load the system
        # trust store) for every statement.
        conn = self.connect(ssl_disabled=True)
        try:
            with conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
        finally:
            conn.close()

    def _stop_at_exit(self) -> None:
        # Safety net for interrupted sessions: never leave a mariadbd running.
        if self.is_running():
            try:
                self.stop(timeout=10)
            except Exception:
                pass
