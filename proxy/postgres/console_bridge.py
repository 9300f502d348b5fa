"""The admin console over a PostgreSQL client connection: simple-protocol queries in, the
console's replies out, one statement at a time (ops/console.py runs them)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..errors import FeatureNotSupported, ProtocolViolation, ProxyError
from ..ops.console import Console, ConsoleError
from . import codec
from .codec import MSG_QUERY, MSG_TERMINATE


class ConsoleBridge:
    """Feeds a console session's messages to the console and sends its answers."""

    def __init__(self, console: Console, send: Callable[[bytes], None],
                 fail: Callable[[ProxyError], None], close: Callable[[], None],
                 spawn: Callable[[Any], asyncio.Task[Any]], alive: Callable[[], bool]) -> None:
        self.console = console
        self._send = send
        self._fail = fail
        self._close = close
        self._spawn = spawn
        self._alive = alive
        self._reader = codec.MessageReader(max_message=1 << 20)
        self._queue: list[str] = []
        self._busy = False

    def feed(self, data: bytes) -> None:
        try:
            messages = self._reader.feed(data)
        except codec.ProtocolError as exc:
            self._fail(ProtocolViolation(f"invalid message: {exc}"))
            return
        for t, body in messages:
            if t == MSG_TERMINATE:
                self._close()
                return
            if t != MSG_QUERY:
                self._fail(FeatureNotSupported(
                    "the admin console speaks the simple query protocol only",
                    hint="use psql, or psycopg with prepare_threshold=None and simple queries"))
                return
            self._queue.append(codec.parse_query(body).decode("utf-8", "replace"))
        if self._queue and not self._busy:
            self._busy = True
            self._spawn(self._run())

    async def _run(self) -> None:
        try:
            while self._queue:
                sql = self._queue.pop(0)
                try:
                    reply = await self.console.execute(sql)
                except ConsoleError as exc:
                    reply = codec.error_response(exc.sqlstate, str(exc))
                if not self._alive():
                    return
                self._send(reply + codec.ready_for_query(b"I"))
        finally:
            self._busy = False
