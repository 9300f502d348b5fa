"""Admin HTTP server: /metrics (Prometheus text), /healthz, /readyz and /pools (JSON).

A deliberately small HTTP/1.1 implementation on asyncio streams: it serves a handful of GET
requests from Prometheus and probes, so it needs no framework.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("poolproxy.admin")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class AdminServer:
    def __init__(self, registry: CollectorRegistry, ready: Callable[[], bool],
                 pools: Callable[[], list[dict[str, Any]]]) -> None:
        self.registry = registry
        self.ready = ready
        self.pools = pools
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
            return 200, "application/json", json.dumps(self.pools(), indent=1).encode() + b"\n"
        return 404, "text/plain", b"not found\n"
