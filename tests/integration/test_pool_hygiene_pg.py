"""Pool hygiene, PostgreSQL: a server goes back to the pool only when provably clean.

With `pool_size: 1` one client (A, a raw socket, so its exact messages are under the test's
control) leaves with something unanswered: an unsynced pipeline (PostgreSQL runs Execute as it
arrives and keeps the rows in its output buffer until a Sync or Flush), Execute + Flush, a query
whose reply was not read, half a message, a COPY in either direction, a half-read large result,
an open transaction, a cancel request racing its disconnect. It leaves by closing its socket, by
an RST, or by Terminate, also sent in the same write as its last requests (libpq's PQfinish in
pipeline mode does that). The next client (B) then runs a fixed script and must receive exactly
what the same script gets directly from PostgreSQL, message for message and byte for byte
(BackendKeyData and the login aside), and nothing after it. Each test then checks that the
proxy settled: nothing active or waiting, at most `pool_size` backends for the test's database,
as many idle servers in /pools as PostgreSQL has backends, and a fresh psycopg client works.

Cancels: a cancel request must never hit the next client's query, also when it is held up on
its way (the postmaster, which handles cancel requests, frozen with SIGSTOP). psycopg 3 at its
default settings plays B in one test and A (a real libpq pipeline) in another.

Every test uses a database of its own, so pg_stat_activity counts only see it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.harness import PgServer, ProxyProcess, make_config, pg_listener
from tests.harness.pgraw import Raw, error_fields, message, simple_query, startup_packet
from tests.harness.util import http_get, wait_for

#: Client A's socket receive buffer (see SmallBufferRaw).
A_RCVBUF = 64 * 1024
USER = "app_trust"  # PostgreSQL trusts it on 127.0.0.1: raw clients log in without a password
Msg = tuple[bytes, bytes]

SYNC = message(b"S")
FLUSH = message(b"H")
TERMINATE = message(b"X")
CANCEL_REQUEST_CODE = 80877102


# --------------------------------------------------------------------------- protocol helpers


def parse(sql: str, name: bytes = b"") -> bytes:
    return message(b"P", name + b"\x00" + sql.encode() + b"\x00" + b"\x00\x00")


def bind(params: list[str], portal: bytes = b"", stmt: bytes = b"") -> bytes:
    body = portal + b"\x00" + stmt + b"\x00" + b"\x00\x00" + struct.pack("!H", len(params))
    for value in params:
        raw = value.encode()
        body += struct.pack("!i", len(raw)) + raw
    return message(b"B", body + b"\x00\x00")


def describe_portal(portal: bytes = b"") -> bytes:
    return message(b"D", b"P" + portal + b"\x00")


def execute(portal: bytes = b"", max_rows: int = 0) -> bytes:
    return message(b"E", portal + b"\x00" + struct.pack("!I", max_rows))


def extended(sql: str, params: list[str] | None = None) -> bytes:
    """Parse/Bind/Describe/Execute of the unnamed statement and portal, without Sync."""
    return parse(sql) + bind(params or []) + describe_portal() + execute()


def data_values(msgs: list[Msg]) -> list[list[str | None]]:
    """The text values of every DataRow in `msgs`."""
    out: list[list[str | None]] = []
    for t, body in msgs:
        if t != b"D":
            continue
        (ncols,) = struct.unpack_from("!H", body)
        pos, row = 2, []
        for _ in range(ncols):
            (length,) = struct.unpack_from("!i", body, pos)
            pos += 4
            if length < 0:
                row.append(None)
            else:
                row.append(body[pos:pos + length].decode())
                pos += length
        out.append(row)
    return out


class SmallBufferRaw(Raw):
    """A raw client whose socket receive buffer is set small before it connects, so that a
    large reply it does not read stays in the proxy and the server, not in its own kernel
    buffer (loopback buffers grow to tens of MB)."""

    def __init__(self, port: int, timeout: float, rcvbuf: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.buf = b""


def login(port: int, db: str, timeout: float = 20.0, rcvbuf: int | None = None
          ) -> tuple[Raw, bytes]:
    """A raw trusted login as app_trust; (the connection, its BackendKeyData body)."""
    raw = Raw(port, timeout=timeout) if rcvbuf is None else SmallBufferRaw(port, timeout, rcvbuf)
    raw.send(startup_packet({"user": USER, "database": db}))
    msgs = raw.read_until(b"ZE")
    assert msgs and msgs[0] == (b"R", b"\x00\x00\x00\x00"), msgs
    assert msgs[-1] == (b"Z", b"I"), msgs
    keys = [body for t, body in msgs if t == b"K"]
    assert len(keys) == 1, msgs
    return raw, keys[0]


def send_cancel(port: int, key: bytes) -> socket.socket:
    """Send a CancelRequest with `key` (BackendKeyData body) on a connection of its own; the
    socket is returned at once (the caller closes it), not after the proxy has handled it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(struct.pack("!II", 16, CANCEL_REQUEST_CODE) + key)
    return sock


def read_some(raw: Raw, nbytes: int) -> bytes:
    """At least `nbytes` raw bytes of whatever arrives (not parsed)."""
    got = b""
    while len(got) < nbytes:
        chunk = raw.sock.recv(1 << 16)
        assert chunk, f"EOF after {len(got)} bytes"
        got += chunk
    return got


def no_more_messages(raw: Raw, wait: float = 0.3) -> bytes:
    """Whatever arrives within `wait` seconds (b'' when nothing: the expected case)."""
    extra, raw.buf = raw.buf, b""
    timeout = raw.sock.gettimeout()
    raw.sock.settimeout(wait)
    try:
        while chunk := raw.sock.recv(1 << 16):
            extra += chunk
    except OSError:  # the timeout: nothing more
        pass
    finally:
        raw.sock.settimeout(timeout)
    return extra


# --------------------------------------------------------------------------- client B's script


#: The rows B's script returns, in order.
B_ROWS = [["B1"], ["B2"], ["B3"], ["B4-flushed"], ["B5"]]


class ScriptB:
    """Client B's fixed script, in steps so a test can act between B's first request and the
    reading of its reply: an extended query with Sync, a simple query of two rows, Execute +
    Flush (read up to CommandComplete) then Sync, a simple query. `first` is the request sent
    first: `select $1::text` with 'B1' (the issue's)."""

    first = extended("select $1::text", ["B1"]) + SYNC

    def __init__(self, raw: Raw) -> None:
        self.raw = raw
        self.msgs: list[Msg] = []

    def send_first(self) -> None:
        self.raw.send(self.first)

    def finish(self) -> list[Msg]:
        raw = self.raw
        self.msgs += raw.read_until(b"Z")
        self.msgs += simple_query(raw, "select 'B2' as b union all select 'B3'")
        raw.send(extended("select $1::text || '-flushed' as f", ["B4"]) + FLUSH)
        self.msgs += raw.read_until(b"CE")
        raw.send(SYNC)
        self.msgs += raw.read_until(b"Z")
        self.msgs += simple_query(raw, "select 'B5' as last")
        return self.msgs

    def run(self) -> list[Msg]:
        self.send_first()
        return self.finish()


@pytest.fixture(scope="module")
def direct_b(pg_server: PgServer) -> list[Msg]:
    """What B's script gets directly from PostgreSQL (the reference)."""
    db = ensure_db(pg_server, "hyg_direct")
    raw, _ = login(pg_server.port, db)
    try:
        msgs = ScriptB(raw).run()
    finally:
        raw.close()
    assert data_values(msgs) == B_ROWS, msgs
    return msgs


def check_b(script: ScriptB, direct: list[Msg], what: str) -> None:
    """B's reply: its own rows only, and exactly the messages PostgreSQL sends directly."""
    got = script.finish()
    rows = data_values(got)
    assert rows == B_ROWS, f"{what}: client B got rows {rows}, expected only its own {B_ROWS}"
    assert got == direct, (f"{what}: client B's reply differs from PostgreSQL's direct reply:\n"
                           f"  via poolproxy: {got}\n  direct:        {direct}")
    extra = no_more_messages(script.raw)
    assert not extra, f"{what}: client B got more after its script: {extra[:300]!r}"


# --------------------------------------------------------------------------- setup & checks


def ensure_db(pg: PgServer, name: str) -> str:
    """A database of the test's own (owner app, usable by app_trust)."""
    if not pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)):
        pg.execute(f'CREATE DATABASE "{name}" OWNER app')
    pg.execute(f'GRANT ALL ON DATABASE "{name}" TO {USER}')
    pg.execute(f"GRANT ALL ON SCHEMA public TO {USER}", dbname=name)
    return name


def make_table(pg: PgServer, db: str, name: str, ddl: str, fill: str | None = None) -> None:
    pg.execute(f"DROP TABLE IF EXISTS {name}", dbname=db)
    pg.execute(f"CREATE TABLE {name} ({ddl})", dbname=db)
    if fill:
        pg.execute(fill, dbname=db)
    pg.execute(f"GRANT ALL ON {name} TO {USER}", dbname=db)


def pool1(pg: PgServer, proxy_factory: Any, **settings: Any) -> ProxyProcess:
    settings.setdefault("query_wait_timeout", "30s")
    proxy: ProxyProcess = proxy_factory(make_config(pg_listener(
        pg, pool_size=1, auth={"type": "trust"}, **settings)))
    return proxy


def pool_of(proxy: ProxyProcess, db: str) -> dict[str, Any] | None:
    for p in json.loads(http_get(proxy, "/pools")):
        if p["database"] == db and p["user"] == USER:
            return dict(p)
    return None


def wait_waiters(proxy: ProxyProcess, db: str, n: int, timeout: float = 10.0) -> None:
    """Until the pool of `db` has `n` clients waiting for a server."""
    assert wait_for(lambda: (pool_of(proxy, db) or {}).get("waiters") == n, timeout), \
        f"expected {n} waiting client(s): {pool_of(proxy, db)}"


def wait_unlinked(proxy: ProxyProcess, db: str, timeout: float = 10.0) -> None:
    """Until no server of `db`'s pool is linked to a client (the departure was handled)."""
    assert wait_for(lambda: (pool_of(proxy, db) or {"servers": {"active": 1}})["servers"]["active"]
                    == 0, timeout), f"a server stays linked: {pool_of(proxy, db)}"


def backends(pg: PgServer, db: str) -> list[tuple[int, str, str]]:
    return [(int(r[0]), str(r[1]), str(r[2])) for r in pg.execute(
        "SELECT pid, state, query FROM pg_stat_activity WHERE datname = %s AND usename = %s"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()", (db, USER))]


def wait_query_running(pg: PgServer, db: str, needle: str, timeout: float = 10.0) -> int:
    """Until a backend of `db` shows a query containing `needle`; its pid."""
    found: list[int] = []

    def running() -> bool:
        found[:] = [pid for pid, _state, query in backends(pg, db) if needle in query]
        return bool(found)

    assert wait_for(running, timeout), f"no query with {needle!r} reached PostgreSQL: " \
                                       f"{backends(pg, db)}"
    return found[0]


def assert_healthy(proxy: ProxyProcess, pg: PgServer, db: str, pool_size: int = 1) -> None:
    """The proxy settled after the clients left: nothing active, logging in, testing or
    waiting, no background task, at most `pool_size` backends for `db`, each of them an idle
    server of the pool; and a fresh psycopg client (default settings) works."""
    problems: list[str] = []

    def settled() -> bool:
        problems.clear()
        snap = pool_of(proxy, db)
        if snap is None:
            problems.append("no pool in /pools")
            return False
        servers = snap["servers"]
        for state in ("active", "login", "testing"):
            if servers[state]:
                problems.append(f"{servers[state]} server(s) {state}")
        for key in ("waiters", "tasks"):
            if snap[key]:
                problems.append(f"{key}={snap[key]}")
        found = backends(pg, db)
        if len(found) > pool_size:
            problems.append(f"{len(found)} backends for pool_size {pool_size}: {found}")
        if servers["idle"] != len(found):
            problems.append(f"{servers['idle']} idle server(s) but backends {found}")
        return not problems

    assert wait_for(settled, 10.0, 0.1), f"proxy did not settle: {problems}"
    assert proxy.is_running(), proxy.log_tail()
    with psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user=USER, dbname=db,
                         connect_timeout=10) as conn:
        assert conn.execute("select 'C1', %s::text", ("C2",)).fetchone() == ("C1", "C2")
        conn.commit()
    assert "Traceback" not in proxy.log_text()


def db_name(prefix: str, test_name: str) -> str:
    """A database name of the test's own: readable, and unique per test and parameters."""
    digest = hashlib.sha1(test_name.encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9]+", "_", test_name.lower().replace("test_", "", 1)).strip("_")
    return f"{prefix}_{readable[:40]}_{digest}"


@pytest.fixture
def make_db(pg_server: PgServer, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """A database named after the test (and its parameters)."""

    def make(prefix: str = "hyg") -> str:
        return ensure_db(pg_server, db_name(prefix, request.node.name))

    return make


def leave(raw: Raw, how: str) -> None:
    """A leaves: `close` = its socket is closed; `reset` = closed with an RST (SO_LINGER 0),
    as when a process is killed with bytes unread; `terminate` = Terminate, then close (what
    libpq's PQfinish does, also in pipeline mode with requests unsynced)."""
    if how == "reset":
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif how == "terminate":
        try:
            raw.send(TERMINATE)
        except OSError:
            pass
    raw.close()


# --------------------------------------------------------------------------- A leaves unanswered


LEAK = "LEAKED from client A"

#: What A sends before it leaves, and what its departure looks like.
UNANSWERED: dict[str, bytes] = {
    # libpq pipeline mode: Parse/Bind/Describe/Execute, no Sync. PostgreSQL runs the Execute
    # and keeps the rows in its output buffer until a Sync or Flush arrives (B's Sync).
    "pipeline_unsynced": extended(f"select '{LEAK}'"),
    # Several queries of a pipeline, none synced.
    "pipeline3_unsynced": extended(f"select '{LEAK} 1'") + extended(f"select '{LEAK} 2'")
    + extended(f"select '{LEAK} 3'"),
    # asyncpg's pattern: Execute + Flush; the rows arrive after A left (the query sleeps).
    "execute_flush_slow": extended(f"select '{LEAK}' from pg_sleep(1)") + FLUSH,
    # Execute + Flush; the rows arrive while A is still there but it never reads them.
    "execute_flush_fast": extended(f"select '{LEAK}'") + FLUSH,
    # A whole synced request whose reply A does not wait for.
    "synced_unread": extended(f"select '{LEAK}' from pg_sleep(1)") + SYNC,
    "simple_unread": message(b"Q", f"select '{LEAK}' from pg_sleep(1)".encode() + b"\x00"),
    # A leaves half-way through a message (a Query claiming 200 bytes, 40 sent) after an
    # unsynced Execute.
    "mid_message": extended(f"select '{LEAK}'")
    + b"Q" + struct.pack("!I", 204) + f"select '{LEAK}', '".encode(),
}


DEPARTURES = ["b_waiting", "b_after", "b_after_terminate_same_write"]
#: (A Terminate after a half-sent message would only be more of that message's body.)
UNANSWERED_CASES = [(what, departure) for what in UNANSWERED for departure in DEPARTURES
                    if not (what == "mid_message" and departure.endswith("same_write"))]


@pytest.mark.parametrize(("what", "departure"), UNANSWERED_CASES,
                         ids=[f"{what}-{departure}" for what, departure in UNANSWERED_CASES])
def test_client_leaves_with_requests_unanswered(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[[str], str],
    direct_b: list[Msg], what: str, departure: str,
) -> None:
    """The issue's scenario and its relatives: A's unanswered requests must never be answered
    to B. `b_waiting`: B's first request is queued for the only server when A closes its
    socket (the server goes straight from A to B); `b_after`: B connects once A's departure was
    handled; `b_after_terminate_same_write`: A's requests and a Terminate go out in one write,
    as libpq's PQfinish flushes a pipeline's unsent messages together with its Terminate."""
    db = make_db("hyg")
    proxy = pool1(pg_server, proxy_factory)
    port = proxy.port("pg")
    a, _ = login(port, db, rcvbuf=A_RCVBUF)
    b: Raw | None = None
    try:
        # A first query, so the pool has an idle server and A's requests reach it at once.
        assert data_values(simple_query(a, "select 'A warm-up'")) == [["A warm-up"]]
        if departure == "b_after_terminate_same_write":
            a.send(UNANSWERED[what] + TERMINATE)
            a.close()
        else:
            a.send(UNANSWERED[what])
            wait_query_running(pg_server, db, LEAK)
        if departure == "b_waiting":
            b, _ = login(port, db)
            script = ScriptB(b)
            script.send_first()
            wait_waiters(proxy, db, 1)  # A holds the only server
            leave(a, "close")
        else:
            leave(a, "close")
            wait_unlinked(proxy, db)
            b, _ = login(port, db)
            script = ScriptB(b)
            script.send_first()
        check_b(script, direct_b, f"{what}, {departure}")
    finally:
        a.close()
        if b is not None:
            b.close()
    assert_healthy(proxy, pg_server, db)


@pytest.mark.parametrize("how", ["close", "reset", "terminate", "terminate_same_write"])
def test_unsynced_pipeline_issue_repro(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[[str], str], how: str
) -> None:
    """The issue, literally: A enters pipeline mode, sends `select 'LEAKED from client A'`
    without Sync and disconnects; B sends `select $1` with B1, then Sync. B's first result is
    B1, and every later result is its own (none shifted by one). `terminate_same_write` is
    libpq's way: PQfinish flushes the pipeline's unsent messages and its Terminate together."""
    db = make_db("hyg")
    proxy = pool1(pg_server, proxy_factory)
    port = proxy.port("pg")
    a, _ = login(port, db)
    assert data_values(simple_query(a, "select 'A warm-up'")) == [["A warm-up"]]
    if how == "terminate_same_write":
        a.send(extended(f"select '{LEAK}'") + TERMINATE)
        a.close()
        wait_unlinked(proxy, db)
    else:
        a.send(extended(f"select '{LEAK}'"))
        wait_query_running(pg_server, db, LEAK)
        leave(a, how)
    b, _ = login(port, db)
    try:
        for i in range(1, 6):
            b.send(extended("select $1", [f"B{i}"]) + SYNC)
            msgs = b.read_until(b"Z")
            assert data_values(msgs) == [[f"B{i}"]], f"request {i} of B got {msgs}"
        assert not no_more_messages(b)
    finally:
        b.close()
    assert_healthy(proxy, pg_server, db)


# --------------------------------------------------------------------------- COPY


@pytest.mark.parametrize("cut", ["between_messages", "mid_message"])
def test_client_leaves_mid_copy_from_stdin(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[[str], str],
    direct_b: list[Msg], cut: str,
) -> None:
    """A starts COPY FROM STDIN, sends some rows (and, for `mid_message`, half a CopyData) and
    leaves: the COPY is aborted (none of its rows ever becomes visible) and B gets only its own
    results."""
    db = make_db("hyg")
    make_table(pg_server, db, "sink", "v text")
    proxy = pool1(pg_server, proxy_factory)
    port = proxy.port("pg")
    a, _ = login(port, db, rcvbuf=A_RCVBUF)
    b: Raw | None = None
    try:
        a.send(message(b"Q", b"COPY sink FROM STDIN\x00"))
        assert [t for t, _ in a.read_until(b"GEZ")] == [b"G"]
        a.send(b"".join(message(b"d", f"{LEAK} {i}\n".encode()) for i in range(100)))
        if cut == "mid_message":
            a.send(b"d" + struct.pack("!I", 1004) + b"LEAKED partial")
        time.sleep(0.2)  # the rows reach PostgreSQL
        b, _ = login(port, db)
        script = ScriptB(b)
        script.send_first()
        wait_waiters(proxy, db, 1)
        leave(a, "close")
        check_b(script, direct_b, f"copy from stdin, {cut}")
    finally:
        a.close()
        if b is not None:
            b.close()
    assert_healthy(proxy, pg_server, db)
    assert pg_server.execute("SELECT count(*) FROM sink", dbname=db) == [(0,)], \
        "rows of an abandoned COPY became visible"


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_leaves_mid_copy_to_stdout(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[[str], str],
    direct_b: list[Msg], how: str,
) -> None:
    """A runs COPY big TO STDOUT (30 MB: more than the socket buffers between PostgreSQL and A
    hold, so the server is still sending) and leaves after the first chunk."""
    db = make_db("hyg")
    make_table(pg_server, db, "big", "id int, v text")
    pg_server.execute("ALTER TABLE big ALTER COLUMN v SET STORAGE EXTERNAL", dbname=db)  # fast
    pg_server.execute(f"INSERT INTO big SELECT i, '{LEAK} ' || repeat('x', 100000)"
                      " FROM generate_series(1, 300) i", dbname=db)
    proxy = pool1(pg_server, proxy_factory)
    port = proxy.port("pg")
    a, _ = login(port, db, rcvbuf=A_RCVBUF)
    b: Raw | None = None
    try:
        a.send(message(b"Q", b"COPY big TO STDOUT\x00"))
        first = read_some(a, 64 * 1024)
        assert first[:1] == b"H" and LEAK.encode() in first, first[:100]
        b, _ = login(port, db)
        script = ScriptB(b)
        script.send_first()
        wait_waiters(proxy, db, 1)
        leave(a, how)
        check_b(script, direct_b, f"copy to stdout, {how}")
    finally:
        a.close()
        if b is not None:
            b.close()
    assert_healthy(proxy, pg_server, db)


# --------------------------------------------------------------------------- large results


@pytest.mark.parametrize("protocol", ["simple", "extended_sync", "extended_flush"])
def test_client_leaves_mid_result_set(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[[str], str],
    direct_b: list[Msg], protocol: str,
) -> None:
    """A reads 64 KiB of a 30 MB result and leaves (30 MB: more than the socket buffers between
    PostgreSQL and A hold, so the server is still sending)."""
    db = make_db("hyg")
    proxy = pool1(pg_server, proxy_factory)
    port = proxy.port("pg")
    sql = f"select '{LEAK} ' || i || repeat('x', 1000) from generate_series(1, 30000) i"
    request = {
        "simple": message(b"Q", sql.encode() + b"\x00"),
        "extended_sync": extended(sql) + SYNC,
        "extended_flush": extended(sql) + FLUSH,
    }[protocol]
    a, _ = login(port, db, rcvbuf=A_RCVBUF)
    b: Raw | None = None
    try:
        a.send(request)
        first = read_some(a, 64 * 1024)
        assert LEAK.encode() in first
        b, _ = login(port, db)
        script = ScriptB(b)
        script.send_first()
        wait_waiters(proxy, db, 1)
        leave(a, "close")
        check_b(script, direct_b, f"mid result set, {protocol}")
    finally:
        a.close()
        if b is not None:
            b.close()
    assert_healthy(proxy, pg_server, db)


# --------------------------------------------------------------------------- transactions


@pytest.mark.parametrize("moment", ["idle_in_transaction", "insert_unread", "failed_transaction",
                                    "extended_unsynced"])
def test_client_leaves_inside_transaction(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[[str], str],
    direct_b: list[Msg], moment: str,
) -> None:
    """BEGIN; INSERT; A leaves (after reading the INSERT's reply, before reading it, inside a
    failed transaction, or with the INSERT as an unsynced Execute): the row never becomes
    visible, B gets only its own results, and B's own transaction commits."""
    db = make_db("hyg")
    make_table(pg_server, db, "tx_t", "v text")
    proxy = pool1(pg_server, proxy_factory)
    port = proxy.port("pg")
    a, _ = login(port, db, rcvbuf=A_RCVBUF)
    b: Raw | None = None
    try:
        assert simple_query(a, "BEGIN")[-1] == (b"Z", b"T")
        insert = f"INSERT INTO tx_t VALUES ('{LEAK}')"
        if moment == "extended_unsynced":
            a.send(extended(insert))
        elif moment == "insert_unread":
            a.send(message(b"Q", f"{insert}; SELECT pg_sleep(0.5)".encode() + b"\x00"))
        else:
            assert simple_query(a, insert)[-1] == (b"Z", b"T")
            if moment == "failed_transaction":
                msgs = simple_query(a, "SELECT 1/0")
                assert [t for t, _ in msgs] == [b"E", b"Z"] and msgs[-1] == (b"Z", b"E"), msgs
        if moment in ("insert_unread", "extended_unsynced"):
            wait_query_running(pg_server, db, "INSERT INTO tx_t")
        b, _ = login(port, db)
        script = ScriptB(b)
        script.send_first()
        wait_waiters(proxy, db, 1)
        leave(a, "close")
        check_b(script, direct_b, f"inside a transaction, {moment}")
        # B's own transaction on the same connection commits.
        assert simple_query(b, "BEGIN")[-1] == (b"Z", b"T")
        assert simple_query(b, "INSERT INTO tx_t VALUES ('B')")[-1] == (b"Z", b"T")
        assert simple_query(b, "COMMIT")[-1] == (b"Z", b"I")
    finally:
        a.close()
        if b is not None:
            b.close()
    assert_healthy(proxy, pg_server, db)
    assert pg_server.execute("SELECT v FROM tx_t ORDER BY v", dbname=db) == [("B",)], \
        "the departed client's row became visible (or B's did not)"


# --------------------------------------------------------------------------- cancel


CANCEL_ROUNDS = 1


@pytest.mark.parametrize("order", ["cancel_then_leave", "leave_then_cancel"])
@pytest.mark.parametrize("a_state", ["running", "idle_in_transaction"])
def test_cancel_racing_departure_never_hits_next_client(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[[str], str], a_state: str,
    order: str,
) -> None:
    """A (running pg_sleep, or idle inside a transaction) sends a CancelRequest with its own
    BackendKeyData on a new socket and disconnects at once; B, queued for the only server,
    runs `select 'B1' from pg_sleep(0.5)` then `select 'B2'`: neither may be cancelled (a late
    cancel must never reach the next client's query)."""
    db = make_db("hyg")
    proxy = pool1(pg_server, proxy_factory)
    port = proxy.port("pg")
    for round_ in range(CANCEL_ROUNDS):
        a, key = login(port, db, rcvbuf=A_RCVBUF)
        b: Raw | None = None
        try:
            if a_state == "running":
                a.send(message(b"Q", b"select 'A' from pg_sleep(30)\x00"))
                wait_query_running(pg_server, db, "pg_sleep(30)")
            else:
                assert simple_query(a, "BEGIN")[-1] == (b"Z", b"T")
                assert simple_query(a, "select 'A in tx'")[-1] == (b"Z", b"T")
            b, _ = login(port, db)
            b.send(message(b"Q", b"select 'B1' from pg_sleep(0.5)\x00"))
            wait_waiters(proxy, db, 1)
            # Back to back: the cancel is still on its way to PostgreSQL when A has gone.
            if order == "cancel_then_leave":
                canceller = send_cancel(port, key)
                leave(a, "close")
            else:
                a.sock.shutdown(socket.SHUT_RDWR)
                canceller = send_cancel(port, key)
                a.close()
            canceller.close()
            first = b.read_until(b"Z")
            errors = [error_fields(body) for t, body in first if t == b"E"]
            assert not errors, f"round {round_}: B's query was hit: {errors}"
            assert data_values(first) == [["B1"]], f"round {round_}: {first}"
            second = simple_query(b, "select 'B2'")
            assert data_values(second) == [["B2"]], f"round {round_}: {second}"
            assert not no_more_messages(b, 0.2)
        finally:
            a.close()
            if b is not None:
                b.close()
    assert_healthy(proxy, pg_server, db)


def postmaster_pid(pg: PgServer) -> int:
    return int((pg.datadir / "postmaster.pid").read_text().split()[0])


def test_cancel_then_departure_with_cancel_held_up(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[[str], str]
) -> None:
    """A runs pg_sleep, sends a CancelRequest with its own key and disconnects at once, while
    the cancel is held up on its way (the postmaster frozen for 1 s): B, queued for the only
    server, must not be hit when the cancel is finally delivered."""
    db = make_db("hyg")
    proxy = pool1(pg_server, proxy_factory)
    port = proxy.port("pg")
    a, key = login(port, db, rcvbuf=A_RCVBUF)
    b, _ = login(port, db)
    canceller: socket.socket | None = None
    try:
        a.send(message(b"Q", b"select 'A' from pg_sleep(30)\x00"))
        wait_query_running(pg_server, db, "pg_sleep(30)")
        b.send(message(b"Q", b"select 'B1' from pg_sleep(1.5)\x00"))
        wait_waiters(proxy, db, 1)
        postmaster = postmaster_pid(pg_server)
        try:
            os.kill(postmaster, signal.SIGSTOP)
        except PermissionError:
            pytest.skip("cannot signal PostgreSQL's postmaster")
        try:
            canceller = send_cancel(port, key)
            leave(a, "close")
            time.sleep(1.0)
        finally:
            os.kill(postmaster, signal.SIGCONT)
        first = b.read_until(b"Z")
        errors = [error_fields(body) for t, body in first if t == b"E"]
        assert not errors, f"B's query was hit by A's late cancel: {errors}"
        assert data_values(first) == [["B1"]], first
        assert data_values(simple_query(b, "select 'B2'")) == [["B2"]]
    finally:
        if canceller is not None:
            canceller.close()
        a.close()
        b.close()
    assert_healthy(proxy, pg_server, db)


@pytest.mark.parametrize("stall", [1.0, 5.5], ids=["cancel_delayed_1s", "cancel_delayed_5_5s"])
def test_cancel_in_flight_when_query_ends_never_hits_next_client(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[[str], str], stall: float
) -> None:
    """A cancels its running query, but the cancel is held up on its way (PostgreSQL's
    postmaster, which handles cancel requests, is frozen with SIGSTOP for `stall` seconds)
    while A's query ends normally and its server would be free for B, who is queued. The cancel
    is delivered when the postmaster goes on: it must not hit B's query (B runs on that server
    only once the cancel is done, or on another server). 5.5 s is longer than the 5 s poolproxy
    waits for a cancel connection: a cancel it stops waiting for may still be delivered (B's
    query, 1.5 s, then still runs when it arrives)."""
    db = make_db("hyg")
    proxy = pool1(pg_server, proxy_factory)
    port = proxy.port("pg")
    a, key = login(port, db)
    b, _ = login(port, db)
    canceller: socket.socket | None = None
    try:
        assert data_values(simple_query(a, "select 'A warm-up'")) == [["A warm-up"]]
        a.send(message(b"Q", b"select 'A' from pg_sleep(1)\x00"))
        wait_query_running(pg_server, db, "pg_sleep(1)")
        b.send(message(b"Q", b"select 'B1' from pg_sleep(1.5)\x00"))
        wait_waiters(proxy, db, 1)
        postmaster = postmaster_pid(pg_server)
        try:
            os.kill(postmaster, signal.SIGSTOP)
        except PermissionError:
            pytest.skip("cannot signal PostgreSQL's postmaster")
        try:
            canceller = send_cancel(port, key)
            sent = time.monotonic()
            # A's query ends on its own: its cancel cannot reach the backend yet.
            reply = a.read_until(b"Z")
            assert data_values(reply) == [["A"]], reply
            time.sleep(max(0.3, sent + stall - time.monotonic()))
        finally:
            os.kill(postmaster, signal.SIGCONT)
        first = b.read_until(b"Z")
        errors = [error_fields(body) for t, body in first if t == b"E"]
        assert not errors, f"B's query was hit by A's late cancel: {errors}"
        assert data_values(first) == [["B1"]], first
        assert data_values(simple_query(b, "select 'B2'")) == [["B2"]]
    finally:
        if canceller is not None:
            canceller.close()
        a.close()
        b.close()
    assert_healthy(proxy, pg_server, db)


# --------------------------------------------------------------------------- psycopg as B


def test_psycopg_next_client_after_unsynced_pipeline(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[[str], str]
) -> None:
    """B is psycopg 3 at its default settings (server-side binding with execute(); a pipeline of
    its own), connecting while A's unsynced pipeline holds the only server."""
    db = make_db("hyg")
    proxy = pool1(pg_server, proxy_factory)
    port = proxy.port("pg")
    a, _ = login(port, db, rcvbuf=A_RCVBUF)
    try:
        a.send(extended(f"select '{LEAK}'") + extended(f"select '{LEAK} 2' from pg_sleep(0.3)")
               + FLUSH)
        wait_query_running(pg_server, db, LEAK)
        leave(a, "close")
        with psycopg.connect(host="127.0.0.1", port=port, user=USER, dbname=db,
                             connect_timeout=10) as conn:
            for i in range(3):
                assert conn.execute("select %s::text", (f"B{i}",)).fetchone() == (f"B{i}",)
            with conn.pipeline():
                curs = [conn.execute("select %s::text", (f"P{i}",)) for i in range(3)]
            assert [c.fetchone() for c in curs] == [("P0",), ("P1",), ("P2",)]
            conn.commit()
    finally:
        a.close()
    assert_healthy(proxy, pg_server, db)



def test_libpq_pipeline_client_closes_with_query_unsynced(
    pg_server: PgServer, proxy_factory: Any, make_db: Callable[[str], str]
) -> None:
    """The issue with a real libpq client as A: psycopg 3 (default settings) in pipeline mode
    queues `select 'LEAKED from client A'` and closes the connection inside the pipeline
    (PQfinish, no Sync). B, psycopg too, gets only its own results."""
    db = make_db("hyg")
    proxy = pool1(pg_server, proxy_factory)
    dsn = {"host": "127.0.0.1", "port": proxy.port("pg"), "user": USER, "dbname": db,
           "connect_timeout": 10}
    a = psycopg.connect(**dsn, autocommit=True)
    try:
        assert a.execute("select 'A warm-up'").fetchone() == ("A warm-up",)
        # Leaving the pipeline block on a closed connection raises "the connection is closed".
        with contextlib.suppress(psycopg.OperationalError), a.pipeline():
            a.execute(f"select '{LEAK}'")
            a.close()  # PQfinish inside the pipeline: the query is never synced
    finally:
        a.close()
    wait_unlinked(proxy, db)
    with psycopg.connect(**dsn) as b:
        for i in range(1, 4):
            try:
                row = b.execute("select %s::text", (f"B{i}",)).fetchone()
            except psycopg.Error as exc:
                raise AssertionError(f"B's statement {i} failed: {type(exc).__name__}: {exc} "
                                     "(A's unsynced result reached B)") from exc
            assert row == (f"B{i}",), f"B's statement {i} got {row}"
        b.commit()
    assert_healthy(proxy, pg_server, db)
