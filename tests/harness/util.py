"""Small helpers the integration tests share: waiting for a condition, GETs on the proxy's admin
HTTP API, a background polling thread, and shutting a client's socket down under its driver.

Import from here (``from tests.harness.util import wait_for, http_get``).
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Self

from prometheus_client.parser import text_string_to_metric_families

from .procs import poll
from .proxyproc import ProxyProcess


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> bool:
    """Call ``predicate`` every ``interval`` seconds until it is true (then True) or
    ``timeout`` has passed (then False; the test decides what a timeout means)."""
    return bool(poll(predicate, bool, timeout, interval))


def admin_url(proxy: ProxyProcess, path: str) -> str:
    return f"http://127.0.0.1:{proxy.admin_port}{path}"


def http_get(proxy: ProxyProcess, path: str, timeout: float = 5.0) -> bytes:
    """The body of a GET on the proxy's admin HTTP server; an error status raises
    ``urllib.error.HTTPError``."""
    with urllib.request.urlopen(admin_url(proxy, path), timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def http_get_status(proxy: ProxyProcess, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """(HTTP status, decoded body) of a GET on the proxy's admin HTTP server; an error status
    is returned, not raised."""
    try:
        with urllib.request.urlopen(admin_url(proxy, path), timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class BackgroundLoop:
    """Calls ``step()`` every ``interval`` seconds in a daemon thread of its own while inside a
    ``with`` block (for samplers and probes that must keep time while the test's own thread or
    event loop is busy). On leaving the block the thread is stopped and joined (up to
    ``join_timeout``), then ``close()`` releases what the loop used."""

    def __init__(self, interval: float, join_timeout: float = 10.0) -> None:
        self.interval = interval
        self.join_timeout = join_timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, daemon=True)

    def step(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        """The thread's body: ``step()`` until stopped (override to wrap the whole loop)."""
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.interval)

    def close(self) -> None:
        """Release what the loop used; called once the thread has been joined."""

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.join_timeout)
        self.close()


def shutdown_socket(fd: int) -> None:
    """Shut the socket behind ``fd`` down in both directions (FIN, no goodbye message), as when
    the client process dies; ``fd`` itself stays open for its owner (the driver) to close."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


def metric(proxy: ProxyProcess, sample: str, **labels: str) -> float:
    """Sum of the /metrics samples called `sample` whose labels include `labels` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(http_get(proxy, "/metrics").decode()):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
