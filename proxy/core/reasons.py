"""Why things end, as enums (values are log text and metric labels): what a lost server means
for the requests in flight, why a client connection ended, how a login was counted."""

from __future__ import annotations

import enum

from ..errors import (
    AuthFailed,
    ProtocolViolation,
    ProxyError,
    QueryWaitTimeout,
    ServerUnavailable,
    ShuttingDown,
    TooManyConnections,
)


class LossOutcome(enum.Enum):
    """What a lost server means for the requests the client had in flight on it."""

    REPLAY = "replay"  # provably did not run: send them to another server
    NOT_APPLIED = "not_applied"  # did not take effect (or were rolled back): say so
    UNKNOWN = "unknown"  # may or may not have taken effect: SQLSTATE 08007 / MySQL 2013


class DisconnectReason(enum.Enum):
    """Why a client connection ended (log text and `poolproxy_client_disconnects_total`)."""

    CLIENT_CLOSE = "client_close"  # the client said goodbye (Terminate, COM_QUIT)
    CLIENT_EOF = "client_eof"  # the socket closed without a goodbye
    AUTH_FAILED = "auth_failed"
    LOGIN_REFUSED = "login_refused"  # unknown database or user, unsupported parameter, ...
    LOGIN_TIMEOUT = "login_timeout"
    PROTOCOL_ERROR = "protocol_error"
    TOO_MANY_CLIENTS = "too_many_clients"
    QUERY_WAIT_TIMEOUT = "query_wait_timeout"
    SERVER_UNAVAILABLE = "server_unavailable"  # no server connection could be opened
    IDLE_TIMEOUT = "idle_timeout"  # client_idle_timeout
    IDLE_TRANSACTION_TIMEOUT = "idle_transaction_timeout"
    SHUTDOWN = "shutdown"
    UNSUPPORTED = "unsupported"  # a feature poolproxy refuses (statement-mode transaction, ...)


def disconnect_reason_for(exc: ProxyError) -> DisconnectReason:
    """The reason a fatal error sent to a client ends its connection."""
    if isinstance(exc, AuthFailed):
        return DisconnectReason.AUTH_FAILED
    if isinstance(exc, TooManyConnections):
        return DisconnectReason.TOO_MANY_CLIENTS
    if isinstance(exc, ShuttingDown):
        return DisconnectReason.SHUTDOWN
    if isinstance(exc, QueryWaitTimeout):
        return DisconnectReason.QUERY_WAIT_TIMEOUT
    if isinstance(exc, ServerUnavailable):
        return DisconnectReason.SERVER_UNAVAILABLE
    if isinstance(exc, ProtocolViolation):
        return DisconnectReason.PROTOCOL_ERROR
    if exc.sqlstate.startswith("0A"):
        return DisconnectReason.UNSUPPORTED
    return DisconnectReason.LOGIN_REFUSED


class ClientResult(enum.Enum):
    """How a client login ended (`poolproxy_client_connections_total{result}`)."""

    ACCEPTED = "accepted"
    AUTH_FAILED = "auth_failed"
    LIMIT = "limit"
    PROTOCOL_ERROR = "protocol_error"


def login_result(exc: ProxyError) -> ClientResult:
    """The one place that decides how a refused login is counted."""
    if isinstance(exc, AuthFailed) or exc.sqlstate.startswith("28") or exc.mysql_errno == 1045:
        return ClientResult.AUTH_FAILED
    if isinstance(exc, TooManyConnections):
        return ClientResult.LIMIT
    return ClientResult.PROTOCOL_ERROR
