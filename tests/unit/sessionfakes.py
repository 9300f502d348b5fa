"""Fake transports and a one-listener world for session tests: sessions of either protocol on
fake transports, no socket, no database (used by test_sessions.py and test_pg_prepared_routing.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.config import parse_config
from proxy.core.listener import ListenerRuntime
from proxy.core.outbox import outbox_for
from proxy.mysql import codec as my
from proxy.mysql.client import ClientConnection as MyClient
from proxy.mysql.server import ServerConnection as MyServer
from proxy.pool import Pool, ServerState
from proxy.postgres.client import ClientConnection as PgClient
from proxy.postgres.server import ServerConnection as PgServer


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        if self.closed:
            raise RuntimeError("unable to perform operation: the handler is closed")
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


class FakeAdapter:
    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.cancels: list[Any] = []

    def client(self, runtime: ListenerRuntime) -> Any:
        return PgClient(runtime) if self.protocol == "postgres" else MyClient(runtime)

    async def open_server(self, *args: Any) -> Any:
        raise AssertionError("the tests hand servers to the pool themselves")

    async def cancel(self, runtime: ListenerRuntime, server: Any) -> None:
        self.cancels.append(server)

    async def prepare(self, runtime: ListenerRuntime) -> None:
        return None


CONFIG = """
listeners:
  - name: {name}
    protocol: {protocol}
    listen: 127.0.0.1:1
    server: {{host: 127.0.0.1, port: 2}}
    databases: {{"*": {{}}}}
    auth: {{type: {auth}}}
    users: [{{name: app, password: pw}}]
    pool_size: 2
    server_check_delay: 0
"""


class World:
    """One listener, its pool, and helpers to make sessions on fake transports."""

    def __init__(self, protocol: str, extra: str = "") -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # for the tasks a session spawns (never run here)
        auth = "scram-sha-256" if protocol == "postgres" else "mysql_native_password"
        cfg = parse_config(CONFIG.format(name="l", protocol=protocol, auth=auth) + extra, env={})
        self.now = 100.0
        self.rt = ListenerRuntime(cfg.listeners[0], FakeAdapter(protocol), self.loop,
                                  lambda: self.now)
        variant = None if protocol == "postgres" else (0, my.UTF8MB4_GENERAL_CI)
        self.pool: Pool = self.rt.get_pool("app", "app", variant)
        self.outbox = outbox_for(self.loop)

    def flush(self) -> None:
        self.outbox.flush()

    def pg_server(self) -> tuple[PgServer, FakeTransport]:
        server = PgServer(self.pool, "app", "pw", "app", self.loop)
        transport = FakeTransport()
        server.connection_made(transport)  # type: ignore[arg-type]
        server._reader = None
        server.state = ServerState.ACTIVE
        self.pool.opening += 1
        self.pool.opened(server)
        return server, transport

    def my_server(self) -> tuple[MyServer, FakeTransport]:
        server = MyServer(self.pool, "app", "pw", "app", 0, my.UTF8MB4_GENERAL_CI, self.loop)
        transport = FakeTransport()
        server.connection_made(transport)  # type: ignore[arg-type]
        server._reader = None
        server.state = ServerState.ACTIVE
        server.caps = my.CLIENT_PROTOCOL_41 | my.CLIENT_TRANSACTIONS
        self.pool.opening += 1
        self.pool.opened(server)
        return server, transport

    def client(self) -> tuple[Any, FakeTransport]:
        client = self.rt.new_client()
        transport = FakeTransport()
        client.connection_made(transport)  # type: ignore[arg-type]
        if client._login_timer is not None:
            client._login_timer.cancel()
        client.user = "app"
        client.pool = self.pool
        if isinstance(client, PgClient):
            client.database = "app"
        client._logged_in()
        self.flush()
        transport.take()
        return client, transport

    def close(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        asyncio.set_event_loop(None)
        self.loop.close()
