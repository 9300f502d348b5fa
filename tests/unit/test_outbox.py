"""The outbox: deferred writes keep per-socket order, go out once per loop batch, survive closed
transports, and `close()` sends what was queued first."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from proxy.outbox import Outbox, outbox_for


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

    assert loop.run_until_complete(main()) == [("a", b"1"), ("b", b"x"), ("a", b"2")]


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
    assert [d for _, d in log] == [bytes([i]) for i in range(10)]
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
