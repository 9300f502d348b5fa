"""The client half of a session, and the one owner of link, release, loss and retry.

`ClientSession` links a client to a server (`_link`), gives the server back when a transaction
ends (`_answered` -> `_release`), replays or answers what was in flight when the server dies
(`server_lost`), cleans up when the client leaves (`_disconnect`) and makes every client state
change. Protocol subclasses frame their wire and answer a few hooks (`_holds_server`,
`_left_clean`, `_answer_lost`, ...); they never write the server's fields, and servers report
to them only through the events below.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import ProtocolViolation, ProxyError, ServerConnectionLost
from ..pool import C_ACTIVE, C_CLOSED, C_IDLE, C_LOGIN, C_WAITING, S_CLOSED, CloseReason, Pool
from .outbox import outbox_for
from .reasons import ClientResult, DisconnectReason, LossOutcome, disconnect_reason_for, login_result
from .server import ServerSession
from .starttls import TlsHandshakeFailed, TlsInfo, tls_info, upgrade

if TYPE_CHECKING:
    from .listener import ListenerRuntime

log = logging.getLogger("poolproxy.session")

S = TypeVar("S", bound=ServerSession)
T = TypeVar("T")


class FutureWaiter:
    """A pool waiter whose server (or error) arrives through a future."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.wait_started = 0.0
        self.future: asyncio.Future[Any] = loop.create_future()

    def on_server(self, server: Any) -> None:
        if self.future.done():
            raise RuntimeError("waiter gone")
        self.future.set_result(server)

    def on_pool_error(self, exc: ProxyError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class ClientSession(asyncio.Protocol, Generic[S]):
    """Base of an application connection: the client half of the link, its states, and what
    happens when its server dies or it leaves."""

    __slots__ = ("_backpressured", "_broken", "_buffer", "_login_timer", "_paused", "_retries",
                 "_throttled", "_tls_handshake", "disconnect_reason", "idle_since", "key",
                 "listener", "loop", "outbox", "peer", "pending", "pinned", "pool", "server",
                 "session_mode", "state", "tls", "transport", "user", "wait_started",
                 "xact_started")

    #: Buffered while waiting for a server: what the protocol's `_send_buffered` takes.
    _buffer: list[Any]

    def __init__(self, listener: ListenerRuntime) -> None:
        self.listener = listener
        self.loop: asyncio.AbstractEventLoop = listener.loop
        self.outbox = outbox_for(self.loop)
        self.transport: asyncio.Transport | None = None
        self._throttled: S | None = None  # server whose reading we paused
        self._backpressured = False  # our reading paused because the server can't keep up
        self.state = C_LOGIN
        self.peer = "?"
        self.user = ""
        self.pool: Pool | None = None
        self.server: S | None = None
        self.pinned: enum.StrEnum | None = None  # why the client keeps its server (a protocol's PinReason)
        self.session_mode = False
        self.key = (0, 0)  # PostgreSQL cancel key (unused for MySQL)
        self.pending = 0  # answers the client is still owed
        self.wait_started = 0.0
        self.xact_started = 0.0
        self.idle_since = 0.0  # since when no request is outstanding (janitor timeouts)
        self.disconnect_reason: DisconnectReason | None = None
        self._retries = 0
        self._broken = False  # our server died inside the client's transaction
        self._buffer = []  # what a waiting client sent, for the server it will get
        self._paused = False  # reading paused: too much buffered while waiting
        self._login_timer: asyncio.TimerHandle | None = None
        #: The client's TLS (None: plaintext), and whether its handshake is running.
        self.tls: TlsInfo | None = None
        self._tls_handshake = False

    # ------------------------------------------------------------------ output
    def send(self, data: bytes) -> None:
        """Write to the client (through the outbox: in order, after the current batch)."""
        self.outbox.write(self.transport, data)

    def timed_out(self, reason: DisconnectReason, exc: ProxyError) -> None:
        """A client timeout (client_idle_timeout, idle_transaction_timeout) ends it."""
        self.disconnect_reason = reason
        self.fail(exc)

    def close_with(self, reason: DisconnectReason) -> None:
        """End the connection after what is queued for it (the first reason given sticks)."""
        if self.disconnect_reason is None:
            self.disconnect_reason = reason
        if self.transport is not None and not self.transport.is_closing():
            self.outbox.close(self.transport)

    # ------------------------------------------------------------------ login
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.listener.client_connected(self)
        self._greet()
        timeout = self.listener.config.settings.client_login_timeout
        if timeout > 0:
            self._login_timer = self.loop.call_later(timeout, self._login_timed_out)

    def _greet(self) -> None:
        """What the protocol says first (MySQL: the server greeting)."""

    def _refuse_login(self, exc: ProxyError) -> None:
        self.listener.count_result(login_result(exc))
        log.info("%r: login refused: %s", self, exc.message)
        self.fail(exc)

    async def _borrow_at_login(self, pool: Pool) -> S | None:
        """Borrow a server during login (the first client of a pool, or startup values only
        the server can check), so that a bad database or password is reported at login as a
        direct connection would; None if the login was refused."""
        try:
            server: S = await borrow(pool, self.loop)
            return server
        except ProxyError as exc:
            self._refuse_login(exc)
        except TimeoutError:
            self._refuse_login(ServerConnectionLost(
                "timed out waiting for a server connection at login"))
        return None

    @staticmethod
    def _reason_for(exc: ProxyError) -> DisconnectReason:
        return disconnect_reason_for(exc)

    # ------------------------------------------------------------------ TLS
    def _start_tls(self, context: Any, answer: bytes = b"", initial: bytes = b"") -> None:
        """Switch to TLS: write `answer` (PostgreSQL's 'S') in plaintext, then run the
        handshake (`initial`: a ClientHello already read, PostgreSQL 17's direct TLS). Reading
        pauses until it is done; `_tls_ready` continues the login."""
        transport = self.transport
        assert transport is not None
        self._tls_handshake = True
        transport.pause_reading()
        if answer:
            transport.write(answer)  # not through the outbox: it must precede the handshake
        self.listener.spawn(self._handshake(transport, context, initial))

    async def _handshake(self, transport: asyncio.Transport, context: Any,
                         initial: bytes) -> None:
        lst = self.listener
        # client_login_timeout (the login timer) ends a stalled handshake; the TLS layer's own
        # timeout is a backstop behind it (and the bound when the login timeout is off).
        timeout = (lst.config.settings.client_login_timeout or 60.0) + 5.0
        try:
            encrypted = await upgrade(transport, self, context, server_side=True,
                                      timeout=timeout, initial=initial)
        except TlsHandshakeFailed as exc:
            self._tls_handshake = False
            lst.count_tls("client", "failed")
            if self.state is C_LOGIN:
                lst.count_result(ClientResult.PROTOCOL_ERROR)
            log.info("%r: %s", self, exc)
            if self.disconnect_reason is None:
                self.disconnect_reason = DisconnectReason.PROTOCOL_ERROR
            self._disconnect()
            return
        self._tls_handshake = False
        self.transport = encrypted
        self.tls = tls_info(encrypted)
        lst.count_tls("client", "ok")
        self._tls_ready()

    def _tls_ready(self) -> None:
        """The client's TLS handshake is done; the login continues inside it."""

    def from_loopback(self) -> bool:
        """The client is on this host (passthrough's cleartext password stays on it)."""
        host = self.peer.rsplit(":", 1)[0].strip("[]")
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def peer_certificate(self) -> dict[str, Any] | None:
        """The client's verified certificate (client_tls verify-ca/verify-full), if any."""
        transport = self.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        return sslobj.getpeercert() if sslobj is not None else None

    def _login_timed_out(self) -> None:
        if self._tls_handshake:
            # Mid-handshake: nothing can be said in plaintext; the handshake fails and ends it.
            self.disconnect_reason = DisconnectReason.LOGIN_TIMEOUT
            if self.transport is not None:
                self.transport.close()
            return
        if self.state is C_LOGIN:
            self.listener.count_result(ClientResult.PROTOCOL_ERROR)
            self._fail_login_timeout()

    def _fail_login_timeout(self) -> None:
        raise NotImplementedError

    def _login_timeout_error(self, mysql_errno: int | None = None) -> ProxyError:
        """client_login_timeout, with the reason when the wait was for a server that could not
        be opened (a database that is down says so, not just "timed out")."""
        message = "client_login_timeout: login not completed in time"
        error = self.pool.last_login_error if self.pool is not None else None
        if error is not None:
            message += f"; opening a server connection failed: {error.message}"
        return ProtocolViolation(message, mysql_errno=mysql_errno)

    def _logged_in(self) -> None:
        """Login is complete: the client is idle between transactions from now on (admin
        console sessions have no pool)."""
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        self.state = C_IDLE
        pool = self.pool
        if pool is not None:
            self.idle_since = pool.clock()
            pool.clients += 1
        self.listener.count_result(ClientResult.ACCEPTED)

    # ------------------------------------------------------------------ getting a server
    def _checkout(self) -> S | None:
        """A request needs a server: link one that is free, or start waiting for one."""
        pool = self.pool
        assert pool is not None
        server: S | None = pool.checkout(self)
        if server is None:
            self.state = C_WAITING
            return None
        self._link(server)
        return server

    def _request_server(self) -> None:
        """What the client sent waits in `_buffer`; get it a server, now or when one is free
        (the pool then calls `on_server`)."""
        pool = self.pool
        assert pool is not None
        self.state = C_WAITING
        server: S | None = pool.checkout(self)
        if server is not None:
            self.on_server(server)

    def on_server(self, server: S) -> None:
        """The pool hands a waiting client a server (waiter protocol)."""
        if self.state is not C_WAITING:
            raise RuntimeError("client is no longer waiting")
        self._prepare_server(server)

    def _prepare_server(self, server: S) -> None:
        """Bring `server` to this client's session state, then `attach` it (MySQL replays its
        session variables first, asynchronously)."""
        self.attach(server)

    def attach(self, server: S) -> None:
        """Link `server` and send it what the client sent while it waited."""
        self._link(server)
        buffered, self._buffer = self._buffer, []
        self._send_buffered(server, buffered)
        if self._paused:
            self._paused = False
            if not self._backpressured and self.transport is not None:
                self.transport.resume_reading()

    def _sync_failed(self, server: S, exc: ProxyError) -> None:
        """Bringing `server` to this client's session state failed. Nothing of the client's
        request was sent: drop the server and try another, or give up with an error."""
        pool = self.pool
        assert pool is not None
        pool.discard(server, CloseReason.SYNC_FAILED)
        if self.state is not C_WAITING:
            return
        if self._may_retry():
            new = pool.checkout(self)
            if new is not None:
                self.on_server(new)
            return
        self._buffer.clear()
        self.state = C_IDLE
        self.fail(exc, fatal=False)

    def _link(self, server: S) -> None:
        pool = self.pool
        assert pool is not None
        self.server = server
        server.client = self
        server.sent = []
        server.replied = server.answered = False
        self.state = C_ACTIVE
        self.xact_started = pool.clock()
        self._synchronize(server)

    def _synchronize(self, server: S) -> None:
        """Bring the server's session settings to the client's (PostgreSQL: parameters)."""

    def _send_buffered(self, server: S, buffered: list[Any]) -> None:
        raise NotImplementedError

    def on_pool_error(self, exc: ProxyError) -> None:
        """No server for this waiting client (query_wait_timeout, the database refused us)."""
        self._buffer.clear()
        self.state = C_IDLE
        log.info("%r: no server connection: %s", self, exc.message)
        self.fail(exc)

    def fail(self, exc: ProxyError, fatal: bool = True) -> None:
        """Send `exc` to the client; fatal errors end the connection."""
        raise NotImplementedError

    # ------------------------------------------------------------------ server events
    # What a linked server reports; the protocol's client answers (never the server itself).
    def on_ready(self, status: int, count: int) -> None:
        """PostgreSQL: `count` ReadyForQuery answered the client's sync points; `status` is
        the last one's transaction status."""
        raise NotImplementedError

    def on_parameter(self, name: str, value: str) -> None:
        """PostgreSQL: the server reported a parameter (ParameterStatus)."""
        raise NotImplementedError

    def on_copy_in(self) -> None:
        """PostgreSQL: the server entered COPY FROM STDIN."""
        raise NotImplementedError

    def prepared_count(self) -> int:
        """The client's prepared statements that poolproxy keeps for it (SHOW CLIENTS)."""
        return 0

    def statement_name(self, server_name: bytes) -> bytes | None:
        """PostgreSQL: the client's own name for the prepared statement the server calls
        `server_name` (for the server's error messages); None if it has none."""
        return None

    def on_statements_discarded(self) -> None:
        """PostgreSQL: DISCARD ALL or DEALLOCATE ALL ran: the session has no prepared
        statements left."""

    def on_response_end(self, status: int | None, ok: bool) -> None:
        """MySQL: the response to the client's command ended (`status`: its final status
        flags, None if it carried none; `ok`: it was not an ERR)."""
        raise NotImplementedError

    def on_infile(self) -> None:
        """MySQL: the server asks the client for a LOCAL INFILE's contents."""
        raise NotImplementedError

    # ------------------------------------------------------------------ release
    def _answered(self, in_transaction: bool) -> None:
        """Everything the client sent has been answered. Between transactions the server goes
        back to the pool, unless something holds it (a pin, session mode, a half-sent message,
        COPY, an unsynced pipeline, LOCAL INFILE)."""
        pool = self.pool
        server = self.server
        assert pool is not None and server is not None
        now = pool.clock()
        self.idle_since = now
        if in_transaction or self._holds_server() or server.requests:
            return
        self._retries = 0
        pool.transaction_done(now - self.xact_started)
        if self.pinned is not None or self.session_mode:
            self.xact_started = now  # the server stays; the next transaction starts now
            return
        self._release(now)

    def _holds_server(self) -> bool:
        """Protocol state that keeps the server although nothing is owed."""
        return False

    def _release(self, now: float | None = None) -> None:
        server = self.server
        assert server is not None
        if self._throttled is not None:
            self._resume_server()
        self.server = None
        server.client = None
        self.state = C_IDLE
        if server.cancels_in_flight or server.cancel_unconfirmed:
            server.give_back(now)
        else:
            server.pool.checkin(server, now)

    # ------------------------------------------------------------------ loss
    def server_lost(self, server: S) -> None:
        """Our server died while linked. If what was in flight provably did not run, it is
        replayed on a new server and the client never notices; otherwise the client hears
        whether it may have been applied (`_answer_lost`) and goes on with a new server."""
        self.server = None
        self._resume_server()
        outcome, inflight = self._loss_outcome(server)
        if outcome is LossOutcome.REPLAY:
            log.info("%r: server connection was dead; retrying on a new one (nothing had run)",
                     self)
            self.state = C_WAITING
            self._buffer = self._to_replay(inflight)
            pool = self.pool
            assert pool is not None
            new = pool.checkout(self)
            if new is not None:
                self.on_server(new)
            return
        self.state = C_IDLE
        self.idle_since = self.listener.clock()
        self._answer_lost(server, outcome)

    def _loss_outcome(self, server: S) -> tuple[LossOutcome, list[Any]]:
        """May what was in flight on the lost `server` be replayed elsewhere, is its outcome
        unknown, or did it certainly not take effect?

        A replay needs positive evidence that nothing of it took effect: none of its bytes
        left poolproxy, or the server's first reply was its own "going away", or it cannot
        have committed anything (core/effects.py); and the client must not have seen a reply
        byte nor have state on this server. "No reply yet" is no evidence."""
        inflight = server.sent
        in_block = server.in_transaction()
        if inflight is None:
            applied = True  # too much was in flight to tell
        elif not inflight:
            applied = False
        elif server.unsent >= self._inflight_size(inflight) or server.gone_first:
            applied = False  # it never reached the server, or the server refused it first
        else:
            applied = self._could_commit(inflight, in_block)
        log.debug("%r: lost %r with %s in flight (in block %s, unsent %d, gone first %s, "
                  "replied %s, answered %s): %s; last %r", self, server,
                  "?" if inflight is None else len(inflight), in_block, server.unsent,
                  server.gone_first, server.replied, server.answered,
                  "applied?" if applied else "not applied",
                  bytes(inflight[-1][:100]) if inflight else b"")
        if applied:
            return LossOutcome.UNKNOWN, inflight or []
        if inflight and not server.replied and not server.answered and not in_block \
                and self.state is C_ACTIVE and self._may_retry():
            return LossOutcome.REPLAY, inflight
        return LossOutcome.NOT_APPLIED, inflight or []

    def _inflight_size(self, inflight: list[Any]) -> int:
        raise NotImplementedError

    def _could_commit(self, inflight: list[Any], in_block: bool) -> bool:
        raise NotImplementedError

    def _to_replay(self, inflight: list[Any]) -> list[Any]:
        """What was sent to the lost server, as this protocol's waiting buffer."""
        return list(inflight)

    def _answer_lost(self, server: S, outcome: LossOutcome) -> None:
        raise NotImplementedError

    def _may_retry(self) -> bool:
        """A request that provably did not run may go to another server. When the database
        dropped all pooled connections at once, the next idle one may be dead too: allow
        enough tries to reach a fresh connection, but never loop."""
        pool = self.pool
        limit = (pool.settings.pool_size + 2) if pool is not None else 1
        if self._retries >= limit:
            return False
        self._retries += 1
        return True

    # ------------------------------------------------------------------ leaving
    def connection_lost(self, exc: Exception | None) -> None:
        self._resume_server()
        self._disconnect()

    def _disconnect(self) -> None:
        if self.state is C_CLOSED:
            return
        was = self.state
        self.state = C_CLOSED
        reason = self.disconnect_reason or DisconnectReason.CLIENT_EOF
        self.disconnect_reason = reason
        if self._login_timer is not None:
            self._login_timer.cancel()
        self.listener.client_disconnected(self, reason)
        log.debug("%r: disconnected (%s)", self, reason.value)
        pool = self.pool
        if pool is None:
            return
        if was is C_WAITING:
            pool.cancel_wait(self)
        if was is not C_LOGIN:
            pool.clients -= 1
            if not pool.clients:
                pool.clients_gone_at = pool.clock()
        server = self.server
        if server is None:
            return
        self.server = None
        server.client = None
        if server.state is S_CLOSED:
            pool.discard(server, server.close_reason or CloseReason.SERVER_CLOSED)
        elif not self._left_clean(server):
            # The server is mid-request for a client that is gone: its state is unknown, and
            # what it still sends must never reach another client. Cancel what it runs
            # (closing alone leaves the backend working until its query ends), then close.
            if self._cancel_on_abort():
                self.listener.spawn(self.listener.cancel(server))
            pool.discard(server, CloseReason.CLIENT_ABORT)
        elif server.in_transaction() or self.pinned is not None or self.session_mode:
            self.listener.spawn(server.reset_and_return(
                hold=self.pinned is not None or self.session_mode))
        else:
            server.give_back()

    def _left_clean(self, server: S) -> bool:
        """The client left with everything it sent answered (its server may be reused)."""
        return not server.requests and self.pending <= 0

    def _cancel_on_abort(self) -> bool:
        """Whether a server left mid-request gets a cancel before it is closed."""
        return False

    # ------------------------------------------------------------------ backpressure
    # While this client's socket is over its write high-water mark, stop reading from its
    # server, so a client that does not read never makes us buffer a whole result.
    def pause_writing(self) -> None:
        server = self.server
        if server is not None and server.transport is not None:
            self._throttled = server
            server.transport.pause_reading()

    def resume_writing(self) -> None:
        self._resume_server()

    def _resume_server(self) -> None:
        server = self._throttled
        if server is not None:
            self._throttled = None
            if server.transport is not None and not server.transport.is_closing():
                server.transport.resume_reading()

    def throttled_by_server(self, on: bool) -> None:
        """Our server's socket is full (on) or drained (off): stop or resume reading."""
        self._backpressured = on
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if on:
            transport.pause_reading()
        elif not self._paused:
            transport.resume_reading()


async def run_on_server(pool: Pool, loop: asyncio.AbstractEventLoop,
                        work: Callable[[Any], Awaitable[T]]) -> T:
    """Borrow a server of `pool`, run `work(server)` on it (an internal exchange while it is
    unlinked), and give it back; a server whose exchange failed is closed."""
    server = await borrow(pool, loop)
    try:
        result = await work(server)
    except BaseException:
        pool.discard(server, CloseReason.CHECK_FAILED)
        raise
    if server.reusable():
        pool.checkin(server)
    else:
        pool.discard(server, CloseReason.NOT_CLEAN)
    return result


async def borrow(pool: Pool, loop: asyncio.AbstractEventLoop) -> Any:
    """Check a server out from a coroutine (login-time work); raises ProxyError/TimeoutError."""
    waiter = FutureWaiter(loop)
    server = pool.checkout(waiter)
    if server is not None:
        return server
    try:
        return await asyncio.wait_for(waiter.future, pool.settings.query_wait_timeout or None)
    except TimeoutError:
        pool.cancel_wait(waiter)
        raise
