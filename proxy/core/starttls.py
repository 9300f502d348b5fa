"""Upgrading a live connection to TLS (both legs, both protocols), and what each side keeps of it.

PostgreSQL and MySQL both switch to TLS in the middle of a connection: after SSLRequest/'S',
or after MySQL's greeting and the client's SSLRequest packet. `upgrade` hands the plaintext
transport to the event loop's TLS layer (`loop.start_tls`, uvloop's compiled one in production)
and returns the encrypted transport, with the session installed as its protocol.

Two details the event loop leaves to us:
- data decrypted right after the handshake reaches the protocol *before* `start_tls` returns,
  while the session still holds the plaintext transport; a holding protocol buffers it and the
  session gets it once its transport is the encrypted one;
- PostgreSQL 17's direct TLS: the ClientHello was already read as the connection's first bytes,
  so `initial` feeds them to the TLS layer as if they had just arrived.

A failed or timed-out handshake raises `TlsHandshakeFailed` with a reason a person can act on;
the plaintext transport is closed, and the session's own `connection_lost` is NOT called (the
caller ends the session its protocol's way).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

__all__ = ["TlsHandshakeFailed", "TlsInfo", "describe_failure", "tls_info", "upgrade"]


class TlsHandshakeFailed(Exception):
    """The TLS handshake did not complete; ``str()`` says why (certificate, timeout, peer)."""


class _Holding(asyncio.Protocol):
    """The encrypted transport's protocol during the handshake: keeps what arrives."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.lost: Exception | None = None
        self.closed = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc


def describe_failure(exc: BaseException) -> str:
    """A short, specific reason for a failed handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.strerror or str(exc)  # e.g. WRONG_VERSION_NUMBER
        return f"TLS handshake failed: {str(reason).replace('_', ' ').lower()}"
    if isinstance(exc, (ConnectionError, EOFError)):
        return "the peer closed the connection during the TLS handshake"
    return f"TLS handshake failed: {exc or type(exc).__name__}"


async def upgrade(transport: asyncio.Transport, protocol: asyncio.Protocol,
                  context: ssl.SSLContext, *, server_side: bool, timeout: float,
                  server_hostname: str | None = None, initial: bytes = b"") -> asyncio.Transport:
    """Run the TLS handshake on `transport` and return the encrypted transport, whose protocol
    is then `protocol`. Data that arrived during the handshake reaches
    ``protocol.data_received`` through `loop.call_soon`, so after the caller, which must do so
    before it awaits anything, has made the returned transport its own.
    """
    loop = asyncio.get_running_loop()
    holder = _Holding()
    task = asyncio.ensure_future(loop.start_tls(
        transport, holder, context, server_side=server_side, server_hostname=server_hostname,
        ssl_handshake_timeout=max(timeout, 0.001)))
    if initial:
        # start_tls has installed its TLS protocol on the raw transport once the task ran
        # its first step; feed it the ClientHello we already read (BufferedProtocol API,
        # shared by asyncio's and uvloop's TLS layers).
        await asyncio.sleep(0)
        tls_protocol: Any = transport.get_protocol()

        def feed() -> None:
            if transport.is_closing():
                return
            buf = tls_protocol.get_buffer(len(initial))
            buf[:len(initial)] = initial
            tls_protocol.buffer_updated(len(initial))

        loop.call_soon(feed)
    try:
        encrypted = await task
    except (ssl.SSLError, OSError, TimeoutError, ConnectionError, EOFError) as exc:
        transport.close()
        raise TlsHandshakeFailed(describe_failure(exc)) from exc
    except asyncio.CancelledError:
        transport.close()
        raise
    if encrypted is None or encrypted.is_closing() or transport.is_closing():
        # Closed during the handshake (by us: client_login_timeout; or by the peer): asyncio
        # returns None, uvloop a closed transport, and neither tells the protocol.
        transport.close()
        raise TlsHandshakeFailed("the connection was closed during the TLS handshake")
    encrypted.set_protocol(protocol)

    def replay() -> None:
        for chunk in holder.data:
            protocol.data_received(chunk)
        holder.data.clear()
        if holder.closed:
            protocol.connection_lost(holder.lost)
        elif holder.eof:
            protocol.eof_received()

    if holder.data or holder.closed or holder.eof:
        loop.call_soon(replay)
    return encrypted


class TlsInfo:
    """What SHOW CLIENTS/SERVERS and the logs show of a connection's TLS."""

    __slots__ = ("version", "cipher")

    def __init__(self, version: str, cipher: str) -> None:
        self.version = version
        self.cipher = cipher

    def __str__(self) -> str:
        return f"{self.version}/{self.cipher}"  # as PgBouncer shows it (without the ECDH part)


def tls_info(transport: asyncio.BaseTransport) -> TlsInfo | None:
    cipher = transport.get_extra_info("cipher")
    if not cipher:
        return None
    name, version, _bits = cipher
    return TlsInfo(str(version), str(name))
