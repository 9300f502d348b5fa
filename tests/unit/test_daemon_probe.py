"""The start-up / reload probe of a listener's server (proxy.daemon.probe_server): None when a
TCP or Unix socket connection opens, else a short reason; it never raises and never waits
longer than its timeout."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from proxy import daemon
from proxy.config import ServerAddress
from proxy.daemon import probe_server


def test_reachable_tcp_and_unix_servers(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with socket.create_server(("127.0.0.1", 0)) as tcp, \
            socket.socket(socket.AF_UNIX) as unix:
        unix.bind(path)
        unix.listen()
        port = tcp.getsockname()[1]
        assert asyncio.run(probe_server(ServerAddress("127.0.0.1", port))) is None
        assert asyncio.run(probe_server(ServerAddress(path, 0, socket_path=path))) is None


def test_refused_and_missing_socket_name_the_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as tcp:
        port = tcp.getsockname()[1]
    assert asyncio.run(probe_server(ServerAddress("127.0.0.1", port))) == "Connection refused"
    path = str(tmp_path / "none.sock")
    assert asyncio.run(probe_server(ServerAddress(path, 0, socket_path=path))) == \
        "No such file or directory"


def test_a_server_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    async def hang(*_args: Any, **_kwargs: Any) -> Any:
        await asyncio.sleep(3600)

    monkeypatch.setattr(daemon.asyncio, "open_connection", hang)

    async def timed() -> tuple[str | None, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await probe_server(ServerAddress("192.0.2.1", 5432), timeout=0.1)
        return result, loop.time() - started

    result, took = asyncio.run(timed())
    assert result == "no connection within 0.1s"
    assert took < 2.0


def test_an_unresolvable_host_is_a_reason_not_an_exception() -> None:
    result = asyncio.run(probe_server(ServerAddress("no-such-host.invalid", 5432), timeout=2.0))
    assert result  # the resolver's message, whatever it is here
