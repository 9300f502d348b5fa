"""Admin HTTP server: / (the status page), /status.json (its data), /metrics (Prometheus text),
/healthz, /readyz and /pools (JSON).

A deliberately small HTTP/1.1 implementation on asyncio streams: it serves a handful of GET
requests from Prometheus, probes and the status page, so it needs no framework. The page is
served with a Content-Security-Policy that lets it load nothing but itself and status.json.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .statuspage import PAGE

log = logging.getLogger("poolproxy.admin")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
HTML = "text/html; charset=utf-8"
JSON = "application/json"
#: The status page runs its inline script and style, fetches status.json, and nothing else.
_PAGE_HEADERS = ("Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
                 "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
                 "base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"
                 "X-Content-Type-Options: nosniff\r\n")
_PAGE = PAGE.encode()


class AdminServer:
    def __init__(self, registry: CollectorRegistry, ready: Callable[[], bool],
                 pools: Callable[[], list[dict[str, Any]]],
                 status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.registry = registry
        self.ready = ready
        self.pools = pools
        #: The status page's data (/status.json); None: not served by this server itself.
        self.status = status
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        log.info("admin HTTP on %s:%d", host, port)

    async def start_unix(self, path: str) -> None:
        """Serve on a unix socket (a worker's admin server, read by the supervisor)."""
        self.server = await asyncio.start_unix_server(self._handle, path)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    return
                line = request.split(b"\r\n", 1)[0].decode("latin-1")
                parts = line.split()
                if len(parts) != 3:
                    return
                method, target, version = parts
                keep_alive = version == "HTTP/1.1" and b"connection: close" not in request.lower()
                status, ctype, body = await self.respond(method, target.split("?", 1)[0])
                head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                        "Cache-Control: no-store\r\n"
                        f"{_PAGE_HEADERS if ctype == HTML else ''}"
                        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
                writer.write(head.encode() + (body if method != "HEAD" else b""))
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        return self._route(method, path)

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            if self.ready():
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", b"not ready\n"
        if path == "/pools":
            return 200, JSON, json.dumps(self.pools(), indent=1).encode() + b"\n"
        if path in ("/", "/index.html"):
            return 200, HTML, _PAGE
        if path == "/status.json" and self.status is not None:
            return 200, JSON, json.dumps(self.status(), separators=(",", ":")).encode()
        return 404, "text/plain", b"not found\n"
