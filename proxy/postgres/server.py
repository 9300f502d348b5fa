"""A PostgreSQL server connection: login, internal queries (reset, parameter sync), forwarding.

While linked to a client, `data_received` is the server->client hot path: it walks message
headers, forwards each chunk with one write, and looks only at ReadyForQuery, ParameterStatus
and CopyInResponse. Unlinked, the connection runs internal queries (ROLLBACK, DISCARD ALL,
health checks) or sits idle, where any byte from the server means it is going away.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from ..auth import md5 as md5auth
from ..auth import scram
from ..auth.credentials import Credential, ScramKeys
from ..core.requests import REPLACE, RESULT, SWALLOW
from ..core.server import ServerSession, ServerTls, connect_and_login, open_transport
from ..core.session import ClientSession
from ..core.starttls import TlsHandshakeFailed, upgrade
from ..errors import ServerConnectionLost, ServerLoginError, ServerTlsError, ServerUnavailable
from ..pool import CloseReason, Pool
from . import codec
from .codec import (
    MSG_AUTH,
    MSG_BACKEND_KEY,
    MSG_COMMAND_COMPLETE,
    MSG_COPY_BOTH,
    MSG_COPY_IN,
    MSG_ERROR,
    MSG_PARAMETER_STATUS,
    MSG_READY_FOR_QUERY,
)
from .prepared import NAME_PREFIX, ServerStatements, statement_registry

log = logging.getLogger("poolproxy.postgres.server")

_I = 0x49  # ReadyForQuery status 'I': idle, no transaction


#: Login errors that pass by themselves: admin shutdown, crash shutdown, cannot connect now,
#: too many connections.
_TRANSIENT_LOGIN = frozenset(("57P01", "57P02", "57P03", "53300"))
#: The replies the hot path looks at; with message-by-message tracking, also those that end a
#: step: ParseComplete, BindComplete, CloseComplete, NoData, RowDescription (a Describe's),
#: CommandComplete, EmptyQueryResponse, PortalSuspended (an Execute's).
_PLAIN = frozenset((MSG_READY_FOR_QUERY, MSG_PARAMETER_STATUS, MSG_COPY_IN, MSG_COPY_BOTH,
                    MSG_ERROR))
#: While the server has prepared statements: also CommandComplete (DISCARD ALL, DEALLOCATE).
_WATCH = _PLAIN | frozenset(b"C")
_PRECISE = _PLAIN | frozenset(b"123nTCIs")
#: Request message type -> the reply types that end its reply.
_STEP_ENDS = {ord("P"): frozenset(b"1"), ord("B"): frozenset(b"2"), ord("C"): frozenset(b"3"),
              ord("D"): frozenset(b"Tn"), ord("E"): frozenset(b"CIs"), ord("Q"): frozenset(b"CI")}
_NOTHING: frozenset[int] = frozenset()
#: FATALs that end a session because of a shutdown or a timeout, not because of the request:
#: as the first reply to a request, evidence that the request did not run.
_GOING_AWAY = frozenset(("57P01", "57P02", "57P03", "57P05"))


#: An error text that names one of poolproxy's statements.
_OUR_NAME = b'"' + NAME_PREFIX
_NAMED = re.compile(rb'"(' + NAME_PREFIX + rb'[0-9]+)"')


def _patched(data: bytes, fixes: list[tuple[int, int, bytes]]) -> bytes:
    """`data` with the (start, end) ranges of `fixes` replaced by their bytes."""
    out: list[bytes] = []
    pos = 0
    for start, end, new in fixes:
        out.append(data[pos:start])
        out.append(new)
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def _is_fatal(body: bytes) -> bool:
    return b"SFATAL\x00" in body or b"SPANIC\x00" in body or b"VFATAL\x00" in body


class ServerConnection(ServerSession):
    """One connection from poolproxy to a PostgreSQL server."""

    GOODBYE = codec.TERMINATE
    IDLE_LIMIT_NAME = "idle_session_timeout"

    def __init__(self, pool: Pool, user: str, password: Credential | None, dbname: str,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(pool, loop)
        self.user = user
        self.password = password
        self.dbname = dbname
        self.params: dict[str, str] = {}
        #: Tuple of the tracked parameter values last synced from a client (None: unknown).
        self.param_sig: tuple[str | None, ...] | None = None
        self.key = (0, 0)
        self.tx_status = _I
        #: The fields of the FATAL the server sent before closing (its own reason), if any.
        self.last_words: dict[str, str] | None = None
        self.scanner = codec.MessageScanner(
            _PLAIN, keep_body={MSG_READY_FOR_QUERY: 1, MSG_PARAMETER_STATUS: 1 << 20,
                               MSG_ERROR: 1 << 20, MSG_COMMAND_COMPLETE: 16})
        #: The prepared statements this server connection has (postgres/prepared.py).
        self.statements = ServerStatements(statement_registry(pool))
        # Login and internal queries read whole messages through this.
        self._reader: codec.MessageReader | None = codec.MessageReader()
        self._tls_answer: asyncio.Future[bytes] | None = None

    def __repr__(self) -> str:
        return f"<pg server {self.pool.database}/{self.user} pid={self.key[0]} {self.state.value}>"

    # ------------------------------------------------------------------ asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        """The server -> client hot path: forward each chunk whole, after looking at the few
        messages that matter (ReadyForQuery ends a batch of the request queue)."""
        client = self.client
        if client is None:
            self._unlinked_data(data)
            return
        requests = self.requests
        scanner = self.scanner
        wanted = _PRECISE if requests.precise else _WATCH if self.statements.lru else _PLAIN
        if scanner.interesting is not wanted:
            scanner.interesting = wanted
        try:
            events = scanner.feed(data)
        except codec.ProtocolError as exc:
            log.error("%r: server sent invalid data: %s", self, exc)
            self.close(CloseReason.SERVER_PROTOCOL_ERROR)
            return
        stats = self.pool.stats
        if events is None:
            if requests and requests[0].action is SWALLOW:
                return  # the replies to our own query (parameter sync)
            if not requests.precise:
                stats.bytes_out += len(data)
                self.replied = True
                self.outbox.write(client.transport, data)
                return
            events = []
        #: Offset in this chunk where a reply to what is in flight would start: a FATAL there
        #: is the server's first reply to it (-1: the client has seen a reply byte already).
        clean_at = -1 if self.replied else 0
        if requests and requests[0].action is SWALLOW:
            data, events = self._swallow(data, events)
            if not data:
                return
        if requests.precise:
            self._precise(client, data, events, clean_at)
            return
        readies = 0
        status = _I
        fixes: list[tuple[int, int, bytes]] | None = None  # errors naming our statements
        for t, body, end in events:
            if t == MSG_ERROR:
                if _is_fatal(body):
                    # The server is going away (terminated, shutting down). Never hand its FATAL
                    # to the client, which would drop its own connection: forward what came
                    # before, then treat the server as lost (replay if nothing ran, else an
                    # error).
                    start = end - len(body) - 5
                    if start > 0:
                        head = _patched(data[:start], fixes) if fixes else data[:start]
                        stats.bytes_out += len(head)
                        self.outbox.write(client.transport, head)
                    self.replied = start != clean_at
                    if readies:
                        client.on_ready(status, readies)
                    self._fatal(body, not self.replied)
                    return
                if requests and requests[0].extra:
                    self._plan_refused(requests[0].extra, body)
                if _OUR_NAME in body:
                    if fixes is None:
                        fixes = []
                    fixes.append((end - len(body) - 5, end, self._client_names(client, body)))
            elif t == MSG_READY_FOR_QUERY:
                status = self.tx_status = body[0]
                if requests:
                    requests.popleft()
                readies += 1
                if not requests:
                    # Everything sent so far is answered: what follows is new.
                    self.sent = []
                    self.answered = True
                    clean_at = end
            elif t == MSG_PARAMETER_STATUS:
                name, value = codec.parse_parameter_status(body)
                self.params[name] = value
                self.param_sig = None
                client.on_parameter(name, value)
            elif t == MSG_COPY_IN or t == MSG_COPY_BOTH:
                client.on_copy_in()
            elif t == MSG_COMMAND_COMPLETE and body[:1] == b"D":  # DISCARD, DEALLOCATE
                self._command_done(client, body)
        # No reply to what is in flight reached the client if the chunk ends where the last
        # answer to everything before it did.
        self.replied = clean_at != len(data)
        if fixes:
            data = _patched(data, fixes)
        stats.bytes_out += len(data)
        stats.queries += readies
        if readies:
            # Before the chunk goes out: a statement-mode violation answers with an error
            # instead; a release may hand the server on (its next client's bytes go to the
            # server, this chunk still to this client).
            client.on_ready(status, readies)
        self.outbox.write(client.transport, data)

    def _precise(self, client: ClientSession[Any], data: bytes,
                 events: list[tuple[int, bytes, int]], clean_at: int) -> None:
        """The replies when the request queue tracks messages one by one (a client's
        prepared statements are in play): each reply that ends a step is forwarded, swallowed
        (our own Parse or Close) or replaced, and synthesized replies are put in their place."""
        requests = self.requests
        stats = self.pool.stats
        out: list[bytes] = requests.due()  # a batch may open with synthesized replies
        pos = 0  # data before this is in `out` (or dropped)
        seg = 0  # where the reply to the head step began (what SWALLOW and RESULT drop)
        readies = 0
        status = _I
        for t, body, end in events:
            if t == MSG_ERROR:
                start = end - len(body) - 5
                if _is_fatal(body):
                    out.append(data[pos:start])
                    payload = b"".join(out)
                    if payload:
                        stats.bytes_out += len(payload)
                        self.outbox.write(client.transport, payload)
                    self.replied = start != clean_at
                    if readies:
                        client.on_ready(status, readies)
                    self._fatal(body, not self.replied)
                    return
                batch = requests[0] if requests else None
                if batch is None:
                    continue
                code = codec.parse_error_fields(body).get("C", "")
                if batch.extra:
                    self._plan_refused(batch.extra, body, code)
                renamed = self._client_names(client, body) if _OUR_NAME in body else None
                step = batch.steps[0] if batch.steps else None
                if step is not None:
                    requests.error_code = code
                    requests.step_done(False)
                    requests.skip_to_sync()  # the server skips the rest of the batch too
                if step is not None and step.action is REPLACE and code != "25P02":
                    # The error the client's own request deserves (a failed transaction block
                    # refuses it with 25P02 first, as it would the client's request).
                    renamed = step.reply
                elif step is not None and (step.action is SWALLOW or step.action is RESULT):
                    out.append(data[pos:seg])  # drop its reply so far; the error goes on
                    pos = start
                if renamed is not None:
                    out.append(data[pos:start])
                    out.append(renamed)
                    pos = end
                seg = end
                continue
            if t == MSG_READY_FOR_QUERY:
                status = self.tx_status = body[0]
                requests.batch_done()
                readies += 1
                if not requests:
                    self.sent = []
                    self.answered = True
                    clean_at = end
                seg = end
                due = requests.due()  # the next batch may open with synthesized replies
                if due:
                    out.append(data[pos:end])
                    out.extend(due)
                    pos = end
                continue
            if t == MSG_PARAMETER_STATUS:
                name, value = codec.parse_parameter_status(body)
                self.params[name] = value
                self.param_sig = None
                client.on_parameter(name, value)
                continue
            if t == MSG_COPY_IN or t == MSG_COPY_BOTH:
                client.on_copy_in()
                continue
            if t == MSG_COMMAND_COMPLETE:
                self._command_done(client, body)
            steps = requests[0].steps if requests else None
            if not steps:
                continue
            step = steps[0]
            if t not in _STEP_ENDS.get(step.kind, _NOTHING):
                continue
            requests.step_done(True)
            action = step.action
            if action is SWALLOW:  # the reply to our own Parse or Close
                out.append(data[pos:seg])
                pos = end
            elif action is RESULT:  # a stand-in's reply, replaced by the client's result
                out.append(data[pos:seg])
                out.append(step.reply)
                pos = end
            seg = end
            due = requests.due()
            if due:
                out.append(data[pos:end])
                out.extend(due)
                pos = end
        head = requests[0].steps if requests else None
        if head and (head[0].action is SWALLOW or head[0].action is RESULT):
            out.append(data[pos:seg])  # the start of a reply to drop: the rest comes later
        else:
            out.append(data[pos:])
        payload = b"".join(out)
        self.replied = clean_at != len(data)
        stats.bytes_out += len(payload)
        stats.queries += readies
        if readies:
            client.on_ready(status, readies)
        if payload:
            self.outbox.write(client.transport, payload)

    @staticmethod
    def _client_names(client: ClientSession[Any], body: bytes) -> bytes:
        """An ErrorResponse (from its body) naming the client's statements by the client's
        names, not poolproxy's."""
        def name(m: re.Match[bytes]) -> bytes:
            own = client.statement_name(m.group(1))
            return b'"' + (own if own is not None else m.group(1)) + b'"'
        body = _NAMED.sub(name, body)
        return b"E" + (len(body) + 4).to_bytes(4, "big") + body

    def _plan_refused(self, bound: list[Any], body: bytes, code: str | None = None) -> None:
        """An error in a batch that binds prepared statements: after DDL the server refuses
        a statement's old plan ("cached plan must not change result type", 0A000) until it is
        prepared again, so the client's usual recovery (prepare again) would fail forever."""
        if code is None:
            code = codec.parse_error_fields(body).get("C", "")
        if code == "0A000":
            self.statements.refused(bound)

    def _command_done(self, client: ClientSession[Any], tag: bytes) -> None:
        """CommandComplete while this server has prepared statements: DISCARD ALL and
        DEALLOCATE ALL removed them all (and the client's own names); a DEALLOCATE of one of
        poolproxy's names (only a client that is not pinned could have sent it: its own SQL
        PREPAREs pin it) leaves poolproxy unsure which is gone."""
        if tag[:1] != b"D":
            return
        if tag.startswith(b"DISCARD ALL") or tag.startswith(b"DEALLOCATE ALL"):
            self.statements.clear()
            client.on_statements_discarded()
        elif tag.startswith(b"DEALLOCATE") and client.pinned is None and not client.session_mode:
            self.statements.unsure()

    def _fatal(self, body: bytes, first_reply: bool) -> None:
        """The server sent FATAL and is closing: keep its words for the client's error, and
        count it as evidence that nothing in flight ran if it was the first reply to them and
        a shutdown or timeout caused it (57P01 admin, 57P02 crash, 57P03 cannot connect now,
        57P05 idle session timeout)."""
        fields = codec.parse_error_fields(body)
        self.last_words = fields
        code = fields.get("C", "?")
        log.info("%r: server sent FATAL %s: %s", self, code, fields.get("M", ""))
        self.lost_now(gone_first=first_reply and code in _GOING_AWAY)

    def _swallow(self, data: bytes, events: list[tuple[int, bytes, int]]
                 ) -> tuple[bytes, list[tuple[int, bytes, int]]]:
        """Drop the replies to our own queries (parameter sync) at the head of the stream."""
        requests = self.requests
        cut = -1
        rest: list[tuple[int, bytes, int]] = []
        for i, (t, body, end) in enumerate(events):
            if t == MSG_PARAMETER_STATUS:
                name, value = codec.parse_parameter_status(body)
                self.params[name] = value
                self.param_sig = None
                if self.client is not None:
                    self.client.on_parameter(name, value)
            elif t == MSG_ERROR:
                if _is_fatal(body):
                    # Instead of answering our parameter sync: the client's request, queued
                    # behind it, never ran.
                    self._fatal(body, True)
                    return b"", []
                fields = codec.parse_error_fields(body)
                log.warning("%r: parameter sync failed: %s", self, fields.get("M"))
            elif t == MSG_READY_FOR_QUERY:
                self.tx_status = body[0]
                requests.batch_done()
                head = requests.head
                if head is None or head.action is not SWALLOW:
                    cut = end
                    rest = [(t2, b2, e2 - cut) for t2, b2, e2 in events[i + 1:]]
                    break
        if cut < 0:
            return b"", []
        return data[cut:], rest

    def connection_lost(self, exc: Exception | None) -> None:
        answer = self._tls_answer
        if answer is not None and not answer.done():
            answer.set_exception(ServerConnectionLost(
                "server closed the connection after SSLRequest"))
        super().connection_lost(exc)

    def _frame(self, data: bytes) -> list[tuple[int, bytes]] | None:
        answer = self._tls_answer
        if answer is not None:  # the untyped one-byte answer to our SSLRequest
            if not answer.done():
                answer.set_result(data)
            return []
        return None if self._reader is None else self._reader.feed(data)

    # ------------------------------------------------------------------ state
    def in_transaction(self) -> bool:
        return self.tx_status != _I

    def reusable(self) -> bool:
        return not self.requests and self.tx_status == _I and not self.scanner.in_message

    def _closed(self) -> None:
        self.statements.clear()

    def prepared_count(self) -> int:
        return len(self.statements)

    def sync_parameters(self, sql: str) -> None:
        """Send our own parameter sync ahead of the client's request; its replies are
        swallowed (a SWALLOW batch of the request queue)."""
        self.requests.sync(SWALLOW)
        self.outbox.write(self.transport, codec.query(sql))

    async def reset(self, *, hold: bool) -> None:
        if self.tx_status != _I:
            errors = await self.run_internal("ROLLBACK")
            if errors:
                raise ServerConnectionLost(f"ROLLBACK failed: {errors[0].get('M')}")
        if hold:
            errors = await self.run_internal("DISCARD ALL")
            if errors:
                raise ServerConnectionLost(f"DISCARD ALL failed: {errors[0].get('M')}")
            self.statements.clear()

    # ------------------------------------------------------------------ login
    async def _request_tls(self) -> None:
        """SSLRequest: 'S' -> the TLS handshake; 'N' -> plaintext (if server_tls allows)."""
        self._tls_answer = answer = self.loop.create_future()
        try:
            self.write(codec.ssl_request())
            data = await answer
        finally:
            self._tls_answer = None
        if data == b"S":
            await self._start_tls()
        elif data == b"N":
            self._tls_refused()
        else:
            # 'S' followed by more bytes would be plaintext posing as TLS data (CVE-2021-23222).
            raise ServerTlsError(f"unexpected answer to SSLRequest: {data[:16]!r}")

    async def _login(self) -> None:
        if self.tls_context is not None:
            await self._request_tls()
        self.write(codec.startup_message({"user": self.user, "database": self.dbname}))
        scram_client: scram.ScramClient | None = None
        while True:
            t, body = await self._next()
            if t == MSG_AUTH:
                code, data = codec.parse_auth(body)
                if code == codec.AUTH_OK:
                    continue
                if code == codec.AUTH_SASL:
                    mechs = codec.parse_sasl_mechanisms(data)
                    if scram.MECHANISM not in mechs:
                        raise ServerLoginError(f"server offers unsupported SASL mechanisms {mechs}")
                    keys = self.password
                    if isinstance(keys, ScramKeys):  # auth.query: SCRAM pass-through
                        scram_client = scram.ScramClient.from_keys(
                            keys.client_key, keys.server_key, keys.salt, keys.iterations)
                    else:
                        scram_client = scram.ScramClient(self._need_password())
                    self.write(codec.sasl_initial_response(scram.MECHANISM,
                                                           scram_client.client_first()))
                elif code == codec.AUTH_SASL_CONTINUE and scram_client is not None:
                    try:
                        self.write(codec.sasl_response(scram_client.handle_server_first(data)))
                    except scram.ScramError as exc:
                        raise ServerLoginError(f"SCRAM login to server failed: {exc}") from None
                elif code == codec.AUTH_SASL_FINAL and scram_client is not None:
                    try:
                        scram_client.verify_server_final(data)
                    except scram.ScramError as exc:
                        raise ServerLoginError(f"server SCRAM signature invalid: {exc}") from None
                elif code == codec.AUTH_MD5:
                    self.write(codec.password_message(
                        md5auth.md5_response(self.user, self._need_password(), data[:4]) + b"\x00"))
                elif code == codec.AUTH_CLEARTEXT:
                    password = self._need_password()
                    if md5auth.is_md5_hash(password):
                        # Only the md5 hash is known: it is no password, and worth as much as
                        # one to md5 auth (PgBouncer refuses this too).
                        raise ServerLoginError(
                            f"the server asks user {self.user!r} for a cleartext password, but "
                            "poolproxy only has its md5 hash", sqlstate="28P01")
                    self.write(codec.password_message(password.encode() + b"\x00"))
                else:
                    raise ServerLoginError(f"server requested unsupported authentication {code}")
            elif t == MSG_PARAMETER_STATUS:
                name, value = codec.parse_parameter_status(body)
                self.params[name] = value
            elif t == MSG_BACKEND_KEY:
                self.key = codec.parse_backend_key(body)
            elif t == MSG_ERROR:
                fields = codec.parse_error_fields(body)
                if fields.get("C") in _TRANSIENT_LOGIN:
                    # Shutting down / starting up / crash recovery: the server will be back;
                    # waiting clients keep waiting (retry) instead of failing fast.
                    raise ServerUnavailable(f"server not accepting logins yet: {fields.get('M')}")
                raise ServerLoginError(
                    f"server login failed: {fields.get('M', 'unknown error')}",
                    sqlstate=fields.get("C", "08006"), detail=fields.get("D"),
                    hint="check the user's password and the database name in the poolproxy config")
            elif t == MSG_READY_FOR_QUERY:
                self.tx_status = body[0]
                self._reader = None
                return
            # NoticeResponse and anything else during login: ignore.

    def _need_password(self) -> str:
        if not isinstance(self.password, str | None):
            raise ServerLoginError(
                f"the server asks user {self.user!r} for a password, but poolproxy only has "
                f"{self.password!r} from auth.query", sqlstate="28P01",
                hint="use scram-sha-256 for this user in the database's pg_hba.conf")
        if not self.password:
            raise ServerLoginError(
                f"server asks a password for user {self.user!r} but none is configured",
                sqlstate="28P01", hint="set the user's password in the poolproxy config")
        return self.password

    # ------------------------------------------------------------------ internal queries
    async def health_check(self, timeout: float) -> bool:
        """An empty query: cheapest round trip that proves the session is alive and idle."""
        errors = await self.run_internal("", timeout)
        return not errors and self.tx_status == _I

    async def idle_limit(self) -> float | None:
        """The server's idle_session_timeout in seconds (None: off or unknown)."""
        rows: list[str | None] = []
        errors = await self.run_internal(
            "SELECT setting FROM pg_catalog.pg_settings WHERE name = 'idle_session_timeout'",
            rows=rows)
        if errors or not rows or rows[0] is None:
            return None
        ms = int(rows[0])
        return ms / 1000.0 if ms > 0 else None

    async def run_internal(self, sql: str, timeout: float = 10.0,
                           rows: list[str | None] | None = None) -> list[dict[str, str]]:
        """Run a simple query of our own while unlinked; return the errors it raised (`rows`:
        gets each row's first column as text).

        The connection must be unlinked and quiet. A lost connection raises."""
        full: list[list[str | None]] = []
        errors = await self._exchange(codec.query(sql), timeout, repr(sql),
                                      full if rows is not None else None)
        if rows is not None:
            rows.extend(row[0] if row else None for row in full)
        return errors

    async def query_params(self, sql: str, params: list[str], timeout: float = 10.0
                           ) -> list[list[str | None]]:
        """Run `sql` with text parameters ($1, ...) through the extended protocol while
        unlinked (no quoting of values into SQL); the rows as text. Errors raise."""
        request = codec.extended_query(sql, params)
        rows: list[list[str | None]] = []
        errors = await self._exchange(request, timeout, repr(sql), rows)
        if errors:
            raise ServerLoginError(f"{sql!r} failed: {errors[0].get('M')}",
                                   sqlstate=errors[0].get("C", "08006"))
        return rows

    async def _exchange(self, request: bytes, timeout: float, what: str,
                        rows: list[list[str | None]] | None) -> list[dict[str, str]]:
        assert self.client is None
        self._reader = codec.MessageReader()
        self._inbox.clear()
        errors: list[dict[str, str]] = []
        try:
            self.write(request)
            while True:
                t, body = await self._next(timeout)
                if t == MSG_ERROR:
                    errors.append(codec.parse_error_fields(body))
                elif t == MSG_PARAMETER_STATUS:
                    name, value = codec.parse_parameter_status(body)
                    self.params[name] = value
                    self.param_sig = None
                elif t == MSG_READY_FOR_QUERY:
                    self.tx_status = body[0]
                    return errors
                elif t == 0x44 and rows is not None:  # DataRow, as text
                    rows.append(codec.parse_data_row(body))
        except TimeoutError:
            raise ServerConnectionLost(f"server did not answer {what} within {timeout:g}s") from None
        finally:
            self._reader = None
            self._inbox.clear()


async def open_server(pool: Pool, host: str, port: int, user: str, password: Credential | None,
                      dbname: str, connect_timeout: float,
                      tls: ServerTls | None = None) -> ServerConnection:
    """Connect and log in; raise ServerUnavailable / ServerLoginError on failure. `tls`:
    (context, required, server_hostname) to ask for TLS first."""
    loop = asyncio.get_running_loop()
    return await connect_and_login(lambda: ServerConnection(pool, user, password, dbname, loop),
                                   host, port, connect_timeout, tls)


async def send_cancel(host: str, port: int, key: tuple[int, int], timeout: float = 5.0, *,
                      context: Any = None, server_hostname: str | None = None) -> None:
    """Deliver a CancelRequest to the server on a new connection (inside TLS when `context`
    is given, as libpq does); wait for the server to close it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    answer: asyncio.Future[bytes] = loop.create_future()

    class _Cancel(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            transport.write(codec.ssl_request() if context is not None
                            else codec.cancel_request(*key))

        def data_received(self, data: bytes) -> None:
            if not answer.done():
                answer.set_result(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if not answer.done():
                answer.set_result(b"")
            if not done.done():
                done.set_result(None)

    protocol = _Cancel()
    transport: Any = await asyncio.wait_for(open_transport(lambda: protocol, host, port),
                                            timeout)
    try:
        if context is not None:
            if await asyncio.wait_for(answer, timeout) != b"S":
                raise ConnectionError("the server refused TLS for the cancel request")
            transport = await upgrade(transport, protocol, context, server_side=False,
                                      timeout=timeout, server_hostname=server_hostname)
            transport.write(codec.cancel_request(*key))
        await asyncio.wait_for(done, timeout)
    except TlsHandshakeFailed as exc:
        raise ConnectionError(str(exc)) from None
    finally:
        transport.close()
