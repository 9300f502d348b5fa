"""A MySQL client session: handshake, authentication, commands, and release at response end.

`response_done` is the one place that decides release for MySQL: the final OK/EOF/ERR of a
response with SERVER_STATUS_IN_TRANS clear, autocommit on, and no pin reason. Session variables
and the schema are tracked from the client's statements and replayed on the next server.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from ..auth import caching_sha2, mysql_native
from ..effects import Effect, may_have_committed
from ..errors import (
    AuthFailed,
    FeatureNotSupported,
    ProtocolViolation,
    ProxyError,
    ServerConnectionLost,
    ShuttingDown,
    TooManyConnections,
    UnknownDatabase,
)
from ..pool import C_ACTIVE, C_IDLE, C_LOGIN, C_WAITING, CloseReason, Pool
from ..session import ClientSession, LossOutcome, borrow
from . import codec
from .retry import autocommit_set, command_effects
from .server import BASE_CAPS
from .session import Analysis, PinReason, replay_sql, session_effects

if TYPE_CHECKING:
    from ..listener import ListenerRuntime
    from .server import ServerConnection

log = logging.getLogger("poolproxy.mysql.client")

#: Client capabilities that change the wire format or semantics: pools are split by them so a
#: server connection always speaks exactly what its current client negotiated.
SEMANTIC_CAPS = (codec.CLIENT_FOUND_ROWS | codec.CLIENT_MULTI_STATEMENTS | codec.CLIENT_MULTI_RESULTS
                 | codec.CLIENT_PS_MULTI_RESULTS | codec.CLIENT_DEPRECATE_EOF
                 | codec.CLIENT_SESSION_TRACK | codec.CLIENT_LOCAL_FILES)
OFFERED_CAPS = BASE_CAPS | SEMANTIC_CAPS | codec.CLIENT_CONNECT_WITH_DB
#: Larger client packets are refused (MySQL's own default max_allowed_packet is 16-64 MiB).
MAX_CLIENT_PACKET = 64 << 20
MAX_LOGIN_PACKET = 64 << 10
DEFAULT_VERSION = "5.5.5-10.11.0-MariaDB-poolproxy"

_COM_QUERY = codec.COM_QUERY
_IN_TRANS = codec.SERVER_STATUS_IN_TRANS
_AUTOCOMMIT = codec.SERVER_STATUS_AUTOCOMMIT
_UNSUPPORTED = frozenset((codec.COM_CHANGE_USER, codec.COM_BINLOG_DUMP, codec.COM_BINLOG_DUMP_GTID,
                          codec.COM_REGISTER_SLAVE, codec.COM_TABLE_DUMP, codec.COM_SHUTDOWN,
                          codec.COM_MULTI, codec.COM_CONNECT_OUT, codec.COM_DAEMON))
_NO_RESPONSE = frozenset(cmd for cmd in range(256)
                         if codec.response_mode_for_command(cmd) is codec.ResponseMode.NO_RESPONSE)


def _nonce() -> bytes:
    # Printable, NUL-free bytes, as servers generate them (some clients treat NUL as the end).
    return bytes(33 + b % 94 for b in os.urandom(codec.SCRAMBLE_LENGTH))


class ClientConnection(ClientSession):
    """One application connection to a MySQL listener."""

    server: ServerConnection | None
    _throttled: ServerConnection | None
    inflight: list[tuple[int, bytes]] | None
    _buffer: list[tuple[int, bytes]]

    def __init__(self, listener: ListenerRuntime) -> None:
        super().__init__(listener)
        self.database: str | None = None
        self.caps = 0
        self.charset = codec.UTF8MB4_GENERAL_CI
        self.vars: dict[str, str] = {}
        self.schema: str | None = None
        self._autocommit_off = False
        self.infile = False
        self._analysis: Analysis | None = None
        self._init_db: str | None = None
        self._resetting = False
        self._lost_outcome = LossOutcome.NOT_APPLIED
        self._lost_wrote = False  # a write was in flight inside the lost transaction
        self._lost_words: codec.ErrPacket | None = None
        # Until the client is authenticated, a login packet is all it may send: keep it small.
        self._reader = codec.PacketReader(max_packet=MAX_LOGIN_PACKET)
        self._nonce = _nonce()
        self._login_step = "response"
        self._auth_seq = 0
        self.conn_id = listener.next_connection_id()

    def __repr__(self) -> str:
        return f"<mysql client {self.user}@{self.database} {self.peer}>"

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        lst = self.listener
        lst.client_connected(self)
        greeting = lst.greeting
        version = greeting.server_version if greeting else DEFAULT_VERSION
        offered = OFFERED_CAPS & (greeting.capabilities if greeting else 0xFFFFFFFF)
        offered |= codec.CLIENT_PROTOCOL_41 | codec.CLIENT_SECURE_CONNECTION | codec.CLIENT_PLUGIN_AUTH
        self.send(codec.encode_packet(0, codec.build_handshake(
            version, self.conn_id, self._nonce, offered, charset=codec.UTF8MB4_GENERAL_CI,
            auth_plugin_name=lst.config.auth_type)))
        self._offered = offered
        timeout = lst.config.settings.client_login_timeout
        if timeout > 0:
            self._login_timer = self.loop.call_later(timeout, self._login_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._resume_server()
        self._disconnect()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if self.state is not C_LOGIN and not self.infile and not reader._buf:
            # Fast path: a command is normally exactly one packet in one chunk.
            n = len(data)
            if n >= 5:
                ln = data[0] | data[1] << 8 | data[2] << 16
                if ln + 4 == n and ln < codec.MAX_PAYLOAD:
                    self._command(data[3], data[4:], data)
                    return
        try:
            packets = reader.feed(data)
        except codec.ProtocolError as exc:
            self.listener.count_result("protocol_error")
            self.fail(ProtocolViolation(
                f"invalid packet from client: {exc}", mysql_errno=1153,
                hint=f"packets are limited to {MAX_CLIENT_PACKET >> 20} MiB through poolproxy"), 0)
            return
        if reader._pos >= len(reader._buf):
            reader.clear()
        if not packets:
            return
        if self.state is C_LOGIN:
            for seq, payload in packets:
                if self.state is not C_LOGIN:
                    break
                self._login_packet(seq, payload)
            return
        if self.infile:
            self._forward_infile(packets)
            return
        for seq, payload in packets:
            self._command(seq, payload, None)

    # ------------------------------------------------------------------ errors
    def fail(self, exc: ProxyError, seq: int = 0, fatal: bool = True) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        message = exc.message if not exc.hint else f"{exc.message} ({exc.hint})"
        self.send(codec.encode_packet(
            seq & 0xFF, codec.build_err(exc.mysql_errno, exc.mysql_sqlstate, message)))
        if fatal:
            self.outbox.close(self.transport)

    def _login_timed_out(self) -> None:
        if self.state is C_LOGIN:
            self.listener.count_result("protocol_error")
            self.fail(self._login_timeout_error(mysql_errno=1043), self._auth_seq + 1)

    # ------------------------------------------------------------------ login
    def _login_packet(self, seq: int, payload: bytes) -> None:
        try:
            if self._login_step == "response":
                self._on_handshake_response(seq, payload)
            elif self._login_step == "switch":
                self._auth_seq = seq
                self._verify(payload)
            else:
                raise ProtocolViolation("unexpected packet during login", mysql_errno=1043)
        except ProxyError as exc:
            self.listener.count_result("auth_failed" if isinstance(exc, AuthFailed)
                                       else "protocol_error")
            log.info("%r: login refused: %s", self, exc.message)
            self.fail(exc, self._auth_seq + 1)
        except codec.ProtocolError as exc:
            self.listener.count_result("protocol_error")
            self.fail(ProtocolViolation(f"bad handshake: {exc}", mysql_errno=1043), seq + 1)

    def _on_handshake_response(self, seq: int, payload: bytes) -> None:
        self._auth_seq = seq
        lst = self.listener
        cfg = lst.config
        if codec.is_ssl_request(payload):
            raise FeatureNotSupported("TLS is not supported by this poolproxy listener",
                                      hint="connect without SSL (ssl_mode=DISABLED)")
        resp = codec.parse_handshake_response(payload)
        if lst.draining:
            raise ShuttingDown("poolproxy is shutting down")
        self.user = resp.username
        self.caps = resp.capabilities & self._offered
        self.charset = resp.charset
        self.database = resp.database or None
        self.schema = self.database
        if len(lst.clients) > cfg.client_limit:
            lst.count_result("limit")
            raise TooManyConnections(
                f"Too many connections (max_client_conn={cfg.client_limit})",
                hint="raise max_client_conn or use fewer client connections")
        if self.database and cfg.database(self.database) is None:
            raise UnknownDatabase(f"Unknown database '{self.database}' (not configured in poolproxy)")
        plugin = cfg.auth_type
        self._auth_plugin = plugin
        if (resp.auth_plugin_name or "mysql_native_password") != plugin:
            self._login_step = "switch"
            self.send(codec.encode_packet(
                seq + 1, codec.build_auth_switch_request(plugin, self._nonce)))
            return
        self._verify(resp.auth_response)

    def _verify(self, response: bytes) -> None:
        ucfg = self.listener.config.user(self.user)
        password = ucfg.password if ucfg else None
        if self._auth_plugin == "caching_sha2_password":
            ok = password is not None and caching_sha2.verify_caching_sha2(response, password,
                                                                          self._nonce)
        else:
            ok = password is not None and mysql_native.verify_native(response, password, self._nonce)
        if not ok:
            raise AuthFailed(f"Access denied for user '{self.user}'@'{self.peer.rsplit(':', 1)[0]}' "
                             f"(using password: {'YES' if response else 'NO'})")
        if self._auth_plugin == "caching_sha2_password":
            self._auth_seq += 1
            self.send(codec.encode_packet(
                self._auth_seq, codec.build_auth_more_data(bytes((caching_sha2.FAST_AUTH_SUCCESS,)))))
        self._login_step = "done"
        variant = (self.caps & SEMANTIC_CAPS, self.charset)
        self.pool = pool = self.listener.get_pool(self.database or "", self.user, variant)
        self.session_mode = pool.settings.pool_mode == "session"
        if pool.server_params is not None:
            self._finish_login()
        else:
            self.listener.spawn(self._validate_pool(pool))

    async def _validate_pool(self, pool: Pool) -> None:
        """The first client of a pool: open a server now so a bad database or server password
        is reported at login, as a direct connection would."""
        try:
            server = await borrow(pool, self.loop)
        except ProxyError as exc:
            self.listener.count_result("auth_failed" if exc.mysql_errno == 1045 else "protocol_error")
            self.fail(exc, self._auth_seq + 1)
            return
        except TimeoutError:
            self.fail(ServerConnectionLost("timed out waiting for a server connection at login"),
                      self._auth_seq + 1)
            return
        assert server is not None
        if pool.server_params is None:
            pool.server_params = dict(server.params or {})
        pool.checkin(server)
        if self.transport is not None and not self.transport.is_closing():
            self._finish_login()

    def _finish_login(self) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        self.state = C_IDLE
        self.idle_since = self.listener.clock()
        self._reader.max_packet = MAX_CLIENT_PACKET
        assert self.pool is not None
        self.pool.clients += 1
        self.listener.count_result("accepted")
        self.send(codec.encode_packet(
            self._auth_seq + 1, codec.build_ok(status_flags=_AUTOCOMMIT, capabilities=self.caps)))
        log.debug("%r: logged in", self)

    # ------------------------------------------------------------------ commands
    def _command(self, seq: int, payload: bytes, raw: bytes | None) -> None:
        if not payload:
            self.fail(ProtocolViolation("empty command packet"), seq + 1)
            return
        cmd = payload[0]
        server = self.server
        if (cmd != _COM_QUERY or self._broken) and self._special(seq, cmd, payload, server):
            return  # answered here
        if cmd == _COM_QUERY:
            effects = session_effects(payload[1:])
            self._analysis = None
            if effects is not None:
                if effects.pin:
                    self._pin(effects.pin)
                if effects.sets or effects.use:
                    self._analysis = effects
        data = raw if raw is not None else codec.encode_packet(seq, payload)
        if server is not None:
            self._send(server, cmd, data)
            return
        self._buffer.append((cmd, data))
        if self.state is C_WAITING:
            # MySQL clients wait for each answer; one that keeps sending while it waits
            # is throttled rather than buffered without bound.
            if len(self._buffer) > 16 and not self._paused:
                self._paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
            return
        self.state = C_WAITING
        server = self.pool.checkout(self)  # type: ignore[union-attr]
        if server is not None:
            self.on_server(server)
        # else on_server() follows when a server is free

    def _special(self, seq: int, cmd: int, payload: bytes, server: ServerConnection | None) -> bool:
        """What a command other than COM_QUERY (or any, after our server died) needs before it
        is forwarded; True if it was answered here instead."""
        if cmd == codec.COM_QUIT:
            self.outbox.close(self.transport)
            return True
        if cmd == codec.COM_PING and server is None:
            self.send(codec.encode_packet(
                seq + 1, codec.build_ok(status_flags=_AUTOCOMMIT, capabilities=self.caps)))
            return True
        if self._broken and server is None:
            self._broken = False
            self._answer_lost()
            return True
        if cmd in _UNSUPPORTED:
            self.fail(FeatureNotSupported(f"command 0x{cmd:02x} is not supported through poolproxy"),
                      seq + 1, fatal=False)
            return True
        if cmd == codec.COM_RESET_CONNECTION and server is None and self.pinned is None:
            self.vars = {}
            self.schema = self.database
            self.send(codec.encode_packet(
                seq + 1, codec.build_ok(status_flags=_AUTOCOMMIT, capabilities=self.caps)))
            return True
        if cmd == codec.COM_INIT_DB:
            self._init_db = payload[1:].decode("utf-8", "replace")
        elif cmd == codec.COM_STMT_PREPARE:
            self._pin(PinReason.STMT_PREPARE)
        elif cmd == codec.COM_SET_OPTION:
            self._pin(PinReason.SET_OPTION)
        elif cmd == codec.COM_RESET_CONNECTION:
            self._resetting = True
        return False

    def _send(self, server: ServerConnection, cmd: int, data: bytes) -> None:
        inflight = self.inflight
        if inflight is not None:
            if len(inflight) < 64:
                inflight.append((cmd, data))
            else:
                self.inflight = None  # too much to keep: its outcome cannot be judged
        server.start_command(cmd)
        self.pool.stats.bytes_in += len(data)  # type: ignore[union-attr]
        if cmd not in _NO_RESPONSE:
            self.pending = 1
        try:
            server.write(data)
        except ServerConnectionLost:
            server.lost_now()  # its loss is handled now: retry or answer 2013

    def _pin(self, reason: str) -> None:
        if self.pinned is None:
            self.pinned = reason
            self.listener.count_pin(reason)
            log.debug("%r: pinned to its server (%s)", self, reason)

    def _forward_infile(self, packets: list[tuple[int, bytes]]) -> None:
        server = self.server
        assert server is not None and server.tracker is not None
        out = b"".join(codec.encode_packet(s, p) for s, p in packets)
        for _seq, payload in packets:
            if server.tracker.client_infile_packet(len(payload)):
                self.infile = False
        server.write(out)

    def infile_requested(self) -> None:
        self.infile = True

    # Waiter protocol (called by the pool)
    def on_server(self, server: ServerConnection) -> None:
        if self.state is not C_WAITING:
            raise RuntimeError("client is no longer waiting")
        self.xact_started = self.pool.clock()  # type: ignore[union-attr]
        sql = replay_sql(self.vars, server.vars, server.names_default) \
            if (self.vars or server.vars) else None
        if self._autocommit_off:
            # The client's previous server died while it had autocommit off: its session
            # expects autocommit off, so the new server gets it too.
            self._autocommit_off = False
            sql = f"{sql}, autocommit = 0" if sql else "SET autocommit = 0"
        if sql is not None or (self.schema and self.schema != server.schema):
            self.listener.spawn(self._replay_then_send(server, sql))
            return
        self._link_and_send(server)

    def _link_and_send(self, server: ServerConnection) -> None:
        self.server = server
        server.client = self
        self.state = C_ACTIVE
        self.inflight = []
        self.fresh = True
        self.answered_on_link = False
        buffered, self._buffer = self._buffer, []
        for cmd, data in buffered:
            self._send(server, cmd, data)
        if self._paused:
            self._paused = False
            if not self._backpressured:
                self.transport.resume_reading()  # type: ignore[union-attr]

    async def _replay_then_send(self, server: ServerConnection, sql: str | None) -> None:
        """Bring the server's session to this client's state, then send its command."""
        try:
            if sql is not None:
                await server.run_sql(server.dialect_sql(sql))
                server.vars = dict(self.vars)
            if self.schema and self.schema != server.schema:
                err, _ = await server.command(codec.COM_INIT_DB, self.schema)
                if err is not None:
                    raise ServerConnectionLost(f"cannot restore schema {self.schema!r}: {err.message}")
                server.schema = self.schema
        except Exception as exc:  # ProxyError, or a connection that died meanwhile
            if not isinstance(exc, ProxyError):
                exc = ServerConnectionLost(f"server connection lost during session replay: {exc}")
            log.info("%r: session replay failed on %r: %s", self, server, exc.message)
            pool = self.pool
            assert pool is not None
            pool.discard(server, CloseReason.SERVER_ERROR)
            if self.state is C_WAITING:
                if self._may_retry():
                    new = pool.checkout(self)
                    if new is not None:
                        self.on_server(new)
                    return
                self._buffer.clear()
                self.state = C_IDLE
                self.fail(exc, 1, fatal=False)
            return
        if self.state is not C_WAITING:  # client left meanwhile
            assert self.pool is not None
            self.pool.checkin(server)
            return
        self._link_and_send(server)

    def on_pool_error(self, exc: ProxyError) -> None:
        self._buffer.clear()
        self.state = C_IDLE
        log.info("%r: no server connection: %s", self, exc.message)
        self.fail(exc, 1)

    def response_done(self, server: ServerConnection, status: int | None, ok: bool) -> None:
        """The end of a response (`status`: its final status flags, None if it had none; `ok`:
        no ERR): apply tracked state, then release the server if nothing holds it."""
        self.pending = 0
        self.inflight = []  # everything sent is answered: what follows is new
        self.fresh = True
        self.answered_on_link = True
        pool = self.pool
        assert pool is not None
        pool.stats.queries += 1
        if status is not None:
            server.status = status
        if self._analysis is not None or self._init_db is not None or self._resetting:
            self._apply_effects(server, ok)
        now = pool.clock()
        self.idle_since = now
        status = server.status
        if status & _IN_TRANS or not status & _AUTOCOMMIT or self.infile:
            return
        self._retries = 0
        pool.transaction_done(now - self.xact_started)
        if self.pinned is not None or self.session_mode:
            self.xact_started = now
            return
        if self._throttled is not None:
            self._resume_server()
        self.server = None
        server.client = None
        self.state = C_IDLE
        pool.checkin(server, now)

    def _apply_effects(self, server: ServerConnection, ok: bool) -> None:
        """What the finished command changed in the session, if it succeeded."""
        analysis = self._analysis
        if analysis is not None:
            self._analysis = None
            if ok:
                for key, text in analysis.sets:
                    if key == "names":
                        for v in [k for k in self.vars if k.startswith(("character_set", "collation"))]:
                            del self.vars[v]
                    self.vars[key] = text
                server.vars = dict(self.vars)
                if analysis.use:
                    self.schema = server.schema = analysis.use
        if self._init_db is not None:
            if ok:
                self.schema = server.schema = self._init_db
            self._init_db = None
        if self._resetting:
            self._resetting = False
            if ok:
                self.vars = {}
                self.pinned = None
                server.vars = {"names": "NAMES DEFAULT"}

    def server_lost(self, server: ServerConnection) -> None:
        """Our server died while linked (see the PostgreSQL twin): replay what was in flight
        if it provably did not run, else answer 2013 — saying whether the command may have
        been applied — and carry on with a new server."""
        self.server = None
        self._autocommit_off = not server.status & _AUTOCOMMIT
        self._lost_wrote = False
        if self.inflight:
            wanted = autocommit_set(self.inflight)
            if wanted is not None:
                self._autocommit_off = not wanted
            self._lost_wrote = Effect.WRITE in command_effects(self.inflight)
        self._resume_server()
        self.infile = False
        outcome = self.loss_outcome(server, server.in_transaction())
        if outcome is LossOutcome.REPLAY:
            log.info("%r: server connection was dead; retrying on a new one (nothing had run)",
                     self)
            assert self.inflight is not None
            self.state = C_WAITING
            self._buffer = list(self.inflight)
            pool = self.pool
            assert pool is not None
            new = pool.checkout(self)
            if new is not None:
                self.on_server(new)
            return
        self.state = C_IDLE
        self.idle_since = self.listener.clock()
        self.fresh = False
        self._lost_outcome = outcome
        self._lost_words = server.last_words
        if self.pending:
            self.pending = 0
            self._answer_lost()
        else:
            self._broken = True  # idle in transaction: the next command gets the error

    def _inflight_size(self, inflight: list[tuple[int, bytes]]) -> int:
        return sum(len(data) for _, data in inflight)

    def _could_commit(self, inflight: list[tuple[int, bytes]], in_block: bool) -> bool:
        return may_have_committed(command_effects(inflight), in_block)

    def _answer_lost(self) -> None:
        words = self._lost_words
        said = f" (the server said: {words.message})" if words is not None else ""
        if self._lost_outcome is LossOutcome.UNKNOWN:
            error = ServerConnectionLost(
                "Lost connection to server before the answer arrived: the statement may or may "
                f"not have been applied{said}",
                hint="check whether the change was applied before repeating it")
        else:
            # Writes inside the block were undone with it, except on tables that have no
            # transactions (MyISAM, ...): say so rather than promise a rollback.
            caveat = " (writes to non-transactional tables such as MyISAM are not undone)" \
                if self._lost_wrote else ""
            error = ServerConnectionLost(
                f"Lost connection to server during query{said}; the transaction was rolled "
                f"back{caveat}", hint="retry the transaction")
        self.fail(error, 1, fatal=False)

    # ------------------------------------------------------------------ teardown
    def _leave_server(self, pool: Pool, server: ServerConnection) -> None:
        if self.pending or self.infile:
            pool.discard(server, CloseReason.CLIENT_ABORT)
        else:
            self.listener.spawn(reset_server(pool, server, pinned=self.pinned is not None
                                             or self.session_mode))


async def reset_server(pool: Pool, server: ServerConnection, *, pinned: bool) -> None:
    """Clean a server a client left behind: roll back, and reset unreplayable state."""
    try:
        if pinned:
            err, _ = await server.command(codec.COM_RESET_CONNECTION)
            if err is not None:
                raise ServerConnectionLost(f"COM_RESET_CONNECTION failed: {err.message}")
            server.vars = {"names": "NAMES DEFAULT"}
        elif server.in_transaction():
            await server.run_sql("ROLLBACK")
            if not server.status & _AUTOCOMMIT:
                await server.run_sql("SET autocommit=1")
        if server.in_transaction():
            raise ServerConnectionLost("server still in a transaction after reset")
    except Exception as exc:  # whatever went wrong, the server must leave the pool
        log.info("%r: reset failed (%s); closing it", server, exc)
        pool.discard(server, CloseReason.SERVER_ERROR)
        return
    pool.checkin(server)
