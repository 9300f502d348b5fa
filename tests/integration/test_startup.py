"""Start-up of the daemon as a process (no database needed):

- "started" is logged only after every listener is bound; a listen address (or admin.listen)
  already in use ends the process with status 1 and one error naming the listener and address,
  and "started" is never logged;
- each listener's server is probed in the background at start-up and after a reload: an
  unreachable one (TCP or Unix socket) draws exactly one warning naming the listener, the
  address and the error, and poolproxy keeps running; a reachable one draws none;
- a reload of a file with several problems logs every one and keeps running;
- without -c or $POOLPROXY_CONFIG, ./poolproxy.yaml is read, and with no file at all the one
  error line lists every path tried.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import (
    MariaDbServer,
    PgServer,
    ProxyProcess,
    free_port,
    make_config,
    mysql_listener,
    pg_listener,
    run_cli,
)
from tests.harness.util import wait_for

REPO = Path(__file__).resolve().parents[2]
STARTED = re.compile(r"poolproxy \S+ started with (\d+) listener\(s\)")


def listener(name: str, protocol: str, port: int, server: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "protocol": protocol, "listen": f"127.0.0.1:{port}", "server": server,
            "users": [{"name": "app", "password": "secret"}]}


def config(*listeners: dict[str, Any], admin_port: int | None = None) -> dict[str, Any]:
    admin = {"listen": f"127.0.0.1:{admin_port}" if admin_port else ""}
    return {"admin": admin, "listeners": list(listeners)}


@pytest.fixture
def occupied() -> Iterator[int]:
    """A port on 127.0.0.1 that something else listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def reachable() -> Iterator[int]:
    """A port that accepts connections (the probe only connects)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def closed_port() -> int:
    return free_port()  # nothing listens there


# --------------------------------------------------------------------------- binding


def test_started_is_logged_after_every_listener_is_bound(tmp_path: Path, reachable: int) -> None:
    server = {"host": "127.0.0.1", "port": reachable}
    proxy = ProxyProcess(config(listener("a", "postgres", free_port(), server),
                                listener("b", "postgres", free_port(), server),
                                admin_port=free_port()), tmp_path)
    proxy.start()
    try:
        assert wait_for(lambda: STARTED.search(proxy.log_text()), 10), proxy.log_text()
        lines = proxy.log_text().splitlines()
        started = next(i for i, line in enumerate(lines) if STARTED.search(line))
        bound = [i for i, line in enumerate(lines) if re.search(r"listener [ab] \(postgres\) on", line)]
        admin = [i for i, line in enumerate(lines) if "admin HTTP on" in line]
        assert len(bound) == 2 and len(admin) == 1, lines
        assert max(bound + admin) < started, lines
        assert STARTED.search(lines[started]).group(1) == "2"  # type: ignore[union-attr]
    finally:
        proxy.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_listen_address_in_use_exits_1_naming_listener_and_address(
    tmp_path: Path, occupied: int, reachable: int, workers: int
) -> None:
    server = {"host": "127.0.0.1", "port": reachable}
    path = tmp_path / "c.yaml"
    cfg = config(listener("first", "postgres", free_port(), server),
                 listener("second", "mysql", occupied, server))
    if workers > 1:
        cfg["workers"] = workers  # the supervisor binds for its workers
    path.write_text(yaml.safe_dump(cfg))
    result = run_cli("-c", str(path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert "listener second" in errors[0] and f"127.0.0.1:{occupied}" in errors[0], errors
    assert "address already in use" in errors[0].lower(), errors
    assert not STARTED.search(result.stderr), result.stderr


def test_admin_listen_in_use_exits_1_without_started(
    tmp_path: Path, occupied: int, reachable: int
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(
        listener("pg", "postgres", free_port(), {"host": "127.0.0.1", "port": reachable}),
        admin_port=occupied)))
    result = run_cli("-c", str(path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert re.search(rf"ERROR .*admin\.listen.*127\.0\.0\.1:{occupied}.*already in use",
                     result.stderr, re.I), result.stderr
    assert not STARTED.search(result.stderr), result.stderr


# --------------------------------------------------------------------------- server probe


def probe_warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "WARNING" in line and "unreachable" in line]


def test_unreachable_servers_draw_one_warning_each_and_poolproxy_keeps_running(
    tmp_path: Path, reachable: int
) -> None:
    down = closed_port()
    socket_path = tmp_path / "no-such.sock"
    proxy = ProxyProcess(config(
        listener("pg_down", "postgres", free_port(), {"host": "127.0.0.1", "port": down}),
        listener("my_sock", "mysql", free_port(), {"host": str(socket_path)}),
        listener("pg_up", "postgres", free_port(), {"host": "127.0.0.1", "port": reachable}),
    ), tmp_path / "proxy")
    proxy.start()
    try:
        assert wait_for(lambda: len(probe_warnings(proxy.log_text())) >= 2, 10), proxy.log_text()
        time.sleep(0.5)  # a third (wrong) warning would have come by now
        warnings = probe_warnings(proxy.log_text())
        assert len(warnings) == 2, warnings
        pg_line = next(w for w in warnings if "listener pg_down" in w)
        assert f"127.0.0.1:{down}" in pg_line and "refused" in pg_line.lower(), pg_line
        my_line = next(w for w in warnings if "listener my_sock" in w)
        assert str(socket_path) in my_line and "no such file" in my_line.lower(), my_line
        assert not any("pg_up" in w for w in warnings)
        log = proxy.log_text()
        assert log.index(STARTED.search(log).group(0)) < log.index(pg_line)  # type: ignore[union-attr]
        assert proxy.is_running()

        # A reload probes again: one more warning per unreachable server.
        proxy.send_signal(signal.SIGHUP)
        assert wait_for(lambda: len(probe_warnings(proxy.log_text())) >= 4, 10), proxy.log_text()
        time.sleep(0.5)
        again = probe_warnings(proxy.log_text())[2:]
        assert len(again) == 2 and all("after the reload" in w for w in again), again
        assert proxy.is_running()
    finally:
        assert proxy.stop() == 0


def login_warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "WARNING" in line and "cannot log in" in line]


def test_a_user_that_cannot_log_in_draws_one_warning(
    tmp_path: Path, pg_server: PgServer, mariadb_server: MariaDbServer
) -> None:
    """The start-up probe logs in as each configured user: a wrong password is named at once
    (not when the first client waits out its login), and good users draw nothing."""
    pg_users = [{"name": "app", "password": "app-secret"},
                {"name": "app2", "password": "not-app2s-password"}]
    my_users = [{"name": "app", "password": "wrong"}, {"name": "app2", "password": "app2-secret"}]
    proxy = ProxyProcess(make_config(pg_listener(pg_server, users=pg_users),
                                     mysql_listener(mariadb_server, users=my_users)),
                         tmp_path / "proxy")
    proxy.start()
    try:
        assert "server probe at start-up finished" in proxy.log_text()
        warnings = login_warnings(proxy.log_text())
        assert len(warnings) == 2, warnings
        pg_line = next(w for w in warnings if "listener pg:" in w)
        assert "user app2 " in pg_line and "password authentication failed" in pg_line, pg_line
        my_line = next(w for w in warnings if "listener mysql:" in w)
        assert "user app " in my_line and "Access denied" in my_line, my_line
        # The probe's connections are closed: none is left in the pools or on the servers.
        assert wait_for(lambda: pg_server.backend_count("app") == 0, 5)
        assert proxy.is_running()
    finally:
        proxy.stop()


def test_reload_with_several_problems_logs_every_one(tmp_path: Path, reachable: int) -> None:
    good = config(listener("pg", "postgres", free_port(),
                           {"host": "127.0.0.1", "port": reachable}))
    proxy = ProxyProcess(good, tmp_path)
    proxy.start()
    try:
        bad = yaml.safe_load(yaml.safe_dump(good))
        bad["listeners"][0]["pool_size"] = 0
        bad["listeners"][0]["server"]["port"] = 0
        bad["logging"] = {"level": "loud"}
        proxy.reload(bad)
        assert wait_for(lambda: proxy.log_text().count("reload rejected") >= 3, 10), \
            proxy.log_text()
        rejected = [line for line in proxy.log_text().splitlines() if "reload rejected" in line]
        assert len(rejected) == 3, rejected
        for key in ("logging.level", "listeners[0].server.port", "listeners[0].pool_size"):
            assert any(key in line for line in rejected), (key, rejected)
        assert proxy.is_running()
    finally:
        proxy.stop()


# --------------------------------------------------------------------------- config search


def test_poolproxy_yaml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "poolproxy.yaml").write_text(yaml.safe_dump(config(
        listener("here", "postgres", free_port(), {"host": "127.0.0.1", "port": 5432}))))
    result = run_cli("--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "config: ./poolproxy.yaml" in result.stdout and "listener here" in result.stdout


def test_no_config_anywhere_lists_every_path_tried(tmp_path: Path) -> None:
    if os.path.exists("/etc/poolproxy/poolproxy.yaml"):
        pytest.skip("this machine has /etc/poolproxy/poolproxy.yaml")
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "./poolproxy.yaml" in lines[0] and "/etc/poolproxy/poolproxy.yaml" in lines[0]
