"""Runtime state of one listener: its pools, clients, cancel keys and counters.

Protocol-agnostic: the protocol package hands in a `ProtocolAdapter` (client factory, server
opener, cancel); this module owns what both need (pools per (database, user), aligning idle
limits below the database's own, the client registry, cancel routing, the SCRAM verifier cache,
per-listener counters read by metrics).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from .. import tls
from ..auth import scram
from ..auth.credentials import Credential, PasswordVerifier
from ..config import ListenerConfig
from ..config.model import AuthQuery
from ..errors import ProxyError, ServerLoginError, ServerTlsError
from ..pool import Clock, CloseReason, Pool
from .server import ServerTls

if TYPE_CHECKING:
    from ..ops.console import Operations
    from .reasons import ClientResult, DisconnectReason
    from .server import ServerSession
    from .session import ClientSession

log = logging.getLogger("poolproxy.listener")

#: How long an auth.query answer, or a password a server accepted for passthrough, is reused
#: (an auth.query user's failed login asks again at once).
SECRET_TTL = 30.0
MAX_CACHED_SECRETS = 10_000


class ProtocolAdapter(Protocol):
    """What a protocol package provides to run a listener (postgres/adapter.py,
    mysql/adapter.py)."""

    protocol: str

    def client(self, runtime: ListenerRuntime) -> ClientSession[Any]:
        """A new client session (the asyncio protocol of an accepted connection)."""
        ...

    async def open_server(self, runtime: ListenerRuntime, pool: Pool, dbname: str, user: str,
                          password: Credential | None, tls: ServerTls | None) -> ServerSession:
        """Connect and log in to the database for `pool` (`tls`: ask for TLS)."""
        ...

    async def cancel(self, runtime: ListenerRuntime, server: ServerSession) -> None:
        """Cancel what `server` is running (PostgreSQL's CancelRequest; no-op where none)."""
        ...

    async def prepare(self, runtime: ListenerRuntime) -> None:
        """Before listening (MySQL: fetch the server's greeting to show clients)."""
        ...

    async def lookup_secret(self, runtime: ListenerRuntime, query: AuthQuery, dbname: str,
                            user: str) -> str | None:
        """auth.query: run `query` for `user` as `query.user` on `dbname`; the secret of its
        first row (second column), None when there is no row."""
        ...


class ListenerRuntime:
    def __init__(self, config: ListenerConfig, adapter: ProtocolAdapter,
                 loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self.config = config
        self.adapter = adapter
        self.loop = loop
        self.clock = clock
        self.pools: dict[tuple[Any, ...], Pool] = {}
        #: MySQL: the server's greeting (version, capabilities) shown to clients.
        self.greeting: Any = None
        self._next_conn_id = 0
        self.clients: set[ClientSession[Any]] = set()
        self.cancel_keys: dict[int, ClientSession[Any]] = {}
        self.draining = False
        #: The daemon's operations (admin console, worker handle); None in unit tests.
        self.operations: Operations | None = None
        #: Databases held by the admin console's PAUSE ("*" = all); shared with the daemon.
        self.paused_databases: set[str] = set()
        self.server: asyncio.AbstractServer | None = None
        self.client_results: dict[str, int] = {}
        self.disconnects: dict[str, int] = {}
        self.pins: dict[str, int] = {}
        self._verifiers: dict[tuple[str, str], scram.ScramVerifier] = {}
        #: (parameter, value as a client sent it) -> the server's canonical spelling.
        self.canonical_params: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: TLS toward clients and toward the server; contexts kept across reloads (a reload
        #: with a broken file keeps the old one). Raises tls.TlsError if a file is unusable.
        alpn = (tls.PG_ALPN,) if config.protocol == "postgres" else None
        self.client_tls = tls.TlsContextHolder(config.client_tls, "client_tls",
                                               f"listeners[{config.name}].client_tls", alpn=alpn)
        self.server_tls = tls.TlsContextHolder(config.server_tls, "server_tls",
                                               f"listeners[{config.name}].server_tls", alpn=alpn)
        #: (side, result) -> TLS handshakes (poolproxy_tls_handshakes_total).
        self.tls_handshakes: dict[tuple[str, str], int] = {}
        #: Users not in the config: what their servers log in with, learnt from their
        #: clients' logins (auth.query: SCRAM keys, an md5 hash, SHA1(password); passthrough:
        #: the password), the verifiers that check returning passthrough clients, and the
        #: auth.query secrets cached for SECRET_TTL seconds.
        self.learnt: dict[str, Credential] = {}
        self._passthrough: dict[tuple[str, str], tuple[PasswordVerifier, float]] = {}
        self._secrets: dict[str, tuple[str | None, float]] = {}
        self._shared_params: dict[frozenset[tuple[str, str]], dict[str, str]] = {}

    def shared(self, params: dict[str, str]) -> dict[str, str]:
        """One dict for every client with the same parameters (read-only for them: a change
        copies). Most idle clients have their pool's parameters exactly."""
        key = frozenset(params.items())
        found = self._shared_params.get(key)
        if found is None:
            if len(self._shared_params) >= 1024:  # many distinct sets: stop sharing new ones
                return params
            found = self._shared_params[key] = params
        return found

    # ------------------------------------------------------------------ auth from the database
    async def lookup_secret(self, user: str, database: str) -> str | None:
        """auth.query's secret for `user` (cached briefly); None for an unknown user."""
        query = self.config.auth_query
        assert query is not None
        now = self.clock()
        hit = self._secrets.get(user)
        if hit is not None and hit[1] > now:
            return hit[0]
        secret = await self.adapter.lookup_secret(self, query, query.dbname or database, user)
        secrets = self._secrets
        if len(secrets) >= MAX_CACHED_SECRETS:
            # Clients choose the names looked up: keep the cache bounded.
            for name in [n for n, (_, until) in secrets.items() if until <= now]:
                del secrets[name]
            if len(secrets) >= MAX_CACHED_SECRETS:
                secrets.clear()
        secrets[user] = (secret, now + SECRET_TTL)
        return secret

    def forget_secret(self, user: str) -> None:
        """A looked-up user failed to log in: ask the database again next time."""
        self._secrets.pop(user, None)

    def learn(self, user: str, credential: Credential) -> None:
        self.learnt[user] = credential

    def passthrough_verdict(self, database: str, user: str, password: str) -> bool | None:
        """passthrough: whether a client's cleartext password is right, when that can be told
        here: a listed user's configured password, or the one a server accepted for this
        (database, user) less than SECRET_TTL ago (the server's rules, pg_hba.conf, may differ
        per database; after that a server login checks again, so a password changed or
        revoked in the database stops working here too). None: a server login must tell
        (`validate_password`)."""
        given = password.encode("utf-8", "surrogateescape")
        ucfg = self.config.user(user)
        if ucfg is not None and ucfg.password:  # an empty one means "not configured"
            return hmac.compare_digest(ucfg.password.encode("utf-8", "surrogateescape"), given)
        hit = self._passthrough.get((database, user))
        if hit is not None and hit[1] > self.clock() and hit[0].matches(password):
            return True
        return None

    async def validate_password(self, pool: Pool, password: str) -> bool:
        """passthrough: log in to the server with a client's password. True (and the
        password is learnt, the new server joins the pool) if the server accepts it; False if
        it refuses the user or password; other failures raise."""
        dbname = self.config.server_dbname(pool.database) or pool.database
        try:
            server = await self.open_server(pool, dbname, pool.user, password)
        except ServerLoginError as exc:
            if exc.sqlstate.startswith("28") or exc.mysql_errno == 1045:
                log.info("%r: passthrough login refused by the server: %s", pool, exc.message)
                return False
            raise
        self.learn(pool.user, password)
        self._passthrough[(pool.database, pool.user)] = (PasswordVerifier(password),
                                                        self.clock() + SECRET_TTL)
        pool.adopt(server)
        return True

    def reload_tls(self) -> list[tls.TlsError]:
        """Re-read both sides' certificates and keys (also when their paths are unchanged);
        a side that fails keeps its previous context."""
        before = self.server_tls.settings
        errors = [self.client_tls.reload(self.config.client_tls),
                  self.server_tls.reload(self.config.server_tls)]
        if self.server_tls.settings != before:
            for pool in self.pools.values():
                pool.renew()  # a pool never mixes servers of the old and new server_tls
        return [e for e in errors if e is not None]

    def count_tls(self, side: str, result: str) -> None:
        key = (side, result)
        self.tls_handshakes[key] = self.tls_handshakes.get(key, 0) + 1

    @property
    def name(self) -> str:
        return self.config.name

    def new_client(self) -> ClientSession[Any]:
        """The protocol factory handed to the event loop's server."""
        return self.adapter.client(self)

    # ------------------------------------------------------------------ pools
    def get_pool(self, database: str, user: str, variant: Any = None) -> Pool:
        """The pool of (database, user); `variant` splits it further (MySQL: the client
        capabilities and character set that change the wire format or semantics)."""
        key = (database, user) if variant is None else (database, user, variant)
        pool = self.pools.get(key)
        if pool is None or pool.closed:
            cfg = self.config
            dbcfg = cfg.database(database)
            ucfg = cfg.user(user)
            settings = cfg.settings_for(dbcfg, ucfg)
            server_db = cfg.server_dbname(database) or database

            def connect(p: Pool) -> Awaitable[ServerSession]:
                # Read the password at each open, so a reloaded config applies; users not
                # listed log in with what their clients' logins taught us (auth.query,
                # passthrough).
                current = self.config.user(user)
                password: Credential | None = (
                    current.password if current is not None else self.learnt.get(user))
                return self.open_server(p, server_db, user, password)

            pool = Pool(cfg.name, database, user, settings, connect, self.clock)
            pool.variant = variant
            pool.auto = database not in cfg.databases
            pool.db_has_room = lambda: self._db_has_room(pool)
            paused = self.paused_databases
            pool.paused = "*" in paused or database in paused
            self.pools[key] = pool
        return pool

    async def open_server(self, pool: Pool, dbname: str, user: str,
                          password: Credential | None) -> ServerSession:
        server = await self._open_with_tls(pool, dbname, user, password)
        if pool.db_idle_limit is None and not pool.idle_limit_checked:
            # On a pool's first connection, learn the database's own idle limit and stay
            # below it (MySQL wait_timeout, PostgreSQL idle_session_timeout).
            pool.idle_limit_checked = True
            try:
                limit = await server.idle_limit()
            except Exception as exc:  # advisory: never fail a login over it
                log.debug("%r: could not read %s: %s", pool, server.IDLE_LIMIT_NAME, exc)
            else:
                if limit:
                    pool.align_idle_limit(limit, server.IDLE_LIMIT_NAME)
        return server

    async def _open_with_tls(self, pool: Pool, dbname: str, user: str,
                             password: Credential | None) -> ServerSession:
        """server_tls's connection attempts in libpq's order (allow: plaintext, then TLS if
        the server refused that login; prefer: TLS, then plaintext if the handshake failed)."""
        holder = self.server_tls
        mode, context = holder.mode, holder.context
        attempts = tls.connection_attempts(mode) if context is not None else (False,)
        target: ServerTls = (context, tls.requires_tls(mode),
                             tls.server_hostname(holder.settings, self.config.server.host))
        for i, use_tls in enumerate(attempts):
            try:
                server = await self.adapter.open_server(self, pool, dbname, user, password,
                                                        target if use_tls else None)
            except ServerLoginError as exc:
                if isinstance(exc, ServerTlsError):
                    self.count_tls("server", "failed")
                if i + 1 < len(attempts):
                    log.info("%r: %s; trying again %s TLS (server_tls mode %s)", pool,
                             exc.message, "without" if use_tls else "with", mode)
                    continue
                raise
            if server.tls is not None:
                self.count_tls("server", "ok")
            return server
        raise AssertionError("unreachable")  # pragma: no cover

    async def probe_login(self, user: str, timeout: float) -> str | None:
        """Log in to the server as the configured `user` once (start-up and reload probe),
        outside every pool; None if that works, else the server's refusal."""
        cfg = self.config
        ucfg = cfg.user(user)
        if ucfg is None:
            return None
        explicit = [d for d in cfg.databases.values() if d.dbname is not None]
        dbname = explicit[0].dbname if explicit else (user if cfg.protocol == "postgres" else "")
        assert dbname is not None
        pool = Pool(cfg.name, dbname, user, cfg.settings_for(None, ucfg),
                    lambda p: self.open_server(p, dbname, user, ucfg.password), self.clock)
        pool.idle_limit_checked = True  # a probe learns nothing for the real pools
        try:
            server = await asyncio.wait_for(
                self._open_with_tls(pool, dbname, user, ucfg.password), timeout)
        except ServerLoginError as exc:
            if exc.sqlstate == "3D000" or exc.mysql_errno == 1049:
                return None  # the user got in; only that database is missing
            return exc.message
        except (ProxyError, TimeoutError, OSError) as exc:
            return str(exc) or type(exc).__name__
        server.close(CloseReason.SHUTDOWN)
        return None

    def _db_has_room(self, pool: Pool) -> bool:
        """max_db_connections: servers to one database over all its users' pools. When the
        cap is reached, an idle server of another pool of that database makes room."""
        cap = pool.settings.max_db_connections
        if cap <= 0:
            return True
        same = [p for p in self.pools.values() if p.database == pool.database]
        if sum(p.total for p in same) < cap:
            return True
        for other in same:
            if other is not pool and other.idle:
                other.discard(other.idle[0], CloseReason.POOL_LIMIT)
                return True
        return False

    # ------------------------------------------------------------------ clients
    def client_connected(self, client: ClientSession[Any]) -> None:
        self.clients.add(client)

    def client_disconnected(self, client: ClientSession[Any], reason: DisconnectReason) -> None:
        self.clients.discard(client)
        self.disconnects[reason.value] = self.disconnects.get(reason.value, 0) + 1
        key = client.key
        if key[0] and self.cancel_keys.get(key[0]) is client:
            del self.cancel_keys[key[0]]

    def next_connection_id(self) -> int:
        self._next_conn_id = (self._next_conn_id + 1) & 0x7FFFFFFF or 1
        return self._next_conn_id

    # ------------------------------------------------------------------ cancel requests
    def register_cancel_key(self, client: ClientSession[Any]) -> tuple[int, int]:
        index, count = self.config.share
        while True:
            # With N workers, a key's pid is ≡ the worker's index (mod N): a cancel request
            # that lands on another worker is forwarded to this one.
            pid = secrets.randbits(31) // count * count + index
            if pid and pid not in self.cancel_keys:
                break
        self.cancel_keys[pid] = client
        return pid, secrets.randbits(32)

    def handle_cancel(self, pid: int, secret: int, forwarded: bool = False) -> None:
        """Route a CancelRequest to the server the client holds right now, or drop it."""
        client = self.cancel_keys.get(pid)
        index, count = self.config.share
        ops = self.operations
        worker = ops.worker if ops is not None else None
        if client is None and not forwarded and worker is not None and pid % count != index:
            log.debug("cancel request forwarded to worker %d", pid % count)
            self.spawn(self._forward_cancel(worker, pid % count, pid, secret))
            return
        if client is None or client.key[1] != secret:
            log.debug("cancel request for unknown key dropped")
            return
        server = client.server
        if server is None or not server.requests:
            log.debug("%r: cancel dropped: no query running", client)
            return
        server.cancels_in_flight += 1
        self.spawn(self._cancel(server))

    async def _forward_cancel(self, worker: Any, index: int, pid: int, secret: int) -> None:
        try:
            await worker.send_control(index, f"cancel {self.name} {pid} {secret}", 5.0)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot forward a cancel request to worker %d: %s", index, exc)

    async def cancel(self, server: ServerSession) -> bool:
        """Cancel whatever `server` is running (the protocol's way); False if the delivery was
        not confirmed (the request may still arrive later)."""
        try:
            await self.adapter.cancel(self, server)
        except (TimeoutError, OSError) as exc:
            log.warning("%r: cancel request to server not confirmed (%s); the server will be "
                        "closed rather than reused", server, exc)
            return False
        return True

    async def _cancel(self, server: ServerSession) -> None:
        confirmed = False
        try:
            confirmed = await self.cancel(server)
        finally:
            server.cancel_done(confirmed)

    def scram_verifier(self, user: str, password: str | None) -> scram.ScramVerifier:
        """Per-user verifier, derived once (PBKDF2 is too slow for every login)."""
        if password is None:
            return scram.mock_verifier(user)
        key = (user, password)
        verifier = self._verifiers.get(key)
        if verifier is None:
            verifier = self._verifiers[key] = scram.make_verifier(password)
        return verifier

    # ------------------------------------------------------------------ counters
    def count_result(self, result: ClientResult) -> None:
        self.client_results[result.value] = self.client_results.get(result.value, 0) + 1

    def count_pin(self, reason: str) -> None:
        self.pins[reason] = self.pins.get(reason, 0) + 1

    # ------------------------------------------------------------------ tasks, shutdown
    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def active_transactions(self) -> int:
        return sum(len(p.active) for p in self.pools.values())

    def close_all(self, reason: CloseReason) -> None:
        for pool in self.pools.values():
            pool.close_all(reason)
        for task in list(self._tasks):
            task.cancel()
