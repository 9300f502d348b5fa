"""The outbox: deferred writes keep per-socket order, go out once per loop batch (one write per
socket), survive closed transports, and `close()` sends what was queued first."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from proxy.core.outbox import Outbox, outbox_for


class Recorder:
    def __init__(self, log: list[tuple[str, bytes]], name: str, closed: bool = False) -> None:
        self.log = log
        self.name = name
        self.closed = closed

    def write(self, data: bytes) -> None:
        if self.closed:
            raise RuntimeError("unable to perform operation: the handler is closed")
        self.log.append((self.name, data))

    def close(self) -> None:
        self.log.append((self.name, b"<close>"))
        self.closed = True


class Broken(Recorder):
    def write(self, data: bytes) -> None:
        raise TypeError("boom")


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: Any) -> Any:
    loop = asyncio.new_event_loop() if request.param == "asyncio" else uvloop.new_event_loop()
    yield loop
    loop.close()


def test_writes_wait_for_the_batch_and_keep_order(loop: Any) -> None:
    log: list[tuple[str, bytes]] = []
    a, b = Recorder(log, "a"), Recorder(log, "b")

    async def main() -> list[tuple[str, bytes]]:
        box = outbox_for(asyncio.get_running_loop())
        box.write(a, b"1")
        box.write(b, b"x")
        box.write(a, b"2")
        assert log == []  # nothing written inside the batch
        await asyncio.sleep(0)
        return list(log)

    # One write per transport per batch, its chunks joined in the order they were queued.
    assert loop.run_until_complete(main()) == [("a", b"12"), ("b", b"x")]


def test_one_flush_per_batch(loop: Any) -> None:
    scheduled: list[Any] = []

    class CountingLoop:
        def call_soon(self, fn: Any) -> None:
            scheduled.append(fn)

    box = Outbox(CountingLoop())  # type: ignore[arg-type]
    log: list[tuple[str, bytes]] = []
    t = Recorder(log, "t")
    for i in range(10):
        box.write(t, bytes([i]))
    assert len(scheduled) == 1
    scheduled[0]()
    assert log == [("t", bytes(range(10)))]  # one write, in order
    box.write(t, b"next")  # a new batch schedules a new flush
    assert len(scheduled) == 2


def test_close_sends_what_was_queued_first(loop: Any) -> None:
    log: list[tuple[str, bytes]] = []
    t = Recorder(log, "t")

    async def main() -> None:
        box = outbox_for(asyncio.get_running_loop())
        box.write(t, b"error")
        box.close(t)
        assert log == [("t", b"error"), ("t", b"<close>")]
        await asyncio.sleep(0)  # the scheduled flush finds nothing left

    loop.run_until_complete(main())
    assert log == [("t", b"error"), ("t", b"<close>")]


def test_closed_or_broken_transport_does_not_cost_the_others(loop: Any) -> None:
    log: list[tuple[str, bytes]] = []
    gone, broken, fine = Recorder(log, "gone", closed=True), Broken(log, "broken"), Recorder(log, "ok")

    async def main() -> None:
        box = outbox_for(asyncio.get_running_loop())
        box.write(gone, b"lost")
        box.write(broken, b"boom")
        box.write(fine, b"delivered")
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert log == [("ok", b"delivered")]


def test_one_outbox_per_loop(loop: Any) -> None:
    other = asyncio.new_event_loop()
    try:
        assert outbox_for(loop) is outbox_for(loop)
        assert outbox_for(loop) is not outbox_for(other)
    finally:
        other.close()


def test_discard_takes_back_what_never_left(loop: Any) -> None:
    """At-most-once evidence: bytes still queued for a lost transport, and bytes the last flush
    could not write because the transport was closed, never left; others' writes stay."""
    log: list[tuple[str, bytes]] = []
    dead, alive = Recorder(log, "dead"), Recorder(log, "alive")

    async def main() -> tuple[int, int, int]:
        box = Outbox(asyncio.get_running_loop())
        box.write(dead, b"12345")
        box.write(alive, b"x")
        box.write(dead, b"678")
        queued = box.discard(dead)  # lost while the batch was still queued
        box.write(dead, b"abc")
        dead.closed = True  # closed before the flush: uvloop refuses the write
        box.flush()
        refused = box.discard(dead)
        again = box.discard(dead)  # counted once
        return queued, refused, again

    assert loop.run_until_complete(main()) == (8, 3, 0)
    assert log == [("alive", b"x")]


def test_discard_after_a_later_flush_counts_nothing(loop: Any) -> None:
    log: list[tuple[str, bytes]] = []
    dead = Recorder(log, "dead", closed=True)

    async def main() -> int:
        box = Outbox(asyncio.get_running_loop())
        box.write(dead, b"12345")
        box.flush()
        box.write(Recorder(log, "other"), b"y")
        box.flush()  # a new batch: what the old one refused is forgotten
        return box.discard(dead)

    assert loop.run_until_complete(main()) == 0


def test_uvloop_refuses_writes_to_a_transport_whose_peer_reset() -> None:
    """The evidence `discard` relies on: once uvloop has seen a connection reset, the transport
    refuses writes with RuntimeError (the bytes do not leave), before connection_lost runs."""
    async def main() -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[Any] = loop.create_future()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer)

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        lost: asyncio.Future[None] = loop.create_future()

        class Proto(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(None)

        transport, _ = await loop.create_connection(Proto, "127.0.0.1", port)
        peer = await accepted
        sock = peer.get_extra_info("socket")
        import socket
        import struct
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # RST
        await lost
        box = Outbox(loop)
        box.write(transport, b"request")
        box.flush()
        server.close()
        return transport.is_closing(), str(box.discard(transport))

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == (True, "7")
    finally:
        loop.close()


def test_a_refused_joined_write_counts_every_chunk(loop: Any) -> None:
    """Chunks joined into one write are refused together, and `discard` counts all of them."""
    log: list[tuple[str, bytes]] = []
    dead, alive = Recorder(log, "dead", closed=True), Recorder(log, "alive")

    async def main() -> int:
        box = Outbox(asyncio.get_running_loop())
        box.write(dead, b"ab")
        box.write(alive, b"x")
        box.write(dead, b"cde")
        box.flush()
        return box.discard(dead)

    assert loop.run_until_complete(main()) == 5
    assert log == [("alive", b"x")]
