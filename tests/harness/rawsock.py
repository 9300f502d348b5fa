"""A plain TCP client socket with a receive buffer: the base of the raw protocol clients
(`pgraw.Raw`, the MySQL bad-input tests' `RawClient`), which parse what arrives themselves."""

from __future__ import annotations

import socket


class RawSocket:
    """Connects to 127.0.0.1:`port`; `_fill()` appends what arrives to `buf`."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Receive once into `buf`; False at EOF (or a reset connection)."""
        try:
            chunk = self.sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return False
        self.buf += chunk
        return True
