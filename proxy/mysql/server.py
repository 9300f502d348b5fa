"""A MySQL/MariaDB server connection: login, internal commands (replay, reset), forwarding.

While linked, `data_received` forwards each chunk to the client and feeds it to a
ResponseTracker, which finds the end of the response without copying rows; at the end the
client session decides about release. Unlinked, the connection runs our own commands or sits
idle, where anything from the server (ERR 4031 on wait_timeout, EOF) means it is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from ..auth import caching_sha2, mysql_native
from ..errors import ServerConnectionLost, ServerLoginError, ServerUnavailable
from ..pool import CloseReason, Pool, ServerState
from . import codec
from .codec import ResponseMode, ResponseTracker

if TYPE_CHECKING:
    from .client import ClientConnection

log = logging.getLogger("poolproxy.mysql.server")

#: Capabilities poolproxy always asks of the server; the client-dependent ones come from the
#: pool variant (see client.SEMANTIC_CAPS). Never COMPRESS, SSL (yet), QUERY_ATTRIBUTES or
#: INTERACTIVE (an interactive timeout would outlive wait_timeout-based reaping).
BASE_CAPS = (codec.CLIENT_LONG_PASSWORD | codec.CLIENT_LONG_FLAG | codec.CLIENT_PROTOCOL_41
             | codec.CLIENT_TRANSACTIONS | codec.CLIENT_SECURE_CONNECTION | codec.CLIENT_PLUGIN_AUTH
             | codec.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | codec.CLIENT_CONNECT_ATTRS)


class ServerConnection(asyncio.Protocol):
    """One connection from poolproxy to a MySQL/MariaDB server."""

    def __init__(self, pool: Pool, user: str, password: str | None, dbname: str | None,
                 caps: int, charset: int, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.user = user
        self.password = password or ""
        self.dbname = dbname
        self.want_caps = caps
        self.charset = charset
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._throttled_client: ClientConnection | None = None
        self.state = ServerState.LOGIN
        self.client: ClientConnection | None = None
        self.caps = 0
        self.handshake: codec.Handshake | None = None
        self.status = codec.SERVER_STATUS_AUTOCOMMIT
        self.vars: dict[str, str] = {}
        self.schema = dbname
        self.names_default = "NAMES DEFAULT"
        self.thread_id = 0
        now = pool.clock()
        self.created_at = now
        self.last_used = now
        self.expires_at = pool.lifetime_deadline(now)
        self.tracker: ResponseTracker | None = None
        self.params: dict[str, str] | None = None  # pool.server_params marker (version)
        self._reader: codec.PacketReader | None = codec.PacketReader()
        self._inbox: deque[tuple[int, bytes]] = deque()
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        self.close_reason: CloseReason | None = None

    def __repr__(self) -> str:
        return f"<mysql server {self.pool.database}/{self.user} id={self.thread_id} {self.state.value}>"

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            self._unlinked_data(data)
            return
        tracker = self.tracker
        assert tracker is not None
        try:
            done = tracker.feed_data(data)
        except codec.ProtocolError as exc:
            log.error("%r: server sent an invalid response: %s", self, exc)
            self.close(CloseReason.SERVER_ERROR)
            return
        self.pool.stats.bytes_out += len(data)
        client.replay = None  # the reply has started: no transparent retry any more
        client.transport.write(data)  # type: ignore[union-attr]
        if done:
            client.response_done(self, tracker)
        elif tracker.waiting_for_client:
            client.infile_requested()

    def _unlinked_data(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            # Idle in the pool: MariaDB/MySQL send ERR 4031 (or just close) on wait_timeout.
            log.info("%r: unsolicited data from idle server; closing it", self)
            self.pool.remove_idle(self, CloseReason.SERVER_ERROR)
            return
        try:
            packets = reader.feed(data)
        except codec.ProtocolError as exc:
            self._lost = exc
            self.close(CloseReason.SERVER_ERROR)
            return
        if packets:
            self._inbox.extend(packets)
            waiter = self._inbox_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("server closed the connection")
        was = self.state
        self.state = ServerState.CLOSED
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        client = self.client
        if client is not None:
            self.client = None
            self.pool.discard(self, CloseReason.SERVER_ERROR)  # first: frees the pool slot
            client.server_lost(self)
        elif was is ServerState.IDLE:
            self.pool.remove_idle(self, CloseReason.SERVER_ERROR)

    def pause_writing(self) -> None:
        client = self.client
        if client is not None and client.transport is not None:
            client._backpressured = True
            client.transport.pause_reading()
            self._throttled_client = client

    def resume_writing(self) -> None:
        client = self._throttled_client
        if client is not None:
            self._throttled_client = None
            client._backpressured = False
            if client.transport is not None and not client.transport.is_closing() \
                    and not getattr(client, "_paused", False):
                client.transport.resume_reading()

    # ------------------------------------------------------------------ control
    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self, reason: CloseReason) -> None:
        if self.state is ServerState.CLOSED:
            return
        log.debug("%r: closing (%s)", self, reason.value)
        self.close_reason = reason
        self.state = ServerState.CLOSED
        if self.transport is not None:
            try:
                self.transport.write(codec.encode_packet(0, bytes((codec.COM_QUIT,))))
            except Exception:
                pass
            self.transport.close()

    def start_command(self, command: int) -> None:
        """Arm the tracker for the response to the command the client is sending."""
        mode = codec.response_mode_for_command(command) or ResponseMode.SINGLE
        tracker = self.tracker
        if tracker is None:
            tracker = self.tracker = ResponseTracker(self.caps, mode)
        else:
            tracker.start(mode)

    # ------------------------------------------------------------------ reading
    async def _next(self, timeout: float | None = None) -> tuple[int, bytes]:
        while not self._inbox:
            if self._lost is not None or self.state is ServerState.CLOSED:
                raise ServerConnectionLost(f"server connection lost: {self._lost}")
            self._inbox_waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(self._inbox_waiter, timeout)
            finally:
                self._inbox_waiter = None
        return self._inbox.popleft()

    # ------------------------------------------------------------------ login
    async def login(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._login(), timeout)
        except TimeoutError:
            self.close(CloseReason.SERVER_ERROR)
            raise ServerUnavailable(
                f"server login timed out after {timeout:g}s (server_connect_timeout)") from None
        except Exception:
            self.close(CloseReason.SERVER_ERROR)
            raise

    async def _login(self) -> None:
        seq, payload = await self._next()
        if payload[:1] == b"\xff":
            err = codec.parse_err(payload, codec.CLIENT_PROTOCOL_41)
            raise ServerLoginError(f"server refused the connection: {err.message}",
                                   mysql_errno=err.errno, mysql_sqlstate=err.sqlstate or "HY000")
        hs = codec.parse_handshake(payload)
        self.handshake = hs
        self.thread_id = hs.connection_id
        caps = (BASE_CAPS | self.want_caps) & hs.capabilities
        caps |= codec.CLIENT_PROTOCOL_41 | codec.CLIENT_SECURE_CONNECTION
        if self.dbname:
            caps |= codec.CLIENT_CONNECT_WITH_DB
        self.caps = caps
        plugin = hs.auth_plugin_name or "mysql_native_password"
        nonce = hs.auth_plugin_data
        auth = self._scramble(plugin, nonce)
        resp = codec.build_handshake_response(
            caps, self.user, auth, database=self.dbname, auth_plugin_name=plugin,
            attrs={"_client_name": "poolproxy"}, charset=self.charset)
        self.write(codec.encode_packet(seq + 1, resp))
        while True:
            seq, payload = await self._next()
            head = payload[:1]
            if head == b"\x00":
                break
            if head == b"\xff":
                err = codec.parse_err(payload, caps)
                raise ServerLoginError(
                    f"server login failed: {err.message}", mysql_errno=err.errno,
                    mysql_sqlstate=err.sqlstate or "28000",
                    sqlstate="3D000" if err.errno == 1049 else "28P01",
                    hint="check the user's password and the database name in the poolproxy config")
            if head == b"\xfe":
                plugin, nonce = codec.parse_auth_switch_request(payload)
                self.write(codec.encode_packet(seq + 1, self._scramble(plugin, nonce)))
            elif head == b"\x01":
                data = codec.parse_auth_more_data(payload)
                if plugin != "caching_sha2_password":
                    raise ServerLoginError(f"unexpected auth data for plugin {plugin}")
                if data == bytes((caching_sha2.FAST_AUTH_SUCCESS,)):
                    continue  # OK follows
                if data == bytes((caching_sha2.PERFORM_FULL_AUTH,)):
                    # No TLS: ask for the server's RSA public key, then send the password
                    # encrypted with it.
                    self.write(codec.encode_packet(seq + 1, bytes((caching_sha2.REQUEST_PUBLIC_KEY,))))
                    continue
                if data.startswith(b"-----BEGIN"):
                    self.write(codec.encode_packet(
                        seq + 1, caching_sha2.rsa_encrypt_password(self.password, nonce, data)))
                    continue
                raise ServerLoginError("unexpected caching_sha2_password exchange")
            else:
                raise ServerLoginError(f"unexpected packet during login: {payload[:16]!r}")
        self.status = codec.parse_ok(payload, caps).status_flags
        self.params = {"server_version": hs.server_version}
        # The charset we logged in with is the baseline NAMES to restore for clients.
        rows = await self.query_rows("SELECT @@character_set_client, @@collation_connection")
        if rows and rows[0][0] and rows[0][1]:
            self.names_default = f"NAMES {rows[0][0]} COLLATE {rows[0][1]}"
        self._reader = None
        self.state = ServerState.ACTIVE

    def _scramble(self, plugin: str, nonce: bytes) -> bytes:
        if plugin == "mysql_native_password":
            return mysql_native.scramble_native(self.password, nonce)
        if plugin == "caching_sha2_password":
            return caching_sha2.scramble_caching_sha2(self.password, nonce)
        if plugin == "mysql_clear_password":
            raise ServerLoginError("server asks for a cleartext password over plain TCP; refused")
        raise ServerLoginError(f"server requested unsupported auth plugin {plugin!r}")

    # ------------------------------------------------------------------ internal commands
    async def command(self, command: int, arg: bytes | str = b"", timeout: float = 10.0
                      ) -> tuple[codec.ErrPacket | None, list[bytes]]:
        """Run one command of our own while unlinked; return (ERR or None, row payloads)."""
        assert self.client is None
        self._reader = codec.PacketReader()
        self._inbox.clear()
        mode = codec.response_mode_for_command(command) or ResponseMode.SINGLE
        tracker = ResponseTracker(self.caps, mode)
        rows: list[bytes] = []
        try:
            self.write(codec.encode_packet(0, codec.build_command(command, arg)))
            while not tracker.done:
                _, payload = await self._next(timeout)
                in_rows = tracker.state is codec.TrackerState.ROWS
                tracker.feed(payload)
                if in_rows and tracker.state is codec.TrackerState.ROWS:
                    rows.append(payload)
        except TimeoutError:
            raise ServerConnectionLost(f"server did not answer within {timeout:g}s") from None
        finally:
            self._reader = None
            self._inbox.clear()
        if tracker.status_flags is not None:
            self.status = tracker.status_flags
        return tracker.error, rows

    async def health_check(self, timeout: float) -> bool:
        err, _ = await self.command(codec.COM_PING, timeout=timeout)
        return err is None

    async def idle_limit(self) -> float | None:
        """The server's wait_timeout (seconds) for this (non-interactive) session."""
        rows = await self.query_rows("SELECT @@session.wait_timeout", 1)
        if not rows or rows[0][0] is None:
            return None
        return float(rows[0][0])

    async def query_rows(self, sql: str, ncols: int = 2) -> list[list[str | None]]:
        err, rows = await self.command(codec.COM_QUERY, sql)
        if err is not None:
            raise ServerConnectionLost(f"{sql!r} failed: {err.message}")
        out = []
        for payload in rows:
            values = codec.parse_text_row(payload, ncols)
            out.append([None if v is None else v.decode("utf-8", "replace") for v in values])
        return out

    async def run_sql(self, sql: str) -> None:
        err, _ = await self.command(codec.COM_QUERY, sql)
        if err is not None:
            raise ServerConnectionLost(f"{sql[:60]!r} failed on the server: {err.message}")

    def in_transaction(self) -> bool:
        st = self.status
        return bool(st & codec.SERVER_STATUS_IN_TRANS) or not st & codec.SERVER_STATUS_AUTOCOMMIT

    @property
    def is_mariadb(self) -> bool:
        return self.handshake is not None and self.handshake.is_mariadb

    def dialect_sql(self, sql: str) -> str:
        """MariaDB before 11.1 names the isolation variables tx_isolation / tx_read_only."""
        if self.is_mariadb:
            return sql.replace("@@session.transaction_isolation", "@@session.tx_isolation") \
                      .replace("@@session.transaction_read_only", "@@session.tx_read_only")
        return sql


async def open_server(pool: Pool, host: str, port: int, user: str, password: str | None,
                      dbname: str | None, caps: int, charset: int,
                      connect_timeout: float) -> ServerConnection:
    loop = asyncio.get_running_loop()
    server = ServerConnection(pool, user, password, dbname, caps, charset, loop)
    try:
        await asyncio.wait_for(loop.create_connection(lambda: server, host, port), connect_timeout)
    except (OSError, TimeoutError) as exc:
        raise ServerUnavailable(
            f"cannot connect to server {host}:{port}: {exc or 'timeout'}",
            hint="is the database running and reachable from poolproxy?") from None
    await server.login(connect_timeout)
    log.debug("%r: opened", server)
    return server


async def fetch_greeting(host: str, port: int, timeout: float = 3.0) -> codec.Handshake | None:
    """Read a server's greeting (version, capabilities) without logging in."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        pr = codec.PacketReader()
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                return None
            packets = pr.feed(data)
            if packets:
                return codec.parse_handshake(packets[0][1])
    except (OSError, TimeoutError, codec.ProtocolError):
        return None
    finally:
        writer.close()

