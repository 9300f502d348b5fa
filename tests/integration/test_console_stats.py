"""SHOW STATS averages computed as PgBouncer computes them, and SHOW HELP.

PgBouncer (src/stats.c) snapshots every pool's counters each `stats_period`, keeping the last two
snapshots; an `avg_*` figure is (live counter - older snapshot) / (now - time of the older
snapshot): per second for counts and bytes, microseconds per transaction / query / server
assignment for the times. The `total_*` figures are the live counters. poolproxy's stats
period is 60 s like PgBouncer's; these tests shorten it with POOLPROXY_STATS_PERIOD.

- With a fake clock: the averages follow the snapshots exactly (window, integer truncation,
  times per transaction, a pool created after the older snapshot, the idle decay to 0).
- Through a running proxy: a paced workload of N transactions in T seconds shows
  avg_xact_count ~ N/T and the matching query rate and transaction time; once the load stops
  the averages fall to 0 after two periods while the totals stay. A fresh proxy with one
  transaction does not report a rate above 1/s (the old figure divided by the age of the console
  session and could show 136).
- SHOW HELP answers as PgBouncer's does: a NOTICE "Console usage" whose DETAIL lists the
  commands, then the SHOW command tag.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from proxy.config import PoolSettings
from proxy.ops.console import Console, StatsPeriods
from proxy.pool import Pool
from tests.harness import PgServer, ProxyProcess, make_config, pg_listener

PERIOD = 1.0  # POOLPROXY_STATS_PERIOD for the proxies started here
AVG_COLUMNS = ["avg_server_assignment_count", "avg_xact_count", "avg_query_count", "avg_recv",
               "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time",
               "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"]


# --------------------------------------------------------------------------- helpers


def parse_result(data: bytes) -> tuple[list[str], list[list[str | None]], str]:
    """A console reply (RowDescription, DataRows, CommandComplete): (columns, rows, tag)."""
    cols: list[str] = []
    rows: list[list[str | None]] = []
    tag = ""
    pos = 0
    while pos < len(data):
        kind = data[pos:pos + 1]
        (length,) = struct.unpack_from("!i", data, pos + 1)
        body = data[pos + 5:pos + 1 + length]
        pos += 1 + length
        if kind == b"T":
            off = 2
            for _ in range(struct.unpack_from("!H", body)[0]):
                end = body.index(b"\x00", off)
                cols.append(body[off:end].decode())
                off = end + 1 + 18
        elif kind == b"D":
            off, row = 2, []
            for _ in range(struct.unpack_from("!H", body)[0]):
                (n,) = struct.unpack_from("!i", body, off)
                off += 4
                row.append(None if n < 0 else body[off:off + n].decode())
                off += max(n, 0)
            rows.append(row)
        elif kind == b"C":
            tag = body.rstrip(b"\x00").decode()
    return cols, rows, tag


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _no_connect(pool: Pool) -> Any:
    raise AssertionError("no server connections in this test")


def console_stats(console: Console) -> dict[str, dict[str, int]]:
    cols, rows, tag = parse_result(console.show_stats())
    assert tag == f"SHOW {len(rows)}"
    return {r[0] or "": {c: int(v or 0) for c, v in zip(cols[1:-1], r[1:-1], strict=True)}
            for r in rows}


def console_conn(proxy: ProxyProcess) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                           password="app-secret", dbname="pgbouncer", autocommit=True,
                           connect_timeout=5)


def show(conn: psycopg.Connection[Any], what: str) -> list[dict[str, Any]]:
    cur = conn.execute(f"SHOW {what}", prepare=False)  # type: ignore[call-overload]
    assert cur.description is not None
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def stats_of(conn: psycopg.Connection[Any], database: str = "app") -> dict[str, Any]:
    rows = [r for r in show(conn, "STATS") if r["database"] == database]
    assert len(rows) == 1, rows
    return rows[0]


def start_proxy(pg_server: PgServer, proxy_factory: Any) -> ProxyProcess:
    config = make_config(pg_listener(pg_server, pool_size=4), admin_users=["app"])
    proxy: ProxyProcess = proxy_factory.start(config, env={"POOLPROXY_STATS_PERIOD": str(PERIOD)})
    return proxy


# --------------------------------------------------------------------------- with a fake clock


def test_averages_follow_pgbouncers_snapshots() -> None:
    clock = FakeClock(1000.0)
    pool = Pool("pg", "app", "app", PoolSettings(), _no_connect, clock)
    rt = SimpleNamespace(name="pg", pools={("app", "app"): pool}, clients=set())
    periods = StatsPeriods(lambda: list(rt.pools.values()), clock, period=60)
    ops = SimpleNamespace(listeners=[rt], stats_periods=periods)
    console = Console(ops)  # type: ignore[arg-type]
    st = pool.stats

    def work(xacts: int, queries: int, xact_time: float, waited: float, rx: int, tx: int) -> None:
        st.transactions += xacts
        st.queries += queries
        st.xact_time_total += xact_time
        st.wait_time_total += waited
        st.wait_count += xacts
        st.bytes_in += rx
        st.bytes_out += tx

    # Before the first refresh the window starts 1 s before the stats started (PgBouncer's
    # stats_setup), so one transaction right away is 1/s at most.
    work(1, 1, 0.002, 0.0, 50, 100)
    clock.now = 1000.2
    row = console_stats(console)["app"]
    assert row["total_xact_count"] == 1 and row["avg_xact_count"] == 0, row  # int(1 / 1.2)
    assert row["avg_xact_time"] == 2000, row

    # 59 more in the first period: the first refresh keeps the (empty) older snapshot.
    work(59, 59, 0.118, 0.0, 2950, 5900)
    clock.now = 1060.0
    periods.refresh()
    assert console_stats(console)["app"]["avg_xact_count"] == 1  # 60 over 61 s

    # 10 transactions/s during the second period, each 5 ms, 3 queries each, each waited 1 ms.
    work(600, 1800, 3.0, 0.6, 60_000, 120_000)
    clock.now = 1120.0
    periods.refresh()
    row = console_stats(console)["app"]
    assert row["avg_xact_count"] == 10 and row["avg_query_count"] == 30, row
    assert row["avg_recv"] == 1000 and row["avg_sent"] == 2000, row
    assert row["avg_xact_time"] == 5000, row  # microseconds per transaction
    assert row["avg_query_time"] == 1666, row  # poolproxy's query time is the server time
    assert row["avg_wait_time"] == 1000, row  # microseconds per server assignment
    assert row["total_xact_count"] == 660 and row["total_query_count"] == 1860, row
    assert row["total_xact_time"] == 3_120_000 and row["total_wait_time"] == 600_000, row

    # Between refreshes the live counters count: the window runs from the older snapshot to now.
    clock.now = 1150.0
    row = console_stats(console)["app"]
    assert row["avg_xact_count"] == 6, row  # 600 over the 90 s since 1060
    assert row["avg_xact_time"] == 5000, row

    # A pool created after the older snapshot counts from zero.
    newcomer = Pool("pg", "other", "app", PoolSettings(), _no_connect, clock)
    rt.pools[("other", "app")] = newcomer
    newcomer.stats.transactions = 45
    assert console_stats(console)["other"]["avg_xact_count"] == 0  # int(45 / 90)
    newcomer.stats.transactions = 450
    assert console_stats(console)["other"]["avg_xact_count"] == 5

    # Idle for two periods: the averages fall to 0, the totals stay.
    for now in (1180.0, 1240.0):
        clock.now = now
        periods.refresh()
    stats = console_stats(console)
    for db in ("app", "other"):
        assert all(stats[db][c] == 0 for c in AVG_COLUMNS), stats[db]
    assert stats["app"]["total_xact_count"] == 660 and stats["other"]["total_xact_count"] == 450

    # SHOW STATS_TOTALS / STATS_AVERAGES are the two halves of SHOW STATS.
    cols, rows, _ = parse_result(console.show_stats_totals())
    assert cols == ["database", "server_assignment_count", "xact_count", "query_count",
                    "bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time",
                    "client_parse_count", "server_parse_count", "bind_count", "listener"]
    assert rows[0][0] == "app" and rows[0][2] == "660", rows
    cols, rows, _ = parse_result(console.show_stats_averages())
    assert cols[0] == "database" and cols[-1] == "listener" and len(cols) == 13
    assert rows[0][1:12] == ["0"] * 11


# --------------------------------------------------------------------------- through a proxy


def test_show_stats_averages_over_the_stats_period(pg_server: PgServer,
                                                   proxy_factory: Any) -> None:
    proxy = start_proxy(pg_server, proxy_factory)
    client = psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                             password="app-secret", dbname="app", connect_timeout=5)
    admin = console_conn(proxy)
    try:
        # One transaction on a fresh proxy: a rate of at most 1/s, not 1 / (console age).
        client.execute("SELECT 1")
        client.commit()
        row = stats_of(admin)
        assert row["total_xact_count"] == 1, row
        assert row["avg_xact_count"] <= 1, row

        # The workload: RATE transactions per second for SECONDS, each BEGIN; SELECT
        # pg_sleep(SLEEP); COMMIT (3 queries, about SLEEP seconds on the server).
        rate, seconds, sleep = 20, 3.0, 0.02
        before = stats_of(admin)
        start = time.monotonic()
        n = 0
        while n < rate * seconds:
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            client.execute("SELECT pg_sleep(%s)", (sleep,))
            client.commit()
            n += 1
        elapsed = time.monotonic() - start
        during = stats_of(admin)
        idle_from = time.monotonic()

        assert during["total_xact_count"] - before["total_xact_count"] == n
        # psycopg at its defaults prepares the query at its 6th run (prepare_threshold 5), in
        # its transaction, with a Parse + Sync round trip of its own: one more query.
        assert client.prepare_threshold is not None and client.prepare_threshold < n
        assert during["total_query_count"] - before["total_query_count"] == 3 * n + 1
        assert during["total_client_parse_count"] - before["total_client_parse_count"] == 1
        assert during["total_bind_count"] - before["total_bind_count"] == \
            n - client.prepare_threshold
        # The window (the last one to two periods) lies inside the workload.
        achieved = n / elapsed
        assert 0.75 * achieved <= during["avg_xact_count"] <= 1.25 * achieved + 1, (during, achieved)
        assert 0.75 * 3 * achieved <= during["avg_query_count"] <= 1.25 * 3 * achieved + 1, during
        assert sleep * 1e6 <= during["avg_xact_time"] <= 4 * sleep * 1e6, during
        assert 0 < during["avg_query_time"] <= during["avg_xact_time"], during
        assert 0 <= during["avg_wait_time"] < 20_000, during  # 4 servers for 1 client
        for total, avg in (("total_received", "avg_recv"), ("total_sent", "avg_sent")):
            per_second = (during[total] - before[total]) / elapsed
            assert 0.6 * per_second <= during[avg] <= 1.4 * per_second, (total, during, per_second)

        # Two periods without traffic: every average is 0 again; the totals stay.
        time.sleep(max(0.0, idle_from + 2 * PERIOD + 0.6 - time.monotonic()))
        after = stats_of(admin)
        assert all(after[c] == 0 for c in AVG_COLUMNS), after
        for col in ("total_xact_count", "total_query_count", "total_xact_time"):
            assert after[col] == during[col], (col, during, after)
    finally:
        client.close()
        admin.close()


# --------------------------------------------------------------------------- SHOW HELP


def test_show_help_is_a_notice_like_pgbouncers(pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = start_proxy(pg_server, proxy_factory)
    notices: list[dict[str, str | None]] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        # A Diagnostic is only readable inside the callback.
        notices.append({"severity": diag.severity, "sqlstate": diag.sqlstate,
                        "message": diag.message_primary, "detail": diag.message_detail})

    with console_conn(proxy) as admin:
        admin.add_notice_handler(on_notice)
        cur = admin.execute("SHOW HELP", prepare=False)  # type: ignore[call-overload]
        assert cur.description is None  # no result set: only the notice
        assert cur.statusmessage == "SHOW"
        assert len(notices) == 1, notices
        diag = notices[0]
        assert diag["severity"] == "NOTICE" and diag["sqlstate"] == "00000", diag
        assert diag["message"] == "Console usage", diag
        detail = diag["detail"] or ""
        for command in ("SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|VERSION|LISTS",
                        "SHOW STATS|STATS_TOTALS|STATS_AVERAGES", "RELOAD", "PAUSE [<db>]",
                        "RESUME [<db>]", "SHUTDOWN"):
            assert f"\t{command}\n" in detail + "\n", (command, detail)
        # Every command HELP lists answers.
        for what in ("CONFIG", "DATABASES", "POOLS", "CLIENTS", "SERVERS", "VERSION", "LISTS",
                     "STATS", "STATS_TOTALS", "STATS_AVERAGES"):
            admin.execute(f"SHOW {what}", prepare=False)  # type: ignore[call-overload]
        # An unknown command points at SHOW HELP, as PgBouncer's error does.
        with pytest.raises(psycopg.Error) as err:
            admin.execute("SHOW NONSENSE", prepare=False)  # type: ignore[call-overload]
        assert "SHOW HELP" in str(err.value)

    psql = shutil.which("psql")
    if psql is not None:
        out = subprocess.run(
            [psql, "-X", "-h", "127.0.0.1", "-p", str(proxy.port("pg")), "-U", "app", "-d",
             "pgbouncer", "-c", "SHOW HELP"], capture_output=True, text=True, timeout=20,
            env={"PGPASSWORD": "app-secret", "PGCONNECT_TIMEOUT": "5", "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        assert "NOTICE:  Console usage" in out.stderr, out.stderr
        assert "DETAIL:" in out.stderr and "SHOW HELP|CONFIG" in out.stderr, out.stderr
