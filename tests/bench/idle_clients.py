#!/usr/bin/env python3
"""Memory per idle client: N logged-in, idle client connections through each pooler (a script,
not a test).

Starts a throwaway PostgreSQL and MariaDB (tests/harness), poolproxy with a PostgreSQL and a
MySQL listener, and each ``--pgbouncer PATH`` in front of PostgreSQL; then, per target, opens
``--clients`` connections that each log in (PostgreSQL: SCRAM-SHA-256; MySQL:
mysql_native_password) and stay idle, and reads the pooler's RSS (/proc, the whole process tree)
before and after. It prints the RSS per idle client side by side.

    python tests/bench/idle_clients.py --clients 10000 --pgbouncer /usr/sbin/pgbouncer

The clients are raw asyncio connections in one separate process (no driver: 10,000 asyncpg
connections would cost the client far more than the pooler); they do the full login and then
send nothing. poolproxy has served one login per pool before the "before" reading, so pools,
caches and the SCRAM verifier exist already in both readings; PgBouncer gets the SCRAM secret
in its auth_file (no PBKDF2 per login), as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common import Cleanup, Poolproxy, install_signal_handlers, make_workdir  # noqa: E402
from pg_bench import APP_PASSWORD, APP_USER, DBNAME, PgBouncer, bouncer_builds  # noqa: E402

from proxy.auth import mysql_native, scram  # noqa: E402
from tests.harness.mariadb import MariaDbServer  # noqa: E402
from tests.harness.pgserver import PgServer  # noqa: E402
from tests.harness.procs import process_tree  # noqa: E402
from tests.harness.proxyproc import MYSQL_USERS, mysql_listener, pg_listener  # noqa: E402

MY_USER, MY_PASSWORD = MYSQL_USERS[0]["name"], MYSQL_USERS[0]["password"]


# --------------------------------------------------------------------------- idle clients


class PgLogin(asyncio.Protocol):
    """Logs in with SCRAM-SHA-256, then idles."""

    def __init__(self, done: asyncio.Future[bool]) -> None:
        self.done = done
        self.buf = b""
        self.scram = scram.ScramClient(APP_PASSWORD)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        body = struct.pack("!I", 196608) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0"
            for k, v in (("user", APP_USER), ("database", DBNAME))) + b"\0"
        transport.write(struct.pack("!I", len(body) + 4) + body)

    def _send(self, t: bytes, body: bytes) -> None:
        self.transport.write(t + struct.pack("!I", len(body) + 4) + body)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 5:
            t, n = self.buf[:1], struct.unpack("!I", self.buf[1:5])[0]
            if len(self.buf) < n + 1:
                return
            body, self.buf = self.buf[5:n + 1], self.buf[n + 1:]
            if t == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == 10:
                    first = self.scram.client_first()
                    self._send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
                elif code == 11:
                    self._send(b"p", self.scram.handle_server_first(body[4:]))
            elif t == b"Z" and not self.done.done():
                self.done.set_result(True)
            elif t == b"E" and not self.done.done():
                self.done.set_result(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


class MyLogin(asyncio.Protocol):
    """Logs in with mysql_native_password, then idles."""

    def __init__(self, done: asyncio.Future[bool]) -> None:
        self.done = done
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            n = int.from_bytes(self.buf[:3], "little")
            if len(self.buf) < n + 4:
                return
            seq, payload, self.buf = self.buf[3], self.buf[4:n + 4], self.buf[n + 4:]
            if payload[:1] == b"\x0a":  # the greeting: nonce parts
                pos = payload.index(b"\0", 1) + 1 + 4
                nonce = payload[pos:pos + 8]
                pos += 9 + 2 + 1 + 2 + 2 + 1 + 10
                nonce += payload[pos:pos + 12]
                caps = 0x0200 | 0x8000 | 0x80000 | 0x0008  # 41, secure conn, plugin auth, db
                reply = (struct.pack("<IIB", caps, 1 << 24, 45) + b"\0" * 23
                         + MY_USER.encode() + b"\0"
                         + bytes([20]) + mysql_native.scramble_native(MY_PASSWORD, nonce)
                         + b"app\0" + b"mysql_native_password\0")
                self.transport.write(len(reply).to_bytes(3, "little") + bytes([seq + 1])
                                     + reply)
            elif payload[:1] == b"\x00" and not self.done.done():
                self.done.set_result(True)
            elif not self.done.done():
                self.done.set_result(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


async def open_idle(protocol: str, port: int, count: int) -> None:
    """Client process: `count` logged-in idle connections; prints how many logged in, then
    holds them until stdin closes."""
    loop = asyncio.get_running_loop()
    ok = 0
    transports = []
    factory = PgLogin if protocol == "postgres" else MyLogin
    for start in range(0, count, 200):  # in batches: a burst of 10k SYNs overflows backlogs
        futures = []
        for _ in range(min(200, count - start)):
            done: asyncio.Future[bool] = loop.create_future()
            transport, _ = await loop.create_connection(lambda d=done: factory(d),  # type: ignore[misc]
                                                        "127.0.0.1", port)
            transports.append(transport)
            futures.append(done)
        ok += sum(await asyncio.gather(*futures))
    print(ok, flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for transport in transports:
        transport.close()


# --------------------------------------------------------------------------- measuring


def rss_kib(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def measure(label: str, protocol: str, port: int, pid: int, count: int) -> dict[str, Any]:
    warm = subprocess.Popen([sys.executable, __file__, "--client", protocol, str(port), "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert warm.stdout is not None and warm.stdin is not None
    warm_ok = int(warm.stdout.readline() or 0)
    warm.stdin.close()
    warm.wait(30)
    time.sleep(1.0)
    before = rss_kib(pid)
    client = subprocess.Popen([sys.executable, __file__, "--client", protocol, str(port),
                               str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert client.stdout is not None and client.stdin is not None
    started = time.monotonic()
    ok = int(client.stdout.readline() or 0)
    took = time.monotonic() - started
    time.sleep(2.0)
    after = rss_kib(pid)
    client.stdin.close()
    client.wait(120)
    per = (after - before) / ok if ok else float("nan")
    row = {"target": label, "protocol": protocol, "clients": ok, "warm": warm_ok,
           "rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
           "kib_per_client": per, "login_s": took}
    print(f"| {label} | {protocol} | {ok}/{count} | {before / 1024:.1f} | {after / 1024:.1f} |"
          f" {per:.2f} | {took:.1f} |", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--client"]:
        protocol, port, count = argv[1], int(argv[2]), int(argv[3])
        asyncio.run(open_idle(protocol, port, count))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--pgbouncer", action="append", metavar="PATH", default=[])
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    install_signal_handlers()
    builds = bouncer_builds(args.pgbouncer) if args.pgbouncer else []
    cleanup = Cleanup()
    workdir = make_workdir("pp-idle-", args.keep, cleanup)
    try:
        pg = PgServer.create(workdir)
        cleanup.add("PostgreSQL", lambda: pg.stop("fast"))
        pg.execute(f"ALTER ROLE {APP_USER} CONNECTION LIMIT -1")
        my = MariaDbServer.create(workdir)
        cleanup.add("MariaDB", my.stop)
        limits = {"max_client_conn": args.clients + 100}
        # One poolproxy per protocol: memory a process freed stays in its heap and would be
        # reused by the second measurement.
        pg_proxy = Poolproxy(workdir / "poolproxy-pg", pg_listener(
            pg, name="pg", users=[{"name": APP_USER, "password": APP_PASSWORD}], **limits),
            pool_size=5)
        my_proxy = Poolproxy(workdir / "poolproxy-mysql", mysql_listener(
            my, name="mysql", **limits), pool_size=5)
        secret = pg.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                            (APP_USER,))[0][0]
        print("| target | protocol | idle clients | RSS before MiB | RSS after MiB |"
              " KiB per client | login s |")
        print("|---|---|---|---|---|---|---|")
        rows = []
        for build in builds:
            bouncer = PgBouncer(workdir / build.label, pg, 5, secret, build)
            # PgBouncer's max_client_conn is 1000 in pg_bench's ini: raise it.
            bouncer.ini.write_text(bouncer.ini.read_text().replace(
                "max_client_conn = 1000", f"max_client_conn = {args.clients + 100}"))
            cleanup.add(build.label, bouncer.stop)
            bouncer.start()
            assert bouncer.pid is not None
            rows.append(measure(build.label, "postgres", bouncer.port, bouncer.pid,
                                args.clients))
            bouncer.stop()
        for proxy, protocol in ((pg_proxy, "postgres"), (my_proxy, "mysql")):
            cleanup.add(f"poolproxy {protocol}", proxy.stop)
            proxy.start()
            assert proxy.pid is not None
            rows.append(measure("poolproxy", protocol, proxy.port, proxy.pid, args.clients))
            proxy.stop()
        print(f"\n{os.cpu_count()} CPUs; RSS of the pooler's process tree from /proc "
              "(VmRSS), read 1 s before and 2 s after the clients logged in.")
        return 0
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
