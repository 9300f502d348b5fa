"""The proxy under test as a real subprocess (``python -m proxy -c poolproxy.yaml``).

``ProxyProcess`` writes a config file, starts the daemon with its output in ``proxy.log`` and
waits until every listener (and, briefly, the admin HTTP port) is in LISTEN state. Readiness is read
from /proc rather than by connecting, so that it adds no client connection to the proxy's
counters; elsewhere (no /proc) it falls back to a TCP connect. ``pg_listener``,
``mysql_listener`` and ``make_config`` build config dicts following docs/configuration.md.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from .mariadb import MariaDbServer
from .pgserver import PgServer
from .ports import free_port
from .procs import poll, process_tree, read_log, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]

PG_USERS: list[dict[str, str]] = [
    {"name": "app", "password": "app-secret"},
    {"name": "app_md5", "password": "md5-secret"},
    {"name": "app2", "password": "app2-secret"},
    # The server trusts app_trust (pg_hba); the proxy still authenticates its clients, and
    # poolproxy refuses an empty password unless the listener's auth type is trust.
    {"name": "app_trust", "password": "trust-secret"},
]
MYSQL_USERS: list[dict[str, str]] = [
    {"name": "app", "password": "app-secret"},
    {"name": "app2", "password": "app2-secret"},
]


def run_cli(*args: str, cwd: Path = REPO_ROOT, env: Mapping[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m proxy ARGS`` run to its end (``--check``, ``--version``, a daemon that is to
    refuse to start), its output captured. The environment is the test's without
    POOLPROXY_CONFIG (only the config the arguments name counts), with the repository on
    PYTHONPATH (any `cwd` works), plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if k != "POOLPROXY_CONFIG"}
    full_env["PYTHONPATH"] = str(REPO_ROOT)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def split_address(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:6432"`` / ``"[::1]:6432"`` -> (host, port)."""
    host, _, port = str(listen).rpartition(":")
    return host.strip("[]"), int(port)


class ProxyProcess:
    """One poolproxy daemon process; see the module doc.

    ``command`` (an addition for the harness's own tests) replaces the program that is run;
    ``-c <config_path>`` is always appended.
    """

    config: dict
    config_path: Path
    admin_port: int | None

    def __init__(
        self, config: dict, workdir: Path, env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "poolproxy.yaml"
        self.log_path = self.workdir / "proxy.log"
        self.env = dict(env or {})
        self.command = list(command) if command else [sys.executable, "-m", "proxy"]
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.returncode: int | None = None
        self._write_config(config)

    # -- config

    def _write_config(self, config: dict) -> None:
        self.config = config
        admin = config.get("admin") or {}
        listen = admin.get("listen") if isinstance(admin, dict) else None
        self.admin_port = split_address(listen)[1] if listen else None
        # Write then rename, so a reloading proxy never reads a half-written file.
        tmp = self.config_path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, self.config_path)

    def port(self, listener_name: str) -> int:
        """The port the listener called ``listener_name`` listens on."""
        for listener in self.config.get("listeners", []):
            if listener.get("name") == listener_name:
                return split_address(listener["listen"])[1]
        raise KeyError(f"no listener named {listener_name!r} in the proxy config")

    def _listener_ports(self) -> list[int]:
        return [split_address(li["listen"])[1] for li in self.config.get("listeners", [])]

    # -- lifecycle

    def start(self, timeout: float = 15.0, admin_grace: float = 1.0) -> None:
        """Start the daemon and wait until every listener port listens; raise with the log tail
        if it exits first or ``timeout`` passes (the process is killed then).

        The admin HTTP port is waited for too, but only up to ``admin_grace`` seconds after the
        listeners are up (then a warning, not an error), so a daemon without the admin server
        still starts.
        """
        if self.is_running():
            raise RuntimeError("proxy already running")
        env = os.environ.copy()
        env.pop("POOLPROXY_CONFIG", None)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        self._log = open(self.log_path, "ab")
        self.returncode = None
        self._proc = subprocess.Popen(
            [*self.command, "-c", str(self.config_path)],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        listeners = set(self._listener_ports())
        wanted = listeners | ({self.admin_port} if self.admin_port is not None else set())
        deadline = time.monotonic() + timeout
        admin_deadline: float | None = None
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._close_log()
                self.returncode = rc
                self._proc = None
                raise RuntimeError(
                    f"proxy exited with code {rc} during startup; {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            listening = self._listening_ports(wanted)
            if wanted <= listening:
                self._await_probe(deadline)
                return
            now = time.monotonic()
            if listeners <= listening:
                admin_deadline = admin_deadline or now + admin_grace
                if now > admin_deadline:
                    warnings.warn(
                        f"proxy admin port {self.admin_port} is not listening; continuing",
                        stacklevel=2,
                    )
                    self._await_probe(deadline)
                    return
            if now > deadline:
                self.stop(timeout=2)
                raise TimeoutError(
                    f"proxy did not listen on {sorted(wanted - listening)} within {timeout}s;"
                    f" {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _await_probe(self, deadline: float) -> None:
        """Wait (briefly) for the start-up probe of the servers to finish, so that its one
        login per configured user is over before a test counts server connections."""
        level = (self.config.get("logging") or {}).get("level", "info")
        if level in ("warning", "error"):
            return  # the line is not logged
        end = min(deadline, time.monotonic() + 5.0)
        while time.monotonic() < end and self.is_running():
            if "server probe at start-up finished" in read_log(self.log_path):
                return
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit code (None if never started)."""
        proc = self._proc
        if proc is None:
            return self.returncode
        stop_process(proc, timeout)
        try:  # leftovers in its session (workers, if any) must not outlive the test
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.returncode = proc.returncode
        self._proc = None
        self._close_log()
        return self.returncode

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def send_signal(self, sig: int) -> None:
        if self._proc is None:
            raise RuntimeError("proxy not started")
        self._proc.send_signal(sig)

    def reload(self, config: dict) -> None:
        """Rewrite the config file and send SIGHUP (does not wait for the reload to finish)."""
        self._write_config(config)
        self.send_signal(signal.SIGHUP)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit by itself; its exit code."""
        if self._proc is None:
            raise RuntimeError("proxy not started")
        rc = self._proc.wait(timeout)
        self.returncode = rc
        return rc

    # -- logs

    def log_text(self) -> str:
        """Everything the proxy printed (all starts of this object)."""
        return read_log(self.log_path)

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0, since: int = 0
    ) -> re.Match[str]:
        """Wait until ``pattern`` appears in the log after character offset ``since``
        (take ``len(p.log_text())`` before the action to only see new lines)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        match = poll(lambda: regex.search(self.log_text(), since), lambda m: m is not None, timeout)
        if match is None:
            raise TimeoutError(
                f"{regex.pattern!r} not in the proxy log after {timeout}s:\n{self.log_tail()}"
            )
        return match

    def __enter__(self) -> ProxyProcess:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ProxyProcess pid={self.pid} {self.config_path}>"

    # -- internals

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _listening_ports(self, wanted: set[int]) -> set[int]:
        """Which of ``wanted`` the process (or a descendant) has a LISTEN socket on."""
        assert self._proc is not None
        if not os.path.exists("/proc/net/tcp"):
            return {p for p in wanted if _tcp_accepts(p)}
        inodes: set[int] = set()
        for pid in process_tree(self._proc.pid):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        found: set[int] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as fh:
                    next(fh)
                    for line in fh:
                        fields = line.split()
                        # fields: sl local_address rem_address st ... uid timeout inode
                        if fields[3] == "0A" and int(fields[9]) in inodes:
                            found.add(int(fields[1].rsplit(":", 1)[1], 16))
            except OSError:
                continue
        return found & wanted


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- config builders


def pg_listener(pg: PgServer, name: str = "pg", **overrides: Any) -> dict:
    """A PostgreSQL listener for ``pg`` on 127.0.0.1:<free port>, SCRAM, the harness users.

    ``overrides`` replace top-level keys (shallow: ``databases={...}`` replaces ``"*"``,
    ``server={...}`` must give host and port).
    """
    listener: dict[str, Any] = {
        "name": name,
        "protocol": "postgres",
        "listen": f"127.0.0.1:{free_port()}",
        "server": {"host": pg.host, "port": pg.port},
        "databases": {"*": {}},
        "auth": {"type": "scram-sha-256"},
        "users": [dict(u) for u in PG_USERS],
    }
    listener.update(overrides)
    return listener


def mysql_listener(my: MariaDbServer, name: str = "mysql", **overrides: Any) -> dict:
    """A MySQL listener for ``my``, mysql_native_password, users app/app2.

    ``overrides`` replace top-level keys, as for ``pg_listener``.
    """
    listener: dict[str, Any] = {
        "name": name,
        "protocol": "mysql",
        "listen": f"127.0.0.1:{free_port()}",
        "server": {"host": my.host, "port": my.port},
        "databases": {"*": {}},
        "auth": {"type": "mysql_native_password"},
        "users": [dict(u) for u in MYSQL_USERS],
    }
    listener.update(overrides)
    return listener


def make_config(
    *listeners: dict, admin: bool = True, defaults: dict | None = None,
    admin_users: list[str] | None = None,
) -> dict:
    """A full config dict. ``admin.listen`` is 127.0.0.1:<free port>, or None (HTTP admin off)
    when ``admin`` is false; logging is debug/text."""
    config: dict[str, Any] = {
        "admin": {
            "listen": f"127.0.0.1:{free_port()}" if admin else None,
            "admin_users": list(admin_users or []),
        },
        "logging": {"level": "debug", "format": "text"},
    }
    if defaults is not None:
        config["defaults"] = dict(defaults)
    config["listeners"] = list(listeners)
    return config
