"""Pool hygiene under random abuse: clients leave at random points, nobody sees another's rows.

PostgreSQL (16 chaos clients, 4 checkers, pool of 2, ~10 s, raw sockets): the chaos clients run
random protocol sequences (simple and multi-statement queries, extended protocol with and
without Sync, Execute + Flush, pipelines of several queries, BEGIN/COMMIT, large results, COPY
in both directions, cancels of their own queries) and mostly leave at a random point: half-way
through a message, with an unsynced pipeline, after Execute + Flush, inside a transaction, in
COPY, part-way through a large result, right after a cancel; by closing, by an RST or by
Terminate (in the same write, as libpq's PQfinish does). Before leaving, a client often makes
sure it holds a server (an answered Execute + Flush, or BEGIN), so what it abandons did reach
one. Every reply a client does read must be exactly its own: each query selects a marker
`<client id>:<seq>` (or rows carrying it), and the reply is checked message by message. The
well-behaved "checker" clients run alongside for the whole time and check that every result
they receive carries their own id and their sequence numbers in order. At the end the proxy must
have settled (nothing active or waiting, at most `pool_size` backends, each an idle server of
the pool) and exactly the completed COPYs are in the table.

MySQL (12 chaos clients, 4 checkers, pool of 2, ~5 s, PyMySQL with CLIENT_MULTI_STATEMENTS):
unread later results of multi-statement queries, abandoned slow queries, half-read large
results, abandoned transactions; exactly the committed rows are visible at the end.

The run is seeded: the seed is printed and named in every failure (with what the sessions whose
rows leaked did); set POOLPROXY_HYGIENE_SEED to replay a run's client scripts (thread timing
still varies).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pymysql
from pymysql.constants import CLIENT

from tests.harness import (
    MariaDbServer,
    PgServer,
    ProxyProcess,
    make_config,
    mysql_listener,
    pg_listener,
)
from tests.harness.pgraw import message, startup_packet
from tests.harness.util import http_get, wait_for

PG_USER = "app_trust"  # trusted by PostgreSQL: no password exchange to write here
PG_DURATION = 10.0
MY_DURATION = 5.0
POOL_SIZE = 2

SYNC = message(b"S")
FLUSH = message(b"H")
TERMINATE = message(b"X")
CANCEL_REQUEST_CODE = 80877102


def seed_for_run() -> int:
    env = os.environ.get("POOLPROXY_HYGIENE_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 32)


def pools_of(proxy: ProxyProcess, db: str, user: str) -> list[dict[str, Any]]:
    return [p for p in json.loads(http_get(proxy, "/pools"))
            if p["database"] == db and p["user"] == user]


class Failures:
    """Failures of every client thread, each naming the seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.items: list[str] = []
        self.lock = threading.Lock()
        #: What each client session did (for the report: whose rows leaked, after what).
        self.journal: dict[str, list[str]] = {}

    def log(self, who: str, what: str) -> None:
        self.journal.setdefault(who, []).append(what)

    def add(self, who: str, text: str) -> None:
        with self.lock:
            self.items.append(f"[seed {self.seed}] {who}: {text}")

    def check(self) -> None:
        if not self.items:
            return
        named = sorted({m for item in self.items for m in re.findall(r"x\d+\.\d+(?=:)", item)})
        sessions = "\n".join(f"  {who}: {' '.join(self.journal.get(who, []))}"
                             for who in named[:20])
        raise AssertionError(f"{len(self.items)} failure(s) (seed {self.seed}; replay with "
                             f"POOLPROXY_HYGIENE_SEED={self.seed}):\n"
                             + "\n".join(self.items[:15])
                             + f"\nwhat the sessions named there did:\n{sessions}")


# =========================================================================== PostgreSQL


class ProtocolFailure(AssertionError):
    pass


class PgConn:
    """A raw PostgreSQL client with an efficient reader (results of several MB)."""

    def __init__(self, port: int, db: str, rcvbuf: int | None = None,
                 timeout: float = 30.0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.send(startup_packet({"user": PG_USER, "database": db}))
        msgs = self.read_until_z()
        types = [t for t, _ in msgs]
        if types[:1] != [b"R"] or msgs[-1] != (b"Z", b"I") or b"K" not in types:
            raise ProtocolFailure(f"login: {msgs}")
        self.port = port
        self.key = next(body for t, body in msgs if t == b"K")  # BackendKeyData

    def cancel(self) -> None:
        """A CancelRequest with this connection's key, on a connection of its own."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(struct.pack("!II", 16, CANCEL_REQUEST_CODE) + self.key)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        if self.pos > 1 << 16:
            del self.buf[:self.pos]
            self.pos = 0
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise ProtocolFailure("EOF from the proxy")
        self.buf += chunk

    def read_message(self) -> tuple[bytes, bytes]:
        while True:
            avail = len(self.buf) - self.pos
            if avail >= 5:
                length = struct.unpack_from("!I", self.buf, self.pos + 1)[0]
                if not 4 <= length < 1 << 26:
                    raise ProtocolFailure(f"absurd length: {bytes(self.buf[self.pos:][:32])!r}")
                if avail >= 1 + length:
                    t = bytes(self.buf[self.pos:self.pos + 1])
                    body = bytes(self.buf[self.pos + 5:self.pos + 1 + length])
                    self.pos += 1 + length
                    return t, body
            self._fill()

    def read_until_z(self) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            msg = self.read_message()
            out.append(msg)
            if msg[0] == b"Z":
                return out

    def read_bytes(self, n: int, wait: float = 0.2) -> None:
        """Read (and drop) up to about `n` raw bytes, or what arrives within `wait` seconds
        of each other (a reply may be shorter)."""
        got = len(self.buf) - self.pos
        self.sock.settimeout(wait)
        try:
            while got < n:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return
                got += len(chunk)
        except OSError:  # the timeout
            pass

    def leave(self, how: str) -> None:
        try:
            if how == "terminate":
                self.sock.sendall(TERMINATE)
            elif how == "reset":
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()


def parse(sql: str) -> bytes:
    return message(b"P", b"\x00" + sql.encode() + b"\x00\x00\x00")


def bind(params: list[str]) -> bytes:
    body = b"\x00\x00\x00\x00" + struct.pack("!H", len(params))
    for value in params:
        raw = value.encode()
        body += struct.pack("!i", len(raw)) + raw
    return message(b"B", body + b"\x00\x00")


def extended(sql: str, params: list[str] | None = None) -> bytes:
    return parse(sql) + bind(params or []) + message(b"D", b"P\x00") \
        + message(b"E", b"\x00\x00\x00\x00\x00")


def row_values(body: bytes) -> list[str | None]:
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
    return row


def check_reply(msgs: list[tuple[bytes, bytes]], types: list[bytes],
                values: list[list[str | None]] | None, statuses: list[bytes] | None = None
                ) -> None:
    """`msgs` are exactly of `types`, its DataRows carry exactly `values` (when given) and its
    ReadyForQuery statuses are `statuses` (default: all idle)."""
    got_types = [t for t, _ in msgs]
    if got_types != types:
        raise ProtocolFailure(f"expected {b''.join(types)!r}, got {b''.join(got_types)!r}: "
                              f"{msgs[:12]}")
    if values is not None:
        got = [row_values(body) for t, body in msgs if t == b"D"]
        if got != values:
            raise ProtocolFailure(f"rows {got[:6]}... expected {values[:6]}...")
    want = statuses or [b"I"] * types.count(b"Z")
    got_status = [body for t, body in msgs if t == b"Z"]
    if got_status != want:
        raise ProtocolFailure(f"ReadyForQuery {got_status}, expected {want}")


class PgScript:
    """One client's random (or, for a checker, well-behaved) operations."""

    def __init__(self, name: str, rnd: random.Random, conn: PgConn, copied: set[str],
                 journal: Callable[[str], None] | None = None) -> None:
        self.journal = journal or (lambda what: None)
        self.name = name
        self.rnd = rnd
        self.conn = conn
        self.copied = copied  # markers of completed COPY FROM STDIN (shared by all clients)
        self.seq = 0
        self.last_op = ""

    def marker(self) -> str:
        self.seq += 1
        return f"{self.name}:{self.seq}"

    # -- operations: each returns normally when fully answered and checked; with `abandon`,
    #    it stops part-way (the caller then leaves) and returns.

    def _request(self, request: bytes, zs: int, types: list[bytes],
                 values: list[list[str | None]] | None, abandon: bool,
                 statuses: list[bytes] | None = None) -> None:
        conn = self.conn
        if abandon:
            if self.rnd.random() < 0.4:
                conn.send(request[:self.rnd.randrange(1, len(request))])  # mid-request
            else:
                conn.send(request)
                if self.rnd.random() < 0.6:
                    conn.read_bytes(self.rnd.randrange(0, 300_000))
            return
        conn.send(request)
        msgs: list[tuple[bytes, bytes]] = []
        for _ in range(zs):
            msgs += conn.read_until_z()
        check_reply(msgs, types, values, statuses)

    def op_simple(self, abandon: bool) -> None:
        m = self.marker()
        self._request(message(b"Q", f"select '{m}' as m".encode() + b"\x00"), 1,
                      [b"T", b"D", b"C", b"Z"], [[m]], abandon)

    def op_simple_multi(self, abandon: bool) -> None:
        m1, m2 = self.marker(), self.marker()
        self._request(message(b"Q", f"select '{m1}'; select '{m2}', 2".encode() + b"\x00"), 1,
                      [b"T", b"D", b"C", b"T", b"D", b"C", b"Z"], [[m1], [m2, "2"]], abandon)

    def op_extended(self, abandon: bool) -> None:
        m = self.marker()
        self._request(extended("select $1::text", [m]) + SYNC, 1,
                      [b"1", b"2", b"T", b"D", b"C", b"Z"], [[m]], abandon)

    def op_pipeline(self, abandon: bool) -> None:
        k = self.rnd.randint(2, 5)
        marks = [self.marker() for _ in range(k)]
        if self.rnd.random() < 0.5:  # one Sync at the end
            request = b"".join(extended("select $1::text", [m]) for m in marks) + SYNC
            types = [b"1", b"2", b"T", b"D", b"C"] * k + [b"Z"]
            zs = 1
        else:  # a Sync after each
            request = b"".join(extended("select $1::text", [m]) + SYNC for m in marks)
            types = [b"1", b"2", b"T", b"D", b"C", b"Z"] * k
            zs = k
        self._request(request, zs, types, [[m] for m in marks], abandon)

    def op_flush_then_sync(self, abandon: bool) -> None:
        """Execute + Flush (asyncpg's pattern): the rows arrive without a Sync; then Sync."""
        m = self.marker()
        conn = self.conn
        slow = self.rnd.random() < 0.3
        sql = "select $1::text from pg_sleep(0.05)" if slow else "select $1::text"
        conn.send(extended(sql, [m]) + FLUSH)
        if abandon:
            if self.rnd.random() < 0.5:
                conn.read_bytes(self.rnd.randrange(0, 40))
            return
        msgs = []
        while not msgs or msgs[-1][0] != b"C":
            msgs.append(conn.read_message())
        conn.send(SYNC)
        msgs += conn.read_until_z()
        check_reply(msgs, [b"1", b"2", b"T", b"D", b"C", b"Z"], [[m]])

    def op_unsynced_then_leave(self, abandon: bool) -> None:
        """An unsynced pipeline (libpq pipeline mode): without `abandon`, synced later."""
        marks = [self.marker() for _ in range(self.rnd.randint(1, 3))]
        conn = self.conn
        conn.send(b"".join(extended("select $1::text", [m]) for m in marks))
        if abandon:
            return
        time.sleep(self.rnd.random() * 0.02)
        conn.send(SYNC)
        check_reply(conn.read_until_z(), [b"1", b"2", b"T", b"D", b"C"] * len(marks) + [b"Z"],
                    [[m] for m in marks])

    def op_transaction(self, abandon: bool) -> None:
        m = self.marker()
        steps = [
            (message(b"Q", b"BEGIN\x00"), [b"C", b"Z"], None, [b"T"]),
            (message(b"Q", f"select '{m}'".encode() + b"\x00"), [b"T", b"D", b"C", b"Z"],
             [[m]], [b"T"]),
            (extended("select $1::text", [m + "x"]) + SYNC, [b"1", b"2", b"T", b"D", b"C", b"Z"],
             [[m + "x"]], [b"T"]),
            (message(b"Q", b"COMMIT\x00"), [b"C", b"Z"], None, [b"I"]),
        ]
        stop = self.rnd.randrange(len(steps)) if abandon else len(steps)
        for i, (request, types, values, statuses) in enumerate(steps):
            self._request(request, 1, types, values, abandon and i == stop, statuses)
            if abandon and i == stop:
                return

    def op_big(self, abandon: bool) -> None:
        m = self.marker()
        n = self.rnd.choice([50, 500, 4000] if not abandon else [500, 4000, 20000])
        sql = f"select '{m}:' || i || ':' || repeat('x', 200) from generate_series(1, {n}) i"
        values = [[f"{m}:{i}:" + "x" * 200] for i in range(1, n + 1)]
        self._request(message(b"Q", sql.encode() + b"\x00"), 1,
                      [b"T"] + [b"D"] * n + [b"C", b"Z"], values, abandon)

    def op_copy_out(self, abandon: bool) -> None:
        m = self.marker()
        n = self.rnd.choice([10, 1000] if not abandon else [1000, 50000])
        sql = f"COPY (select '{m}:' || i from generate_series(1, {n}) i) TO STDOUT"
        request = message(b"Q", sql.encode() + b"\x00")
        if abandon:
            self._request(request, 1, [], None, abandon)
            return
        self.conn.send(request)
        msgs = self.conn.read_until_z()
        check_reply(msgs, [b"H"] + [b"d"] * n + [b"c", b"C", b"Z"], None)
        lines = [body for t, body in msgs if t == b"d"]
        if lines != [f"{m}:{i}\n".encode() for i in range(1, n + 1)]:
            raise ProtocolFailure(f"COPY rows {lines[:3]}... not {m}'s")

    def op_copy_in(self, abandon: bool) -> None:
        m = self.marker()
        conn = self.conn
        conn.send(message(b"Q", b"COPY rnd_sink FROM STDIN\x00"))
        if abandon and self.rnd.random() < 0.2:
            return
        msgs = [conn.read_message()]
        if msgs[0][0] != b"G":
            raise ProtocolFailure(f"COPY FROM: {msgs}")
        rows = b"".join(message(b"d", f"{m}:{i}\n".encode()) for i in range(50))
        if abandon:
            conn.send(rows[:self.rnd.randrange(1, len(rows))])
            return
        conn.send(rows + message(b"c"))
        msgs = conn.read_until_z()
        check_reply(msgs, [b"C", b"Z"], None)
        if msgs[0][1] != b"COPY 50\x00":
            raise ProtocolFailure(f"COPY FROM: {msgs}")
        self.copied.add(m)

    def op_sleep(self, abandon: bool) -> None:
        m = self.marker()
        self._request(message(b"Q", f"select '{m}' from pg_sleep(0.02)".encode() + b"\x00"), 1,
                      [b"T", b"D", b"C", b"Z"], [[m]], abandon)

    def hold_server(self, begin_ok: bool) -> None:
        """Make sure the client holds a server before an abandoned operation, so that what it
        sends reaches the server (a client still queued for one just leaves the queue): an
        answered Execute + Flush (unsynced), or BEGIN."""
        conn = self.conn
        m = self.marker()
        if self.rnd.random() < 0.7 or not begin_ok:
            conn.send(extended("select $1::text", [m]) + FLUSH)
            msgs = []
            while not msgs or msgs[-1][0] != b"C":
                msgs.append(conn.read_message())
            check_reply(msgs, [b"1", b"2", b"T", b"D", b"C"], [[m]])
        else:
            self._request(message(b"Q", b"BEGIN\x00"), 1, [b"C", b"Z"], None, False, [b"T"])

    def op_cancel(self, abandon: bool) -> None:
        """A query that the client cancels itself (a CancelRequest with its own key), after a
        random delay: it ends with its rows or with 57014, and with `abandon` the client leaves
        right after the cancel. A cancel must only ever hit this client's own query: the
        checkers (and other clients) never get an error. The caller ends the session after."""
        m = self.marker()
        conn = self.conn
        conn.send(message(b"Q", f"select '{m}' from pg_sleep(0.05)".encode() + b"\x00"))
        time.sleep(self.rnd.random() * 0.08)
        conn.cancel()
        if abandon:
            return
        msgs = conn.read_until_z()
        types = [t for t, _ in msgs]
        if types in ([b"E", b"Z"], [b"T", b"E", b"Z"]):  # cancelled (before or after RowDesc.)
            if b"C57014\x00" not in msgs[-2][1] or msgs[-1] != (b"Z", b"I"):
                raise ProtocolFailure(f"cancelled query: {msgs}")
        else:
            check_reply(msgs, [b"T", b"D", b"C", b"Z"], [[m]])

    CHAOS_OPS = ("op_simple", "op_simple_multi", "op_extended", "op_pipeline",
                 "op_flush_then_sync", "op_unsynced_then_leave", "op_transaction", "op_big",
                 "op_copy_out", "op_copy_in", "op_sleep", "op_cancel")
    CHECKER_OPS = ("op_simple", "op_simple_multi", "op_extended", "op_pipeline",
                   "op_flush_then_sync", "op_unsynced_then_leave", "op_transaction", "op_big",
                   "op_copy_out", "op_copy_in")

    def run(self, op: str, abandon: bool) -> None:
        self.last_op = f"{op}{' (abandoned)' if abandon else ''} at seq {self.seq + 1}"
        self.journal(f"{op[3:]}{'(abandoned)' if abandon else ''}@{self.seq + 1}")
        getattr(self, op)(abandon)


def pg_chaos(port: int, db: str, cid: int, seed: int, deadline: float, failures: Failures,
             counts: dict[str, int], copied: set[str]) -> None:
    rnd = random.Random(f"{seed}:chaos:{cid}")
    session = 0
    while time.monotonic() < deadline:
        session += 1
        name = f"x{cid}.{session}"
        script: PgScript | None = None
        try:
            conn = PgConn(port, db, rcvbuf=rnd.choice([None, 32 * 1024]))
            script = PgScript(name, rnd, conn, copied, partial(failures.log, name))
            n_ops = rnd.randint(1, 6)
            leave_early = rnd.random() < 0.8
            for i in range(n_ops):
                op = rnd.choice(PgScript.CHAOS_OPS)
                abandon = leave_early and i == n_ops - 1
                if abandon and rnd.random() < 0.6:
                    script.last_op = "hold_server"
                    failures.log(name, f"hold@{script.seq + 1}")
                    script.hold_server(begin_ok=op != "op_transaction")
                script.run(op, abandon)
                counts["chaos_ops"] += 1
                if op == "op_cancel":
                    break  # (a late cancel may hit the client's own next query, as directly)
            how = rnd.choice(["close", "reset", "terminate"])
            failures.log(name, f"leave:{how}")
            conn.leave(how)
        except Exception as exc:
            where = script.last_op if script is not None else "login"
            failures.add(name, f"{where}: {type(exc).__name__}: {exc}")
            return


def pg_checker(port: int, db: str, cid: int, seed: int, deadline: float, failures: Failures,
               counts: dict[str, int], copied: set[str]) -> None:
    rnd = random.Random(f"{seed}:checker:{cid}")
    name = f"chk{cid}"
    script: PgScript | None = None
    try:
        conn = PgConn(port, db)
        script = PgScript(name, rnd, conn, copied)
        while time.monotonic() < deadline:
            script.run(rnd.choice(PgScript.CHECKER_OPS), False)
            counts["checker_ops"] += 1
        conn.leave("terminate")
    except Exception as exc:
        where = script.last_op if script is not None else "login"
        failures.add(name, f"{where}: {type(exc).__name__}: {exc}")


def settle_check(proxy: ProxyProcess, db: str, user: str, server_count: Callable[[], int],
                 seed: int) -> None:
    problems: list[str] = []

    def settled() -> bool:
        problems.clear()
        snaps = pools_of(proxy, db, user)
        idle = 0
        for snap in snaps:
            servers = snap["servers"]
            for state in ("active", "login", "testing"):
                if servers[state]:
                    problems.append(f"{servers[state]} server(s) {state}")
            for key in ("waiters", "tasks"):
                if snap[key]:
                    problems.append(f"{key}={snap[key]}")
            idle += servers["idle"]
        n = server_count()
        if n > POOL_SIZE:
            problems.append(f"{n} server connections with pool_size {POOL_SIZE}")
        if idle != n:
            problems.append(f"{idle} idle server(s), {n} server connections")
        return bool(snaps) and not problems

    assert wait_for(settled, 15.0, 0.1), f"[seed {seed}] proxy did not settle: {problems}"
    assert proxy.is_running()
    assert "Traceback" not in proxy.log_text(), f"[seed {seed}] traceback in the proxy log"


def test_random_departures_pg(pg_server: PgServer, proxy_factory: Any) -> None:
    seed = seed_for_run()
    print(f"POOLPROXY_HYGIENE_SEED={seed}")
    db = "hyg_random"
    if not pg_server.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)):
        pg_server.execute(f"CREATE DATABASE {db} OWNER app")
    pg_server.execute(f"GRANT ALL ON DATABASE {db} TO {PG_USER}")
    pg_server.execute(f"GRANT ALL ON SCHEMA public TO {PG_USER}", dbname=db)
    pg_server.execute("DROP TABLE IF EXISTS rnd_sink", dbname=db)
    pg_server.execute("CREATE TABLE rnd_sink (v text)", dbname=db)
    pg_server.execute(f"GRANT ALL ON rnd_sink TO {PG_USER}", dbname=db)
    proxy = proxy_factory(make_config(pg_listener(
        pg_server, pool_size=POOL_SIZE, auth={"type": "trust"}, query_wait_timeout="60s")))
    port = proxy.port("pg")
    failures = Failures(seed)
    counts = {"chaos_ops": 0, "checker_ops": 0}
    deadline = time.monotonic() + PG_DURATION
    copied: set[str] = set()
    threads = [threading.Thread(target=pg_chaos, daemon=True,
                                args=(port, db, i, seed, deadline, failures, counts, copied))
               for i in range(16)]
    threads += [threading.Thread(target=pg_checker, daemon=True,
                                 args=(port, db, i, seed, deadline, failures, counts, copied))
                for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PG_DURATION + 60)
    assert not any(t.is_alive() for t in threads), f"[seed {seed}] a client is stuck"
    print(f"operations: {counts}, completed COPYs: {len(copied)}")
    failures.check()
    assert counts["checker_ops"] >= 40, f"[seed {seed}] the checkers stalled: {counts}"
    assert counts["chaos_ops"] >= 100, f"[seed {seed}] the chaos clients stalled: {counts}"

    def backends() -> int:
        return int(pg_server.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s"
            " AND backend_type = 'client backend'", (db, PG_USER))[0][0])

    settle_check(proxy, db, PG_USER, backends, seed)
    # Exactly the completed COPYs (50 rows each) are in the table: no abandoned one.
    counted = dict(pg_server.execute(
        "SELECT split_part(v, ':', 1) || ':' || split_part(v, ':', 2), count(*) FROM rnd_sink"
        " GROUP BY 1", dbname=db))
    assert counted == dict.fromkeys(copied, 50), (
        f"[seed {seed}] COPY rows of abandoned COPYs: "
        f"{[(m, n) for m, n in counted.items() if m not in copied][:5]}; incomplete: "
        f"{[(m, n) for m, n in counted.items() if m in copied and n != 50][:5]}")


# =========================================================================== MySQL


MY_FLAGS = CLIENT.MULTI_STATEMENTS


class MyScript:
    """A PyMySQL client's operations; every result is checked to be exactly its own."""

    def __init__(self, name: str, rnd: random.Random, conn: pymysql.connections.Connection,
                 committed: set[str]) -> None:
        self.name, self.rnd, self.conn = name, rnd, conn
        self.committed = committed  # markers of committed rows (shared by all clients)
        self.seq = 0
        self.last_op = ""

    def marker(self) -> str:
        self.seq += 1
        return f"{self.name}:{self.seq}"

    def _send_raw(self, sql: str) -> None:
        payload = b"\x03" + sql.encode()
        self.conn._sock.sendall(struct.pack("<I", len(payload))[:3] + b"\x00" + payload)  # type: ignore

    def _expect(self, got: Any, want: Any) -> None:
        if got != want:
            raise ProtocolFailure(f"got {str(got)[:300]}, expected {str(want)[:300]}")

    def op_simple(self, abandon: bool) -> None:
        m = self.marker()
        if abandon:
            self._send_raw(f"SELECT '{m}', SLEEP({self.rnd.choice([0, 0.05, 0.3])})")
            return
        cur = self.conn.cursor()
        cur.execute("SELECT %s", (m,))
        self._expect(cur.fetchall(), ((m,),))
        cur.close()

    def op_multi(self, abandon: bool) -> None:
        marks = [self.marker() for _ in range(3)]
        sleep = self.rnd.choice(["", " FROM (SELECT SLEEP(0.05)) s"])
        cur = self.conn.cursor()
        cur.execute(f"SELECT '{marks[0]}'; SELECT '{marks[1]}'{sleep}; SELECT '{marks[2]}'")
        self._expect(cur.fetchall(), ((marks[0],),))
        if abandon:
            return  # the later results stay unread (cur is not closed: that would read them)
        for m in marks[1:]:
            if not cur.nextset():
                raise ProtocolFailure(f"result of {m} missing")
            self._expect(cur.fetchall(), ((m,),))
        if cur.nextset():
            raise ProtocolFailure(f"a result more than {marks}: {cur.fetchall()}")
        cur.close()

    def op_transaction(self, abandon: bool) -> None:
        m = self.marker()
        cur = self.conn.cursor()
        cur.execute("START TRANSACTION")
        cur.execute("INSERT INTO rnd_t VALUES (%s)", (m,))
        cur.execute("SELECT v FROM rnd_t WHERE v = %s", (m,))
        self._expect(cur.fetchall(), ((m,),))
        if abandon:
            return
        cur.execute("COMMIT")
        self.committed.add(m)
        cur.close()

    def op_big(self, abandon: bool) -> None:
        m = self.marker()
        n = self.rnd.choice([100, 2000])
        sql = f"SELECT CONCAT('{m}:', seq, REPEAT('x', 1000)) FROM seq_1_to_{n}"
        if abandon:
            self._send_raw(sql)
            sock: socket.socket = self.conn._sock  # type: ignore[attr-defined]
            want, got = self.rnd.randrange(0, 200_000), 0
            sock.settimeout(0.5)
            try:
                while got < want:
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        break
                    got += len(chunk)
            except OSError:  # the timeout: the reply was shorter
                pass
            return
        cur = self.conn.cursor()
        cur.execute(sql)
        self._expect(cur.fetchall(), tuple((f"{m}:{i}" + "x" * 1000,) for i in range(1, n + 1)))
        cur.close()

    CHAOS_OPS = ("op_simple", "op_multi", "op_transaction", "op_big")

    def run(self, op: str, abandon: bool) -> None:
        self.last_op = f"{op}{' (abandoned)' if abandon else ''} at seq {self.seq + 1}"
        getattr(self, op)(abandon)


def my_connect(port: int) -> pymysql.connections.Connection:
    return pymysql.connect(host="127.0.0.1", port=port, user="app", password="app-secret",
                           database="test_hyg_random", client_flag=MY_FLAGS, autocommit=True,
                           connect_timeout=30, read_timeout=60)


def my_leave(conn: pymysql.connections.Connection, how: str) -> None:
    if how == "quit":
        conn.close()
        return
    sock: socket.socket = conn._sock  # type: ignore[attr-defined]
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn._force_close()  # type: ignore[attr-defined]


def my_chaos(port: int, cid: int, seed: int, deadline: float, failures: Failures,
             counts: dict[str, int], committed: set[str]) -> None:
    rnd = random.Random(f"{seed}:mychaos:{cid}")
    session = 0
    while time.monotonic() < deadline:
        session += 1
        name = f"x{cid}.{session}"
        script: MyScript | None = None
        try:
            conn = my_connect(port)
            script = MyScript(name, rnd, conn, committed)
            n_ops = rnd.randint(1, 5)
            for i in range(n_ops):
                abandon = i == n_ops - 1 and rnd.random() < 0.8
                script.run(rnd.choice(MyScript.CHAOS_OPS), abandon)
                counts["chaos_ops"] += 1
            my_leave(conn, rnd.choice(["quit", "close", "reset"]))
        except Exception as exc:
            where = script.last_op if script is not None else "login"
            failures.add(name, f"{where}: {type(exc).__name__}: {exc}")
            return


def my_checker(port: int, cid: int, seed: int, deadline: float, failures: Failures,
               counts: dict[str, int], committed: set[str]) -> None:
    rnd = random.Random(f"{seed}:mychecker:{cid}")
    name = f"chk{cid}"
    script: MyScript | None = None
    try:
        conn = my_connect(port)
        script = MyScript(name, rnd, conn, committed)
        while time.monotonic() < deadline:
            script.run(rnd.choice(MyScript.CHAOS_OPS), False)
            counts["checker_ops"] += 1
        conn.close()
    except Exception as exc:
        where = script.last_op if script is not None else "login"
        failures.add(name, f"{where}: {type(exc).__name__}: {exc}")


def test_random_departures_mysql(mariadb_server: MariaDbServer, proxy_factory: Any) -> None:
    seed = seed_for_run()
    print(f"POOLPROXY_HYGIENE_SEED={seed}")
    db = "test_hyg_random"
    mariadb_server.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    mariadb_server.execute(f"DROP TABLE IF EXISTS {db}.rnd_t")
    mariadb_server.execute(f"CREATE TABLE {db}.rnd_t (v VARCHAR(100)) ENGINE=InnoDB")
    proxy = proxy_factory(make_config(mysql_listener(
        mariadb_server, pool_size=POOL_SIZE, query_wait_timeout="60s")))
    port = proxy.port("mysql")
    failures = Failures(seed)
    counts = {"chaos_ops": 0, "checker_ops": 0}
    deadline = time.monotonic() + MY_DURATION
    committed: set[str] = set()
    threads = [threading.Thread(target=my_chaos, daemon=True,
                                args=(port, i, seed, deadline, failures, counts, committed))
               for i in range(12)]
    threads += [threading.Thread(target=my_checker, daemon=True,
                                 args=(port, i, seed, deadline, failures, counts, committed))
                for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(MY_DURATION + 60)
    assert not any(t.is_alive() for t in threads), f"[seed {seed}] a client is stuck"
    print(f"operations: {counts}, committed transactions: {len(committed)}")
    failures.check()
    assert counts["checker_ops"] >= 20, f"[seed {seed}] the checkers stalled: {counts}"
    assert counts["chaos_ops"] >= 50, f"[seed {seed}] the chaos clients stalled: {counts}"

    def server_connections() -> int:
        return int(mariadb_server.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'"
            " AND DB = %s", (db,))[0][0])

    settle_check(proxy, db, "app", server_connections, seed)
    # Exactly the rows of committed transactions are visible; abandoned ones were rolled back.
    rows = {str(r[0]) for r in mariadb_server.execute(f"SELECT v FROM {db}.rnd_t")}
    assert rows == committed, (f"[seed {seed}] rows of abandoned transactions: "
                               f"{sorted(rows - committed)[:5]}, committed rows missing: "
                               f"{sorted(committed - rows)[:5]}")

