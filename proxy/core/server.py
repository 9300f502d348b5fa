"""The server half of a session: a connection from poolproxy to a database server.

`ServerSession` keeps what the server owes (`requests`, core/requests.py) and what the client
sent it since everything before was answered (the at-most-once record), reports its loss to
its client, and owns its own lifecycle: login with a timeout, internal exchanges through an
inbox, close with a reason, and the way back to the pool (`give_back`). Protocol subclasses
(postgres/server.py, mysql/server.py) frame their wire and report events to the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ServerConnectionLost, ServerTlsError, ServerUnavailable
from ..pool import S_ACTIVE, S_CLOSED, S_IDLE, S_LOGIN, CloseReason, Pool, ServerState
from .outbox import outbox_for
from .requests import RequestQueue
from .starttls import TlsHandshakeFailed, TlsInfo, tls_info, upgrade

if TYPE_CHECKING:
    from .session import ClientSession

log = logging.getLogger("poolproxy.session")

S = TypeVar("S", bound="ServerSession")

#: What a server connection needs to ask for TLS: (context, TLS required, name to check).
ServerTls = tuple[Any, bool, str | None]


class ServerSession(asyncio.Protocol):
    """Base of a connection from poolproxy to a database server."""

    #: Bytes that tell the server we are leaving (Terminate / COM_QUIT).
    GOODBYE = b""
    #: The name of the database's own idle limit that `idle_limit()` reads (for the log).
    IDLE_LIMIT_NAME = ""

    client: ClientSession[Any] | None

    #: server_tls for this connection (set by `connect_and_login`): the context (None:
    #: plaintext), whether plaintext is unacceptable, the name to check; and, once up, its TLS.
    tls_context: Any = None
    tls_required = False
    tls_hostname: str | None = None
    tls: TlsInfo | None = None

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.outbox = outbox_for(loop)
        self.transport: asyncio.Transport | None = None
        self.state = S_LOGIN
        self.client = None
        now = pool.clock()
        self.created_at = now
        self.last_used = now
        self.expires_at = pool.lifetime_deadline(now)
        self.close_reason: CloseReason | None = None
        #: What this server owes, request by request (core/requests.py).
        self.requests = RequestQueue()
        #: At-most-once (core/effects.py): the client bytes sent since everything before them
        #: was answered (None: too many to keep), whether a reply byte reached the client since
        #: then, and whether a request of this link was answered already (the server then holds
        #: the client's session or transaction: never replay elsewhere).
        self.sent: list[Any] | None = []
        self.replied = False
        self.answered = False
        #: Set when the connection is lost: bytes written to it that never left poolproxy, and
        #: whether its first reply to the requests in flight was its own "going away" (FATAL
        #: 57P01 / ERR 1927 ...), so none of them ran.
        self.unsent = 0
        self.gone_first = False
        self._refused = 0  # bytes write() refused because the connection was closed
        #: Cancel requests for the last client's query still on their way to the server: the
        #: server goes back to the pool only after them (`give_back`).
        self.cancels_in_flight = 0
        self.release_when_cancelled = False
        #: A cancel request went out but its delivery was never confirmed: it may still hit
        #: whatever runs next, so the server is closed instead of being reused.
        self.cancel_unconfirmed = False
        self._throttled_client: ClientSession[Any] | None = None
        self._inbox: deque[tuple[int, bytes]] = deque()
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None

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
            self.close(CloseReason.SERVER_PROTOCOL_ERROR)
            return
        if messages is None:
            # Idle in the pool: a server has nothing to say unless it is going away (FATAL on
            # idle_session_timeout or terminate; MySQL's ERR 4031 on wait_timeout).
            log.info("%r: unsolicited data from idle server; closing it", self)
            self.pool.remove_idle(self, CloseReason.UNSOLICITED)
            return
        if messages:
            self._inbox.extend(messages)
            self._wake()

    def _wake(self) -> None:
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is None:
            self._take_back_unsent()
        self._handle_loss(exc or ConnectionResetError("server closed the connection"),
                          self.state, CloseReason.SERVER_CLOSED)

    # ------------------------------------------------------------------ what the client sends
    def forward(self, data: bytes, record: bytes | None = None) -> None:
        """Send client bytes (recorded for the at-most-once rule until they are answered;
        `record`: what the client sent, if poolproxy rewrote it into `data`)."""
        sent = self.sent
        if sent is not None:
            if len(sent) < 64:
                sent.append(data if record is None else record)
            else:
                self.sent = None  # too much to keep: its outcome cannot be judged
        self.pool.stats.bytes_in += len(data)
        self.outbox.write(self.transport, data)

    def all_answered(self) -> None:
        """Every client request sent so far has been answered: what follows is new."""
        self.sent = []
        self.replied = False
        self.answered = True

    # ------------------------------------------------------------------ loss
    def lost_now(self, gone_first: bool = False) -> None:
        """The server announced it is going away (or was found closed): close it and handle the
        loss right now, so no client byte is written to it in between. `gone_first`: its
        announcement was the first reply to the requests in flight."""
        if self._lost is not None:
            return
        was = self.state
        self._take_back_unsent()  # before close() flushes the outbox
        self.gone_first = gone_first
        self.close(CloseReason.SERVER_FATAL)
        self._handle_loss(ConnectionResetError("server is going away"), was,
                          CloseReason.SERVER_FATAL)

    def _take_back_unsent(self) -> None:
        if self.transport is not None:
            self.unsent = self.outbox.discard(self.transport) + self._refused

    def _handle_loss(self, exc: BaseException, was: ServerState, reason: CloseReason) -> None:
        if self._lost is not None:
            return  # handled already (lost_now, then the transport's own callback)
        self._lost = exc
        self.state = S_CLOSED
        self._wake()
        self.requests.clear()
        self._closed()
        client = self.client
        if client is not None:
            self.client = None
            self.pool.discard(self, self.close_reason or reason)  # first: frees the pool slot
            client.server_lost(self)
        elif was is S_IDLE:
            self.pool.remove_idle(self, self.close_reason or reason)

    # ------------------------------------------------------------------ backpressure
    # While this server's socket is full, stop reading from its client.
    def pause_writing(self) -> None:
        client = self.client
        if client is not None and client.transport is not None:
            client.throttled_by_server(True)
            self._throttled_client = client

    def resume_writing(self) -> None:
        client = self._throttled_client
        if client is not None:
            self._throttled_client = None
            client.throttled_by_server(False)

    # ------------------------------------------------------------------ returning it
    def in_transaction(self) -> bool:
        """The server's own view: inside a transaction block (PostgreSQL 'T'/'E'; MySQL
        IN_TRANS or autocommit off)."""
        raise NotImplementedError

    def reusable(self) -> bool:
        """What the server itself can tell about being clean (the pool's last guard): owing no
        reply, outside any transaction, not stopped in the middle of a message."""
        return not self.requests and not self.in_transaction()

    def give_back(self, now: float | None = None) -> None:
        """Return this clean, unlinked server to its pool; while a cancel for the last client's
        query may still reach it, wait for that first, so it never hits the next client's."""
        if self.cancels_in_flight:
            self.release_when_cancelled = True
            return
        if self.cancel_unconfirmed:
            self.pool.discard(self, CloseReason.CANCEL_UNCONFIRMED, now)
            return
        self.pool.checkin(self, now)

    def cancel_done(self, confirmed: bool) -> None:
        self.cancels_in_flight -= 1
        if not confirmed:
            self.cancel_unconfirmed = True
        if not self.cancels_in_flight and self.release_when_cancelled:
            self.release_when_cancelled = False
            self.give_back()

    async def reset(self, *, hold: bool) -> None:
        """Make the server clean after a client left: roll back an open transaction and, if
        `hold` (the client was pinned or in session mode), reset the session; raise if that
        fails."""
        raise NotImplementedError

    async def reset_and_return(self, *, hold: bool) -> None:
        try:
            await self.reset(hold=hold)
            if self.in_transaction():
                raise ServerConnectionLost("server still in a transaction after reset")
        except Exception as exc:  # whatever went wrong, the server must leave the pool
            log.info("%r: reset failed (%s); closing it", self, exc)
            self.pool.discard(self, CloseReason.RESET_FAILED)
            return
        self.give_back()

    def _closed(self) -> None:
        """The connection is closed or lost: let go of what it held (protocols)."""

    def prepared_count(self) -> int:
        """Prepared statements poolproxy keeps on this connection (SHOW SERVERS)."""
        return 0

    # ------------------------------------------------------------------ internal exchanges
    async def health_check(self, timeout: float) -> bool:
        raise NotImplementedError

    async def idle_limit(self) -> float | None:
        """The database's own idle limit for this session, in seconds (None: off/unknown)."""
        return None

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
        self._closed()
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

    async def _start_tls(self) -> None:
        """The server agreed to TLS: run the handshake (inside the login's timeout)."""
        transport = self.transport
        assert transport is not None and self.tls_context is not None
        try:
            encrypted = await upgrade(transport, self, self.tls_context, server_side=False,
                                      timeout=self.pool.settings.server_connect_timeout,
                                      server_hostname=self.tls_hostname)
        except TlsHandshakeFailed as exc:
            self._lost = exc
            raise ServerTlsError(f"TLS connection to the server failed: {exc}",
                                 hint="check server_tls (mode, ca_file, server_name) against "
                                      "the database's certificate") from None
        self.transport = encrypted
        self.tls = tls_info(encrypted)

    def _tls_refused(self) -> None:
        """The server does not do TLS: fine for prefer/allow, an error otherwise."""
        if self.tls_required:
            raise ServerTlsError("the server does not accept TLS connections, and server_tls "
                                 "requires TLS", hint="enable ssl on the database, or lower "
                                 "server_tls.mode")
        self.tls_context = None

    async def login(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._login(), timeout)
            self.state = S_ACTIVE
        except TimeoutError:
            self.close(CloseReason.LOGIN_FAILED)
            raise ServerUnavailable(
                f"server login timed out after {timeout:g}s (server_connect_timeout)") from None
        except Exception:
            self.close(CloseReason.LOGIN_FAILED)
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
                            timeout: float, tls: ServerTls | None = None) -> S:
    """Open a connection (TCP, or a Unix socket if `host` is a path) with `factory`'s protocol
    and log in; raise ServerUnavailable / ServerLoginError with a message that says what to
    check. `tls`: (context, required, server_hostname) to ask the server for TLS."""
    server = factory()
    if tls is not None and tls[0] is not None and not host.startswith("/"):
        server.tls_context, server.tls_required, server.tls_hostname = tls
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
