"""Micro-benchmark of poolproxy's hot paths in Python (no sockets).

Feeds pgbench-like client messages and server responses through the real ClientConnection /
ServerConnection objects with in-memory transports, and prints the Python cost per transaction
(PostgreSQL simple, extended and prepared; MySQL COM_QUERY and COM_STMT_EXECUTE) and per
PostgreSQL SCRAM login.
Run: python tests/bench/hotpath_micro.py
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from proxy.config import parse_config  # noqa: E402
from proxy.core.listener import ListenerRuntime  # noqa: E402
from proxy.core.outbox import outbox_for  # noqa: E402
from proxy.pool import ClientState, ServerState  # noqa: E402
from proxy.postgres import codec  # noqa: E402
from proxy.postgres.client import ClientConnection  # noqa: E402
from proxy.postgres.server import ServerConnection  # noqa: E402


class FakeTransport:
    def __init__(self) -> None:
        self.out = 0

    def write(self, data: bytes) -> None:
        self.out += len(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1)


def msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def simple_query() -> tuple[bytes, bytes]:
    q = codec.query("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;")
    resp = (msg(b"T", b"\x00\x01abalance\x00" + bytes(18)) + msg(b"D", b"\x00\x01\x00\x00\x00\x041234")
            + msg(b"C", b"SELECT 1\x00") + msg(b"Z", b"I"))
    return q, resp


def extended_query() -> tuple[bytes, bytes]:
    sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    bind = b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0512345\x00\x00"
    q = (msg(b"P", b"\x00" + sql + b"\x00\x00\x00") + msg(b"B", bind)
         + msg(b"D", b"P\x00") + msg(b"E", b"\x00\x00\x00\x00\x00") + msg(b"S", b""))
    resp = (msg(b"1", b"") + msg(b"2", b"") + msg(b"T", b"\x00\x01abalance\x00" + bytes(18))
            + msg(b"D", b"\x00\x01\x00\x00\x00\x041234") + msg(b"C", b"SELECT 1\x00") + msg(b"Z", b"I"))
    return q, resp


def prepared_query() -> tuple[bytes, bytes, bytes, bytes]:
    """pgbench -M prepared: the statement is prepared once, then each transaction is Bind /
    Describe / Execute / Sync of it (first: the Parse and its reply)."""
    sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    bind = b"\x00P0_1\x00\x00\x00\x00\x01\x00\x00\x00\x0512345\x00\x00"
    prepare = msg(b"P", b"P0_1\x00" + sql + b"\x00\x00\x00") + msg(b"S", b"")
    prepared = msg(b"1", b"") + msg(b"Z", b"I")
    # libpq's PQexecPrepared: Bind, Describe (portal), Execute, Sync.
    q = msg(b"B", bind) + msg(b"D", b"P\x00") + msg(b"E", b"\x00\x00\x00\x00\x00") + msg(b"S", b"")
    resp = (msg(b"2", b"") + msg(b"T", b"\x00\x01abalance\x00" + bytes(18))
            + msg(b"D", b"\x00\x01\x00\x00\x00\x041234")
            + msg(b"C", b"SELECT 1\x00") + msg(b"Z", b"I"))
    return prepare, prepared, q, resp


async def run(kind: str, n: int) -> float:
    cfg = parse_config("""
listeners:
  - {name: pg, protocol: postgres, listen: "127.0.0.1:1", server: {host: 127.0.0.1, port: 2},
     users: [{name: app, password: x}]}
admin: {listen: null}
""")
    loop = asyncio.get_running_loop()
    rt = ListenerRuntime(cfg.listeners[0], None, loop, time.monotonic)  # type: ignore[arg-type]
    pool = rt.get_pool("app", "app")
    server = ServerConnection(pool, "app", "x", "app", loop)
    server.transport = FakeTransport()  # type: ignore[assignment]
    server._reader = None
    server.params = {"TimeZone": "UTC", "client_encoding": "UTF8", "DateStyle": "ISO, MDY"}
    pool.server_params = dict(server.params)
    server.state = ServerState.IDLE
    pool.idle.append(server)
    client = ClientConnection(rt)
    client.transport = FakeTransport()  # type: ignore[assignment]
    client.pool = pool
    client.params = dict(server.params)
    client._logged_in()  # as after a login: prepared statements handled (the default)
    if kind == "prepared":
        prepare, prepared, q, resp = prepared_query()
        client.data_received(prepare)
        server.data_received(prepared)
        pool.stats.transactions = 0
    else:
        q, resp = simple_query() if kind == "simple" else extended_query()
    t0 = time.process_time()
    # The event loop flushes the outbox after each batch of ready sockets; under pgbench load
    # a batch holds ~40 events (strace), i.e. ~20 transactions here.
    flush = outbox_for(loop).flush
    for i in range(n):
        client.data_received(q)
        server.data_received(resp)
        if i % 20 == 19:
            flush()
    flush()
    dt = time.process_time() - t0
    assert pool.stats.transactions == n, pool.stats.transactions
    return dt / n * 1e6


def main() -> None:
    for kind in ("simple", "extended", "prepared"):
        best = min(asyncio.run(run(kind, 50000)) for _ in range(3))
        print(f"{kind:9s} {best:6.2f} µs of Python per transaction")


if __name__ == "__main__":
    main()


async def run_mysql(n: int, prepared: bool = False) -> float:
    """The same for MySQL: COM_QUERY point select -> one-row text result set; `prepared`:
    sysbench's default, COM_STMT_EXECUTE of a statement prepared once -> a binary row."""
    from proxy.mysql import codec as my
    from proxy.mysql.client import ClientConnection as MyClient
    from proxy.mysql.server import ServerConnection as MyServer

    cfg = parse_config("""
listeners:
  - {name: my, protocol: mysql, listen: "127.0.0.1:1", server: {host: 127.0.0.1, port: 2},
     users: [{name: app, password: x}]}
admin: {listen: null}
""")
    loop = asyncio.get_running_loop()
    rt = ListenerRuntime(cfg.listeners[0], None, loop, time.monotonic)  # type: ignore[arg-type]
    caps = my.CLIENT_PROTOCOL_41 | my.CLIENT_DEPRECATE_EOF
    pool = rt.get_pool("app", "app", (caps, 45))
    server = MyServer(pool, "app", "x", "app", caps, 45, loop)
    server.transport = FakeTransport()  # type: ignore[assignment]
    server._reader = None
    server.caps = caps
    server._deprecate_eof = True  # as _login() sets it
    server.state = ServerState.IDLE
    pool.idle.append(server)
    pool.server_params = {}
    client = MyClient.__new__(MyClient)
    MyClient.__init__(client, rt)
    client.transport = FakeTransport()  # type: ignore[assignment]
    client.pool = pool
    client.caps = caps
    client.state = ClientState.IDLE
    q = my.encode_packet(0, b"\x03SELECT c FROM sbtest1 WHERE id=4242")
    coldef = my.lenenc_str(b"def") + my.lenenc_str(b"app") + my.lenenc_str(b"sbtest1") * 2 \
        + my.lenenc_str(b"c") * 2 + b"\x0c" + bytes(12)
    end = my.encode_packet(4, my.build_ok(status_flags=my.SERVER_STATUS_AUTOCOMMIT,
                                          capabilities=caps, eof_header=True))
    resp = (my.encode_packet(1, b"\x01") + my.encode_packet(2, coldef)
            + my.encode_packet(3, my.lenenc_str(b"x" * 120)) + end)
    if prepared:
        from proxy.mysql.prepared import ClientStatements, statement_registry
        client.statements = ClientStatements(statement_registry(pool))
        client.data_received(my.encode_packet(0, b"\x16SELECT c FROM sbtest1 WHERE id=?"))
        server.data_received(my.encode_packet(1, b"\x00\x07\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00")
                             + my.encode_packet(2, coldef) + my.encode_packet(3, coldef))
        first = b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x08\x00" + (4242).to_bytes(8, "little")
        client.data_received(my.encode_packet(0, first))
        row = my.encode_packet(3, b"\x00\x00" + my.lenenc_str(b"x" * 120))
        resp = my.encode_packet(1, b"\x01") + my.encode_packet(2, coldef) + row + end
        server.data_received(resp)
        pool.stats.transactions = 0
        q = my.encode_packet(0, b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00"
                             + (4242).to_bytes(8, "little"))
    t0 = time.process_time()
    # The event loop flushes the outbox after each batch of ready sockets; under pgbench load
    # a batch holds ~40 events (strace), i.e. ~20 transactions here.
    flush = outbox_for(loop).flush
    for i in range(n):
        client.data_received(q)
        server.data_received(resp)
        if i % 20 == 19:
            flush()
    flush()
    dt = time.process_time() - t0
    assert pool.stats.transactions == n, pool.stats.transactions
    return dt / n * 1e6


class LoginTransport(FakeTransport):
    """A client transport that keeps what poolproxy sends (the login's answers are read)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data


async def run_login(n: int) -> float:
    """A PostgreSQL SCRAM-SHA-256 login (startup, SASL initial and final, AuthenticationOk,
    ParameterStatus, ReadyForQuery), then Terminate and connection_lost: poolproxy's side only
    (the client's proofs are computed outside the timed part, from keys derived once)."""
    from proxy.auth import scram
    from proxy.postgres.adapter import PostgresAdapter

    cfg = parse_config("""
listeners:
  - {name: pg, protocol: postgres, listen: "127.0.0.1:1", server: {host: 127.0.0.1, port: 2},
     auth: {type: scram-sha-256}, users: [{name: app, password: pw}]}
admin: {listen: null}
""")
    loop = asyncio.get_running_loop()
    rt = ListenerRuntime(cfg.listeners[0], PostgresAdapter(), loop, time.monotonic)
    pool = rt.get_pool("app", "app")
    # A pool that has seen a server already (as after the first login of a running proxy).
    pool.server_params = {"TimeZone": "UTC", "client_encoding": "UTF8", "DateStyle": "ISO, MDY",
                          "server_version": "15.0", "application_name": "pgbench"}
    startup = codec.startup_message({"user": "app", "database": "app",
                                     "application_name": "pgbench"})
    flush = outbox_for(loop).flush
    keys: dict[tuple[bytes, int], tuple[bytes, bytes]] = {}
    spent = 0.0
    for _ in range(n):
        client = rt.new_client()
        transport = LoginTransport()
        t0 = time.process_time()
        client.connection_made(transport)
        client.data_received(startup)
        flush()
        spent += time.process_time() - t0
        transport.take()
        verifier = client._scram._verifier
        salt = (verifier.salt, verifier.iterations)
        if salt not in keys:
            keys[salt] = scram.ScramClient("pw")._keys_for(*salt)
        proof = scram.ScramClient("pw")
        proof._keys_for = lambda _salt, _iterations, k=keys[salt]: k  # type: ignore[method-assign]
        first = codec.sasl_initial_response(scram.MECHANISM, proof.client_first())
        t0 = time.process_time()
        client.data_received(first)
        flush()
        spent += time.process_time() - t0
        continue_ = transport.take()
        final = codec.sasl_response(proof.handle_server_first(continue_[9:]))
        t0 = time.process_time()
        client.data_received(final)
        flush()
        spent += time.process_time() - t0
        assert transport.take().endswith(codec.ready_for_query(b"I")), "the login failed"
        t0 = time.process_time()
        client.data_received(codec.TERMINATE)
        client.connection_lost(None)
        flush()
        spent += time.process_time() - t0
    return spent / n * 1e6


if __name__ == "__main__":
    best = min(asyncio.run(run_mysql(30000)) for _ in range(3))
    print(f"mysql     {best:6.2f} µs of Python per transaction")
    best = min(asyncio.run(run_mysql(30000, prepared=True)) for _ in range(3))
    print(f"mysql-ps  {best:6.2f} µs of Python per transaction (COM_STMT_EXECUTE)")
    best = min(asyncio.run(run_login(3000)) for _ in range(3))
    print(f"login     {best:6.2f} µs of Python per PostgreSQL SCRAM login")
