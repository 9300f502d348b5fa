"""A fault-injecting TCP relay for the at-most-once tests (PostgreSQL and MySQL alike).

``Relay(target_host, target_port)`` listens on 127.0.0.1:``relay.port`` and forwards every
connection it accepts to the target, byte for byte, on an asyncio event loop in a daemon thread
of its own (so synchronous tests can use it; it is a context manager). Point poolproxy's
``server: {host: 127.0.0.1, port: relay.port}`` at it, or a driver directly.

It never parses a protocol. A fault is armed from the test thread with a bytes ``pattern``
and fires on the next client->server chunk (one ``recv``) that contains it, case-insensitively,
on whichever relayed connection that chunk appears; it fires ``times`` times, then it is spent
(a pattern split over two chunks is not seen: requests are small and written at once):

- ``drop_answer``: forward the request, wait for the first bytes of the server's answer (and,
  with ``until``, for the answer to contain that pattern too), drop them and reset both sides
  (SO_LINGER 0, so each peer gets an RST): the server executed the request, the client side
  sees the connection die without any answer;
- ``drop_request``: do not forward the request; reset both sides;
- ``delay_request`` / ``delay_answer``: hold the request / the first chunk of its answer for
  ``seconds``, then forward it;
- ``inject``: answer the request with the given bytes instead of forwarding it, then close both
  sides (FIN): emulates "the server said it is going away before it read the request".

``reset_all()`` resets every connection relayed at that moment (an idle pooled connection dying
before the client sends anything). ``Fault.fired`` / ``Fault.done`` and ``Relay.fired`` count
what happened; ``Relay.live`` is the number of live relayed connections; with ``record=True``
every client->server chunk is kept in ``Relay.requests``. ``pg_error_response``,
``mysql_err_packet`` and ``PG_READY`` build the bytes the tests inject or wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

T = TypeVar("T")
_CHUNK = 1 << 16
#: How long ``drop_answer`` waits for an answer (or its ``until`` pattern) before resetting.
ANSWER_WAIT = 30.0


@dataclass(eq=False)
class Fault:
    """One armed fault. ``fired``: how often it matched; ``done``: how often its action was
    carried out to the end (the answer dropped and both sides reset, the bytes injected...)."""

    kind: str
    pattern: bytes
    times: int = 1
    seconds: float = 0.0
    data: bytes = b""
    until: bytes | None = None
    fired: int = 0
    done: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def _matches(self, lowered: bytes) -> bool:
        return self.fired < self.times and self.pattern.lower() in lowered

    def _finished(self) -> None:
        with self._cond:
            self.done += 1
            self._cond.notify_all()

    def wait(self, timeout: float = 10.0, count: int | None = None) -> bool:
        """Wait until the action was carried out ``count`` times (default ``times``)."""
        want = self.times if count is None else count
        with self._cond:
            return self._cond.wait_for(lambda: self.done >= want, timeout)


class _Link:
    """One relayed connection: the accepted client side and our connection to the target."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.answer_fault: Fault | None = None
        self.closed = False

    def reset(self) -> None:
        """RST both sides at once (nothing buffered is sent)."""
        self.closed = True
        for writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    def close(self) -> None:
        """Close both sides gracefully (what is buffered is sent, then FIN)."""
        self.closed = True
        for writer in (self.client, self.server):
            writer.close()


class Relay:
    """See the module docstring. ``start()`` (or ``with Relay(...) as relay``) before use."""

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1",
                 record: bool = False) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.record = record
        self.requests: list[bytes] = []
        self.accepted = 0
        self.fired: Counter[str] = Counter()
        self._faults: list[Fault] = []
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"relay->{target_port}")
        self._server: asyncio.Server | None = None

    # -- lifecycle

    def start(self) -> Self:
        self._thread.start()
        self._server = self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            if not self._loop.is_closed():
                self._loop.close()
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults (called from the test thread)

    def drop_answer(self, pattern: bytes, times: int = 1, until: bytes | None = None) -> Fault:
        return self._arm(Fault("drop_answer", pattern, times, until=until))

    def drop_request(self, pattern: bytes, times: int = 1) -> Fault:
        return self._arm(Fault("drop_request", pattern, times))

    def delay_request(self, pattern: bytes, seconds: float, times: int = 1) -> Fault:
        return self._arm(Fault("delay_request", pattern, times, seconds=seconds))

    def delay_answer(self, pattern: bytes, seconds: float, times: int = 1) -> Fault:
        return self._arm(Fault("delay_answer", pattern, times, seconds=seconds))

    def inject(self, pattern: bytes, data: bytes, times: int = 1) -> Fault:
        return self._arm(Fault("inject", pattern, times, data=data))

    def disarm(self, fault: Fault | None = None) -> None:
        """Forget ``fault`` if it has not fired ``times`` times yet (None: every armed fault)."""
        with self._lock:
            if fault is None:
                self._faults.clear()
            elif fault in self._faults:
                self._faults.remove(fault)

    def reset_all(self) -> int:
        """Reset every connection relayed now; how many there were."""
        return self._call(self._reset_all())

    @property
    def live(self) -> int:
        """Relayed connections open now."""
        with self._lock:
            return len(self._links)

    # -- internals

    def _arm(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def _match(self, data: bytes) -> Fault | None:
        lowered = data.lower()
        with self._lock:
            if self.record:
                self.requests.append(data)
            for fault in self._faults:
                if fault._matches(lowered):
                    fault.fired += 1
                    self.fired[fault.kind] += 1
                    if fault.fired >= fault.times:
                        self._faults.remove(fault)
                    return fault
        return None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self) -> asyncio.Server:
        server = await asyncio.start_server(self._handle, self.host, self.port or 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reset_all(self) -> int:
        with self._lock:
            links = list(self._links)
        for link in links:
            link.reset()
        return len(links)

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.transport.abort()
            return
        for writer in (cwriter, swriter):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(cwriter, swriter)
        with self._lock:
            self.accepted += 1
            self._links.add(link)
        pumps = [asyncio.ensure_future(self._requests(link, creader)),
                 asyncio.ensure_future(self._answers(link, sreader))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            if not link.closed:
                link.close()
            with self._lock:
                self._links.discard(link)

    async def _requests(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """client -> server, applying the faults."""
        with contextlib.suppress(OSError):
            while not link.closed:
                data = await reader.read(_CHUNK)
                if not data or link.closed:
                    return
                fault = self._match(data)
                if fault is not None:
                    if fault.kind == "drop_request":
                        link.reset()
                        fault._finished()
                        return
                    if fault.kind == "inject":
                        link.client.write(fault.data)
                        await link.client.drain()
                        link.close()
                        fault._finished()
                        return
                    if fault.kind == "delay_request":
                        await asyncio.sleep(fault.seconds)
                        fault._finished()
                    else:  # drop_answer, delay_answer: the answer pump acts
                        link.answer_fault = fault
                link.server.write(data)
                await link.server.drain()

    async def _answers(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """server -> client, applying an answer fault armed by the request pump."""
        with contextlib.suppress(OSError):
            while not link.closed:
                data = await reader.read(_CHUNK)
                if not data or link.closed:
                    return
                fault, link.answer_fault = link.answer_fault, None
                if fault is not None and fault.kind == "drop_answer":
                    if fault.until is not None:
                        await self._read_until(reader, data, fault.until)
                    link.reset()
                    fault._finished()
                    return
                if fault is not None:  # delay_answer
                    await asyncio.sleep(fault.seconds)
                    fault._finished()
                link.client.write(data)
                await link.client.drain()

    @staticmethod
    async def _read_until(reader: asyncio.StreamReader, seen: bytes, until: bytes) -> None:
        """Read (and drop) the answer until it contains ``until``, it ends, or ANSWER_WAIT."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ANSWER_WAIT):
                while until not in seen:
                    data = await reader.read(_CHUNK)
                    if not data:
                        return
                    seen = seen[-len(until):] + data


# --------------------------------------------------------------------------- answers to inject
# Byte builders for ``inject`` and ``until`` (the relay itself never looks inside the bytes).

#: PostgreSQL ReadyForQuery (without its status byte): the end of an answer, for ``until``.
PG_READY = b"Z\x00\x00\x00\x05"


def pg_error_response(sqlstate: str, message: str, severity: str = "FATAL") -> bytes:
    """A PostgreSQL ErrorResponse ('E', int32 length, S/V/C/M fields, terminator)."""
    body = b"".join(code + value.encode() + b"\x00" for code, value in (
        (b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message))) + b"\x00"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def mysql_err_packet(errno: int, message: str, sqlstate: str = "HY000", seq: int = 1) -> bytes:
    """A MySQL ERR packet (protocol 4.1: 0xFF, errno, '#', SQLSTATE, message)."""
    payload = b"\xff" + struct.pack("<H", errno) + b"#" + sqlstate.encode() + message.encode()
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload
