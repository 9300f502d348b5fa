"""A PostgreSQL client session: startup, authentication, and the client->server hot path.

The session borrows a server from its pool when the client sends a message and gives it back in
`maybe_release`, the one place that decides release: ReadyForQuery 'I', every Sync/Query the
client sent answered, no half-sent message, no unsynced extended-protocol messages, not in COPY,
not pinned, not session mode. Everything that is not release-safe keeps the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from typing import TYPE_CHECKING, Any

from ..auth import md5 as md5auth
from ..auth import scram
from ..console import ADMIN_DATABASES, Console, ConsoleError
from ..effects import may_have_committed
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
from .codec import (
    MSG_COPY_DONE,
    MSG_COPY_FAIL,
    MSG_EXECUTE,
    MSG_FLUSH,
    MSG_PARSE,
    MSG_PASSWORD,
    MSG_QUERY,
    MSG_SYNC,
    MSG_TERMINATE,
)
from .params import SYNC_PARAMS, canonical_param, sync_sql, tracked_lower
from .retry import request_effects
from .statements import PinReason, classify

if TYPE_CHECKING:
    from ..listener import ListenerRuntime
    from .server import ServerConnection

log = logging.getLogger("poolproxy.postgres.client")

_MSG_FUNCTION_CALL = 0x46  # 'F': answered with ReadyForQuery like a Query
_I = 0x49
#: After one of these (as the last message of a chunk) the client expects an answer it can wait for.
_SYNC_POINTS = frozenset((MSG_QUERY, MSG_SYNC, _MSG_FUNCTION_CALL, MSG_COPY_DONE, MSG_COPY_FAIL,
                          0x64, MSG_TERMINATE))
_FRONTEND_INTERESTING = (MSG_QUERY, MSG_PARSE, MSG_SYNC, MSG_TERMINATE, _MSG_FUNCTION_CALL,
                         MSG_EXECUTE, MSG_COPY_DONE, MSG_COPY_FAIL)
#: Query text beyond this is not kept for pin analysis (the statement keywords come first).
_MAX_ANALYSED = 64 * 1024
_MAX_BUFFER_WHILE_WAITING = 256 * 1024
_PARSE_VERDICTS: dict[bytes, str | None] = {}
_FLUSH = codec.message(b"H")
_MISSING: Any = object()
_IGNORED_STARTUP = frozenset(("extra_float_digits",))


class ClientConnection(ClientSession):
    """One application connection to a PostgreSQL listener."""

    server: ServerConnection | None
    _throttled: ServerConnection | None
    inflight: list[bytes] | None
    _buffer: list[bytes]

    def __init__(self, listener: ListenerRuntime) -> None:
        super().__init__(listener)
        self.database = ""
        self.params: dict[str, str] = {}
        #: The tracked parameter values as a tuple (None: recompute after a change).
        self.param_sig: tuple[str | None, ...] | None = None
        self.unsynced = False  # extended-protocol messages sent after the last Sync
        self.copy_mode = False
        self.syncs_since_exec = 0
        self.statement_mode = False
        self._error_sent = False
        self._lost_reply = b""  # the ErrorResponse for requests whose server was lost
        self._buffered = 0
        self.scanner = codec.MessageScanner(_FRONTEND_INTERESTING, keep_body=(MSG_QUERY, MSG_PARSE),
                                            max_body=_MAX_ANALYSED, transparent=MSG_FLUSH)
        self.copy_ends_early = 0  # CopyDone/CopyFail sent before the server's CopyInResponse
        self._tracked = tracked_lower()
        # login state
        self._startup: codec.StartupReader | None = codec.StartupReader()
        self._reader: codec.MessageReader | None = None
        self._auth_step: str | None = None
        self._scram: scram.ScramServer | None = None
        self._md5_salt = b""
        self._password: str | None = None
        self._startup_params: dict[str, str] = {}
        self._console: Console | None = None
        self._console_queue: list[str] = []
        self._console_busy = False

    def __repr__(self) -> str:
        return f"<pg client {self.user}@{self.database} {self.peer}>"

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.listener.client_connected(self)
        timeout = self.listener.config.settings.client_login_timeout
        if timeout > 0:
            self._login_timer = self.loop.call_later(timeout, self._login_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.state is C_LOGIN:
            self._login_data(data)
        else:
            self._client_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._resume_server()
        self._disconnect()

    # ------------------------------------------------------------------ errors
    def fail(self, exc: ProxyError, fatal: bool = True) -> None:
        """Send `exc` as an ErrorResponse; FATAL ones close the connection."""
        if self.transport is None or self.transport.is_closing():
            return
        self.send(codec.error_response(
            exc.sqlstate, exc.message, severity="FATAL" if fatal else "ERROR",
            detail=exc.detail, hint=exc.hint))
        if fatal:
            self.outbox.close(self.transport)

    # ------------------------------------------------------------------ login
    def _login_timed_out(self) -> None:
        if self.state is C_LOGIN:
            self.listener.count_result("protocol_error")
            self.fail(self._login_timeout_error())

    def _login_data(self, data: bytes) -> None:
        try:
            if self._startup is not None:
                payload = self._startup.feed(data)
                while payload is not None:
                    if not self._on_startup_packet(payload):
                        return
                    if self._startup is None:
                        break
                    payload = self._startup.feed(b"")
                return
            if self._reader is not None:
                for t, body in self._reader.feed(data):
                    if t != MSG_PASSWORD:
                        raise ProtocolViolation(
                            f"expected a password/SASL message during authentication, got {chr(t)!r}")
                    self._on_auth_message(body)
                    if self.state is not C_LOGIN or self._reader is None:
                        break
        except ProxyError as exc:
            self.listener.count_result("auth_failed" if isinstance(exc, AuthFailed)
                                       else "protocol_error")
            log.info("%r: login refused: %s", self, exc.message)
            self.fail(exc)
        except codec.ProtocolError as exc:
            self.listener.count_result("protocol_error")
            log.info("%r: protocol violation at login: %s", self, exc)
            self.fail(ProtocolViolation(f"invalid startup or authentication message: {exc}"))

    def _on_startup_packet(self, payload: bytes) -> bool:
        msg = codec.parse_startup(payload)
        if isinstance(msg, codec.SpecialRequest):
            if msg.code == codec.CANCEL_REQUEST_CODE:
                self.listener.handle_cancel(msg.pid, msg.secret)
                self.outbox.close(self.transport)
                return False
            self.send(b"N")  # no TLS / GSS (yet)
            return True
        rest = self._startup.take_rest() if self._startup else b""
        self._startup = None
        self._on_startup(msg.params)
        if rest and self._reader is not None:
            self._login_data(rest)
        return True

    def _on_startup(self, params: dict[str, str]) -> None:
        lst = self.listener
        cfg = lst.config
        if lst.draining:
            raise ShuttingDown("poolproxy is shutting down", hint="retry on another instance")
        if params.get("replication"):
            raise FeatureNotSupported("replication connections are not supported by poolproxy")
        user = params.get("user", "")
        if not user:
            raise ProtocolViolation("no user name given in the startup packet")
        self.user = user
        self.database = params.get("database") or user
        if len(lst.clients) > cfg.client_limit:
            lst.count_result("limit")
            raise TooManyConnections(
                f"no more connections allowed (max_client_conn={cfg.client_limit})",
                hint="raise max_client_conn or use fewer client connections")
        if self.database in ADMIN_DATABASES:
            admins = lst.daemon.config.admin.admin_users if lst.daemon is not None else ()
            if user not in admins:
                raise AuthFailed(f'user "{user}" may not use the admin console',
                                 sqlstate="28000", hint="list the user under admin.admin_users")
            self._console = Console(lst.daemon)
        elif cfg.database(self.database) is None:
            raise UnknownDatabase(
                f'database "{self.database}" is not configured in poolproxy',
                hint=f"add it under listeners[{cfg.name}].databases, or configure \"*\"")
        for key, value in params.items():
            if key in ("user", "database"):
                continue
            if key == "options":
                self._parse_options(value)
                continue
            if key in _IGNORED_STARTUP:
                continue
            name = canonical_param(key)
            if name is None:
                raise FeatureNotSupported(
                    f"unsupported startup parameter: {key}",
                    hint="transaction pooling can only carry reported parameters "
                         f"({', '.join(SYNC_PARAMS)}); set others with SET LOCAL inside transactions")
            self._startup_params[name] = value
        ucfg = cfg.user(user)
        self._password = ucfg.password if ucfg else None
        auth = cfg.auth_type
        self._reader = codec.MessageReader(max_message=1 << 16)
        if auth == "trust":
            # Trust still means "a configured user": we need its password to log in upstream,
            # and an unlisted name must not become a server login attempt.
            if ucfg is None:
                raise AuthFailed(f'password authentication failed for user "{user}"',
                                 hint="the user is not configured on this poolproxy listener")
            self._auth_ok()
        elif auth == "md5":
            self._md5_salt = os.urandom(4)
            self._auth_step = "md5"
            self.send(codec.auth_request(codec.AUTH_MD5, self._md5_salt))
        else:
            verifier = lst.scram_verifier(user, self._password)
            self._scram = scram.ScramServer(verifier)
            self._auth_step = "sasl-first"
            self.send(codec.auth_sasl([scram.MECHANISM]))

    def _parse_options(self, options: str) -> None:
        tokens = options.split()
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            if tok == "-c" and i + 1 < len(tokens):
                tok = tokens[i + 1]
                i += 1
            elif tok.startswith("-c"):
                tok = tok[2:]
            elif tok.startswith("--"):
                tok = tok[2:]
            i += 1
            key, sep, value = tok.partition("=")
            name = canonical_param(key.replace("-", "_"))
            if not sep or name is None:
                raise FeatureNotSupported(
                    f"unsupported startup option: {tok}",
                    hint="only reported parameters can be set at startup through poolproxy")
            self._startup_params[name] = value

    def _on_auth_message(self, body: bytes) -> None:
        step = self._auth_step
        fail = AuthFailed(f'password authentication failed for user "{self.user}"')
        if step == "md5":
            response = body.rstrip(b"\x00")
            if not self._password or not md5auth.verify_md5(response, self.user, self._password,
                                                            self._md5_salt):
                raise fail
            self._auth_ok()
        elif step == "sasl-first":
            mech, data = codec.parse_sasl_initial(body)
            if mech != scram.MECHANISM:
                raise ProtocolViolation(f"unsupported SASL mechanism {mech!r}")
            assert self._scram is not None
            try:
                reply = self._scram.handle_client_first(data)
            except scram.ScramError as exc:
                raise ProtocolViolation(f"malformed SCRAM message: {exc}") from None
            self._auth_step = "sasl-final"
            self.send(codec.auth_request(codec.AUTH_SASL_CONTINUE, reply))
        elif step == "sasl-final":
            assert self._scram is not None
            try:
                reply = self._scram.handle_client_final(body)
            except scram.ScramError:
                raise fail from None
            if self._password is None:  # unknown user: mock verifier cannot succeed, but be sure
                raise fail
            self.send(codec.auth_request(codec.AUTH_SASL_FINAL, reply))
            self._auth_ok()
        else:
            raise ProtocolViolation("unexpected password message")

    def _auth_ok(self) -> None:
        self._auth_step = None
        self.send(codec.auth_request(codec.AUTH_OK))
        if self._console is not None:
            self._finish_console_login()
            return
        self.pool = pool = self.listener.get_pool(self.database, self.user)
        self.session_mode = pool.settings.pool_mode == "session"
        self.statement_mode = pool.settings.pool_mode == "statement"
        if pool.server_params is not None:
            self._check_startup_params(pool.server_params)
            if not self._uncanonical(pool.server_params):
                self._finish_login()
                return
        self.listener.spawn(self._prepare_login(pool))

    def _check_startup_params(self, reported: dict[str, str]) -> None:
        for key in self._startup_params:
            if key not in reported:
                raise FeatureNotSupported(
                    f"unsupported startup parameter: {key} (this server does not report it, so "
                    "poolproxy cannot keep it per client)",
                    hint="set it with SET LOCAL inside transactions, or use session pool_mode")

    def _uncanonical(self, reported: dict[str, str]) -> dict[str, str]:
        """Startup values the server has not yet shown us in its canonical spelling."""
        canon = self.listener.canonical_params
        return {k: v for k, v in self._startup_params.items()
                if reported.get(k) != v and (k, v) not in canon}

    async def _borrow(self, pool: Pool) -> ServerConnection | None:
        try:
            server: ServerConnection = await borrow(pool, self.loop)
        except ProxyError as exc:
            self.listener.count_result("auth_failed" if exc.sqlstate.startswith("28")
                                       else "protocol_error")
            self.fail(exc)
            return None
        except TimeoutError:
            self.fail(ServerConnectionLost("timed out waiting for a server connection at login"))
            return None
        return server

    async def _prepare_login(self, pool: Pool) -> None:
        """Learn the server's parameters (first client of a pool) and have the server
        canonicalise and validate this client's startup values (cached per listener), so
        the client sees exactly the ParameterStatus a direct connection would show."""
        server = await self._borrow(pool)
        if server is None:
            return
        if pool.server_params is None:
            pool.server_params = dict(server.params)
        try:
            self._check_startup_params(pool.server_params)
        except ProxyError as exc:
            pool.checkin(server)
            self.listener.count_result("protocol_error")
            self.fail(exc)
            return
        pending = self._uncanonical(pool.server_params)
        if pending:
            try:
                errors = await server.run_internal(sync_sql(pending))
            except ProxyError as exc:
                pool.discard(server, CloseReason.SERVER_ERROR)
                self.fail(exc)
                return
            server.param_sig = None
            if errors:
                pool.checkin(server) if server.tx_status == _I else pool.discard(
                    server, CloseReason.SERVER_ERROR)
                err = errors[0]
                self.listener.count_result("protocol_error")
                self.fail(ProxyError(err.get("M", "invalid startup parameter"),
                                     sqlstate=err.get("C", "22023"), hint=err.get("H")))
                return
            canon = self.listener.canonical_params
            for key, value in pending.items():
                canon[(key, value)] = server.params.get(key, value)
        pool.checkin(server)
        if self.transport is not None and not self.transport.is_closing():
            self._finish_login()

    def _finish_login(self) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        assert self.pool is not None and self.transport is not None
        reported = self.pool.server_params or {}
        params = dict(reported)
        canon = self.listener.canonical_params
        for key, value in self._startup_params.items():
            params[key] = canon.get((key, value), value)
        self.params = params
        # Only what this server reports can be tracked (search_path is reported from
        # PostgreSQL 18 on); SET of anything else pins.
        self._tracked = tracked_lower(reported)
        out = [codec.parameter_status(k, v) for k, v in params.items()]
        self.key = self.listener.register_cancel_key(self)
        out.append(codec.backend_key_data(*self.key))
        out.append(codec.ready_for_query(b"I"))
        self.send(b"".join(out))
        self.state = C_IDLE
        self.idle_since = self.pool.clock()
        self.pool.clients += 1
        self.listener.count_result("accepted")
        log.debug("%r: logged in", self)
        rest = self._reader.take_rest() if self._reader else b""
        self._reader = None
        self._scram = None
        if rest:
            self._client_data(rest)

    # ------------------------------------------------------------------ admin console
    def _finish_console_login(self) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        params = {"server_version": "15.0 (poolproxy)", "server_encoding": "UTF8",
                  "client_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "UTC",
                  "integer_datetimes": "on", "standard_conforming_strings": "on",
                  "application_name": self._startup_params.get("application_name", "")}
        out = [codec.parameter_status(k, v) for k, v in params.items()]
        out.append(codec.backend_key_data(0, 0))
        out.append(codec.ready_for_query(b"I"))
        self.send(b"".join(out))
        self.state = C_IDLE
        self.listener.count_result("accepted")
        self._reader = codec.MessageReader(max_message=1 << 20)
        log.info("%r: admin console session", self)

    def _console_data(self, data: bytes) -> None:
        assert self._reader is not None
        try:
            messages = self._reader.feed(data)
        except codec.ProtocolError as exc:
            self.fail(ProtocolViolation(f"invalid message: {exc}"))
            return
        for t, body in messages:
            if t == MSG_TERMINATE:
                self.outbox.close(self.transport)
                return
            if t != MSG_QUERY:
                self.fail(FeatureNotSupported(
                    "the admin console speaks the simple query protocol only",
                    hint="use psql, or psycopg with prepare_threshold=None and simple queries"))
                return
            self._console_queue.append(codec.parse_query(body).decode("utf-8", "replace"))
        if self._console_queue and not self._console_busy:
            self._console_busy = True
            self.listener.spawn(self._run_console())

    async def _run_console(self) -> None:
        assert self._console is not None
        try:
            while self._console_queue:
                sql = self._console_queue.pop(0)
                try:
                    reply = await self._console.execute(sql)
                except ConsoleError as exc:
                    reply = codec.error_response(exc.sqlstate, str(exc))
                if self.transport is None or self.transport.is_closing():
                    return
                self.send(reply + codec.ready_for_query(b"I"))
        finally:
            self._console_busy = False

    # ------------------------------------------------------------------ hot path
    def _client_data(self, data: bytes) -> None:
        if self._console is not None:
            self._console_data(data)
            return
        try:
            events = self.scanner.feed(data)
        except codec.ProtocolError as exc:
            log.info("%r: protocol violation: %s", self, exc)
            self.fail(ProtocolViolation(f"invalid message from client: {exc}"))
            return
        if events is not None:
            data = self._inspect(data, events)
            if not data:
                return
        if self._broken:
            # The transaction this request belongs to died with its server: answer it the way
            # PostgreSQL answers a failed request — ErrorResponse at once, then discard until
            # Sync and send ReadyForQuery — instead of running it outside that transaction.
            if not self._error_sent:
                self._error_sent = True
                self.send(self._lost_reply)
            if self.pending > 0:
                self.send(codec.ready_for_query(b"I") * self.pending)
                self._broken = self._error_sent = False
                self.pending = 0
                self.unsynced = False
            return
        self.unsynced = self.scanner.last not in _SYNC_POINTS
        server = self.server
        if server is None:
            if data[:1] == b"H" and data == _FLUSH * (len(data) // 5):
                return  # a Flush with nothing outstanding has no answer: no server needed
            if self.state is C_WAITING:
                self._buffer_while_waiting(data)
                return
            pool = self.pool
            assert pool is not None
            server = pool.checkout(self)
            if server is None:
                self.state = C_WAITING
                self._buffer_while_waiting(data)
                return
            self._link(server)
        self.pool.stats.bytes_in += len(data)  # type: ignore[union-attr]
        inflight = self.inflight
        if inflight is not None:
            if len(inflight) < 64:
                inflight.append(data)
            else:
                self.inflight = None  # too much to keep: its outcome cannot be judged
        self.outbox.write(server.transport, data)

    def _buffer_while_waiting(self, data: bytes) -> None:
        # A waiting client rarely sends more (it awaits our answer), so reading is paused only
        # when it does pile up: pause/resume per wait would cost two syscalls per transaction.
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > _MAX_BUFFER_WHILE_WAITING and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _inspect(self, data: bytes, events: list[tuple[int, bytes, int]]) -> bytes:
        """Count what the client owes answers for and look for unreported session state."""
        for t, body, end in events:
            if t == MSG_QUERY:
                self.pending += 1
                self.syncs_since_exec = 0
                if self.pinned is None:
                    reason = classify(codec.parse_query(body), self._tracked)
                    if reason:
                        self._pin(reason)
            elif t == MSG_SYNC:
                if not self.copy_mode:
                    self.pending += 1
                    self.syncs_since_exec += 1
            elif t == MSG_PARSE:
                if self.pinned is None:
                    name, sql = codec.parse_parse(body)
                    if name:
                        reason = PinReason.PREPARED_STATEMENT
                    else:
                        # Parse texts repeat (placeholders, not literals): remember verdicts.
                        reason = _PARSE_VERDICTS.get(sql, _MISSING)  # type: ignore[assignment]
                        if reason is _MISSING:
                            reason = classify(sql, self._tracked)
                            if len(_PARSE_VERDICTS) >= 4096:
                                _PARSE_VERDICTS.clear()
                            _PARSE_VERDICTS[sql] = reason
                    if reason:
                        self._pin(reason)
            elif t == MSG_EXECUTE:
                self.syncs_since_exec = 0
            elif t == MSG_COPY_DONE or t == MSG_COPY_FAIL:
                if self.copy_mode:
                    self.copy_mode = False
                else:
                    # Sent without waiting for CopyInResponse (asyncpg does): the copy it
                    # ends is already over when that response arrives.
                    self.copy_ends_early += 1
            elif t == _MSG_FUNCTION_CALL:
                self.pending += 1
            elif t == MSG_TERMINATE:
                # Never forward Terminate: the server connection outlives this client.
                self.outbox.close(self.transport)
                return data[:end - 5]
        return data

    def enter_copy_in(self) -> None:
        """The server entered COPY FROM STDIN: it now ignores Sync until CopyDone/CopyFail, and
        also ignored the Syncs the client already sent after the Execute that started COPY."""
        self.pending -= self.syncs_since_exec
        self.syncs_since_exec = 0
        if self.copy_ends_early:
            self.copy_ends_early -= 1
        else:
            self.copy_mode = True

    def _pin(self, reason: str) -> None:
        self.pinned = reason
        self.listener.count_pin(reason)
        log.debug("%r: pinned to its server (%s)", self, reason)

    def _link(self, server: ServerConnection) -> None:
        self.server = server
        server.client = self
        self.state = C_ACTIVE
        self.inflight = []
        self.fresh = True
        self.answered_on_link = False
        self.xact_started = self.pool.clock()  # type: ignore[union-attr]
        # Compare the tracked parameters as one tuple; the diff loop only runs when they differ
        # (after a client changed a setting, or a server last served a client with other ones).
        sig = self.param_sig
        if sig is None:
            cp = self.params
            sig = self.param_sig = tuple([cp.get(name) for name in SYNC_PARAMS])
        if server.param_sig is not sig and server.param_sig != sig:
            sp = server.params
            diff = {name: value for name, value in zip(SYNC_PARAMS, sig, strict=True)
                    if value is not None and sp.get(name) != value}
            if diff:
                server.swallow += 1
                self.outbox.write(server.transport, codec.query(sync_sql(diff)))
                sp.update(diff)
            server.param_sig = sig

    # Waiter protocol (called by the pool)
    def on_server(self, server: ServerConnection) -> None:
        if self.state is not C_WAITING:
            raise RuntimeError("client is no longer waiting")
        self._link(server)
        buffer = self._buffer
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._buffered = 0
        self.inflight = [data]
        self.pool.stats.bytes_in += len(data)  # type: ignore[union-attr]
        self.outbox.write(server.transport, data)
        if self._paused:
            self._paused = False
            if not self._backpressured:
                self.transport.resume_reading()  # type: ignore[union-attr]

    def on_pool_error(self, exc: ProxyError) -> None:
        self._buffer.clear()
        self._buffered = 0
        self.state = C_IDLE
        log.info("%r: no server connection: %s", self, exc.message)
        self.fail(exc)

    def maybe_release(self) -> None:
        """Called on ReadyForQuery 'I' with nothing owed: give the server back if it is safe."""
        self.pending = 0
        if self.unsynced or self.copy_mode or self.scanner.in_message:
            return
        pool = self.pool
        assert pool is not None
        now = pool.clock()
        pool.transaction_done(now - self.xact_started)
        self.idle_since = now
        self._retries = 0
        if self.pinned is not None or self.session_mode:
            self.xact_started = now  # the server stays; the next transaction starts now
            return
        server = self.server
        assert server is not None
        self._resume_server()
        self.server = None
        server.client = None
        self.state = C_IDLE
        server.give_back()

    def check_statement_mode(self, status: int) -> None:
        if self.statement_mode and status != _I:
            self.fail(FeatureNotSupported(
                "transaction blocks are not allowed in statement pooling mode",
                hint="use pool_mode: transaction for this database"))

    def server_lost(self, server: ServerConnection) -> None:
        """Our server died while linked to this client.

        If what the client had in flight provably did not run (`loss_outcome`), it is replayed
        on a new server and the client never notices. Otherwise the client gets an ERROR for
        the request in flight (or for its next one, if it was idle in a transaction) and goes
        on with a new server: 08007 when the request may have been applied, else the server's
        own reason (57P01, 25P03, ...) or 08006, saying the transaction was rolled back."""
        self.server = None
        self._resume_server()
        outcome = self.loss_outcome(server, server.tx_status != _I)
        if outcome is LossOutcome.REPLAY:
            replay = self.inflight
            assert replay is not None
            log.info("%r: server connection was dead; retrying on a new one (nothing had run)",
                     self)
            self.state = C_WAITING
            self._buffer = replay
            self._buffered = sum(len(chunk) for chunk in replay)
            pool = self.pool
            assert pool is not None
            new = pool.checkout(self)
            if new is not None:
                self.on_server(new)
            return
        self.state = C_IDLE
        self.idle_since = self.listener.clock()
        self.fresh = False
        self._lost_reply = _loss_error(server, outcome)
        owed, unsynced = self.pending, self.unsynced
        if owed > 0:
            self._answer_lost(owed)
        if unsynced:
            # Extended-protocol messages ended by Flush, not Sync (asyncpg's prepare): no
            # ReadyForQuery is owed yet, but a reply is. Answer as PostgreSQL does after an
            # error: ErrorResponse now, then discard until Sync and answer it with 'Z'.
            self.send(self._lost_reply)
            self._broken = self._error_sent = True
        elif owed == 0:
            self._broken = True  # idle in transaction: the next request gets the error

    def _inflight_size(self, inflight: list[bytes]) -> int:
        return sum(len(chunk) for chunk in inflight)

    def _could_commit(self, inflight: list[bytes], in_block: bool) -> bool:
        return may_have_committed(request_effects(inflight), in_block)

    def _answer_lost(self, owed: int) -> None:
        self.send(self._lost_reply + codec.ready_for_query(b"I") * max(owed, 1))
        self.pending = 0
        self.unsynced = False
        self.copy_mode = False

    # ------------------------------------------------------------------ teardown
    def _leave_server(self, pool: Pool, server: ServerConnection) -> None:
        """The client left while linked: the server goes back only if everything the client
        sent it was answered (an unsynced Execute or a Flush batch still produces rows, which
        would reach the next client); else its state is unknown and it is closed."""
        answered = not (self.pending > 0 or self.unsynced or self.scanner.in_message
                        or self.copy_mode or server.swallow)
        if not answered:
            # Cancel what it runs (closing alone leaves the backend working until its query
            # ends), unless the client stopped mid-message: then the server waits for the rest.
            if not self.scanner.in_message:
                self.listener.spawn(self.listener.cancel_server(server))
            pool.discard(server, CloseReason.CLIENT_ABORT)
        elif server.tx_status != _I or self.pinned is not None or self.session_mode:
            self.listener.spawn(reset_server(pool, server, rollback=server.tx_status != _I,
                                             discard=self.pinned is not None or self.session_mode))
        else:
            server.give_back()


async def reset_server(pool: Pool, server: ServerConnection, *, rollback: bool, discard: bool) -> None:
    """Make a server left behind by a client clean (ROLLBACK, DISCARD ALL) and return it."""
    try:
        if rollback:
            errors = await server.run_internal("ROLLBACK")
            if errors:
                raise ServerConnectionLost(f"ROLLBACK failed: {errors[0].get('M')}")
        if discard:
            errors = await server.run_internal("DISCARD ALL")
            if errors:
                raise ServerConnectionLost(f"DISCARD ALL failed: {errors[0].get('M')}")
        if server.tx_status != _I:
            raise ServerConnectionLost("server still in a transaction after reset")
    except Exception as exc:  # whatever went wrong, the server must leave the pool
        log.info("%r: reset failed (%s); closing it", server, exc)
        pool.discard(server, CloseReason.SERVER_ERROR)
        return
    server.give_back()


def _loss_error(server: ServerConnection, outcome: LossOutcome) -> bytes:
    """The ErrorResponse for requests whose server was lost (see `server_lost`)."""
    if outcome is LossOutcome.UNKNOWN:
        return codec.error_response(
            "08007", "server connection lost before the answer arrived: the statement may or may "
            "not have been applied",
            detail="poolproxy had sent the request to the database server when the connection "
                   "broke; an autocommit statement or COMMIT may have taken effect",
            hint="check whether the change was applied before repeating it; this session "
                 "continues on a new server connection")
    words = server.last_words
    if words is not None:
        # The server's own reason, as ERROR: the client keeps its connection to poolproxy.
        return codec.error_response(
            words.get("C", "08006"), words.get("M", "server connection ended"),
            detail=words.get("D"),
            hint="the server ended its connection and the transaction was rolled back; this "
                 "session continues on a new server connection")
    err = ServerConnectionLost(
        "server connection lost: the database closed the connection during the transaction",
        hint="the transaction was rolled back; retry it")
    return codec.error_response(err.sqlstate, err.message, hint=err.hint)


def new_cancel_key() -> tuple[int, int]:
    return secrets.randbits(31), secrets.randbits(32)
