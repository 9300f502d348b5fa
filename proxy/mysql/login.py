"""MySQL/MariaDB client login: the greeting, the handshake response, authentication
(mysql_native_password, caching_sha2_password's fast path, an auth switch when the client
offers another plugin), and a first server connection for a new pool.

`ClientLogin` is the first layer of a MySQL client session; `client.ClientConnection` adds the
command phase.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from .. import tls
from ..auth import caching_sha2, mysql_native
from ..auth.credentials import NativeStage1
from ..core.reasons import DisconnectReason
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
from ..pool import C_LOGIN, Pool
from . import codec
from .server import BASE_CAPS, ServerConnection

if TYPE_CHECKING:
    from ..core.listener import ListenerRuntime

log = logging.getLogger("poolproxy.mysql.client")

#: Client capabilities that change the wire format or semantics: pools are split by them so a
#: server connection always speaks exactly what its current client negotiated.
SEMANTIC_CAPS = (codec.CLIENT_FOUND_ROWS | codec.CLIENT_MULTI_STATEMENTS | codec.CLIENT_MULTI_RESULTS
                 | codec.CLIENT_PS_MULTI_RESULTS | codec.CLIENT_DEPRECATE_EOF
                 | codec.CLIENT_SESSION_TRACK | codec.CLIENT_LOCAL_FILES)
OFFERED_CAPS = BASE_CAPS | SEMANTIC_CAPS | codec.CLIENT_CONNECT_WITH_DB
#: Larger client packets are refused (MySQL's own default max_allowed_packet is 16-64 MiB).
MAX_CLIENT_PACKET = 64 << 20
MAX_LOGIN_PACKET = 64 << 10
DEFAULT_VERSION = "5.5.5-10.11.0-MariaDB-poolproxy"
_AUTOCOMMIT = codec.SERVER_STATUS_AUTOCOMMIT


#: passthrough asks for the password through caching_sha2_password's full authentication
#: (inside TLS, as MySQL 8 clients send it) or mysql_clear_password (loopback, or allowed).
_GREETING_PLUGIN = {"passthrough": "caching_sha2_password"}
_CLEAR = "mysql_clear_password"


def _nonce() -> bytes:
    # Printable, NUL-free bytes, as servers generate them (some clients treat NUL as the end).
    return bytes(33 + b % 94 for b in os.urandom(codec.SCRAMBLE_LENGTH))


class ClientLogin(ClientSession[ServerConnection]):
    """A MySQL client until it is logged in."""

    __slots__ = ("_auth_plugin", "_auth_seq", "_login_step", "_nonce", "_offered", "_reader",
                 "caps", "charset", "conn_id", "database", "schema")

    def __init__(self, listener: ListenerRuntime) -> None:
        super().__init__(listener)
        self.database: str | None = None
        self.caps = 0
        self.charset = codec.UTF8MB4_GENERAL_CI
        self.schema: str | None = None
        # Until the client is authenticated, a login packet is all it may send: keep it small.
        self._reader = codec.PacketReader(max_packet=MAX_LOGIN_PACKET)
        self._nonce = _nonce()
        self._offered = 0
        self._login_step = "response"
        self._auth_seq = 0
        self._auth_plugin = "mysql_native_password"
        self.conn_id = listener.next_connection_id()

    def __repr__(self) -> str:
        return f"<mysql client {self.user}@{self.database} {self.peer}>"

    def _greet(self) -> None:
        lst = self.listener
        greeting = lst.greeting
        version = greeting.server_version if greeting else DEFAULT_VERSION
        offered = OFFERED_CAPS & (greeting.capabilities if greeting else 0xFFFFFFFF)
        offered |= codec.CLIENT_PROTOCOL_41 | codec.CLIENT_SECURE_CONNECTION | codec.CLIENT_PLUGIN_AUTH
        if lst.client_tls.context is not None:
            offered |= codec.CLIENT_SSL
        self.send(codec.encode_packet(0, codec.build_handshake(
            version, self.conn_id, self._nonce, offered, charset=codec.UTF8MB4_GENERAL_CI,
            auth_plugin_name=_GREETING_PLUGIN.get(lst.config.auth_type, lst.config.auth_type))))
        self._offered = offered

    # ------------------------------------------------------------------ errors
    def fail(self, exc: ProxyError, fatal: bool = True, seq: int | None = None) -> None:
        """Send `exc` as an ERR packet (`seq`: its sequence id; by default the next of the
        login exchange, or 1 for a command's answer); fatal ones close the connection."""
        if self.transport is None or self.transport.is_closing():
            return
        if seq is None:
            seq = self._auth_seq + 1 if self.state is C_LOGIN else 1
        message = exc.message if not exc.hint else f"{exc.message} ({exc.hint})"
        self.send(codec.encode_packet(
            seq & 0xFF, codec.build_err(exc.mysql_errno, exc.mysql_sqlstate, message)))
        if fatal:
            self.close_with(self._reason_for(exc))

    def _fail_login_timeout(self) -> None:
        self.disconnect_reason = DisconnectReason.LOGIN_TIMEOUT
        self.fail(self._login_timeout_error(mysql_errno=1043))

    # ------------------------------------------------------------------ login
    def _login_packet(self, seq: int, payload: bytes) -> None:
        try:
            if self._login_step == "response":
                self._on_handshake_response(seq, payload)
            elif self._login_step in ("switch", "cleartext"):
                self._auth_seq = seq
                self._on_auth_response(payload)
            else:
                raise ProtocolViolation("unexpected packet during login", mysql_errno=1043)
        except ProxyError as exc:
            self._refuse_login(exc)
        except codec.ProtocolError as exc:
            self._auth_seq = seq
            self._refuse_login(ProtocolViolation(f"bad handshake: {exc}", mysql_errno=1043))

    def _on_handshake_response(self, seq: int, payload: bytes) -> None:
        self._auth_seq = seq
        lst = self.listener
        cfg = lst.config
        if codec.is_ssl_request(payload):
            self._on_ssl_request(self._reader.pending)
            return
        resp = codec.parse_handshake_response(payload)
        if lst.draining:
            raise ShuttingDown("poolproxy is shutting down")
        self.user = resp.username
        self._check_tls(resp.username)
        self.caps = resp.capabilities & self._offered & ~codec.CLIENT_SSL
        self.charset = resp.charset
        self.database = resp.database or None
        self.schema = self.database
        if len(lst.clients) > cfg.client_limit:
            raise TooManyConnections(
                f"Too many connections (max_client_conn={cfg.client_limit})",
                hint="raise max_client_conn or use fewer client connections")
        if self.database and cfg.database(self.database) is None:
            raise UnknownDatabase(f"Unknown database '{self.database}' (not configured in poolproxy)")
        plugin = self._plugin_for(cfg.auth_type, cfg.user(self.user) is None)
        self._auth_plugin = plugin
        if (resp.auth_plugin_name or "mysql_native_password") != plugin:
            self._switch(seq + 1, plugin)
            return
        self._on_auth_response(resp.auth_response)

    def _plugin_for(self, auth_type: str, unlisted: bool) -> str:
        """The auth plugin this client must answer: the listener's; mysql_native_password
        for a user auth.query looks up (its hash is what the database keeps); passthrough:
        caching_sha2_password's full authentication inside TLS, else mysql_clear_password."""
        cfg = self.listener.config
        if auth_type == "passthrough":
            if self.tls is not None:
                return "caching_sha2_password"
            if not cfg.allow_plaintext_passthrough and not self.from_loopback():
                raise AuthFailed(
                    f"Access denied for user '{self.user}': passthrough authentication sends "
                    "the password in cleartext; this listener takes it only over SSL or from "
                    "this host", hint="connect with SSL, or set auth.allow_plaintext_passthrough")
            return _CLEAR
        if unlisted and cfg.auth_query is not None:
            return "mysql_native_password"
        return auth_type

    def _switch(self, seq: int, plugin: str) -> None:
        self._login_step = "switch"
        self._auth_seq = seq
        data = b"" if plugin == _CLEAR else self._nonce
        self.send(codec.encode_packet(seq, codec.build_auth_switch_request(plugin, data)))

    def _denied(self, response: bytes) -> AuthFailed:
        """The one error for an unknown user and a wrong password."""
        return AuthFailed(f"Access denied for user '{self.user}'@'{self.peer.rsplit(':', 1)[0]}' "
                          f"(using password: {'YES' if response else 'NO'})")

    def _on_auth_response(self, response: bytes) -> None:
        cfg = self.listener.config
        if cfg.auth_type == "passthrough":
            if self._auth_plugin == _CLEAR or self._login_step == "cleartext":
                self._on_cleartext(response.rstrip(b"\x00").decode("utf-8", "surrogateescape"))
                return
            # caching_sha2_password's scramble: ask for the full authentication (the client
            # then sends its password inside TLS).
            self._login_step = "cleartext"
            self._auth_seq += 1
            self.send(codec.encode_packet(self._auth_seq, codec.build_auth_more_data(
                bytes((caching_sha2.PERFORM_FULL_AUTH,)))))
            return
        if cfg.user(self.user) is None and cfg.auth_query is not None:
            # Nothing more may come from the client until the lookup is done (a second
            # HandshakeResponse must not change who is being checked).
            self._login_step = "checking"
            self.listener.spawn(self._lookup_then_verify(self.user, response))
            return
        self._verify(response)

    async def _lookup_then_verify(self, user: str, response: bytes) -> None:
        lst = self.listener
        try:
            secret = await lst.lookup_secret(user, self.database or "")
            stage1 = None
            if secret is not None:
                try:
                    stage2 = mysql_native.parse_native_hash(secret)
                except ValueError:
                    log.warning("%r: auth.query returned a secret that is not a "
                                "mysql_native_password hash; refusing the login", self)
                else:
                    stage1 = mysql_native.recover_stage1(response, stage2, self._nonce)
            if self.transport is None or self.transport.is_closing():
                return
            if self.user != user:  # cannot happen: no packet is read while "checking"
                raise ProtocolViolation("the user changed during authentication",
                                        mysql_errno=1043)
            if stage1 is None:
                lst.forget_secret(user)
                raise self._denied(response)
            lst.learn(user, NativeStage1(stage1))
            self._accepted()
        except ProxyError as exc:
            self._refuse_login(exc)
        except TimeoutError:
            self._refuse_login(ServerLoginError(
                f"cannot look up user '{user}' (auth.query): no server connection in time"))

    def _on_cleartext(self, password: str) -> None:
        verdict = self.listener.passthrough_verdict(self.database or "", self.user, password)
        if verdict is None:
            self._login_step = "checking"
            self.listener.spawn(self._validate_password(password))
        elif verdict:
            self._accepted()
        else:
            raise self._denied(password.encode("utf-8", "surrogateescape"))

    async def _validate_password(self, password: str) -> None:
        lst = self.listener
        try:
            ok = await lst.validate_password(lst.get_pool(*self._pool_key()), password)
            if self.transport is None or self.transport.is_closing():
                return
            if not ok:
                raise self._denied(password.encode("utf-8", "surrogateescape"))
            self._accepted()
        except ProxyError as exc:
            self._refuse_login(exc)

    def _pool_key(self) -> tuple[str, str, tuple[int, int]]:
        return self.database or "", self.user, (self.caps & SEMANTIC_CAPS, self.charset)

    def _verify(self, response: bytes) -> None:
        ucfg = self.listener.config.user(self.user)
        password = ucfg.password if ucfg else None
        if self._auth_plugin == "caching_sha2_password":
            ok = password is not None and caching_sha2.verify_caching_sha2(response, password,
                                                                          self._nonce)
        else:
            ok = password is not None and mysql_native.verify_native(response, password, self._nonce)
        if not ok:
            raise self._denied(response)
        if self._auth_plugin == "caching_sha2_password":
            self._auth_seq += 1
            self.send(codec.encode_packet(
                self._auth_seq, codec.build_auth_more_data(bytes((caching_sha2.FAST_AUTH_SUCCESS,)))))
        self._accepted()

    def _accepted(self) -> None:
        self._login_step = "done"
        self.pool = pool = self.listener.get_pool(*self._pool_key())
        self.session_mode = pool.settings.pool_mode == "session"
        if pool.server_params is not None:
            self._finish_login()
        else:
            self.listener.spawn(self._validate_pool(pool))

    # ------------------------------------------------------------------ TLS
    def _on_ssl_request(self, rest: bytes) -> None:
        """The client's SSLRequest packet: the TLS handshake follows (`rest`: what of it
        arrived with the request), then the real HandshakeResponse inside TLS."""
        context = self.listener.client_tls.context
        if self.tls is not None or self._tls_handshake:
            raise ProtocolViolation("SSL connection request inside TLS", mysql_errno=1043)
        if context is None or not self._offered & codec.CLIENT_SSL:
            raise FeatureNotSupported(
                "TLS is not enabled on this poolproxy listener", mysql_errno=2026,
                hint="connect without SSL, or set client_tls on the listener")
        self._reader.clear()
        self._start_tls(context, initial=rest)

    def _tls_ready(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def _check_tls(self, user: str) -> None:
        mode = self.listener.client_tls.mode
        if self.tls is None:
            if tls.requires_tls(mode):
                raise ProtocolViolation(
                    "Connections using insecure transport are prohibited by this poolproxy "
                    f"listener (client_tls mode {mode})", mysql_errno=3159,
                    hint="connect with SSL (ssl_mode=REQUIRED or VERIFY_IDENTITY)")
        elif tls.verifies_peer(mode) and not self.peer_certificate():
            raise AuthFailed(f"Access denied for user '{user}': this listener requires a "
                             f"client certificate (client_tls mode {mode})")
        elif tls.checks_name(mode) and not tls.client_cert_matches_user(
                self.peer_certificate(), user):
            raise AuthFailed(f"Access denied for user '{user}': the client certificate's "
                             "common name is not the user name")

    async def _validate_pool(self, pool: Pool) -> None:
        """The first client of a pool: open a server now so a bad database or server password
        is reported at login, as a direct connection would."""
        server = await self._borrow_at_login(pool)
        if server is None:
            return
        if pool.server_params is None:
            pool.server_params = dict(server.params or {})
        pool.checkin(server)
        if self.transport is not None and not self.transport.is_closing():
            self._finish_login()

    def _finish_login(self) -> None:
        self._reader.max_packet = MAX_CLIENT_PACKET
        self.send(codec.encode_packet(
            self._auth_seq + 1, codec.build_ok(status_flags=_AUTOCOMMIT, capabilities=self.caps)))
        self._logged_in()
        log.debug("%r: logged in", self)
