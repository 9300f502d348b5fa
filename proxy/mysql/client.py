"""A MySQL client session once logged in: commands, session state, and the end of responses.

A command borrows a server (core/session.py links it after this client's session variables and
schema are replayed on it); the end of each response comes back through `on_response_end`,
which applies what the command changed and hands over to core's `_answered` to decide release:
SERVER_STATUS_IN_TRANS clear, autocommit on, no LOCAL INFILE in progress, no pin.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.effects import Effect, may_have_committed, split_statements
from ..core.reasons import ClientResult, DisconnectReason, LossOutcome
from ..errors import FeatureNotSupported, ProtocolViolation, ProxyError, ServerConnectionLost
from ..pool import C_ACTIVE, C_LOGIN, C_WAITING, S_CLOSED, CloseReason
from . import codec
from .login import MAX_CLIENT_PACKET, ClientLogin
from .prepared import (
    CURSOR_TYPE_MASK,
    ER_MAX_PREPARED_STMT_COUNT_REACHED,
    ER_NET_PACKET_TOO_LARGE,
    ER_STMT_HAS_NO_OPEN_CURSOR,
    LAST_PREPARED,
    MAX_CLIENT_STATEMENTS,
    MAX_LONG_DATA,
    ClientStatement,
    ClientStatements,
    ServerStatements,
    Statement,
    err_reply,
    execute_types,
    prepare_response,
    split_packets,
    statement_id,
    statement_registry,
    supply_types,
    unknown_statement,
    with_id,
)
from .retry import autocommit_set, command_effects, statement_effect
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
_STMT_COMMANDS = frozenset((codec.COM_STMT_PREPARE, codec.COM_STMT_EXECUTE,
                            codec.COM_STMT_BULK_EXECUTE, codec.COM_STMT_SEND_LONG_DATA,
                            codec.COM_STMT_CLOSE, codec.COM_STMT_RESET, codec.COM_STMT_FETCH))
#: What travels to the server with a statement id to rewrite.
_STMT_SENDS = _STMT_COMMANDS - {codec.COM_STMT_SEND_LONG_DATA, codec.COM_STMT_CLOSE}
#: With autocommit off, what ends the client's transaction (BEGIN: `SET autocommit=0` itself).
_ENDS_IMPLICIT = frozenset((Effect.COMMIT, Effect.ROLLBACK, Effect.BEGIN))
_LOCAL = -1  # a `_buffer`/`_stalled` entry that is an answer of poolproxy's own
#: The server function MySQL's messages name for each statement command.
_WHERE = {codec.COM_STMT_EXECUTE: "mysqld_stmt_execute", codec.COM_STMT_FETCH: "mysqld_stmt_fetch",
          codec.COM_STMT_RESET: "mysqld_stmt_reset",
          codec.COM_STMT_BULK_EXECUTE: "mysqld_stmt_bulk_execute"}


def _where(cmd: int) -> str:
    return _WHERE.get(cmd, "mysqld_stmt")
_CURSOR_EXISTS = codec.SERVER_STATUS_CURSOR_EXISTS
_LAST_ROW_SENT = codec.SERVER_STATUS_LAST_ROW_SENT


class ClientConnection(ClientLogin):
    """One application connection to a MySQL listener."""

    __slots__ = ("_analysis", "_autocommit_off", "_cursors", "_executing", "_init_db",
                 "_last_sql", "_lost_in_tx", "_lost_outcome", "_lost_words", "_lost_wrote",
                 "_preparing", "_resetting", "_stalled", "infile", "statements", "vars")

    _buffer: list[tuple[int, bytes]]

    def __init__(self, listener: Any) -> None:
        super().__init__(listener)
        self.vars: dict[str, str] = {}
        self.infile = False
        #: The session wants autocommit off (as its last response said): a server it gets
        #: next (after a loss) gets `autocommit = 0` first.
        self._autocommit_off = False
        self._analysis: Analysis | None = None
        self._init_db: str | None = None
        self._resetting = False
        self._lost_outcome = LossOutcome.NOT_APPLIED
        self._lost_wrote = False  # a write was in flight inside the lost transaction
        self._lost_in_tx = False  # the lost server had a transaction open
        self._lost_words: codec.ErrPacket | None = None
        self._last_sql: bytes | None = None  # the last command, if it was a COM_QUERY
        #: Prepared statements, shared through the pool (None: pinned the old way).
        self.statements: ClientStatements | None = None
        #: Commands held back while poolproxy prepares a statement on the server first.
        self._stalled: list[tuple[int, bytes]] | None = None
        self._preparing = 0  # the client's own COM_STMT_PREPAREs on their way to the server
        self._executing: ClientStatement | None = None  # the execute or fetch in flight
        self._cursors = 0  # statements with a cursor open on this client's server

    def _logged_in(self) -> None:
        super()._logged_in()
        pool = self.pool
        if pool is not None and pool.settings.max_prepared_statements > 0 \
                and not self.session_mode:
            self.statements = ClientStatements(statement_registry(pool))

    # ------------------------------------------------------------------ asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if self.state is C_LOGIN and self._login_step == "response" and not self._tls_handshake \
                and self._offered & codec.CLIENT_SSL and self.tls is None:
            if reader._buf:  # the first packet came split: look at it whole
                data = reader.pending + data
                reader.clear()
            if self._ssl_request(data):
                return
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
                if self.state is not C_LOGIN or self._tls_handshake:
                    break
                self._login_packet(seq, payload)
            return
        if self.infile:
            self._forward_infile(packets)
            return
        for seq, payload in packets:
            self._command(seq, payload, None)

    # ------------------------------------------------------------------ commands
    def _ssl_request(self, data: bytes) -> bool:
        """The login's first chunk, when it is (or starts) an SSLRequest: the TLS handshake
        may follow in the same read, and its bytes must reach the TLS layer, not the packet
        reader. True when this chunk was taken care of here."""
        if len(data) < 4 or data[0] != codec.SSL_REQUEST_LENGTH or data[1] or data[2]:
            return False
        if len(data) < 36:
            self._reader.feed(data)  # wait for the rest of the SSLRequest
            return True
        if not codec.is_ssl_request(data[4:36]):
            return False
        self._auth_seq = data[3]
        try:
            self._on_ssl_request(data[36:])
        except ProxyError as exc:
            self._refuse_login(exc)
        return True

    def _command(self, seq: int, payload: bytes, raw: bytes | None) -> None:
        if not payload:
            self.fail(ProtocolViolation("empty command packet"), seq=seq + 1)
            return
        cmd = payload[0]
        server = self.server
        if (cmd != _COM_QUERY or self._broken) and self._special(seq, cmd, payload, server, raw):
            return  # answered here
        self._last_sql = payload if cmd == _COM_QUERY else None
        if cmd == _COM_QUERY:
            effects = session_effects(payload[1:])
            self._analysis = None
            if effects is not None:
                if effects.pin:
                    self._pin(effects.pin)
                if effects.sets or effects.use:
                    self._analysis = effects
        self._dispatch(cmd, raw if raw is not None else codec.encode_packet(seq, payload))

    def _dispatch(self, cmd: int, data: bytes) -> None:
        """Send a command to the client's server, or get one first."""
        server = self.server
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

    def _special(self, seq: int, cmd: int, payload: bytes, server: ServerConnection | None,
                 raw: bytes | None = None) -> bool:
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
        if cmd in _STMT_COMMANDS and self.statements is not None:
            return self._statement_command(seq, cmd, payload, raw)
        if cmd in _UNSUPPORTED:
            self.fail(FeatureNotSupported(f"command 0x{cmd:02x} is not supported through poolproxy"),
                      fatal=False, seq=seq + 1)
            return True
        if cmd == codec.COM_RESET_CONNECTION and server is None and self.pinned is None \
                and not self._cursors and self._stalled is None:
            if self.statements is not None:
                self.statements.clear()
            self._autocommit_off = False
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
        if self._stalled is not None:
            self._stalled.append((cmd, data))
            return
        if cmd in _STMT_SENDS and self.statements is not None:
            try:
                self._send_statement(server, cmd, data)
            except codec.ProtocolError as exc:
                self._answer_local(err_reply(
                    1210, "HY000", f"Incorrect arguments to {_where(cmd)}: {exc}"))
            return
        if cmd not in _NO_RESPONSE:
            self.pending = 1
        server.send_command(cmd, data)

    # ------------------------------------------------------------------ prepared statements
    def _statement_command(self, seq: int, cmd: int, payload: bytes, raw: bytes | None) -> bool:
        """COM_STMT_* with statements shared through the pool: answered here (a known
        statement's PREPARE, RESET, CLOSE, SEND_LONG_DATA, errors) or sent on with the
        server's statement id (`_send_statement`). Always True: nothing more to do."""
        stmts = self.statements
        assert stmts is not None
        if cmd == codec.COM_STMT_PREPARE:
            return self._prepare(seq, payload, stmts)
        try:
            stmt_id = statement_id(payload)
        except codec.ProtocolError as exc:
            self.fail(ProtocolViolation(f"invalid statement command: {exc}", mysql_errno=1835),
                      fatal=False, seq=seq + 1)
            return True
        if stmt_id == LAST_PREPARED and self._preparing:
            self._dispatch(cmd, codec.encode_packet(seq, payload))  # the server knows it
            return True
        entry = stmts.get(stmt_id)
        if cmd == codec.COM_STMT_CLOSE:  # no reply, even for an unknown id
            if entry is not None:
                stmts.close(stmt_id)
                if entry.cursor:
                    self._cursor_closed(entry)
            return True
        if entry is None:
            if cmd != codec.COM_STMT_SEND_LONG_DATA:  # the server reports those at execute
                self._answer_local(unknown_statement(stmt_id, _where(cmd)))
            return True
        if cmd == codec.COM_STMT_SEND_LONG_DATA:
            entry.add_long_data(payload)
            return True
        if cmd == codec.COM_STMT_RESET and not entry.cursor:
            entry.reset_long_data()
            server = self.server
            status = server.status if server is not None else _AUTOCOMMIT
            self._answer_local(codec.encode_packet(
                1, codec.build_ok(status_flags=status, capabilities=self.caps)))
            return True
        if cmd == codec.COM_STMT_FETCH and not (entry.cursor and self.server is not None):
            self._answer_local(err_reply(ER_STMT_HAS_NO_OPEN_CURSOR, "HY000",
                                         f"The statement ({stmt_id}) has no open cursor"))
            return True
        if cmd == codec.COM_STMT_EXECUTE or cmd == codec.COM_STMT_BULK_EXECUTE:
            if entry.long_size < 0:
                entry.reset_long_data()
                self._answer_local(err_reply(
                    ER_NET_PACKET_TOO_LARGE, "08S01",
                    f"COM_STMT_SEND_LONG_DATA for statement {stmt_id} exceeded poolproxy's "
                    f"limit of {MAX_LONG_DATA >> 20} MiB; the statement was not executed"))
                return True
            pool = self.pool
            assert pool is not None
            pool.stats.binds += 1
        self._dispatch(cmd, raw if raw is not None else codec.encode_packet(seq, payload))
        return True

    def _prepare(self, seq: int, payload: bytes, stmts: ClientStatements) -> bool:
        pool = self.pool
        assert pool is not None
        pool.stats.client_parses += 1
        if len(stmts) >= MAX_CLIENT_STATEMENTS:
            self._answer_local(err_reply(
                ER_MAX_PREPARED_STMT_COUNT_REACHED, "42000",
                f"Can't create more than max_prepared_stmt_count statements (current value: "
                f"{MAX_CLIENT_STATEMENTS}): poolproxy's limit per client connection", seq + 1))
            return True
        stmt = stmts.registry.get((self.schema or "", payload[1:]))
        server = self.server
        if stmt is not None:
            stmt_id = stmts.add(stmt)
            status = server.status if server is not None else _AUTOCOMMIT
            self._answer_local(prepare_response(stmt, stmt_id, status))
            return True
        self._preparing += 1
        self._dispatch(codec.COM_STMT_PREPARE, codec.encode_packet(seq, payload))
        return True

    def _answer_local(self, reply: bytes) -> None:
        """An answer of poolproxy's own, in order after what the client sent before."""
        if self._stalled is not None:
            self._stalled.append((_LOCAL, reply))
        elif self.server is not None:
            self.server.synthesize(self, reply)
        elif self.state is C_WAITING:
            self._buffer.append((_LOCAL, reply))
        else:
            self.send(reply)

    def _send_statement(self, server: ServerConnection, cmd: int, data: bytes) -> None:
        """A COM_STMT_* command goes to `server` with the server's own statement id, after
        preparing the statement there if it is missing."""
        stmts = self.statements
        assert stmts is not None
        payload = data[4:] if len(data) < codec.MAX_PAYLOAD else codec.PacketReader().feed(data)[0][1]
        statements = server.statements
        if statements is None:
            pool = self.pool
            assert pool is not None
            statements = server.statements = ServerStatements(
                stmts.registry, pool.settings.max_prepared_statements)
        if cmd == codec.COM_STMT_PREPARE:
            self.pending = 1
            key = (self.schema or "", payload[1:])
            server.send_tracked(cmd, data, lambda ok: self._prepared(server, key, ok))
            return
        stmt_id = statement_id(payload)
        if stmt_id == LAST_PREPARED and self._preparing:
            self.pending = 1
            server.send_command(cmd, data)
            return
        entry = stmts.get(stmt_id)
        if entry is None:  # closed while the command waited for a server
            self._answer_local(unknown_statement(stmt_id, _where(cmd)))
            return
        stmt = entry.stmt
        on_server = statements.get(stmt)
        self.pending = 1
        if on_server is None:
            # Prepare it here first (in the statement's own schema); the command waits.
            self._stalled = [(cmd, data)]
            other = server.schema or ""
            if stmt.schema != other and stmt.schema:
                server.send_internal(codec.COM_INIT_DB, bytes((codec.COM_INIT_DB,))
                                     + stmt.schema.encode())
            server.send_internal(codec.COM_STMT_PREPARE, bytes((codec.COM_STMT_PREPARE,)) + stmt.sql,
                                 lambda ok: self._prepared_for(server, stmt, ok))
            if stmt.schema != other and stmt.schema and other:
                server.send_internal(codec.COM_INIT_DB, bytes((codec.COM_INIT_DB,)) + other.encode())
            return
        out: bytes | None = None  # a rewritten payload (else only the id changes in `data`)
        if cmd == codec.COM_STMT_EXECUTE:
            flag, types = execute_types(payload, stmt.params)
            if types is not None:
                entry.types = on_server.types = types
            elif flag >= 0 and entry.types is not None and on_server.types != entry.types:
                # This server never saw them.
                out = supply_types(with_id(payload, on_server.id), flag, entry.types)
                on_server.types = entry.types
            if entry.long_data:
                for chunk in entry.long_data:
                    server.write(codec.encode_packet(0, with_id(chunk, on_server.id)))
                self._executing = entry
            else:
                self._executing = entry if payload[5] & CURSOR_TYPE_MASK else None
        elif cmd == codec.COM_STMT_BULK_EXECUTE:
            self._executing = entry if entry.long_data else None
            for chunk in entry.long_data:
                server.write(codec.encode_packet(0, with_id(chunk, on_server.id)))
        else:  # FETCH, or RESET of a statement with a cursor open
            self._executing = entry
        if out is None and len(data) < codec.MAX_PAYLOAD:
            # The usual case: the same packet with the server's statement id.
            server.send_command(cmd, data[:5] + on_server.id.to_bytes(4, "little") + data[9:],
                                record=data)
        else:
            server.send_command(cmd, codec.encode_packet(
                data[3], with_id(payload, on_server.id) if out is None else out), record=data)

    def _prepared(self, server: ServerConnection, key: tuple[str, bytes], ok: bool) -> None:
        """The server answered the client's own COM_STMT_PREPARE (captured)."""
        self._preparing -= 1
        if server.state is S_CLOSED or self.server is not server:
            return  # lost: the loss is handled on its own
        reply = server.captured
        if ok:
            stmts = self.statements
            assert stmts is not None
            packets = self._prepare_ok(server)
            if packets is None:
                return
            server_id = statement_id(packets[0])
            stmt = stmts.registry.add(key, packets)
            self._on_server(server, stmt, server_id)
            stmt_id = stmts.add(stmt)
            reply = reply[:5] + stmt_id.to_bytes(4, "little") + reply[9:]
        self.send(reply)
        self.on_response_end(server.status, ok)

    def _prepared_for(self, server: ServerConnection, stmt: Statement, ok: bool) -> None:
        """The statement the stalled command needs was prepared on `server` (or failed)."""
        if server.state is S_CLOSED or self.server is not server:
            return  # lost: `_loss_outcome` replays or reports the stalled commands
        stalled, self._stalled = self._stalled, None
        assert stalled is not None
        if ok:
            packets = self._prepare_ok(server)
            if packets is None:
                return
            self._on_server(server, stmt, statement_id(packets[0]))
        else:
            # The statement no longer prepares (a table dropped, ...): the server's error
            # answers the client's command, as a direct server's would have.
            stalled.pop(0)
            self.send(server.captured)
            if not server.requests:
                self.on_response_end(server.status, False)
        for cmd, data in stalled:
            if cmd == _LOCAL:
                self._answer_local(data)
            else:
                self._dispatch(cmd, data)

    def _prepare_ok(self, server: ServerConnection) -> list[bytes] | None:
        """The packets of the COM_STMT_PREPARE_OK `server` captured; None (and the server
        closed) if they do not parse."""
        try:
            packets = split_packets(server.captured)
            statement_id(packets[0])
        except (codec.ProtocolError, IndexError):
            log.error("%r: invalid COM_STMT_PREPARE response from %r", self, server)
            server.close(CloseReason.SERVER_PROTOCOL_ERROR)
            return None
        return packets

    def _on_server(self, server: ServerConnection, stmt: Statement, server_id: int) -> None:
        statements = server.statements
        assert statements is not None
        pool = self.pool
        assert pool is not None
        pool.stats.server_parses += 1
        server.close_statements(statements.add(stmt, server_id))

    def _cursor_closed(self, entry: ClientStatement) -> None:
        """The client closed `entry` with a cursor open: the server's copy (and its cursor)
        is closed too."""
        entry.cursor = False
        self._cursors -= 1
        server = self.server
        if server is not None and server.statements is not None:
            server_id = server.statements.drop(entry.stmt)
            if server_id is not None:
                server.close_statements([server_id])
        if not self._cursors and server is not None and not self.pending and not server.requests:
            self._answered(self._in_transaction(server))

    def prepared_count(self) -> int:
        return 0 if self.statements is None else len(self.statements)

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
        if self._autocommit_off is bool(server.status & _AUTOCOMMIT) or self.vars or server.vars or (
                self.schema and self.schema != server.schema):
            self._prepare_server(server)
            return None
        self._link(server)
        return server

    def _prepare_server(self, server: ServerConnection) -> None:
        """Replay this client's session variables and schema on `server` before its command."""
        sql = replay_sql(self.vars, server.vars, server.names_default) \
            if (self.vars or server.vars) else None
        if self._autocommit_off is bool(server.status & _AUTOCOMMIT):
            # The session's autocommit differs from the server's (the client turned it off,
            # or the server's last client did).
            value = "0" if self._autocommit_off else "1"
            sql = f"{sql}, autocommit = {value}" if sql else f"SET autocommit = {value}"
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
            if cmd == _LOCAL:
                self._answer_local(data)
            elif self.server is server:
                self._send(server, cmd, data)
            else:
                self._dispatch(cmd, data)

    # ------------------------------------------------------------------ server events
    def on_response_end(self, status: int | None, ok: bool) -> None:
        """Apply what the command changed, then let core decide about release."""
        self.pending = 0
        server = self.server
        assert server is not None
        if self._analysis is not None or self._init_db is not None or self._resetting:
            self._apply_effects(server, ok)
        if status is not None:
            self._autocommit_off = not status & _AUTOCOMMIT
        entry = self._executing
        if entry is not None:
            self._executing = None
            entry.reset_long_data()
            if status is not None:
                if status & _CURSOR_EXISTS and not status & _LAST_ROW_SENT:
                    if not entry.cursor:
                        entry.cursor = True
                        self._cursors += 1
                elif entry.cursor:
                    entry.cursor = False
                    self._cursors -= 1
        self._answered(self._in_transaction(server))

    def _in_transaction(self, server: ServerConnection) -> bool:
        """A transaction is open while the server says so; with autocommit off also from the
        first statement after COMMIT/ROLLBACK (or `SET autocommit=0`) to the next one, as the
        client sees it (PEP 249). Between them its server may go back to the pool."""
        st = server.status
        if st & _IN_TRANS:
            return True
        if st & _AUTOCOMMIT:
            return False
        sql = self._last_sql
        if sql is None:
            return True
        statements = split_statements(sql[1:], mysql=True)
        return not statements or statement_effect(statements[-1]) not in _ENDS_IMPLICIT

    def on_infile(self) -> None:
        self.infile = True

    def _holds_server(self) -> bool:
        return self.infile or self._cursors > 0 or self._stalled is not None

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
                if self.statements is not None:
                    self.statements.clear()

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
        self._preparing = 0
        self._executing = None
        if self._cursors and self.statements is not None:
            for entry in self.statements.by_id.values():
                entry.cursor = False
            self._cursors = 0
        super().server_lost(server)

    def _loss_outcome(self, server: ServerConnection) -> tuple[LossOutcome, list[Any]]:
        stalled = self._stalled
        if stalled is None:
            return super()._loss_outcome(server)
        # Lost while preparing a statement for the client's command: that command never
        # left; what went before it decides as usual.
        self._stalled = None
        held = [data for cmd, data in stalled if cmd != _LOCAL]
        outcome, inflight = super()._loss_outcome(server)
        if outcome is LossOutcome.REPLAY or (not inflight and self.state is C_ACTIVE
                                              and not server.in_transaction()
                                              and self._may_retry()):
            return LossOutcome.REPLAY, [*inflight, *held]
        return outcome, inflight

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
        return not (self.pending or self.infile or server.requests or self._cursors
                    or self._stalled is not None)

    def _disconnect(self) -> None:
        super()._disconnect()
        if self.statements is not None:
            self.statements.clear()
