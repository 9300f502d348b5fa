"""Free TCP ports for throwaway servers and proxy listeners.

``free_port()`` asks the kernel for an unused port on 127.0.0.1 and remembers every port it has
handed out, so that two servers started by one test session never get the same port even when
the first has not bound it yet.
"""

from __future__ import annotations

import socket
import sys
import threading

# The registry lives on the ``sys`` module rather than in this module so that it stays
# process-wide even if this file gets imported twice under two names (``harness.ports`` via
# pytest's rootdir insertion and ``tests.harness.ports`` via the repository root).
_REGISTRY_ATTR = "_poolproxy_test_issued_ports"
_LOCK = threading.Lock()


def _issued() -> set[int]:
    issued: set[int] | None = getattr(sys, _REGISTRY_ATTR, None)
    if issued is None:
        issued = set()
        setattr(sys, _REGISTRY_ATTR, issued)
    return issued


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now and was never returned before."""
    with _LOCK:
        issued = _issued()
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
            if port not in issued:
                issued.add(port)
                return port
        raise RuntimeError("could not find a free TCP port that was not handed out before")
