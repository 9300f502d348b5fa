"""MySQL/MariaDB's part of a listener (core.listener.ProtocolAdapter): client sessions, opening
server connections (per pool variant: capabilities and character set), and the greeting shown
to clients before the first server connection exists."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..auth.credentials import Credential
from ..config.model import AuthQuery
from ..core.server import ServerSession
from ..core.session import run_on_server
from ..pool import Pool
from . import codec
from .client import ClientConnection
from .server import ServerConnection, fetch_greeting, open_server

if TYPE_CHECKING:
    from ..core.listener import ListenerRuntime
    from ..core.server import ServerTls


class MySQLAdapter:
    protocol = "mysql"

    def client(self, runtime: ListenerRuntime) -> ClientConnection:
        return ClientConnection(runtime)

    async def open_server(self, runtime: ListenerRuntime, pool: Pool, dbname: str, user: str,
                          password: Credential | None, tls: ServerTls | None) -> ServerConnection:
        srv = runtime.config.server
        # A pool's variant: its clients' capabilities and character set (none: a probe).
        caps, charset = pool.variant or (0, codec.UTF8MB4_GENERAL_CI)
        server = await open_server(pool, srv.target, srv.port, user, password, dbname or None,
                                   caps, charset, pool.settings.server_connect_timeout, tls)
        if runtime.greeting is None:
            runtime.greeting = server.handshake
        return server

    async def cancel(self, runtime: ListenerRuntime, server: ServerSession) -> None:
        return None  # a server left mid-query is closed; MariaDB stops at its next write

    async def lookup_secret(self, runtime: ListenerRuntime, query: AuthQuery, dbname: str,
                            user: str) -> str | None:
        # The user name goes in as a hex literal with a character set introducer: no quoting
        # or escaping of client-chosen text into SQL.
        literal = f"_utf8mb4 X'{user.encode('utf-8', 'surrogateescape').hex()}'"
        sql = query.query.replace("?", literal, 1)
        rows = await run_on_server(runtime.get_pool(dbname, query.user, (0, codec.UTF8MB4_GENERAL_CI)),
                                   runtime.loop, lambda server: server.query_rows(sql))
        return rows[0][1] if rows and len(rows[0]) > 1 else None

    async def prepare(self, runtime: ListenerRuntime) -> None:
        # Show clients the real server version and capabilities from the start.
        srv = runtime.config.server
        runtime.greeting = await fetch_greeting(srv.target, srv.port)
