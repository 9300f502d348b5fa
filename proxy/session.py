"""What client and server sessions of both protocols share: the asyncio plumbing around them.

`ServerSession`: message inbox for login/internal queries, the idle watch, connection loss,
backpressure toward the linked client, close with a reason, connect+login with timeouts.
`ClientSession`: backpressure toward the linked server. `FutureWaiter`: borrow a server from a
pool from a coroutine. The protocol modules add framing and what their wire needs.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ProtocolViolation, ProxyError, ServerConnectionLost, ServerUnavailable
from .outbox import outbox_for
from .pool import (
    C_ACTIVE,
    C_CLOSED,
    C_LOGIN,
    C_WAITING,
    S_CLOSED,
    S_IDLE,
    S_LOGIN,
    CloseReason,
    Pool,
    ServerState,
)

log = logging.getLogger("poolproxy.session")


class LossOutcome(enum.Enum):
    """What a lost server means for the requests the client had in flight on it."""

    REPLAY = "replay"  # provably did not run: send them to another server
    NOT_APPLIED = "not_applied"  # did not take effect (or were rolled back): say so
    UNKNOWN = "unknown"  # may or may not have taken effect: SQLSTATE 08007 / MySQL 2013

S = TypeVar("S", bound="ServerSession")


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


class ServerSession(asyncio.Protocol):
    """Base of a connection from poolproxy to a database server."""

    #: Bytes that tell the server we are leaving (Terminate / COM_QUIT).
    GOODBYE = b""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.outbox = outbox_for(loop)
        self.transport: asyncio.Transport | None = None
        self.state = S_LOGIN
        self.client: Any = None
        now = pool.clock()
        self.created_at = now
        self.last_used = now
        self.expires_at = pool.lifetime_deadline(now)
        self.close_reason: CloseReason | None = None
        self._throttled_client: Any = None
        self._inbox: deque[tuple[int, bytes]] = deque()
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        #: At-most-once evidence, set when the connection is lost: bytes written to it that
        #: never left poolproxy, and whether the server's first reply to the requests in
        #: flight was its own "going away" (FATAL 57P01 / ERR 1927 ...), so none of them ran.
        self.unsent = 0
        self.gone_first = False
        self._refused = 0  # bytes write() refused because the connection was closed

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _frame(self, data: bytes) -> list[tuple[int, bytes]] | None:
        """Whole messages of an internal exchange; None when none is running (idle)."""
        raise NotImplementedError

    def _unlinked_data(self, data: bytes) -> None:
        try:
            messages = self._frame(data)
        except ValueError as exc:  # the codecs' ProtocolError
            self._lost = exc
            self.close(CloseReason.SERVER_ERROR)
            return
        if messages is None:
            # Idle in the pool: a server has nothing to say unless it is going away (FATAL on
            # idle_session_timeout or terminate; MySQL's ERR 4031 on wait_timeout).
            log.info("%r: unsolicited data from idle server; closing it", self)
            self.pool.remove_idle(self, CloseReason.SERVER_ERROR)
            return
        if messages:
            self._inbox.extend(messages)
            self._wake()

    def _wake(self) -> None:
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lost_now(self, gone_first: bool = False) -> None:
        """The server announced it is going away (or was found closed): close it and handle the
        loss right now, so no client byte is written to it in between. `gone_first`: its
        announcement was the first reply to the requests in flight."""
        if self._lost is not None:
            return
        was = self.state
        self._take_back_unsent()  # before close() flushes the outbox
        self.gone_first = gone_first
        self.close(CloseReason.SERVER_ERROR)
        self._handle_loss(ConnectionResetError("server is going away"), was)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is None:
            self._take_back_unsent()
        self._handle_loss(exc or ConnectionResetError("server closed the connection"), self.state)

    def _take_back_unsent(self) -> None:
        if self.transport is not None:
            self.unsent = self.outbox.discard(self.transport) + self._refused

    def _handle_loss(self, exc: BaseException, was: ServerState) -> None:
        if self._lost is not None:
            return  # handled already (lost_now, then the transport's own callback)
        self._lost = exc
        self.state = S_CLOSED
        self._wake()
        client = self.client
        if client is not None:
            self.client = None
            self.pool.discard(self, CloseReason.SERVER_ERROR)  # first: frees the pool slot
            client.server_lost(self)
        elif was is S_IDLE:
            self.pool.remove_idle(self, CloseReason.SERVER_ERROR)

    # Backpressure: while this server's socket is full, stop reading from its client.
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

    def reusable(self) -> bool:
        """What the server itself can tell about being clean (the pool's last guard): idle,
        outside any transaction, owing no reply. Protocols refine it."""
        return True

    # ------------------------------------------------------------------ control
    def write(self, data: bytes) -> None:
        transport = self.transport
        if self._lost is not None or transport is None or transport.is_closing():
            self._refused += len(data)
            raise ServerConnectionLost("server connection lost: the connection is closed")
        self.outbox.write(transport, data)

    def close(self, reason: CloseReason) -> None:
        if self.state is S_CLOSED:
            return
        log.debug("%r: closing (%s)", self, reason.value)
        self.close_reason = reason
        self.state = S_CLOSED
        if self.transport is not None:
            if self.GOODBYE and not self.transport.is_closing():
                self.outbox.write(self.transport, self.GOODBYE)
            self.outbox.close(self.transport)

    async def _next(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next whole message of a login or internal exchange."""
        while not self._inbox:
            if self._lost is not None or self.state is S_CLOSED:
                raise ServerConnectionLost(f"server connection lost: {self._lost}")
            self._inbox_waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(self._inbox_waiter, timeout)
            finally:
                self._inbox_waiter = None
        return self._inbox.popleft()

    async def _login(self) -> None:
        raise NotImplementedError

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


async def open_transport(factory: Callable[[], asyncio.BaseProtocol], host: str,
                         port: int) -> asyncio.BaseTransport:
    """Connect to `host`:`port` over TCP, or to the Unix-domain socket `host` if it is a path
    (config.ServerAddress.target)."""
    loop = asyncio.get_running_loop()
    if host.startswith("/"):
        transport, _ = await loop.create_unix_connection(factory, host)
    else:
        transport, _ = await loop.create_connection(factory, host, port)
    return transport


async def connect_and_login(factory: Callable[[], S], host: str, port: int,
                            timeout: float) -> S:
    """Open a connection (TCP, or a Unix socket if `host` is a path) with `factory`'s protocol
    and log in; raise ServerUnavailable / ServerLoginError with a message that says what to
    check."""
    server = factory()
    try:
        await asyncio.wait_for(open_transport(lambda: server, host, port), timeout)
    except (OSError, TimeoutError) as exc:
        where = host if host.startswith("/") else f"{host}:{port}"
        raise ServerUnavailable(
            f"cannot connect to server {where}: {exc or 'timeout'}",
            hint="is the database running and reachable from poolproxy?") from None
    await server.login(timeout)
    log.debug("%r: opened", server)
    return server


class ClientSession(asyncio.Protocol):
    """Base of an application connection: backpressure toward the linked server, and the
    bookkeeping when it goes away."""

    server: Any
    _throttled: Any
    _buffer: list[Any]

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.loop: asyncio.AbstractEventLoop = listener.loop
        self.outbox = outbox_for(self.loop)
        self.transport: asyncio.Transport | None = None
        self._throttled = None  # server whose reading we paused
        self._backpressured = False  # our reading paused because the server can't keep up
        self.state = C_LOGIN
        self.peer = "?"
        self.user = ""
        self.pool: Pool | None = None
        self.server = None
        self.pinned: str | None = None
        self.session_mode = False
        self.key = (0, 0)  # PostgreSQL cancel key (unused for MySQL)
        self.pending = 0  # answers the client is still owed
        self.wait_started = 0.0
        self.xact_started = 0.0
        self.idle_since = 0.0  # since when no request is outstanding (janitor timeouts)
        #: At-most-once bookkeeping (effects.py): what was sent to the linked server since all
        #: earlier requests were answered (None: too much to keep), whether no reply byte came
        #: back since then, and whether a request on this link was answered already (the server
        #: then holds this client's session or transaction: never replay elsewhere).
        self.inflight: list[Any] | None = None
        self.fresh = False
        self.answered_on_link = False
        self._retries = 0
        self._broken = False  # our server died inside the client's transaction
        self._buffer = []  # what a waiting client sent, for the server it will get
        self._paused = False
        self._login_timer: asyncio.TimerHandle | None = None

    def send(self, data: bytes) -> None:
        """Write to the client (through the outbox: in order, after the current batch)."""
        self.outbox.write(self.transport, data)

    def _disconnect(self) -> None:
        if self.state is C_CLOSED:
            return
        was = self.state
        self.state = C_CLOSED
        if self._login_timer is not None:
            self._login_timer.cancel()
        self.listener.client_disconnected(self)
        pool = self.pool
        if pool is None:
            return
        if was is C_WAITING:
            pool.cancel_wait(self)  # type: ignore[arg-type]  # subclasses are waiters
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
            pool.discard(server, CloseReason.SERVER_ERROR)
        else:
            self._leave_server(pool, server)

    def _login_timeout_error(self, mysql_errno: int | None = None) -> ProxyError:
        """client_login_timeout, with the reason when the wait was for a server that could not
        be opened (a database that is down says so, not just "timed out")."""
        message = "client_login_timeout: login not completed in time"
        error = self.pool.last_login_error if self.pool is not None else None
        if error is not None:
            message += f"; opening a server connection failed: {error.message}"
        return ProtocolViolation(message, mysql_errno=mysql_errno)

    def loss_outcome(self, server: Any, in_block: bool) -> LossOutcome:
        """Our server died with `self.inflight` unanswered: may it be replayed elsewhere, is
        its outcome unknown, or did it certainly not take effect? (`in_block`: the server was
        inside a transaction block when these requests went out.)

        A replay needs positive evidence that nothing of it took effect: none of its bytes
        left poolproxy, or the server's first reply was its own "going away", or it cannot
        have committed anything (effects.may_have_committed); and the client must not have
        seen a reply byte nor have state on this server. "No reply yet" is no evidence."""
        inflight = self.inflight
        self.inflight = None
        if inflight is None:
            applied = True  # too much was in flight to tell
        elif not inflight:
            applied = False
        elif server.unsent >= self._inflight_size(inflight) or server.gone_first:
            applied = False  # it never reached the server, or the server refused it first
        else:
            applied = self._could_commit(inflight, in_block)
        if applied:
            return LossOutcome.UNKNOWN
        if inflight and self.fresh and not self.answered_on_link and not in_block \
                and self.state is C_ACTIVE and self._may_retry():
            self.inflight = inflight
            return LossOutcome.REPLAY
        return LossOutcome.NOT_APPLIED

    def _inflight_size(self, inflight: list[Any]) -> int:
        raise NotImplementedError

    def _could_commit(self, inflight: list[Any], in_block: bool) -> bool:
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

    def _leave_server(self, pool: Pool, server: Any) -> None:
        """The client left while holding `server`: reset and return it, or close it."""
        raise NotImplementedError

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

