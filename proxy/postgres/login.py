"""PostgreSQL client login: the startup packet, authentication (SCRAM, md5, trust), startup
parameters made canonical by the server, and the hand-over to the admin console.

`ClientLogin` is the first layer of a PostgreSQL client session; `client.ClientConnection`
adds the hot path once the client is logged in.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from .. import tls
from ..auth import md5 as md5auth
from ..auth import scram
from ..auth.credentials import ScramKeys
from ..core.reasons import ClientResult, DisconnectReason
from ..core.session import ClientSession
from ..errors import (
    AuthFailed,
    FeatureNotSupported,
    ProtocolViolation,
    ProxyError,
    ServerLoginError,
    ShuttingDown,
    TooManyConnections,
    UnknownDatabase,
)
from ..ops.console import ADMIN_DATABASES, Console
from ..pool import C_LOGIN, CloseReason, Pool
from . import codec
from .codec import MSG_PASSWORD
from .console_bridge import ConsoleBridge
from .params import SYNC_PARAMS, canonical_param, sync_sql, tracked_lower
from .server import ServerConnection

if TYPE_CHECKING:
    from ..core.listener import ListenerRuntime

log = logging.getLogger("poolproxy.postgres.client")

#: Startup parameters accepted and ignored (as PgBouncer's usual ignore_startup_parameters).
_IGNORED_STARTUP = frozenset(("extra_float_digits",))


class ClientLogin(ClientSession[ServerConnection]):
    """A PostgreSQL client until it is logged in (and the admin console's sessions)."""

    __slots__ = ("_auth_step", "_console", "_direct_tls", "_looked_up", "_looked_up_password",
                 "_md5_salt", "_md5_secret", "_password", "_reader", "_scram", "_startup",
                 "_startup_params", "_tracked", "database", "params", "statement_mode")

    def __init__(self, listener: ListenerRuntime) -> None:
        super().__init__(listener)
        self.database = ""
        self.params: dict[str, str] = {}
        self.session_mode = False
        self.statement_mode = False
        self._tracked = tracked_lower()
        self._startup: codec.StartupReader | None = codec.StartupReader()
        self._reader: codec.MessageReader | None = None
        self._auth_step: str | None = None
        self._scram: scram.ScramServer | None = None
        self._md5_salt = b""
        self._password: str | None = None
        #: auth.query: the secret's md5 hash or SCRAM verifier (or plaintext password).
        self._md5_secret: str | None = None
        self._looked_up: scram.ScramVerifier | None = None
        self._looked_up_password: str | None = None
        self._startup_params: dict[str, str] = {}
        self._console: ConsoleBridge | None = None
        self._direct_tls = False

    def __repr__(self) -> str:
        return f"<pg client {self.user}@{self.database} {self.peer}>"

    def data_received(self, data: bytes) -> None:
        if self.state is C_LOGIN:
            self._login_data(data)
        elif self._console is not None:
            self._console.feed(data)
        else:
            self._client_data(data)

    def _client_data(self, data: bytes) -> None:
        raise NotImplementedError

    def fail(self, exc: ProxyError, fatal: bool = True) -> None:
        """Send `exc` as an ErrorResponse; FATAL ones close the connection."""
        if self.transport is None or self.transport.is_closing():
            return
        self.send(codec.error_response(
            exc.sqlstate, exc.message, severity="FATAL" if fatal else "ERROR",
            detail=exc.detail, hint=exc.hint))
        if fatal:
            self.close_with(self._reason_for(exc))

    def _fail_login_timeout(self) -> None:
        self.disconnect_reason = DisconnectReason.LOGIN_TIMEOUT
        self.fail(self._login_timeout_error())

    # ------------------------------------------------------------------ login
    def _login_data(self, data: bytes) -> None:
        try:
            if self._startup is not None:
                if data and data[0] == 0x16 and self.tls is None and self._startup.empty():
                    # A TLS record, not a startup packet (whose first length byte is 0):
                    # PostgreSQL 17's direct TLS (sslnegotiation=direct).
                    self._begin_direct_tls(data)
                    return
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
            self._refuse_login(exc)
        except codec.ProtocolError as exc:
            self._refuse_login(ProtocolViolation(
                f"invalid startup or authentication message: {exc}"))

    def _on_startup_packet(self, payload: bytes) -> bool:
        msg = codec.parse_startup(payload)
        if isinstance(msg, codec.SpecialRequest):
            if msg.code == codec.CANCEL_REQUEST_CODE:
                self.listener.handle_cancel(msg.pid, msg.secret)
                self.close_with(DisconnectReason.CLIENT_CLOSE)
                return False
            if msg.code == codec.SSL_REQUEST_CODE:
                return self._on_ssl_request()
            self.send(b"N")  # GSSENCRequest: no GSSAPI encryption here (libpq moves on)
            return True
        rest = self._startup.take_rest() if self._startup else b""
        self._startup = None
        self._on_startup(msg.params)
        if rest and self._reader is not None:
            self._login_data(rest)
        return True

    # ------------------------------------------------------------------ TLS
    def _on_ssl_request(self) -> bool:
        """SSLRequest: 'S' and the handshake when client_tls offers TLS, else 'N'. False: stop
        reading the plaintext that is left (there must be none)."""
        context = self.listener.client_tls.context
        if self.tls is not None:
            raise ProtocolViolation("SSLRequest inside TLS")
        if context is None:
            self.send(b"N")
            return True
        assert self._startup is not None
        if self._startup.take_rest():
            # Bytes after SSLRequest would be read as if they came through TLS (CVE-2021-23214).
            raise ProtocolViolation("unencrypted data after SSLRequest")
        self._start_tls(context, answer=b"S")
        return False

    def _begin_direct_tls(self, data: bytes) -> None:
        lst = self.listener
        context = lst.client_tls.context
        if context is None:
            lst.count_tls("client", "refused")
            lst.count_result(ClientResult.PROTOCOL_ERROR)
            log.info("%r: direct TLS refused: client_tls is disable on this listener", self)
            self.close_with(DisconnectReason.PROTOCOL_ERROR)
            return
        self._direct_tls = True
        self._start_tls(context, initial=data)

    def _tls_ready(self) -> None:
        transport = self.transport
        assert transport is not None
        if self._direct_tls:
            sslobj = transport.get_extra_info("ssl_object")
            if sslobj is None or sslobj.selected_alpn_protocol() != tls.PG_ALPN:
                # PostgreSQL requires ALPN with direct TLS (no protocol confusion attacks).
                self.fail(ProtocolViolation(
                    "direct TLS connection without ALPN protocol \"postgresql\""))
                return
        transport.resume_reading()

    def _check_tls(self, user: str) -> None:
        """client_tls rules once the user is known: TLS required, the certificate's CN."""
        mode = self.listener.client_tls.mode
        if self.tls is None:
            if tls.requires_tls(mode):
                raise ProtocolViolation(
                    f"this poolproxy listener accepts only TLS connections (client_tls mode "
                    f"{mode})", hint="connect with sslmode=require (or verify-ca/verify-full)")
        elif tls.verifies_peer(mode) and not self.peer_certificate():
            raise AuthFailed("connection requires a valid client certificate", sqlstate="28000",
                             hint=f"client_tls mode {mode}: connect with sslcert/sslkey")
        elif tls.checks_name(mode) and not tls.client_cert_matches_user(
                self.peer_certificate(), user):
            raise AuthFailed(f'certificate authentication failed for user "{user}"',
                             sqlstate="28000",
                             detail="the client certificate's common name is not the user name")

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
        self._check_tls(user)
        if len(lst.clients) > cfg.client_limit:
            raise TooManyConnections(
                f"no more connections allowed (max_client_conn={cfg.client_limit})",
                hint="raise max_client_conn or use fewer client connections")
        if self.database in ADMIN_DATABASES:
            ops = lst.operations
            if ops is None or user not in ops.config.admin.admin_users:
                raise AuthFailed(f'user "{user}" may not use the admin console',
                                 sqlstate="28000", hint="list the user under admin.admin_users")
            self._console = ConsoleBridge(
                Console(ops), self.send, self.fail,
                lambda: self.close_with(DisconnectReason.CLIENT_CLOSE), self.listener.spawn,
                lambda: self.transport is not None and not self.transport.is_closing())
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
        self._reader = codec.MessageReader(max_message=1 << 16)
        if cfg.auth_type == "passthrough":
            self._ask_cleartext()
        elif ucfg is None and cfg.auth_query is not None:
            # Not listed: its secret comes from the database (auth.query).
            lst.spawn(self._lookup_then_auth(user))
        else:
            self._challenge(None)

    def _challenge(self, secret: str | None) -> None:
        """Ask for the listener's kind of proof. `secret`: from auth.query (a SCRAM or md5
        secret; None: the user is listed, or unknown). With a secret, its kind decides."""
        lst = self.listener
        auth = lst.config.auth_type
        if not secret:
            secret = None  # no row, NULL or an empty secret: no password can match
        if secret is not None and secret.startswith("md5"):
            auth = "md5"
        elif secret is not None:
            auth = "scram-sha-256"
        if auth == "trust":
            # Trust still means "a configured user": we need its password to log in upstream,
            # and an unlisted name must not become a server login attempt.
            if lst.config.user(self.user) is None:
                denied = self._denied()
                denied.hint = "the user is not configured on this poolproxy listener"
                raise denied
            self._auth_ok()
        elif auth == "md5":
            self._md5_salt = os.urandom(4)
            self._md5_secret = secret
            self._auth_step = "md5"
            self.send(codec.auth_request(codec.AUTH_MD5, self._md5_salt))
        else:
            verifier = self._scram_verifier(secret)
            self._scram = scram.ScramServer(verifier)
            self._auth_step = "sasl-first"
            self.send(codec.auth_sasl([scram.MECHANISM]))

    def _scram_verifier(self, secret: str | None) -> scram.ScramVerifier:
        if secret is None:
            return self.listener.scram_verifier(self.user, self._password)
        try:
            verifier = scram.parse_verifier(secret)
        except (scram.ScramError, ValueError):
            # A plaintext password in the database (very old setups): derive the verifier.
            verifier = self.listener.scram_verifier(self.user, secret)
            self._looked_up_password = secret
        else:
            self._looked_up = verifier
        return verifier

    async def _lookup_then_auth(self, user: str) -> None:
        try:
            secret = await self.listener.lookup_secret(user, self.database)
        except ProxyError as exc:
            self._refuse_login(ServerLoginError(
                f"cannot look up user \"{user}\" (auth.query): {exc.message}",
                sqlstate="08006", hint="check auth.user, auth.dbname and auth.query"))
            return
        except TimeoutError:
            self._refuse_login(ServerLoginError(
                f"cannot look up user \"{user}\" (auth.query): no server connection in time"))
            return
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self._challenge(secret)
        except ProxyError as exc:
            self._refuse_login(exc)

    # ------------------------------------------------------------------ passthrough
    def _ask_cleartext(self) -> None:
        lst = self.listener
        if self.tls is None and not lst.config.allow_plaintext_passthrough \
                and not self.from_loopback():
            raise AuthFailed(
                "passthrough authentication sends the password in cleartext: this listener "
                "takes it only over TLS or from this host", sqlstate="28000",
                hint="connect with sslmode=require, or set auth.allow_plaintext_passthrough")
        self._auth_step = "password"
        self.send(codec.auth_request(codec.AUTH_CLEARTEXT))

    def _on_password(self, password: str) -> None:
        """passthrough: judged at once when it can be (listed user, recent server check),
        else by a server login first."""
        verdict = self.listener.passthrough_verdict(self.database, self.user, password)
        if verdict is None:
            self._auth_step = None
            self.listener.spawn(self._validate_password(password))
        elif verdict:
            self._auth_ok()
        else:
            raise self._denied()

    async def _validate_password(self, password: str) -> None:
        lst = self.listener
        try:
            ok = await lst.validate_password(lst.get_pool(self.database, self.user), password)
        except ProxyError as exc:
            self._refuse_login(exc)
            return
        if self.transport is None or self.transport.is_closing():
            return
        if not ok:
            self._refuse_login(self._denied())
            return
        self._auth_ok()

    def _denied(self) -> AuthFailed:
        """The one error for an unknown user and a wrong password."""
        return AuthFailed(f'password authentication failed for user "{self.user}"')

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
        if step == "password":
            self._on_password(body.rstrip(b"\x00").decode("utf-8", "surrogateescape"))
        elif step == "md5":
            response = body.rstrip(b"\x00")
            secret = self._md5_secret
            if secret is not None:  # auth.query's md5 hash
                try:
                    good = md5auth.verify_md5_hash(response, secret, self._md5_salt)
                except ValueError:
                    log.warning("%r: auth.query returned a malformed md5 secret", self)
                    good = False
                if not good:
                    self._failed_lookup()
                    raise self._denied()
                self.listener.learn(self.user, secret)
            elif not self._password or not md5auth.verify_md5(response, self.user,
                                                              self._password, self._md5_salt):
                raise self._denied()
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
                self._failed_lookup()
                raise self._denied() from None
            looked_up = self._looked_up
            if looked_up is not None:  # auth.query: log in to servers with the proof's key
                client_key = self._scram.client_key
                assert client_key is not None
                self.listener.learn(self.user, ScramKeys(client_key, looked_up.server_key,
                                                         looked_up.salt, looked_up.iterations))
            elif self._looked_up_password is not None:
                self.listener.learn(self.user, self._looked_up_password)
            elif self._password is None:  # unknown user: the mock verifier cannot succeed
                raise self._denied()
            self.send(codec.auth_request(codec.AUTH_SASL_FINAL, reply))
            self._auth_ok()
        else:
            raise ProtocolViolation("unexpected password message")

    def _failed_lookup(self) -> None:
        """A failed login of a looked-up user: look the secret up afresh next time (the
        password may just have changed)."""
        if self.listener.config.user(self.user) is None:
            self.listener.forget_secret(self.user)

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

    async def _prepare_login(self, pool: Pool) -> None:
        """Learn the server's parameters (first client of a pool) and have the server
        canonicalise and validate this client's startup values (cached per listener), so
        the client sees exactly the ParameterStatus a direct connection would show."""
        server = await self._borrow_at_login(pool)
        if server is None:
            return
        if pool.server_params is None:
            pool.server_params = dict(server.params)
        try:
            self._check_startup_params(pool.server_params)
        except ProxyError as exc:
            pool.checkin(server)
            self._refuse_login(exc)
            return
        pending = self._uncanonical(pool.server_params)
        if pending:
            try:
                errors = await server.run_internal(sync_sql(pending))
            except ProxyError as exc:
                pool.discard(server, CloseReason.SYNC_FAILED)
                self._refuse_login(exc)
                return
            server.param_sig = None
            if errors:
                if server.reusable():
                    pool.checkin(server)
                else:
                    pool.discard(server, CloseReason.SYNC_FAILED)
                err = errors[0]
                self._refuse_login(ProxyError(err.get("M", "invalid startup parameter"),
                                              sqlstate=err.get("C", "22023"), hint=err.get("H")))
                return
            canon = self.listener.canonical_params
            for key, value in pending.items():
                canon[(key, value)] = server.params.get(key, value)
        pool.checkin(server)
        if self.transport is not None and not self.transport.is_closing():
            self._finish_login()

    def _finish_login(self) -> None:
        assert self.pool is not None and self.transport is not None
        reported = self.pool.server_params or {}
        params = dict(reported)
        canon = self.listener.canonical_params
        for key, value in self._startup_params.items():
            params[key] = canon.get((key, value), value)
        self.params = self.listener.shared(params)
        # Only what this server reports can be tracked (search_path is reported from
        # PostgreSQL 18 on); SET of anything else pins.
        self._tracked = tracked_lower(reported)
        out = [codec.parameter_status(k, v) for k, v in params.items()]
        self.key = self.listener.register_cancel_key(self)
        out.append(codec.backend_key_data(*self.key))
        out.append(codec.ready_for_query(b"I"))
        self.send(b"".join(out))
        self._logged_in()
        log.debug("%r: logged in", self)
        rest = self._reader.take_rest() if self._reader else b""
        self._reader = None
        self._scram = None
        if rest:
            self._client_data(rest)

    # ------------------------------------------------------------------ admin console
    def _finish_console_login(self) -> None:
        params = {"server_version": "15.0 (poolproxy)", "server_encoding": "UTF8",
                  "client_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "UTC",
                  "integer_datetimes": "on", "standard_conforming_strings": "on",
                  "application_name": self._startup_params.get("application_name", "")}
        out = [codec.parameter_status(k, v) for k, v in params.items()]
        out.append(codec.backend_key_data(0, 0))
        out.append(codec.ready_for_query(b"I"))
        self.send(b"".join(out))
        self._logged_in()
        log.info("%r: admin console session", self)
