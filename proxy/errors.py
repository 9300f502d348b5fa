"""One ProxyError tree: every error poolproxy sends to a client, with its SQLSTATE and MySQL errno.

Each protocol renders the same exception its own way (PostgreSQL ErrorResponse, MySQL ERR packet),
so sessions raise or pass these and never invent codes locally.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base: `sqlstate` is PostgreSQL's code; `mysql_errno`/`mysql_sqlstate` MySQL's."""

    sqlstate = "08006"
    mysql_errno = 2013
    mysql_sqlstate = "HY000"
    #: FATAL errors end the client connection; ERROR ones leave it usable.
    fatal = True

    def __init__(self, message: str, *, hint: str | None = None, detail: str | None = None,
                 sqlstate: str | None = None, mysql_errno: int | None = None,
                 mysql_sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail
        if sqlstate is not None:
            self.sqlstate = sqlstate
        if mysql_errno is not None:
            self.mysql_errno = mysql_errno
        if mysql_sqlstate is not None:
            self.mysql_sqlstate = mysql_sqlstate


class ProtocolViolation(ProxyError):
    sqlstate = "08P01"
    mysql_errno = 1047
    mysql_sqlstate = "08S01"


class AuthFailed(ProxyError):
    sqlstate = "28P01"
    mysql_errno = 1045
    mysql_sqlstate = "28000"


class TooManyConnections(ProxyError):
    sqlstate = "53300"
    mysql_errno = 1040
    mysql_sqlstate = "08004"


class ShuttingDown(ProxyError):
    sqlstate = "57P01"
    mysql_errno = 1053
    mysql_sqlstate = "08S01"


class ServerConnectionLost(ProxyError):
    sqlstate = "08006"
    mysql_errno = 2013
    mysql_sqlstate = "HY000"


class UnknownDatabase(ProxyError):
    sqlstate = "3D000"
    mysql_errno = 1049
    mysql_sqlstate = "42000"


class QueryWaitTimeout(ProxyError):
    sqlstate = "57014"
    mysql_errno = 3024
    mysql_sqlstate = "HY000"


class FeatureNotSupported(ProxyError):
    sqlstate = "0A000"
    mysql_errno = 1235
    mysql_sqlstate = "42000"


class ServerUnavailable(ProxyError):
    """The database could not be reached (connection refused, timeout)."""

    sqlstate = "08006"
    mysql_errno = 2003
    mysql_sqlstate = "HY000"


class ServerLoginError(ProxyError):
    """The database refused our login; carries the server's own code and text to the client."""


class ServerTlsError(ServerLoginError):
    """TLS toward the database failed (refused, certificate, handshake): a config problem."""

    sqlstate = "08006"
    mysql_errno = 2026
    mysql_sqlstate = "HY000"
