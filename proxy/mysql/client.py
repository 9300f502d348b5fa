"""A MySQL client session once logged in: commands, session state, and the end of responses.

A command borrows a server (core/session.py links it after this client's session variables and
schema are replayed on it); the end of each response comes back through `on_response_end`,
which applies what the command changed and hands over to core's `_answered` to decide release:
SERVER_STATUS_IN_TRANS clear, autocommit on, no LOCAL INFILE in progress, no pin.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.effects import Effect, may_have_committed
from ..core.reasons import ClientResult, DisconnectReason, LossOutcome
from ..errors import FeatureNotSupported, ProtocolViolation, ProxyError, ServerConnectionLost
from ..pool import C_LOGIN, C_WAITING
from . import codec
from .login import MAX_CLIENT_PACKET, ClientLogin
from .retry import autocommit_set, command_effects
from .server import ServerConnection
from .session import Analysis, PinReason, replay_sql, session_effects

log = logging.getLogger("poolproxy.mysql.client")

_COM_QUERY = codec.COM_QUERY
_IN_TRANS = codec.SERVER_STATUS_IN_TRANS
_AUTOCOMMIT = codec.SERVER_STATUS_AUTOCOMMIT
_UNSUPPORTED = frozenset((codec.COM_CHANGE_USER, codec.COM_BINLOG_DUMP, codec.COM_BINLOG_DUMP_GTID,
                          codec.COM_REGISTER_SLAVE, codec.COM_TABLE_DUMP, codec.COM_SHUTDOWN,
                          codec.COM_MULTI, codec.COM_CONNECT_OUT, codec.COM_DAEMON))
_NO_RESPONSE = frozenset(cmd for cmd in range(256)
                         if codec.response_mode_for_command(cmd) is codec.ResponseMode.NO_RESPONSE)


class ClientConnection(ClientLogin):
    """One application connection to a MySQL listener."""

    _buffer: list[tuple[int, bytes]]

    def __init__(self, listener: Any) -> None:
        super().__init__(listener)
        self.vars: dict[str, str] = {}
        self.infile = False
        self._autocommit_off = False
        self._analysis: Analysis | None = None
        self._init_db: str | None = None
        self._resetting = False
        self._lost_outcome = LossOutcome.NOT_APPLIED
        self._lost_wrote = False  # a write was in flight inside the lost transaction
        self._lost_in_tx = False  # the lost server had a transaction open
        self._lost_words: codec.ErrPacket | None = None

    # ------------------------------------------------------------------ asyncio.Protocol
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
            self.listener.count_result(ClientResult.PROTOCOL_ERROR)
            self.fail(ProtocolViolation(
                f"invalid packet from client: {exc}", mysql_errno=1153,
                hint=f"packets are limited to {MAX_CLIENT_PACKET >> 20} MiB through poolproxy"),
                seq=0)
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

    # ------------------------------------------------------------------ commands
    def _command(self, seq: int, payload: bytes, raw: bytes | None) -> None:
        if not payload:
            self.fail(ProtocolViolation("empty command packet"), seq=seq + 1)
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
        if self.state is C_WAITING:
            self._buffer.append((cmd, data))
            # MySQL clients wait for each answer; one that keeps sending while it waits
            # is throttled rather than buffered without bound.
            if len(self._buffer) > 16 and not self._paused:
                self._paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
            return
        self._buffer.append((cmd, data))
        server = self._checkout_in_sync()
        if server is not None:  # the usual case: linked at once
            self._buffer.clear()
            self._send(server, cmd, data)

    def _special(self, seq: int, cmd: int, payload: bytes, server: ServerConnection | None) -> bool:
        """What a command other than COM_QUERY (or any, after our server died) needs before it
        is forwarded; True if it was answered here instead."""
        if cmd == codec.COM_QUIT:
            self.close_with(DisconnectReason.CLIENT_CLOSE)
            return True
        if cmd == codec.COM_PING and server is None:
            self.send(codec.encode_packet(
                seq + 1, codec.build_ok(status_flags=_AUTOCOMMIT, capabilities=self.caps)))
            return True
        if self._broken and server is None:
            self._broken = False
            self._send_lost_error()
            return True
        if cmd in _UNSUPPORTED:
            self.fail(FeatureNotSupported(f"command 0x{cmd:02x} is not supported through poolproxy"),
                      fatal=False, seq=seq + 1)
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
        if cmd not in _NO_RESPONSE:
            self.pending = 1
        server.send_command(cmd, data)

    def _pin(self, reason: PinReason) -> None:
        if self.pinned is None:
            self.pinned = reason
            self.listener.count_pin(reason.value)
            log.debug("%r: pinned to its server (%s)", self, reason.value)

    def _forward_infile(self, packets: list[tuple[int, bytes]]) -> None:
        server = self.server
        assert server is not None
        if server.forward_infile(packets):
            self.infile = False

    # ------------------------------------------------------------------ the link
    def _checkout_in_sync(self) -> ServerConnection | None:
        """A server linked now, if one is free and already in this client's session state;
        otherwise the client waits with its command in `_buffer` (the session is replayed on
        the server first, now or when `on_server` brings one)."""
        pool = self.pool
        assert pool is not None
        self.state = C_WAITING
        server: ServerConnection | None = pool.checkout(self)
        if server is None:
            return None
        if self._autocommit_off or self.vars or server.vars or (
                self.schema and self.schema != server.schema):
            self._prepare_server(server)
            return None
        self._link(server)
        return server

    def _prepare_server(self, server: ServerConnection) -> None:
        """Replay this client's session variables and schema on `server` before its command."""
        sql = replay_sql(self.vars, server.vars, server.names_default) \
            if (self.vars or server.vars) else None
        if self._autocommit_off:
            # The client's previous server died while it had autocommit off: its session
            # expects autocommit off, so the new server gets it too.
            self._autocommit_off = False
            sql = f"{sql}, autocommit = 0" if sql else "SET autocommit = 0"
        if sql is not None or (self.schema and self.schema != server.schema):
            self.listener.spawn(self._replay_then_attach(server, sql))
            return
        self.attach(server)

    async def _replay_then_attach(self, server: ServerConnection, sql: str | None) -> None:
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
            self._sync_failed(server, exc)
            return
        if self.state is not C_WAITING:  # client left meanwhile
            server.give_back()
            return
        self.attach(server)

    def _send_buffered(self, server: ServerConnection, buffered: list[tuple[int, bytes]]) -> None:
        for cmd, data in buffered:
            self._send(server, cmd, data)

    # ------------------------------------------------------------------ server events
    def on_response_end(self, status: int | None, ok: bool) -> None:
        """Apply what the command changed, then let core decide about release."""
        self.pending = 0
        server = self.server
        assert server is not None
        if self._analysis is not None or self._init_db is not None or self._resetting:
            self._apply_effects(server, ok)
        self._answered(server.in_transaction())

    def on_infile(self) -> None:
        self.infile = True

    def _holds_server(self) -> bool:
        return self.infile

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

    # ------------------------------------------------------------------ loss
    def server_lost(self, server: ServerConnection) -> None:
        self._autocommit_off = not server.status & _AUTOCOMMIT
        self._lost_wrote = False
        sent = server.sent
        if sent:
            wanted = autocommit_set(sent)
            if wanted is not None:
                self._autocommit_off = not wanted
            self._lost_wrote = Effect.WRITE in command_effects(sent)
        self.infile = False
        super().server_lost(server)

    def _inflight_size(self, inflight: list[bytes]) -> int:
        return sum(len(packet) for packet in inflight)

    def _could_commit(self, inflight: list[bytes], in_block: bool) -> bool:
        return may_have_committed(command_effects(inflight), in_block)

    def _to_replay(self, inflight: list[bytes]) -> list[tuple[int, bytes]]:
        return [(packet[4], packet) for packet in inflight]

    def _answer_lost(self, server: ServerConnection, outcome: LossOutcome) -> None:
        self._lost_outcome = outcome
        self._lost_words = server.last_words
        self._lost_in_tx = bool(server.status & _IN_TRANS)
        if self.pending:
            self.pending = 0
            self._send_lost_error()
        elif self._lost_in_tx or self.pinned is not None or self.session_mode:
            # Idle in a transaction, or with session state only that server had: the next
            # command gets the error. (Autocommit off alone is carried to the next server.)
            self._broken = True

    def _send_lost_error(self) -> None:
        """MySQL has one code for both cases (2013); the message says which it is."""
        words = self._lost_words
        said = f" (the server said: {words.message})" if words is not None else ""
        if self._lost_outcome is LossOutcome.UNKNOWN:
            error = ServerConnectionLost(
                "Lost connection to server before the answer arrived: the statement may or may "
                f"not have been applied{said}",
                hint="check whether the change was applied before repeating it")
        elif self._lost_in_tx or self._lost_wrote:
            # Writes inside the block were undone with it, except on tables that have no
            # transactions (MyISAM, ...): say so rather than promise a rollback.
            caveat = " (writes to non-transactional tables such as MyISAM are not undone)" \
                if self._lost_wrote else ""
            error = ServerConnectionLost(
                f"Lost connection to server during query{said}; the transaction was rolled "
                f"back{caveat}", hint="retry the transaction")
        else:
            error = ServerConnectionLost(
                f"Lost connection to server during query{said}; the statement was not applied"
                + ("; the session's state (variables, temporary tables, locks) is gone"
                   if self.pinned is not None else ""),
                hint="retry the statement")
        self.fail(error, fatal=False, seq=1)

    # ------------------------------------------------------------------ leaving
    def _left_clean(self, server: ServerConnection) -> bool:
        return not (self.pending or self.infile or server.requests)
