"""Money never appears, vanishes or moves twice through poolproxy while servers die under it.

One test per protocol. Ten accounts; concurrent clients (more than ``pool_size``) move random
amounts between random accounts for a fixed time through poolproxy, whose server is a
fault-injecting relay (tests/harness/relay.py). Every transfer has a unique id and writes a row
into a log table WITHOUT a unique constraint, so a transfer applied twice shows up as a
duplicate rather than as an error. Half of the clients send each transfer as one autocommit
statement (PostgreSQL: ``WITH l AS (INSERT INTO inv_log ...) UPDATE inv_acct ...``; MySQL: an
``INSERT`` into a request table whose trigger moves the money and writes the log), the other
half as an explicit transaction (update, update, insert, COMMIT; on MySQL after ``BEGIN`` or, as
Django does, ``SET autocommit=0``). Meanwhile a fault thread keeps losing the answers to random
transfer statements (relay ``drop_answer``) and terminating poolproxy's server connections
(``pg_terminate_backend`` / MariaDB ``KILL``) over a direct superuser connection.

Afterwards, read directly from the database: the total is unchanged; no transfer id is logged
twice; every transfer a client saw succeed is logged; every logged transfer is one its client
saw succeed or saw fail with "outcome unknown" (08007 / 2013 on a connection that stays open),
never one that failed with any other error; every balance is its initial value plus the logged
transfers. A summary (ok / unknown / other errors / faults fired) is printed.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pymysql
import pytest

from tests.harness import MariaDbServer, PgServer, ProxyProcess, make_config, mysql_listener, pg_listener
from tests.harness.relay import PG_READY, Relay

ACCOUNTS = 10
INITIAL = 10_000
CLIENTS = 12
POOL_SIZE = 4
DURATION = 15.0
JOIN_TIMEOUT = 90.0
DB = "inv"
#: What poolproxy's "outcome unknown" message says (MySQL has no SQLSTATE of its own for it).
UNKNOWN_WORDS = re.compile(r"\bm(?:ay|ight)\b", re.I)


# --------------------------------------------------------------------------- shared


@dataclass
class Ledger:
    """What the clients saw, per transfer id."""

    transfers: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    ok: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    other: dict[str, str] = field(default_factory=dict)
    connect_errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, xid: str, a: int, b: int, amount: int) -> None:
        with self.lock:
            self.transfers[xid] = (a, b, amount)

    def seen(self, xid: str) -> str:
        if xid in self.ok:
            return "ok"
        return "outcome unknown" if xid in self.unknown else self.other.get(xid, "no outcome")

    def done(self, xid: str, outcome: str, detail: str = "") -> None:
        with self.lock:
            if outcome == "ok":
                self.ok.add(xid)
            elif outcome == "unknown":
                self.unknown.add(xid)
            else:
                self.other[xid] = detail


def verify(ledger: Ledger, log: list[tuple[str, int, int, int]], balances: dict[int, int]
           ) -> list[str]:
    """The invariants of the module docstring; a list of violations (empty: all hold)."""
    problems: list[str] = []
    total = sum(balances.values())
    if total != ACCOUNTS * INITIAL:
        problems.append(f"total balance {total}, expected {ACCOUNTS * INITIAL}")
    times = Counter(row[0] for row in log)
    twice = sorted(x for x, n in times.items() if n > 1)
    if twice:
        problems.append(f"{len(twice)} transfer(s) applied more than once: " + ", ".join(
            f"{x} x{times[x]} (client saw {ledger.seen(x)})" for x in twice[:10]))
    logged = set(times)
    lost = sorted(ledger.ok - logged)
    if lost:
        problems.append(f"{len(lost)} transfer(s) acknowledged but not applied: {lost[:10]}")
    wrong = sorted(logged - ledger.ok - ledger.unknown)
    if wrong:
        problems.append(f"{len(wrong)} transfer(s) applied although the client saw another error "
                        "than 'outcome unknown' (or never finished): "
                        + "; ".join(f"{x}: {ledger.seen(x)}" for x in wrong[:10]))
    expected = dict.fromkeys(range(1, ACCOUNTS + 1), INITIAL)
    for xid, a, b, amount in log:
        if ledger.transfers.get(xid) != (a, b, amount):
            problems.append(f"log row {(xid, a, b, amount)} is not the transfer the client sent: "
                            f"{ledger.transfers.get(xid)}")
        expected[a] -= amount
        expected[b] += amount
    if balances != expected:
        diff = {k: (balances.get(k), v) for k, v in expected.items() if balances.get(k) != v}
        problems.append(f"balances differ from initial + logged transfers (got, expected): {diff}")
    return problems


def summary(name: str, ledger: Ledger, relay: Relay, killed: int) -> str:
    kinds = Counter(d.split(":")[0] for d in ledger.other.values())
    return (f"[{name}] transfers ok={len(ledger.ok)} unknown={len(ledger.unknown)} "
            f"other errors={len(ledger.other)} {dict(kinds.most_common(5))}; "
            f"faults fired: drop_answer={relay.fired['drop_answer']} killed={killed} "
            f"relayed connections={relay.accepted}; connect errors={sum(ledger.connect_errors.values())}")


def run_workload(clients: list[Callable[[threading.Event], None]],
                 faults: Callable[[threading.Event], None]) -> None:
    stop = threading.Event()
    fault_stop = threading.Event()
    threads = [threading.Thread(target=c, args=(stop,), daemon=True) for c in clients]
    fault_thread = threading.Thread(target=faults, args=(fault_stop,), daemon=True)
    for t in threads:
        t.start()
    fault_thread.start()
    try:
        time.sleep(DURATION)
    finally:
        fault_stop.set()
        fault_thread.join(30)
        stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
    assert not fault_thread.is_alive(), "the fault thread hung"
    hung = sum(t.is_alive() for t in threads)
    assert not hung, f"{hung} client(s) hung"


def arm_drop_answer(relay: Relay, rng: random.Random, patterns: list[bytes],
                    until: bytes | None) -> None:
    """Lose the answer of the next statement matching a random pattern (if one comes soon)."""
    fault = relay.drop_answer(rng.choice(patterns), until=until)
    if not fault.wait(2.0, count=1) and fault.fired == 0:
        relay.disarm(fault)
    fault.wait(10.0)


# --------------------------------------------------------------------------- PostgreSQL

PG_SINGLE = ("WITH l AS (INSERT INTO inv_log VALUES (%s, %s, %s, %s)) UPDATE inv_acct "
             "SET bal = bal + CASE id WHEN %s THEN %s WHEN %s THEN %s END WHERE id IN (%s, %s)")
PG_PATTERNS = [b"with l as (insert into inv_log", b"update inv_acct set bal = bal + ",
               b"insert into inv_log", b"Q\x00\x00\x00\x0bCOMMIT\x00", b"Q\x00\x00\x00\x0aBEGIN\x00"]


@pytest.fixture
def pg_inv(pg_server: PgServer) -> Iterator[PgServer]:
    if not pg_server.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)):
        pg_server.execute(f"CREATE DATABASE {DB} OWNER app")
    for sql in (
        "DROP TABLE IF EXISTS inv_acct, inv_log",
        "CREATE TABLE inv_acct (id int PRIMARY KEY, bal bigint NOT NULL)",
        "CREATE TABLE inv_log (xid text NOT NULL, a int NOT NULL, b int NOT NULL,"
        " amount int NOT NULL)",  # no unique constraint: a double apply is a duplicate row
        f"INSERT INTO inv_acct SELECT g, {INITIAL} FROM generate_series(1, {ACCOUNTS}) g",
        "GRANT ALL ON inv_acct, inv_log TO app",
    ):
        pg_server.execute(sql, dbname=DB)
    yield pg_server


def pg_client(proxy: ProxyProcess, ledger: Ledger, idx: int, explicit: bool,
              params: bool) -> Callable[[threading.Event], None]:
    def run(stop: threading.Event) -> None:
        rng = random.Random(1000 + idx)
        conn: psycopg.Connection[Any] | None = None
        seq = 0
        while not stop.is_set():
            if conn is None or conn.closed or conn.broken:
                try:
                    conn = psycopg.connect(
                        host="127.0.0.1", port=proxy.port("pg"), user="app", password="app-secret",
                        dbname=DB, autocommit=not explicit, connect_timeout=10)
                except psycopg.Error as exc:
                    ledger.connect_errors[type(exc).__name__] += 1
                    stop.wait(0.1)
                    continue
            a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
            amount = rng.randint(1, 100)
            xid = f"pg{idx}-{seq}"
            seq += 1
            ledger.start(xid, a, b, amount)
            try:
                if explicit:  # BEGIN (psycopg's own), update, update, insert, COMMIT
                    for acct in sorted((a, b)):
                        delta = -amount if acct == a else amount
                        if params:
                            conn.execute("UPDATE inv_acct SET bal = bal + %s WHERE id = %s",
                                         (delta, acct))
                        else:
                            conn.execute(f"UPDATE inv_acct SET bal = bal + {delta} WHERE id = {acct}")
                    conn.execute("INSERT INTO inv_log VALUES (%s, %s, %s, %s)", (xid, a, b, amount))
                    conn.commit()
                else:
                    values = (xid, a, b, amount, a, -amount, b, amount, a, b)
                    if params:
                        conn.execute(PG_SINGLE, values)
                    else:
                        conn.execute((PG_SINGLE % tuple(repr(v) for v in values)).encode())
                ledger.done(xid, "ok")
            except psycopg.Error as exc:
                unknown = exc.sqlstate == "08007" and not conn.closed and not conn.broken
                ledger.done(xid, "unknown" if unknown else "other",
                            f"{type(exc).__name__} [{exc.sqlstate}]: {str(exc).splitlines()[0]}")
                if explicit and not conn.closed and not conn.broken:
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        conn.close()
        if conn is not None:
            conn.close()

    return run


def test_pg_invariants_under_faults(pg_inv: PgServer, proxy_factory: Any) -> None:
    pg = pg_inv
    ledger = Ledger()
    killed = 0
    with Relay(pg.host, pg.port) as relay:
        proxy: ProxyProcess = proxy_factory(make_config(pg_listener(
            pg, server={"host": "127.0.0.1", "port": relay.port}, pool_size=POOL_SIZE,
            server_check_delay=0, query_wait_timeout="30s")))

        def faults(stop: threading.Event) -> None:
            nonlocal killed
            rng = random.Random(7)
            with psycopg.connect(pg.dsn(dbname=DB), autocommit=True, connect_timeout=10) as obs:
                while not stop.wait(rng.uniform(0.05, 0.2)):
                    if rng.random() < 0.6:
                        arm_drop_answer(relay, rng, PG_PATTERNS, PG_READY)
                        continue
                    pids = [r[0] for r in obs.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = 'app'"
                        " AND backend_type = 'client backend'", (DB,)).fetchall()]
                    if pids:
                        row = obs.execute("SELECT pg_terminate_backend(%s)",
                                          (rng.choice(pids),)).fetchone()
                        killed += bool(row and row[0])

        clients = [pg_client(proxy, ledger, i, explicit=i % 2 == 1, params=i % 4 < 2)
                   for i in range(CLIENTS)]
        run_workload(clients, faults)
        relay.disarm()
        report = summary("pg", ledger, relay, killed)
        print(report)
        log = [(str(x), int(a), int(b), int(m)) for x, a, b, m in
               pg.execute("SELECT xid, a, b, amount FROM inv_log", dbname=DB)]
        balances = {int(i): int(v) for i, v in pg.execute("SELECT id, bal FROM inv_acct", dbname=DB)}
        problems = verify(ledger, log, balances)
        assert not problems, report + "\n" + "\n".join(problems)
        assert len(ledger.ok) >= 100, f"too few transfers to mean anything: {report}"
        assert relay.fired["drop_answer"] >= 5 and killed >= 5, f"too few faults: {report}"


# --------------------------------------------------------------------------- MySQL

MY_PATTERNS = [b"\x03INSERT INTO inv_auto", b"\x03UPDATE inv_acct", b"\x03INSERT INTO inv_log",
               b"\x03COMMIT", b"\x03BEGIN", b"\x03SET AUTOCOMMIT = 0"]


@pytest.fixture
def my_inv(mariadb_server: MariaDbServer) -> Iterator[MariaDbServer]:
    my = mariadb_server
    for sql in (
        f"CREATE DATABASE IF NOT EXISTS {DB}",
        f"GRANT ALL ON {DB}.* TO 'app'@'%'",
        f"DROP TABLE IF EXISTS {DB}.inv_acct, {DB}.inv_log, {DB}.inv_auto",
        f"CREATE TABLE {DB}.inv_acct (id INT PRIMARY KEY, bal BIGINT NOT NULL) ENGINE=InnoDB",
        # No unique constraint: a transfer applied twice shows up as a duplicate row.
        f"CREATE TABLE {DB}.inv_log (xid VARCHAR(40) NOT NULL, a INT NOT NULL, b INT NOT NULL,"
        " amount INT NOT NULL, KEY (xid)) ENGINE=InnoDB",
        f"CREATE TABLE {DB}.inv_auto (xid VARCHAR(40) NOT NULL, a INT NOT NULL, b INT NOT NULL,"
        " amount INT NOT NULL) ENGINE=InnoDB",
        # One autocommit INSERT moves the money and writes the log, atomically.
        f"CREATE TRIGGER {DB}.inv_auto_move AFTER INSERT ON {DB}.inv_auto FOR EACH ROW BEGIN"
        f" UPDATE {DB}.inv_acct SET bal = bal + CASE id WHEN NEW.a THEN -NEW.amount"
        f" WHEN NEW.b THEN NEW.amount END WHERE id IN (NEW.a, NEW.b);"
        f" INSERT INTO {DB}.inv_log VALUES (NEW.xid, NEW.a, NEW.b, NEW.amount); END",
        f"INSERT INTO {DB}.inv_acct VALUES "
        + ", ".join(f"({i}, {INITIAL})" for i in range(1, ACCOUNTS + 1)),
    ):
        my.execute(sql)
    yield my


def my_client(proxy: ProxyProcess, ledger: Ledger, idx: int, style: str
              ) -> Callable[[threading.Event], None]:
    """``style``: "auto" (one INSERT into inv_auto), "begin" or "autocommit_off"."""
    def run(stop: threading.Event) -> None:
        rng = random.Random(2000 + idx)
        conn: pymysql.Connection | None = None
        seq = 0
        while not stop.is_set():
            if conn is None or not conn.open:
                try:
                    conn = pymysql.connect(
                        host="127.0.0.1", port=proxy.port("mysql"), user="app",
                        password="app-secret", database=DB, autocommit=True, connect_timeout=10,
                        read_timeout=60, write_timeout=60)
                except pymysql.err.Error as exc:
                    ledger.connect_errors[type(exc).__name__] += 1
                    stop.wait(0.1)
                    continue
            a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
            amount = rng.randint(1, 100)
            xid = f"my{idx}-{seq}"
            seq += 1
            ledger.start(xid, a, b, amount)
            try:
                with conn.cursor() as cur:
                    if style == "auto":
                        cur.execute("INSERT INTO inv_auto VALUES (%s, %s, %s, %s)",
                                    (xid, a, b, amount))
                    else:
                        if style == "begin":
                            conn.begin()
                        else:
                            conn.autocommit(False)
                        for acct in sorted((a, b)):
                            cur.execute("UPDATE inv_acct SET bal = bal + %s WHERE id = %s",
                                        (-amount if acct == a else amount, acct))
                        cur.execute("INSERT INTO inv_log VALUES (%s, %s, %s, %s)",
                                    (xid, a, b, amount))
                        conn.commit()
                        if style == "autocommit_off":
                            conn.autocommit(True)
                ledger.done(xid, "ok")
            except pymysql.err.Error as exc:
                code = exc.args[0] if exc.args else None
                # poolproxy's "outcome unknown": ERR 2013 saying the statement may have been
                # applied, on a connection that stays open (its 2013 "...rolled back" is not).
                unknown = code == 2013 and conn.open and bool(UNKNOWN_WORDS.search(str(exc)))
                detail = f"{type(exc).__name__} [{code}]: {exc.args[1:]}"
                if code == 2013 and not conn.open:
                    detail = f"client connection closed: {detail}"
                ledger.done(xid, "unknown" if unknown else "other", detail)
                if style != "auto" and conn.open:
                    try:
                        conn.rollback()
                        conn.autocommit(True)
                    except pymysql.err.Error:
                        conn.close()
        if conn is not None and conn.open:
            conn.close()

    return run


def test_mysql_invariants_under_faults(my_inv: MariaDbServer, proxy_factory: Any) -> None:
    my = my_inv
    ledger = Ledger()
    killed = 0
    with Relay(my.host, my.port) as relay:
        proxy: ProxyProcess = proxy_factory(make_config(mysql_listener(
            my, server={"host": "127.0.0.1", "port": relay.port}, pool_size=POOL_SIZE,
            server_check_delay=0, query_wait_timeout="30s")))

        def faults(stop: threading.Event) -> None:
            nonlocal killed
            rng = random.Random(11)
            obs = my.connect()
            try:
                while not stop.wait(rng.uniform(0.05, 0.2)):
                    if rng.random() < 0.6:
                        arm_drop_answer(relay, rng, MY_PATTERNS, None)
                        continue
                    with obs.cursor() as cur:
                        cur.execute("SELECT ID FROM information_schema.PROCESSLIST"
                                    " WHERE USER = 'app' AND DB = %s", (DB,))
                        ids = [int(r[0]) for r in cur.fetchall()]
                        if not ids:
                            continue
                        try:
                            cur.execute(f"KILL {rng.choice(ids)}")
                            killed += 1
                        except pymysql.err.OperationalError as exc:
                            if exc.args[0] != 1094:  # unknown thread: it went away meanwhile
                                raise
            finally:
                obs.close()

        styles = ["auto", "begin", "auto", "autocommit_off"]
        clients = [my_client(proxy, ledger, i, styles[i % 4]) for i in range(CLIENTS)]
        run_workload(clients, faults)
        relay.disarm()
        report = summary("mysql", ledger, relay, killed)
        print(report)
        log = [(str(x), int(a), int(b), int(m)) for x, a, b, m in
               my.execute(f"SELECT xid, a, b, amount FROM {DB}.inv_log")]
        balances = {int(i): int(v) for i, v in my.execute(f"SELECT id, bal FROM {DB}.inv_acct")}
        problems = verify(ledger, log, balances)
        assert not problems, report + "\n" + "\n".join(problems)
        assert len(ledger.ok) >= 100, f"too few transfers to mean anything: {report}"
        assert relay.fired["drop_answer"] >= 5 and killed >= 5, f"too few faults: {report}"
