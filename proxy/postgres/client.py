"""A PostgreSQL client session once logged in: the client -> server hot path.

A request borrows a server (core/session.py links it); the server's ReadyForQuery events come
back through `on_ready`, and core's `_answered` decides release. This module only knows the
PostgreSQL side of it: which messages are sync points (each owes a ReadyForQuery, one batch of
the server's request queue), what keeps a server although nothing is owed (COPY, a half-sent
message, an unsynced pipeline), what pins a client, and how a lost request is answered.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.effects import may_have_committed
from ..core.reasons import DisconnectReason, LossOutcome
from ..core.requests import PLAIN_BATCH
from ..errors import FeatureNotSupported, ProtocolViolation, ServerConnectionLost
from ..pool import C_WAITING
from . import codec
from .codec import (
    MSG_COPY_DONE,
    MSG_COPY_FAIL,
    MSG_EXECUTE,
    MSG_FLUSH,
    MSG_PARSE,
    MSG_QUERY,
    MSG_SYNC,
    MSG_TERMINATE,
)
from .login import ClientLogin
from .params import SYNC_PARAMS, sync_sql
from .prepared import NAME_PREFIX, ClientStatements, Frame, Framer, Router, statement_registry
from .retry import request_effects
from .server import ServerConnection
from .statements import PinReason, classify

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
_E = 0x45  # ReadyForQuery status 'E': in a failed transaction block
_NOWHERE: list[Any] = []
_MAX_BUFFER_WHILE_WAITING = 256 * 1024
_PARSE_VERDICTS: dict[bytes, PinReason | None] = {}
_FLUSH = codec.message(b"H")
_MISSING: Any = object()


class ClientConnection(ClientLogin):
    """One application connection to a PostgreSQL listener."""

    __slots__ = ("_buffered", "_buffered_syncs", "_early_copy_ends", "_error_sent", "_framer",
                 "_last", "_lost_reply", "_routed", "_routed_for", "copy_mode", "param_sig",
                 "router", "scanner", "syncs_since_exec", "unsynced")

    _buffer: list[Any]

    def __init__(self, listener: Any) -> None:
        super().__init__(listener)
        #: The tracked parameter values as a tuple (None: recompute after a change).
        self.param_sig: tuple[str | None, ...] | None = None
        self.unsynced = False  # extended-protocol messages sent after the last Sync
        self.copy_mode = False
        self.syncs_since_exec = 0  # Syncs sent since the last Execute (or Query)
        #: For each CopyDone/CopyFail sent before the server's CopyInResponse (asyncpg does),
        #: the Syncs sent between its Execute and it: the server ignores those.
        self._early_copy_ends: list[int] = []
        self._error_sent = False
        self._lost_reply = b""  # the ErrorResponse for requests whose server was lost
        self._buffered = 0
        self._buffered_syncs = 0  # sync points in what waits in _buffer
        self.scanner = codec.MessageScanner(_FRONTEND_INTERESTING, keep_body=(MSG_QUERY, MSG_PARSE),
                                            max_body=_MAX_ANALYSED,
                                            transparent=(MSG_FLUSH, MSG_TERMINATE))
        #: Renames this client's prepared statements for its servers (None: off, or the
        #: client's statement names go to its server as they are: session mode, or pinned).
        self.router: Router | None = None
        #: Whole messages for the router, for chunks it must see (made on first need).
        self._framer: Framer | None = None
        #: What was routed since everything before was answered (plain chunks as bytes, routed
        #: ones as frames), for a replay elsewhere; `_routed_for` is the server record it
        #: goes with (ServerSession.sent).
        self._routed: list[bytes | list[Frame] | tuple[bytes]] = []
        self._routed_for: list[Any] | None = _NOWHERE
        self._last = -1  # with the framer: the type of the last message (Flush aside)

    def _logged_in(self) -> None:
        super()._logged_in()
        pool = self.pool
        if pool is not None and pool.settings.max_prepared_statements > 0 \
                and not self.session_mode:
            registry = statement_registry(pool)
            self.router = Router(ClientStatements(registry), registry)

    # ------------------------------------------------------------------ hot path
    def _client_data(self, data: bytes) -> None:
        if self._framer is not None:
            self._framed_data(data)
            return
        scanner = self.scanner
        try:
            events = scanner.feed(data)
        except codec.ProtocolError as exc:
            log.info("%r: protocol violation: %s", self, exc)
            self.fail(ProtocolViolation(f"invalid message from client: {exc}"))
            return
        if self.router is not None and self._needs_router(data, events):
            # From now on every chunk goes through the router, cut into whole messages (this
            # one starts a message: every chunk before it ended where a message did).
            self._framer = Framer()
            self._last = scanner.last
            self._framed_data(data)
            return
        syncs = 0
        if events is not None:
            before = self.pending
            end = self._inspect(events, 0)
            syncs = self.pending - before
            if end >= 0:
                data = data[:events[end][2] - 5]
                if not data:
                    return
        if self._broken:
            self._answer_broken()
            return
        self.unsynced = scanner.last not in _SYNC_POINTS
        server = self.server
        if server is None:
            if data[:1] == b"H" and data == _FLUSH * (len(data) // 5):
                return  # a Flush with nothing outstanding has no answer: no server needed
            if self.state is not C_WAITING:
                server = self._checkout()
            if server is None:
                self._buffer_while_waiting(data, syncs)
                return
        requests = server.requests
        if syncs == 1 and not requests and not self.unsynced:
            requests.append(PLAIN_BATCH)  # the usual case, without a call
        else:
            requests.sent(syncs, self.unsynced)
        server.forward(data)

    def _needs_router(self, data: bytes, events: list[tuple[int, bytes, int]] | None) -> bool:
        """Whether this chunk must go through the router: it prepares a named statement (until
        then a client has no statement names, and the server answers its Bind, Describe or
        Close of one as a direct one would), names one of poolproxy's own, or leaves a message
        or a batch unfinished (a later chunk's statements may need the batch tracked message by
        message). Until then chunks go out as they are."""
        scanner = self.scanner
        if self.unsynced or scanner.in_message or scanner.last not in _SYNC_POINTS \
                or NAME_PREFIX in data:
            return True
        if events is not None:
            for t, body, _ in events:
                if t == MSG_PARSE and body[:1] != b"\x00":
                    return True
        return False

    def _framed_data(self, data: bytes) -> None:
        """A chunk of a client whose chunks go through the router (see `_needs_router`): cut
        into whole messages (a message that names a statement is held until it is whole)."""
        framer = self._framer
        assert framer is not None
        if data[:1] == b"B" and not framer.in_message and not self._broken and not self.copy_mode \
                and self._bind_execute_sync(data):
            return
        try:
            frames = framer.feed(data)
        except ValueError as exc:
            log.info("%r: protocol violation: %s", self, exc)
            self.fail(ProtocolViolation(f"invalid message from client: {exc}"))
            return
        if not frames:
            return
        copy_mode = self.copy_mode
        end = self._inspect(frames, 5)
        if end >= 0:
            frames = frames[:end]
        last = self._last
        for t, _, _ in frames:
            if t >= 0 and t != MSG_FLUSH:
                last = t
        self._last = last
        if not frames:
            return
        if self._broken:
            self._answer_broken()
            return
        self.unsynced = last not in _SYNC_POINTS
        server = self.server
        if server is None:
            if all(f[0] == MSG_FLUSH for f in frames):
                return
            if self.state is not C_WAITING:
                server = self._checkout()
            if server is None:
                self._buffer_while_waiting(frames, 0, len(data))
                return
        self._route(server, frames, copy_mode)

    def _bind_execute_sync(self, data: bytes) -> bool:
        """The usual execution of a prepared statement (Bind, Execute, Sync in one chunk) on a
        server that has it: renamed without framing. False: not that case, nothing done."""
        server = self.server
        if server is None:
            if self.state is C_WAITING:
                return False
            server = self._checkout()
            if server is None:  # waits: the general path buffers it
                return False
        router = self.router
        assert router is not None
        payload = router.bind_execute_sync(data, server.statements, server.requests)
        if payload is None:
            return False
        self.pending += 1
        self.syncs_since_exec = 1
        self._last = MSG_SYNC
        self.unsynced = False
        self._record_routed(server, (data,))  # the client's own bytes: routed again on a replay
        server.forward(payload)
        return True

    def _route(self, server: ServerConnection, frames: list[Frame], copy_mode: bool) -> None:
        router = self.router
        assert router is not None and self.pool is not None
        requests = server.requests
        try:
            payload, now = router.route(
                frames, server.statements, requests, self.pool.settings.max_prepared_statements,
                server.tx_status == _E and not requests, copy_mode)
        except ValueError as exc:  # a malformed Parse, Bind, Describe or Close
            log.info("%r: protocol violation: %s", self, exc)
            self.fail(ProtocolViolation(f"invalid message from client: {exc}"))
            return
        self._record_routed(server, frames)
        if now:
            server.replied = True
            self.send(now[0] if len(now) == 1 else b"".join(now))
        if payload:
            server.forward(payload)

    def _record_routed(self, server: ServerConnection, item: list[Frame] | tuple[bytes]) -> None:
        """What the client sent that the router rewrote, kept for a replay on another server
        (alongside the plain chunks in `server.sent`) until everything is answered."""
        sent = server.sent
        if sent is not None:
            if self._routed_for is not sent:
                self._routed = list(sent)  # plain chunks sent since all was answered
                self._routed_for = sent
            self._routed.append(item)

    def _mid_message(self) -> bool:
        """The client stopped in the middle of a message."""
        framer = self._framer
        return framer.in_message if framer is not None else self.scanner.in_message

    def _answer_broken(self) -> None:
        """The transaction this request belongs to died with its server: answer it the way
        PostgreSQL answers a failed request — ErrorResponse at once, then discard until Sync
        and send ReadyForQuery — instead of running it outside that transaction."""
        if not self._error_sent:
            self._error_sent = True
            self.send(self._lost_reply)
        if self.pending > 0:
            self.send(codec.ready_for_query(b"I") * self.pending)
            self._broken = self._error_sent = False
            self.pending = 0
            self.unsynced = False

    def _buffer_while_waiting(self, data: bytes | list[Frame], syncs: int,
                              size: int = -1) -> None:
        # A waiting client rarely sends more (it awaits our answer), so reading is paused only
        # when it does pile up: pause/resume per wait would cost two syscalls per transaction.
        self._buffer.append(data)
        self._buffered += len(data) if size < 0 else size
        self._buffered_syncs += syncs
        if self._buffered > _MAX_BUFFER_WHILE_WAITING and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _inspect(self, messages: list[tuple[int, bytes, int]], skip: int) -> int:
        """Count what the client owes answers for and look for unreported session state, in
        scanner events (`skip` 0: bodies) or frames (`skip` 5: whole messages). Returns the
        index of a Terminate (-1: none): what follows it is dropped."""
        for message in messages:
            t, body, _ = message
            if t == MSG_QUERY:
                self.pending += 1
                self.syncs_since_exec = 0
                if self.pinned is None:
                    reason = classify(codec.parse_query(body[skip:]), self._tracked)
                    if reason:
                        self._pin(reason)
            elif t == MSG_SYNC:
                if not self.copy_mode:
                    self.pending += 1
                    self.syncs_since_exec += 1
            elif t == MSG_PARSE:
                if self.pinned is None:
                    name, sql = codec.parse_parse(body[skip:])
                    if name and self.router is None and not self.session_mode:
                        reason = PinReason.PREPARED_STATEMENT
                    else:
                        # Parse texts repeat (placeholders, not literals): remember verdicts.
                        reason = _PARSE_VERDICTS.get(sql, _MISSING)
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
                    self._early_copy_ends.append(self.syncs_since_exec)
                    self.syncs_since_exec = 0
            elif t == _MSG_FUNCTION_CALL:
                self.pending += 1
            elif t == MSG_TERMINATE:
                # Never forward Terminate: the server connection outlives this client.
                self.close_with(DisconnectReason.CLIENT_CLOSE)
                return messages.index(message)
        return -1

    def _pin(self, reason: PinReason) -> None:
        self.pinned = reason
        self.listener.count_pin(reason.value)
        log.debug("%r: pinned to its server (%s)", self, reason.value)

    # ------------------------------------------------------------------ the link
    def _synchronize(self, server: ServerConnection) -> None:
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
                server.sync_parameters(sync_sql(diff))
                sp.update(diff)
            server.param_sig = sig

    def _send_buffered(self, server: ServerConnection, buffered: list[Any]) -> None:
        syncs = self._buffered_syncs
        self._buffered = self._buffered_syncs = 0
        if any(type(item) is not bytes for item in buffered):
            # Routed chunks among them (frames, or a fast-path chunk as a 1-tuple): route all
            # (plain chunks are whole messages).
            frames: list[Frame] = []
            fresh = Framer()
            for item in buffered:
                if type(item) is list:
                    frames.extend(item)
                else:
                    frames.extend(fresh.feed(item[0] if type(item) is tuple else item))
            self._route(server, frames, False)
            return
        data = buffered[0] if len(buffered) == 1 else b"".join(buffered)
        server.requests.sent(syncs, self.unsynced)
        server.forward(data)

    # ------------------------------------------------------------------ server events
    def on_ready(self, status: int, count: int) -> None:
        self.pending -= count
        if self.pending > 0:
            return
        self.pending = 0
        if status != _I and self.statement_mode:
            self.fail(FeatureNotSupported(
                "transaction blocks are not allowed in statement pooling mode",
                hint="use pool_mode: transaction for this database"))
            return
        self._answered(status != _I)

    def on_parameter(self, name: str, value: str) -> None:
        # Copy on write: clients with the same parameters share one dict (login.py).
        if self.params.get(name) != value:
            self.params = {**self.params, name: value}
        self.param_sig = None

    def on_copy_in(self) -> None:
        """The server entered COPY FROM STDIN: it ignores Sync until CopyDone/CopyFail, so the
        Syncs the client sent after the Execute that started COPY (and before its CopyDone, if
        that went out already) get no answer."""
        if self._early_copy_ends:
            ignored = self._early_copy_ends.pop(0)
        else:
            ignored = self.syncs_since_exec
            self.syncs_since_exec = 0
            self.copy_mode = True
        self.pending -= ignored
        server = self.server
        if server is not None:
            server.requests.ignore_syncs(ignored)

    def _holds_server(self) -> bool:
        return self.unsynced or self.copy_mode or self._mid_message()

    # ------------------------------------------------------------------ loss
    def _inflight_size(self, inflight: list[bytes]) -> int:
        return sum(len(chunk) for chunk in inflight)

    def _could_commit(self, inflight: list[bytes], in_block: bool) -> bool:
        known = self.router.registry.query_of if self.router is not None else None
        return may_have_committed(request_effects(inflight, known), in_block)

    def _to_replay(self, inflight: list[bytes]) -> list[Any]:
        self._buffered = sum(len(chunk) for chunk in inflight)
        self._buffered_syncs = self.pending  # every sync point sent is still owed
        if self._routed_for is inflight:
            # Routed chunks were among them: replay what the client sent, for the router to
            # prepare its statements on the new server.
            routed, self._routed, self._routed_for = self._routed, [], _NOWHERE
            return routed
        return list(inflight)

    def prepared_count(self) -> int:
        return len(self.router.client) if self.router is not None else 0

    def statement_name(self, server_name: bytes) -> bytes | None:
        return self.router.client.name_of(server_name) if self.router is not None else None

    def on_statements_discarded(self) -> None:
        if self.router is not None:
            self.router.client.clear()

    def _disconnect(self) -> None:
        super()._disconnect()
        if self.router is not None:
            self.router.client.clear()

    def _answer_lost(self, server: ServerConnection, outcome: LossOutcome) -> None:
        """Answer what was in flight: an ERROR for the request (or for the client's next one,
        if it was idle in a transaction); 08007 when it may have been applied, else the
        server's own reason (57P01, 25P03, ...) or 08006, saying the transaction was rolled
        back. The client goes on with a new server."""
        self._lost_reply = _loss_error(server, outcome)
        owed, unsynced = self.pending, self.unsynced
        if owed > 0:
            self.send(self._lost_reply + codec.ready_for_query(b"I") * owed)
            self.pending = 0
            self.unsynced = False
            self.copy_mode = False
        if unsynced:
            # Extended-protocol messages ended by Flush, not Sync (asyncpg's prepare): no
            # ReadyForQuery is owed yet, but a reply is. Answer as PostgreSQL does after an
            # error: ErrorResponse now, then discard until Sync and answer it with 'Z'.
            self.send(self._lost_reply)
            self._broken = self._error_sent = True
        elif owed == 0:
            self._broken = True  # idle in transaction: the next request gets the error

    # ------------------------------------------------------------------ leaving
    def _left_clean(self, server: ServerConnection) -> bool:
        # An unsynced Execute or a Flush batch still produces rows, which would reach the next
        # client; a half-sent message or COPY leaves the server waiting for more.
        return not (self.pending > 0 or self.unsynced or self._mid_message()
                    or self.copy_mode or server.requests)

    def _cancel_on_abort(self) -> bool:
        # A client that stopped mid-message has not started anything: the server waits.
        return not self._mid_message()


def _loss_error(server: ServerConnection, outcome: LossOutcome) -> bytes:
    """The ErrorResponse for requests whose server was lost (see `_answer_lost`)."""
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
