"""MySQL client login corners around TLS and auth.query, on fake transports (no sockets).

- A second HandshakeResponse while an auth.query lookup runs must not change who is checked
  (it once let a client with a good password for one user log in as another).
- A 32-byte auth-switch answer (a caching_sha2 scramble) that happens to have the CLIENT_SSL bit
  set is an answer, not an SSLRequest.
- An SSLRequest split over two reads, followed by the ClientHello, still starts TLS.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from sessionfakes import FakeAdapter, FakeTransport

from proxy.auth import caching_sha2, mysql_native
from proxy.config import parse_config
from proxy.core.listener import ListenerRuntime
from proxy.core.outbox import outbox_for
from proxy.mysql import codec as my
from proxy.mysql.client import ClientConnection
from proxy.pool import ClientState

CAPS = my.CLIENT_PROTOCOL_41 | my.CLIENT_SECURE_CONNECTION | my.CLIENT_PLUGIN_AUTH


def native_hash(password: str) -> str:
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


class LookupAdapter(FakeAdapter):
    """auth.query answers held until the test releases them."""

    def __init__(self, secrets: dict[str, str]) -> None:
        super().__init__("mysql")
        self.secrets = secrets
        self.waiting: list[tuple[str, asyncio.Future[None]]] = []

    async def lookup_secret(self, rt: Any, query: Any, dbname: str, user: str) -> str | None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((user, fut))
        await fut
        return self.secrets.get(user)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    pending = asyncio.all_tasks(loop)  # logins a test left half-way (no real server here)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def runtime(loop: asyncio.AbstractEventLoop, config: str, adapter: Any) -> ListenerRuntime:
    return ListenerRuntime(parse_config(config, env={}).listeners[0], adapter, loop,
                           lambda: 100.0)


def connect(rt: ListenerRuntime) -> tuple[ClientConnection, FakeTransport]:
    client = rt.new_client()
    transport = FakeTransport()
    client.connection_made(transport)
    outbox_for(rt.loop).flush()
    transport.take()
    assert isinstance(client, ClientConnection)
    return client, transport


def spin(loop: asyncio.AbstractEventLoop, n: int = 5) -> None:
    for _ in range(n):
        loop.run_until_complete(asyncio.sleep(0))


def test_second_handshake_response_during_lookup_is_refused(
        loop: asyncio.AbstractEventLoop) -> None:
    adapter = LookupAdapter({"eve": native_hash("evepw"), "bob": native_hash("bobpw")})
    rt = runtime(loop, """
listeners:
  - name: l
    protocol: mysql
    listen: 127.0.0.1:1
    server: {host: 127.0.0.1, port: 2}
    auth: {type: mysql_native_password, query: "SELECT u, s FROM t WHERE u = ?", user: pp_auth}
    users: [{name: pp_auth, password: pw}]
""", adapter)
    client, transport = connect(rt)
    client.data_received(my.encode_packet(1, my.build_handshake_response(
        CAPS, "eve", mysql_native.scramble_native("evepw", client._nonce),
        auth_plugin_name="mysql_native_password")))
    spin(loop)
    assert [u for u, _ in adapter.waiting] == ["eve"]
    # A second response for another user while eve's lookup runs: refused at once.
    client.data_received(my.encode_packet(1, my.build_handshake_response(
        CAPS, "pp_auth", b"x" * 32, auth_plugin_name="caching_sha2_password")))
    outbox_for(loop).flush()
    sent = bytes(transport.take())
    assert sent[4:5] == b"\xff" and b"unexpected packet during login" in sent
    adapter.waiting[0][1].set_result(None)
    spin(loop)
    assert client.user == "eve"
    assert "pp_auth" not in rt.learnt and "bob" not in rt.learnt
    assert client.pool is None or client.pool.user == "eve"


def tls_runtime(loop: asyncio.AbstractEventLoop, auth: str) -> ListenerRuntime:
    rt = runtime(loop, f"""
listeners:
  - name: l
    protocol: mysql
    listen: 127.0.0.1:1
    server: {{host: 127.0.0.1, port: 2}}
    auth: {{type: {auth}}}
    users: [{{name: app, password: pw}}]
""", FakeAdapter("mysql"))
    rt.client_tls.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # as if client_tls: prefer
    return rt


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The bytes each TLS handshake the client would start begins with (none is started)."""
    begun: list[bytes] = []
    monkeypatch.setattr(ClientConnection, "_start_tls",
                        lambda self, ctx, answer=b"", initial=b"": begun.append(initial))
    return begun


def test_auth_switch_answer_is_never_taken_for_an_sslrequest(
        loop: asyncio.AbstractEventLoop, started: list[bytes]) -> None:
    rt = tls_runtime(loop, "caching_sha2_password")
    for _ in range(64):  # about half of the scrambles have the CLIENT_SSL bit set
        client, transport = connect(rt)
        client.data_received(my.encode_packet(1, my.build_handshake_response(
            CAPS, "app", b"\x00" * 20, auth_plugin_name="mysql_native_password")))
        outbox_for(loop).flush()
        transport.take()
        client.data_received(my.encode_packet(
            3, caching_sha2.scramble_caching_sha2("pw", client._nonce)))
        assert client.state is not ClientState.CLOSED
        client.transport.close()  # type: ignore[union-attr]
    assert started == []


def test_split_sslrequest_then_clienthello_starts_tls(
        loop: asyncio.AbstractEventLoop, started: list[bytes]) -> None:
    rt = tls_runtime(loop, "mysql_native_password")
    client, transport = connect(rt)
    request = my.encode_packet(1, my.build_ssl_request(CAPS))
    hello = bytes.fromhex("160301") + b"\x02\x00" + b"\x01" + b"\x00" * 511
    client.data_received(request[:10])
    client.data_received(request[10:] + hello)
    assert started == [hello]
    outbox_for(loop).flush()
    assert bytes(transport.take()) == b""  # no error was sent


def test_server_data_before_the_tls_upgrade_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """server_tls: a plaintext packet after the greeting (a man in the middle's) must not pass
    for a reply that came through TLS."""
    from sessionfakes import World

    from proxy.errors import ServerTlsError
    from proxy.mysql.server import ServerConnection

    upgraded: list[bool] = []

    async def fake_start_tls(self: ServerConnection) -> None:
        upgraded.append(True)

    monkeypatch.setattr(ServerConnection, "_start_tls", fake_start_tls)
    world = World("mysql")
    server = ServerConnection(world.pool, "app", "pw", "app", 0, my.UTF8MB4_GENERAL_CI,
                              world.loop)
    server.connection_made(FakeTransport())
    server.tls_context, server.tls_required = object(), True
    greeting = my.encode_packet(0, my.build_handshake("8.0.0", 1, b"A" * 20, 0xFFFFFFFF))
    injected = my.encode_packet(3, my.build_ok())

    async def main() -> None:
        login = asyncio.ensure_future(server._login())
        await asyncio.sleep(0)
        server.data_received(greeting + injected)
        with pytest.raises(ServerTlsError, match="before the TLS upgrade"):
            await login

    world.loop.run_until_complete(main())
    assert upgraded == []
