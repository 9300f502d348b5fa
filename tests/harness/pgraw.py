"""A raw PostgreSQL v3 client for tests: builds frontend messages and reads whole backend
messages itself (not with the codec under test), for byte-level fault tests through the proxy."""

from __future__ import annotations

import struct

from .rawsock import RawSocket

PROTOCOL_V3 = 196608


def startup_packet(params: dict[str, str]) -> bytes:
    body = struct.pack("!I", PROTOCOL_V3)
    for key, value in params.items():
        body += key.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return struct.pack("!I", len(body) + 4) + body


def message(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


class Raw(RawSocket):
    """A raw client socket that reads whole backend messages (parsed here, not by the codec
    under test)."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        super().__init__(port, timeout)

    def recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"EOF after {self.buf!r}")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_message(self) -> tuple[bytes, bytes] | None:
        """The next message as (type, body), or None at EOF."""
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack_from("!I", self.buf, 1)[0]
                assert 4 <= length < 1 << 24, f"absurd length from the proxy: {self.buf[:16]!r}"
                if len(self.buf) >= 1 + length:
                    t, body = self.buf[:1], self.buf[5:1 + length]
                    self.buf = self.buf[1 + length:]
                    return t, body
            if not self._fill():
                assert not self.buf, f"truncated message before EOF: {self.buf!r}"
                return None

    def read_until(self, types: bytes) -> list[tuple[bytes, bytes]]:
        """Messages up to and including the first of `types` (or EOF)."""
        out: list[tuple[bytes, bytes]] = []
        while True:
            msg = self.read_message()
            if msg is None:
                return out
            out.append(msg)
            if msg[0] in [bytes([t]) for t in types]:
                return out

    def read_all(self) -> list[tuple[bytes, bytes]]:
        """Every message until the proxy closes the connection."""
        out: list[tuple[bytes, bytes]] = []
        while (msg := self.read_message()) is not None:
            out.append(msg)
        return out


def error_fields(body: bytes) -> dict[str, str]:
    return {p[:1].decode(): p[1:].decode("utf-8", "replace") for p in body.split(b"\x00") if p}


def assert_error_or_eof(msgs: list[tuple[bytes, bytes]], sqlstate: str) -> dict[str, str] | None:
    """The proxy either closed at once, or sent exactly one ErrorResponse with `sqlstate`."""
    if not msgs:
        return None
    assert [t for t, _ in msgs] == [b"E"], msgs
    fields = error_fields(msgs[0][1])
    assert fields.get("C") == sqlstate, fields
    assert fields.get("S") in ("FATAL", "ERROR"), fields
    assert fields.get("M"), fields
    return fields


def trust_login(port: int, user: str = "app_trust", database: str = "app") -> Raw:
    raw = Raw(port)
    raw.send(startup_packet({"user": user, "database": database}))
    msgs = raw.read_until(b"ZE")
    assert msgs and msgs[0] == (b"R", b"\x00\x00\x00\x00"), msgs
    assert msgs[-1] == (b"Z", b"I"), msgs
    assert any(t == b"K" for t, _ in msgs)
    return raw


def simple_query(raw: Raw, sql: str) -> list[tuple[bytes, bytes]]:
    raw.send(message(b"Q", sql.encode() + b"\x00"))
    return raw.read_until(b"Z")
