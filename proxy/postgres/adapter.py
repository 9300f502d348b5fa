"""PostgreSQL's part of a listener (core.listener.ProtocolAdapter): client sessions, opening
server connections, and CancelRequest delivery."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..auth.credentials import Credential
from ..config.model import AuthQuery
from ..core.server import ServerSession
from ..core.session import run_on_server
from ..pool import Pool
from .client import ClientConnection
from .server import ServerConnection, open_server, send_cancel

if TYPE_CHECKING:
    from ..core.listener import ListenerRuntime
    from ..core.server import ServerTls


class PostgresAdapter:
    protocol = "postgres"

    def client(self, runtime: ListenerRuntime) -> ClientConnection:
        return ClientConnection(runtime)

    async def open_server(self, runtime: ListenerRuntime, pool: Pool, dbname: str, user: str,
                          password: Credential | None, tls: ServerTls | None) -> ServerConnection:
        srv = runtime.config.server
        return await open_server(pool, srv.target, srv.port, user, password, dbname,
                                 pool.settings.server_connect_timeout, tls)

    async def cancel(self, runtime: ListenerRuntime, server: ServerSession) -> None:
        assert isinstance(server, ServerConnection)
        srv = runtime.config.server
        # A cancel goes the way the connection went (a hostssl-only server wants TLS).
        context = runtime.server_tls.context if server.tls is not None else None
        await send_cancel(srv.target, srv.port, server.key, context=context,
                          server_hostname=server.tls_hostname)

    async def prepare(self, runtime: ListenerRuntime) -> None:
        return None

    async def lookup_secret(self, runtime: ListenerRuntime, query: AuthQuery, dbname: str,
                            user: str) -> str | None:
        rows = await run_on_server(runtime.get_pool(dbname, query.user), runtime.loop,
                                   lambda server: server.query_params(query.query, [user]))
        return rows[0][1] if rows and len(rows[0]) > 1 else None
