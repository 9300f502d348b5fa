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
from typing import Any

from ..auth import caching_sha2, mysql_native
from ..auth.credentials import Credential, NativeStage1
from ..core.requests import FORWARD, PLAIN_BATCH, SWALLOW, SYNTHESIZE, Batch, Done, Step
from ..core.server import ServerSession, ServerTls, connect_and_login
from ..core.session import ClientSession
from ..errors import ServerConnectionLost, ServerLoginError, ServerTlsError
from ..pool import S_CLOSED, CloseReason, Pool
from . import codec
from .codec import ResponseMode, ResponseTracker
from .prepared import ServerStatements, close_packet

log = logging.getLogger("poolproxy.mysql.server")

#: Capabilities poolproxy always asks of the server; the client-dependent ones come from the
#: pool variant (see client.SEMANTIC_CAPS). Never COMPRESS, SSL (yet), QUERY_ATTRIBUTES or
#: INTERACTIVE (an interactive timeout would outlive wait_timeout-based reaping).
BASE_CAPS = (codec.CLIENT_LONG_PASSWORD | codec.CLIENT_LONG_FLAG | codec.CLIENT_PROTOCOL_41
             | codec.CLIENT_TRANSACTIONS | codec.CLIENT_SECURE_CONNECTION | codec.CLIENT_PLUGIN_AUTH
             | codec.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | codec.CLIENT_CONNECT_ATTRS)


#: ERR codes a server sends as it drops the connection: connection killed (MariaDB 1927),
#: ER_SERVER_SHUTDOWN 1053, ER_CLIENT_INTERACTION_TIMEOUT 4031 (MySQL 8 wait_timeout),
#: ER_ABORTING_CONNECTION 1152.
_GOING_AWAY = frozenset((1927, 1053, 4031, 1152))
#: Those that, as the first reply to a command, show it did not run (shutdown, kill, timeout).
_DID_NOT_RUN = frozenset((1927, 1053, 4031))
#: The tracker state after a response taken whole: anything more from the server is an error.
_FINISHED = ResponseTracker(0, ResponseMode.NO_RESPONSE)
_NO_RESPONSE = frozenset(cmd for cmd in range(256)
                         if codec.response_mode_for_command(cmd) is ResponseMode.NO_RESPONSE)


class ServerConnection(ServerSession):
    """One connection from poolproxy to a MySQL/MariaDB server."""

    GOODBYE = codec.encode_packet(0, bytes((codec.COM_QUIT,)))
    IDLE_LIMIT_NAME = "wait_timeout"

    def __init__(self, pool: Pool, user: str, password: Credential | None, dbname: str | None,
                 caps: int, charset: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(pool, loop)
        self.user = user
        self.password: Credential = password or ""
        self.dbname = dbname
        self.want_caps = caps
        self.charset = charset
        self.caps = 0
        self.handshake: codec.Handshake | None = None
        self.status = codec.SERVER_STATUS_AUTOCOMMIT
        self.vars: dict[str, str] = {}
        self.schema = dbname
        self.names_default = "NAMES DEFAULT"
        self.thread_id = 0
        #: The tracker following the current response: None until its first byte arrives,
        #: then armed (or _FINISHED if the whole response came at once); done at its end.
        self.tracker: ResponseTracker | None = None
        self._tracker: ResponseTracker | None = None  # reused for every response
        self._command = codec.COM_QUIT
        self._deprecate_eof = False
        self.params: dict[str, str] | None = None  # pool.server_params marker (version)
        #: The ERR the server sent as it went away (its own reason), if any.
        self.last_words: codec.ErrPacket | None = None
        self._reader: codec.PacketReader | None = codec.PacketReader()
        #: Prepared statements shared through the pool's registry (None: not multiplexed).
        self.statements: ServerStatements | None = None
        #: The response captured for a tracked request's callback (see `send_tracked`).
        self.captured = b""
        self._capture: list[bytes] = []

    def __repr__(self) -> str:
        return f"<mysql server {self.pool.database}/{self.user} id={self.thread_id} {self.state.value}>"

    # ------------------------------------------------------------------ asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        """The server -> client hot path: forward each chunk, find the end of the response."""
        client = self.client
        if client is None:
            self._unlinked_data(data)
            return
        if self.requests.precise:
            self._precise_data(client, data)
            return
        tracker = self.tracker
        if tracker is None:
            # The first chunk of a response: most are one whole small result, found without
            # arming the tracker (codec.scan_query_response).
            command = self._command
            if command == codec.COM_QUERY or command == codec.COM_STMT_EXECUTE:
                status = codec.scan_query_response(data, self._deprecate_eof)
                if status >= 0:
                    self.pool.stats.bytes_out += len(data)
                    self.outbox.write(client.transport, data)
                    self.tracker = _FINISHED
                    self._response_end(client, status, True)
                    return
            tracker = self._arm()
        if data[4:5] == b"\xff" and len(data) >= 7 and (not self.replied or not self.requests) \
                and self._going_away(data):
            return
        try:
            done = tracker.feed_data(data)
        except codec.ProtocolError as exc:
            log.error("%r: server sent an invalid response: %s", self, exc)
            self.close(CloseReason.SERVER_PROTOCOL_ERROR)
            return
        self.pool.stats.bytes_out += len(data)
        self.replied = True  # the reply has started: no transparent retry any more
        self.outbox.write(client.transport, data)
        if done:
            self._response_end(client, tracker.status_flags, not tracker.failed)
        elif tracker.waiting_for_client:
            client.on_infile()

    def _going_away(self, data: bytes) -> bool:
        """`data` starts with an ERR: if it says the server is going away (killed, timed out or
        shutting down) before any reply reached the client (or unsolicited), it is not the
        client's answer: the server is treated as lost instead."""
        errno = data[5] | data[6] << 8
        if errno not in _GOING_AWAY:
            return False
        log.info("%r: server is going away (ERR %d)", self, errno)
        try:
            self.last_words = codec.parse_err(
                data[4:4 + (data[0] | data[1] << 8 | data[2] << 16)], self.caps)
        except (codec.ProtocolError, IndexError, ValueError):
            pass
        self.lost_now(gone_first=not self.replied and errno in _DID_NOT_RUN)
        return True

    def _precise_data(self, client: ClientSession[Any], data: bytes) -> None:
        """Responses to requests poolproxy handles one by one (prepared statements): each is
        forwarded, swallowed, captured for a callback, or synthesized in the order the requests
        went out; a chunk may hold the end of one response and the start of the next."""
        requests = self.requests
        pos = 0
        end = len(data)
        self.pool.stats.bytes_out += end
        while pos < end:
            self._synthesize_due(client)
            if not requests:
                log.error("%r: server sent data nobody asked for", self)
                self.close(CloseReason.SERVER_PROTOCOL_ERROR)
                return
            batch = requests[0]
            step = batch.steps[0] if batch.steps else None
            tracker = self.tracker
            if tracker is None or tracker.done:
                if data[pos + 4:pos + 5] == b"\xff" and end - pos >= 7 \
                        and (not self.replied or step is None or step.action is SWALLOW) \
                        and self._going_away(data[pos:]):
                    return
                tracker = self._arm(self._command if step is None else step.kind)
                self._capture = []
            piece = data[pos:] if pos else data
            try:
                done = tracker.feed_data(piece)
            except codec.ProtocolError as exc:
                log.error("%r: server sent an invalid response: %s", self, exc)
                self.close(CloseReason.SERVER_PROTOCOL_ERROR)
                return
            if done and tracker.consumed < len(piece):
                piece = piece[:tracker.consumed]
            pos += len(piece)
            if step is None or (step.on_done is None and step.action is FORWARD):
                self.replied = True
                self.outbox.write(client.transport, piece)
            elif step.on_done is not None:
                self._capture.append(piece)
            if not done:
                if tracker.waiting_for_client and step is None:
                    client.on_infile()
                return
            self.tracker = None
            self.pool.stats.queries += 1
            status = tracker.status_flags
            if status is not None:
                self.status = status
            ok = not tracker.failed
            requests.popleft()
            if step is not None:
                requests.precise -= 1
            if not any(b.action is not SYNTHESIZE for b in requests):
                self.sent = []  # every request that went out is answered
                self.replied = False
                self.answered = True
            callback = step.on_done if step is not None else None
            if callback is not None:
                # It answers the client (or sends the command that waited for it).
                self.captured = b"".join(self._capture)
                self._capture = []
                callback(ok)
                if self.client is not client:
                    return
            emitted = self._synthesize_due(client)
            if callback is None:
                if step is None or step.action is FORWARD or emitted or not requests:
                    client.on_response_end(status, ok)
            elif emitted and not requests:
                client.on_response_end(self.status, True)
            if self.client is not client or self.state is S_CLOSED:
                if pos < end and self.state is not S_CLOSED:
                    log.error("%r: server sent data nobody asked for", self)
                    self.close(CloseReason.SERVER_PROTOCOL_ERROR)
                return
        self._synthesize_due(client)

    def _synthesize_due(self, client: ClientSession[Any]) -> bool:
        """Send the answers poolproxy owes next (nothing from the server comes before them)."""
        requests = self.requests
        emitted = False
        while requests and requests[0].action is SYNTHESIZE:
            batch = requests.popleft()
            requests.precise -= 1
            client.send(batch.extra)
            emitted = True
        return emitted

    def _tracked(self, command: int, action: Any, on_done: Done | None) -> None:
        batch = Batch(action, True)
        batch.steps = deque((Step(command, action, b"", on_done),))
        self.requests.append(batch)
        self.requests.precise += 1

    def send_tracked(self, command: int, data: bytes, on_done: Done | None,
                     record: bytes | None = None) -> None:
        """Send the client's `command` whose response poolproxy reads first: captured into
        `captured` for `on_done` (which answers the client) instead of forwarded."""
        if not self.requests:
            self.tracker = None
        self._tracked(command, FORWARD, on_done)
        self.forward(data, record)

    def send_internal(self, command: int, payload: bytes, on_done: Done | None = None) -> None:
        """A command of poolproxy's own in the client's stream (a statement prepared before
        the client's execute, a schema switch around it): its response is swallowed, or
        captured for `on_done`."""
        self._tracked(command, SWALLOW, on_done)
        self.write(codec.encode_packet(0, payload))

    def synthesize(self, client: ClientSession[Any], reply: bytes) -> None:
        """An answer poolproxy gives in the server's place: sent once every response owed
        before it has been sent."""
        if not self.requests:
            client.send(reply)
            return
        batch = Batch(SYNTHESIZE, True)
        batch.extra = reply
        self.requests.append(batch)
        self.requests.precise += 1

    def close_statements(self, server_ids: list[int]) -> None:
        for server_id in server_ids:
            self.write(close_packet(server_id))

    def _response_end(self, client: ClientSession[Any], status: int | None, ok: bool) -> None:
        self.pool.stats.queries += 1
        if status is not None:
            self.status = status
        requests = self.requests
        if requests.precise:
            requests.batch_done()
        elif requests:
            requests.popleft()
        if not requests:
            # Everything sent so far is answered: what follows is new.
            self.sent = []
            self.replied = False
            self.answered = True
        client.on_response_end(status, ok)

    def _frame(self, data: bytes) -> list[tuple[int, bytes]] | None:
        return None if self._reader is None else self._reader.feed(data)

    def send_command(self, command: int, data: bytes, record: bytes | None = None) -> None:
        """The client sends `command` (whole packet `data`; `record`: the client's own packet
        if poolproxy rewrote it): its response is tracked from its first byte on."""
        requests = self.requests
        if requests.precise:
            if command not in _NO_RESPONSE:
                self._tracked(command, FORWARD, None)
        else:
            self._command = command
            self.tracker = None
            if command not in _NO_RESPONSE:
                requests.append(PLAIN_BATCH)  # one response per command
        if command == codec.COM_RESET_CONNECTION and self.statements is not None:
            self.statements.clear()  # the server deallocates them all
        self.forward(data, record)

    def forward_infile(self, packets: list[tuple[int, bytes]]) -> bool:
        """The client's LOCAL INFILE packets; True when its last (empty) packet went out."""
        tracker = self.tracker
        assert tracker is not None
        out = b"".join(codec.encode_packet(s, p) for s, p in packets)
        done = False
        for _seq, payload in packets:
            if tracker.client_infile_packet(len(payload)):
                done = True
        self.write(out)
        return done

    def in_transaction(self) -> bool:
        st = self.status
        return bool(st & codec.SERVER_STATUS_IN_TRANS) or not st & codec.SERVER_STATUS_AUTOCOMMIT

    def reusable(self) -> bool:
        """Owing nothing and no transaction open. Autocommit off alone is no transaction: the
        next client's session gets its own autocommit value before its first command."""
        return not self.requests and not self.status & codec.SERVER_STATUS_IN_TRANS

    async def reset(self, *, hold: bool) -> None:
        """Roll back, and reset unreplayable state (COM_RESET_CONNECTION) for a held server."""
        if hold:
            err, _ = await self.command(codec.COM_RESET_CONNECTION)
            if err is not None:
                raise ServerConnectionLost(f"COM_RESET_CONNECTION failed: {err.message}")
            self.vars = {"names": "NAMES DEFAULT"}
            if self.statements is not None:
                self.statements.clear()
        elif self.in_transaction():
            await self.run_sql("ROLLBACK")
            if not self.status & codec.SERVER_STATUS_AUTOCOMMIT:
                await self.run_sql("SET autocommit=1")

    def _arm(self, command: int | None = None) -> ResponseTracker:
        """Start the (reused) tracker for the response to the current command."""
        mode = codec.response_mode_for_command(
            self._command if command is None else command) or ResponseMode.SINGLE
        tracker = self._tracker
        if tracker is None:
            tracker = self._tracker = ResponseTracker(self.caps, mode)
        else:
            tracker.start(mode)
        self.tracker = tracker
        return tracker

    # ------------------------------------------------------------------ login
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
        if self.tls_context is not None:
            if self._inbox or (self._reader is not None and self._reader.pending):
                # Bytes after the greeting, before TLS: they would pass for TLS-protected
                # replies (a man in the middle's; cf. PostgreSQL's CVE-2021-23222).
                raise ServerTlsError("the server sent unexpected data before the TLS upgrade")
            if hs.capabilities & codec.CLIENT_SSL:
                caps |= codec.CLIENT_SSL
                seq += 1
                self.write(codec.encode_packet(seq, codec.build_ssl_request(
                    caps, charset=self.charset)))
                await self._start_tls()
            else:
                self._tls_refused()
        self.caps = caps
        self._deprecate_eof = bool(caps & codec.CLIENT_DEPRECATE_EOF)
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
                if data == bytes((caching_sha2.PERFORM_FULL_AUTH,)) and self.tls is not None:
                    # Inside TLS the password goes as is (what MySQL clients do).
                    self.write(codec.encode_packet(seq + 1, self._password(plugin).encode() + b"\0"))
                    continue
                if data == bytes((caching_sha2.PERFORM_FULL_AUTH,)):
                    # No TLS: ask for the server's RSA public key, then send the password
                    # encrypted with it.
                    self.write(codec.encode_packet(seq + 1, bytes((caching_sha2.REQUEST_PUBLIC_KEY,))))
                    continue
                if data.startswith(b"-----BEGIN"):
                    self.write(codec.encode_packet(
                        seq + 1, caching_sha2.rsa_encrypt_password(self._password(plugin), nonce,
                                                                   data)))
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

    def _password(self, plugin: str) -> str:
        password = self.password
        if not isinstance(password, str):
            raise ServerLoginError(
                f"the server asks user {self.user!r} for {plugin}, but poolproxy only has the "
                "mysql_native_password hash from auth.query", mysql_errno=1045,
                mysql_sqlstate="28000", hint="use mysql_native_password for this user")
        return password

    def _scramble(self, plugin: str, nonce: bytes) -> bytes:
        if plugin == "mysql_native_password":
            if isinstance(self.password, NativeStage1):  # auth.query pass-through
                return mysql_native.scramble_from_stage1(self.password.stage1, nonce)
            return mysql_native.scramble_native(self._password(plugin), nonce)
        if plugin == "caching_sha2_password":
            return caching_sha2.scramble_caching_sha2(self._password(plugin), nonce)
        if plugin == "mysql_clear_password":
            if self.tls is not None:
                return self._password(plugin).encode() + b"\0"
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

    def _closed(self) -> None:
        if self.statements is not None:
            self.statements.clear()

    def prepared_count(self) -> int:
        return 0 if self.statements is None else len(self.statements)

    @property
    def is_mariadb(self) -> bool:
        return self.handshake is not None and self.handshake.is_mariadb

    def dialect_sql(self, sql: str) -> str:
        """MariaDB before 11.1 names the isolation variables tx_isolation / tx_read_only."""
        if self.is_mariadb:
            return sql.replace("@@session.transaction_isolation", "@@session.tx_isolation") \
                      .replace("@@session.transaction_read_only", "@@session.tx_read_only")
        return sql


async def open_server(pool: Pool, host: str, port: int, user: str, password: Credential | None,
                      dbname: str | None, caps: int, charset: int,
                      connect_timeout: float, tls: ServerTls | None = None) -> ServerConnection:
    loop = asyncio.get_running_loop()
    return await connect_and_login(
        lambda: ServerConnection(pool, user, password, dbname, caps, charset, loop),
        host, port, connect_timeout, tls)


async def fetch_greeting(host: str, port: int, timeout: float = 3.0) -> codec.Handshake | None:
    """Read a server's greeting (version, capabilities) without logging in."""
    try:
        connect = asyncio.open_unix_connection(host) if host.startswith("/") \
            else asyncio.open_connection(host, port)
        reader, writer = await asyncio.wait_for(connect, timeout)
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

