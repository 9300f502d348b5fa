"""Periodic pool maintenance over an injected clock: waiter timeouts, idle and lifetime reaping.

`Janitor.tick(now)` does one pass and is what unit tests call with a fake clock; `run()` calls it
a few times a second in the daemon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from .pool import Pool

log = logging.getLogger("poolproxy.janitor")


class Janitor:
    def __init__(self, pools: Callable[[], Iterable[Pool]], clock: Callable[[], float],
                 period: float = 0.25) -> None:
        self.pools = pools
        self.clock = clock
        self.period = period

    def tick(self, now: float | None = None) -> None:
        if now is None:
            now = self.clock()
        for pool in list(self.pools()):
            pool.expire_waiters(now)
            pool.reap_idle(now)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                self.tick()
            except Exception:
                log.exception("janitor pass failed")
