#!/usr/bin/env python3
"""sysbench against direct MariaDB and through poolproxy, side by side (a script, not a test).

One run starts a throwaway MariaDB (tests/harness), prepares the sysbench tables, starts poolproxy
in front of it (MySQL listener, transaction pooling, pool size 20, mysql_native_password), runs
sysbench ``oltp_point_select`` and ``oltp_read_only`` (``--db-ps-mode=disable``, 50 threads)
against each target and prints a markdown table: tps, queries/s, latency avg/p95 and poolproxy's
CPU time per 1000 transactions. Every process it started is stopped on exit, Ctrl-C included.
``--targets direct,poolproxy,forwarder`` adds a bare uvloop byte forwarder (no pooling, no
parsing) as a baseline: the floor for any Python proxy on the same machine.

    python tests/bench/mysql_bench.py --duration 15 [--json out.json]

``--metrics-cost`` runs a different experiment instead: poolproxy with its admin HTTP server off
against poolproxy whose /metrics is scraped every second, alternating for ``--repeat`` rounds,
with the cost of metrics in tps (tests/bench/README.md).

Options: ``--help``. Needs sysbench (Debian: ``apt-get install -y sysbench``, 1.0.20), the MariaDB
server binaries (``mariadb-server``) and the project's test dependencies (PyMySQL, PyYAML); Linux
(/proc for the CPU figures). When run as root, mariadbd runs as the ``mysql`` system user.
Figures are relative: sysbench, mariadbd and poolproxy share the machine's CPUs, so run it on an
otherwise idle machine (the script warns when the load average is high).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a plain script: make `tests.harness` importable
    sys.path.insert(0, str(REPO_ROOT))

# `common` is this directory's common.py (the script's directory is sys.path[0]). Not imported
# as `tests.bench.common`: tests/ is no package, and `mypy tests/bench` would then see the file
# under two module names.
from common import (  # noqa: E402
    Cleanup,
    CostRun,
    Forwarder,
    Poolproxy,
    add_metrics_cost_args,
    as_text,
    cell,
    check_metrics_cost_args,
    children_cpu_seconds,
    cpu_delta,
    cpu_seconds,
    fmt,
    git_describe,
    install_signal_handlers,
    make_workdir,
    mark,
    measure_metrics_cost,
    median_runs,
    metrics_cost_json,
    metrics_cost_tables,
    metrics_scrape_problems,
    paired_ratio,
    split_choices,
    start_cost_pair,
    table_lines,
    workers_note,
)

from tests.harness.mariadb import MariaDbServer  # noqa: E402
from tests.harness.procs import process_tree  # noqa: E402
from tests.harness.proxyproc import mysql_listener  # noqa: E402

APP_USER = "app"
APP_PASSWORD = "app-secret"  # created by the harness (mysql_native_password, ALL on app.*)
DBNAME = "app"
POOL_SIZE = 20
TABLES = 4
TABLE_SIZE = 10000

# The sysbench scripts this benchmark knows (--tests picks from these), with the number of
# queries each transaction ("event") sends: 1 SELECT; BEGIN + 10 point selects + 4 ranges + COMMIT.
TESTS: dict[str, int] = {
    "oltp_point_select": 1,
    "oltp_read_only": 16,
}
DEFAULT_TESTS = ("oltp_point_select", "oltp_read_only")
DEFAULT_COST_TESTS = ("oltp_point_select",)  # --metrics-cost: the busiest test shows it best
TARGETS = ("direct", "poolproxy", "forwarder", "direct-unix", "poolproxy-unix", "forwarder-unix")
DEFAULT_TARGETS = ("direct", "poolproxy")
#: The targets whose hop to MariaDB is its Unix socket rather than TCP: sysbench itself
#: (direct-unix), or the proxy's server connections (poolproxy-unix: `server.host` = the
#: socket file, as when poolproxy runs on the database host).
UNIX_TARGETS = ("direct-unix", "poolproxy-unix", "forwarder-unix")


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """One sysbench run against one target."""

    test: str
    target: str
    threads: int
    duration: int
    command: list[str]
    returncode: int | None = None  # None: sysbench did not finish (timed out, killed)
    tps: float | None = None
    qps: float | None = None
    transactions: int | None = None
    queries: int | None = None
    latency_avg_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_max_ms: float | None = None
    ignored_errors: int | None = None
    reconnects: int | None = None
    total_time_s: float | None = None
    proxy_cpu_s: float | None = None  # utime+stime of poolproxy (or the forwarder) during the run
    mariadb_cpu_s: float | None = None  # utime+stime of mariadbd during the run
    sysbench_cpu_s: float | None = None
    error: str = ""  # empty when the run went well
    proxy_log_tail: str = ""  # attached when a run through poolproxy (or the forwarder) failed
    round: int = 1  # with --rounds: which round (targets run interleaved, round by round)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def errors(self) -> int | None:
        """Ignored errors plus reconnects: sysbench goes on after these, but they should be 0."""
        if self.ignored_errors is None and self.reconnects is None:
            return None
        return (self.ignored_errors or 0) + (self.reconnects or 0)

    @property
    def proxy_cpu_ms_per_1000(self) -> float | None:
        """Proxy CPU milliseconds per 1000 transactions (= microseconds per transaction)."""
        if self.proxy_cpu_s is None or not self.transactions:
            return None
        return self.proxy_cpu_s * 1e6 / self.transactions

    @property
    def proxy_cpu_us_per_query(self) -> float | None:
        if self.proxy_cpu_s is None or not self.queries:
            return None
        return self.proxy_cpu_s * 1e6 / self.queries

    @property
    def mariadb_cpu_ms_per_1000(self) -> float | None:
        if self.mariadb_cpu_s is None or not self.transactions:
            return None
        return self.mariadb_cpu_s * 1e6 / self.transactions


_COUNT_RATE = r":\s+(\d+)\s+\(([\d.]+) per sec\.\)"
_TRANSACTIONS_RE = re.compile(r"^\s*transactions" + _COUNT_RATE, re.M)
_QUERIES_RE = re.compile(r"^\s*queries" + _COUNT_RATE, re.M)
_IGNORED_RE = re.compile(r"^\s*ignored errors:\s+(\d+)", re.M)
_RECONNECTS_RE = re.compile(r"^\s*reconnects:\s+(\d+)", re.M)
_TOTAL_TIME_RE = re.compile(r"^\s*total time:\s+([\d.]+)s", re.M)
_LATENCY_RE = re.compile(r"^Latency \(ms\):\n(?P<body>(?:[ \t]+.*\n?)+)", re.M)
_LATENCY_FIELD_RE = re.compile(r"^\s*(min|avg|max|\d+th percentile|sum):\s+([\d.]+)", re.M)


def parse_sysbench(output: str) -> dict[str, Any]:
    """The figures in sysbench 1.0's report; missing ones are left out."""
    found: dict[str, Any] = {}
    match = _TRANSACTIONS_RE.search(output)
    if match:
        found["transactions"], found["tps"] = int(match.group(1)), float(match.group(2))
    match = _QUERIES_RE.search(output)
    if match:
        found["queries"], found["qps"] = int(match.group(1)), float(match.group(2))
    for key, regex, conv in (
        ("ignored_errors", _IGNORED_RE, int),
        ("reconnects", _RECONNECTS_RE, int),
        ("total_time_s", _TOTAL_TIME_RE, float),
    ):
        match = regex.search(output)
        if match:
            found[key] = conv(match.group(1))
    match = _LATENCY_RE.search(output)
    if match:
        fields = dict(_LATENCY_FIELD_RE.findall(match.group("body")))
        for key, name in (("latency_avg_ms", "avg"), ("latency_max_ms", "max"),
                          ("latency_p95_ms", "95th percentile")):
            if name in fields:
                found[key] = float(fields[name])
    return found


# --------------------------------------------------------------------------- processes


def mysql_poolproxy(workdir: Path, server: MariaDbServer, pool_size: int,
                    admin: bool = False, workers: int = 1, unix: bool = False) -> Poolproxy:
    """poolproxy with one MySQL listener ("mysql") for app in front of ``server`` (over its
    Unix socket with ``unix``)."""
    extra = {"server": {"host": str(server.socket_path)}} if unix else {}
    listener = mysql_listener(server, name="mysql",
                              users=[{"name": APP_USER, "password": APP_PASSWORD}], **extra)
    return Poolproxy(workdir, listener, pool_size, admin=admin, workers=workers)


Middle = Poolproxy | Forwarder


# --------------------------------------------------------------------------- sysbench


def sysbench_binary() -> str:
    found = shutil.which("sysbench")
    if not found:
        raise SystemExit("sysbench not found: apt-get install -y sysbench (see README.md)")
    return found


def sysbench_version(sysbench: str) -> str:
    out = subprocess.run([sysbench, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def sysbench_common(port: int, user: str, password: str, socket: str | None = None) -> list[str]:
    where = [f"--mysql-socket={socket}"] if socket else ["--mysql-host=127.0.0.1",
                                                        f"--mysql-port={port}"]
    args = [
        "--db-driver=mysql", *where,
        f"--mysql-user={user}", f"--mysql-db={DBNAME}", f"--tables={TABLES}",
        f"--table-size={TABLE_SIZE}",
    ]
    if password:
        args.append(f"--mysql-password={password}")
    return args


def prepare_tables(sysbench: str, server: MariaDbServer, workdir: Path) -> None:
    """``oltp_read_only prepare`` as root (no password over TCP); creates sbtest1..N in app."""
    print(f"preparing sysbench tables ({TABLES} x {TABLE_SIZE} rows) ...", flush=True)
    cmd = [sysbench, "oltp_read_only", *sysbench_common(server.port, "root", ""),
           f"--threads={TABLES}", "prepare"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    (workdir / "sysbench-prepare.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"sysbench prepare failed ({result.returncode}):\n"
                           f"{(result.stdout + result.stderr)[-3000:]}")
    server.execute("ANALYZE TABLE " + ", ".join(f"sbtest{i}" for i in range(1, TABLES + 1)),
                   database=DBNAME)


def _interesting_lines(text: str, limit: int = 30) -> list[str]:
    """sysbench's complaints (FATAL/ALERT/WARNING/error lines), each distinct line once with
    its count: every thread usually reports the same failure."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if re.search(r"FATAL|ALERT|WARNING|error|Error|ERROR", line):
            # Ports and thread numbers differ between otherwise identical lines.
            key = re.sub(r"thread #?\d+|id=\d+", "...", line.strip())
            counts[key] = counts.get(key, 0) + 1
    lines = [line if n == 1 else f"{line}   [x{n}]" for line, n in counts.items()]
    if len(lines) > limit:
        lines = [*lines[:limit], f"... ({len(lines) - limit} more distinct lines)"]
    return lines


def run_sysbench(
    sysbench: str, test: str, target: str, port: int, threads: int, duration: int,
    proxy: Middle | None, server: MariaDbServer, extra: list[str], workdir: Path,
) -> RunResult:
    """One sysbench run; the proxy's and mariadbd's CPU use is read from /proc around it."""
    socket = str(server.socket_path) if target == "direct-unix" else None
    name, _, ps_mode = test.partition("@")
    cmd = [
        sysbench, name, *sysbench_common(port, APP_USER, APP_PASSWORD, socket),
        f"--db-ps-mode={ps_mode or 'disable'}",
        f"--threads={threads}", f"--time={duration}", "--events=0", "--percentile=95",
        "--report-interval=0", *extra, "run",
    ]
    result = RunResult(test=test, target=target, threads=threads, duration=duration,
                       command=cmd)
    proxy_pids = process_tree(proxy.pid) if proxy is not None and proxy.pid is not None else []
    db_pids = [server.pid] if server.pid is not None else []
    proxy_before, db_before = cpu_seconds(proxy_pids), cpu_seconds(db_pids)
    sysbench_before = children_cpu_seconds()
    stdout, stderr = "", ""
    try:
        # sysbench has no query timeout: a proxy that loses a reply would hang it for ever.
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=duration + 60)
        stdout, stderr = proc.stdout, proc.stderr
        result.returncode = proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, stderr = as_text(exc.stdout), as_text(exc.stderr)
        result.error = f"sysbench did not finish within {exc.timeout:.0f}s (killed: a hang)"
    if proxy_pids:
        result.proxy_cpu_s = cpu_delta(proxy_before, cpu_seconds(proxy_pids))
    if db_pids:
        result.mariadb_cpu_s = cpu_delta(db_before, cpu_seconds(db_pids))
    result.sysbench_cpu_s = round(children_cpu_seconds() - sysbench_before, 3)
    (workdir / f"sysbench-{test}-{target}-{int(time.time())}.log").write_text(
        " ".join(cmd) + "\n\n" + stdout + "\n--- stderr ---\n" + stderr)
    for key, value in parse_sysbench(stdout).items():
        setattr(result, key, value)
    problems = []
    if result.returncode not in (0, None):
        problems.append(f"sysbench exited with code {result.returncode}")
    if result.tps is None:
        problems.append("no tps in sysbench's output")
    if result.errors:
        problems.append(f"{result.ignored_errors} ignored errors, {result.reconnects} reconnects")
    if proxy is not None and not proxy.is_running():
        problems.append(f"{target} is not running any more")
    if problems:
        result.error = "; ".join([*filter(None, [result.error]), *problems])
        complaints = _interesting_lines(stdout + "\n" + stderr)
        if complaints:
            result.error += "\nsysbench said:\n" + "\n".join(complaints)
        if proxy is not None:
            result.proxy_log_tail = proxy.log_tail()
    return result


# --------------------------------------------------------------------------- report


def _latency(result: RunResult | None) -> str:
    if result is None:
        return "—"
    if result.latency_avg_ms is None:
        return "ERR"
    return mark(result, f"{fmt(result.latency_avg_ms, 2)} / {fmt(result.latency_p95_ms, 2)}")


def _errors(result: RunResult | None) -> str:
    if result is None:
        return "—"
    if result.errors is None:
        return "?"
    return f"{result.ignored_errors or 0}/{result.reconnects or 0}"


def markdown_table(results: list[RunResult], tests: list[str]) -> str:
    """The main table (direct vs poolproxy), then one for the forwarder baseline and one for
    the Unix-socket targets when those ran. With --rounds, each figure is from the run with the
    median tps, and the ratios are medians of same-round ratios with their range."""
    by_key = median_runs(results, "test")
    targets = {r.target for r in results}
    header = [
        "test", "threads", "direct tps", "poolproxy tps", "poolproxy/direct", "direct qps",
        "poolproxy qps", "latency ms avg/p95 direct", "latency ms avg/p95 poolproxy",
        "errors/reconnects direct", "errors/reconnects poolproxy",
        "proxy CPU ms/1000 txn", "proxy CPU µs/query",
    ]
    rows = []
    for test in tests:
        direct, pp = by_key.get((test, "direct")), by_key.get((test, "poolproxy"))
        threads = next((r.threads for r in results if r.test == test), 0)
        rows.append([
            test, str(threads), cell(direct, "tps"), cell(pp, "tps"),
            paired_ratio(results, "test", test, "poolproxy", "direct"),
            cell(direct, "qps"), cell(pp, "qps"), _latency(direct), _latency(pp),
            _errors(direct), _errors(pp),
            cell(pp, "proxy_cpu_ms_per_1000", 1), cell(pp, "proxy_cpu_us_per_query", 1),
        ])
    lines = table_lines(header, rows)
    if "forwarder" in targets:
        header = [
            "test (bare forwarder baseline)", "forwarder tps", "forwarder/direct",
            "poolproxy/forwarder", "latency ms avg/p95 forwarder", "errors/reconnects forwarder",
            "forwarder CPU ms/1000 txn", "forwarder CPU µs/query",
        ]
        rows = []
        for test in tests:
            fwd = by_key.get((test, "forwarder"))
            rows.append([
                test, cell(fwd, "tps"), paired_ratio(results, "test", test, "forwarder", "direct"),
                paired_ratio(results, "test", test, "poolproxy", "forwarder"), _latency(fwd),
                _errors(fwd), cell(fwd, "proxy_cpu_ms_per_1000", 1),
                cell(fwd, "proxy_cpu_us_per_query", 1),
            ])
        lines += ["", *table_lines(header, rows)]
    unix = [t for t in UNIX_TARGETS if t in targets]
    if unix:
        header = ["test (hop to MariaDB over its Unix socket)"]
        for t in unix:
            header += [f"{t} tps", f"{t}/direct"]
        both = "poolproxy-unix" in unix and "direct-unix" in unix
        if both:
            header.append("poolproxy-unix/direct-unix")
        if "poolproxy-unix" in unix:
            header += ["poolproxy-unix CPU µs/query", "latency ms avg/p95 poolproxy-unix"]
        rows = []
        for test in tests:
            row = [test]
            for t in unix:
                row += [cell(by_key.get((test, t)), "tps"),
                        paired_ratio(results, "test", test, t, "direct")]
            if both:
                row.append(paired_ratio(results, "test", test, "poolproxy-unix", "direct-unix"))
            if "poolproxy-unix" in unix:
                ppu = by_key.get((test, "poolproxy-unix"))
                row += [cell(ppu, "proxy_cpu_us_per_query", 1), _latency(ppu)]
            rows.append(row)
        lines += ["", *table_lines(header, rows)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="sysbench: direct MariaDB vs poolproxy (MySQL listener, transaction pooling)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per run (default 15)")
    parser.add_argument("--threads", type=int, default=50, help="sysbench --threads (default 50)")
    parser.add_argument("--tests", default=None,
                        help=f"comma-separated, from {', '.join(TESTS)} "
                             f"(default {','.join(DEFAULT_TESTS)}; with --metrics-cost: "
                             f"{','.join(DEFAULT_COST_TESTS)})")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help=f"comma-separated, from {', '.join(TARGETS)} (default "
                             f"{','.join(DEFAULT_TARGETS)}); forwarder = a bare uvloop byte "
                             "forwarder without pooling, the floor for a Python proxy; *-unix ="
                             " the hop to MariaDB over its Unix socket (sysbench itself, or the"
                             " proxy's server connections) (ignored with --metrics-cost)")
    parser.add_argument("--ps-modes", default="disable",
                        help="comma-separated sysbench --db-ps-mode values to run each test in:"
                             " disable (text protocol, COM_QUERY) and/or auto (server-side"
                             " prepared statements, COM_STMT_*; rows named test@auto)"
                             " (default disable)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every target this many times, interleaved round by round;"
                             " the table shows each target's median run and the median (range)"
                             " of same-round ratios (default 1)")
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE,
                        help=f"poolproxy server connections per pool (default {POOL_SIZE})")
    parser.add_argument("--workers", type=int, default=1,
                        help="poolproxy worker processes (config `workers:`; default 1); the"
                        " pool size is split over them")
    parser.add_argument("--warmup", type=int, default=3,
                        help="seconds of unrecorded direct oltp_point_select first "
                             "(default 3; 0: none)")
    parser.add_argument("--sysbench-arg", action="append", default=[], metavar="ARG",
                        help="extra sysbench argument for every run, e.g. "
                             "--sysbench-arg=--mysql-ignore-errors=all (repeatable)")
    add_metrics_cost_args(parser)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work dir (data dir, config, logs) afterwards")
    args = parser.parse_args(argv)
    if args.tests is None:
        args.tests = ",".join(DEFAULT_COST_TESTS if args.metrics_cost else DEFAULT_TESTS)
    args.tests = split_choices(parser, "tests", args.tests, TESTS)
    modes = [m.strip() for m in args.ps_modes.split(",") if m.strip()]
    for mode in modes:
        if mode not in ("disable", "auto"):
            parser.error(f"--ps-modes: {mode!r} is not one of disable, auto")
    # A test run with prepared statements is named test@auto (its own row in the table).
    args.tests = [t if m == "disable" else f"{t}@{m}" for t in args.tests for m in modes]
    args.targets = split_choices(parser, "targets", args.targets, TARGETS)
    if args.duration < 1 or args.threads < 1 or args.rounds < 1:
        parser.error("--duration, --threads and --rounds must be at least 1")
    check_metrics_cost_args(parser, args)
    return args


def compare(args: argparse.Namespace, sysbench: str, server: MariaDbServer, workdir: Path,
            cleanup: Cleanup) -> list[RunResult]:
    """The usual benchmark: every test against each of --targets, --rounds times over
    (interleaved: test by test, round by round, every target in each round)."""
    middles: dict[str, Middle] = {}
    for target in args.targets:
        middle: Middle
        if target in ("poolproxy", "poolproxy-unix"):
            middle = mysql_poolproxy(workdir / target, server, args.pool_size,
                                     workers=args.workers, unix=target == "poolproxy-unix")
        elif target in ("forwarder", "forwarder-unix"):
            middle = Forwarder(workdir / target, str(server.socket_path)
                               if target == "forwarder-unix" else server.host, server.port)
        else:
            continue
        cleanup.add(target, middle.stop)
        middle.start()
        middles[target] = middle
    ports = {"direct": server.port, "direct-unix": server.port,
             **{name: m.port for name, m in middles.items()}}

    warm_up(args, sysbench, server, workdir)
    results: list[RunResult] = []
    print(f"running {len(args.tests)} tests x {len(args.targets)} targets x {args.rounds} "
          f"rounds x {args.duration}s, {args.threads} threads\n", flush=True)
    for test in args.tests:
        for round_no in range(1, args.rounds + 1):
            for target in args.targets:
                target_proxy = middles.get(target)
                if target_proxy is not None and not target_proxy.is_running():
                    print(f"  {target} is not running; restarting it", flush=True)
                    target_proxy.stop()
                    target_proxy.start()
                result = run_sysbench(sysbench, test, target, ports[target], args.threads,
                                      args.duration, target_proxy, server, args.sysbench_arg,
                                      workdir)
                result.round = round_no
                results.append(result)
                cpu = result.proxy_cpu_ms_per_1000
                print(f"  {test:<18} {target:<15} {round_no}/{args.rounds} tps "
                      f"{fmt(result.tps):>7}  qps {fmt(result.qps):>7}  latency avg/p95 "
                      f"{_latency(result)} ms"
                      + (f"  proxy CPU {cpu:.1f} ms/1000 txn" if cpu is not None else "")
                      + ("" if result.ok else f"  PROBLEM: {result.error.splitlines()[0]}"),
                      flush=True)
                time.sleep(1.0)  # let closed connections' threads exit before the next run
    return results


def metrics_cost(args: argparse.Namespace, sysbench: str, server: MariaDbServer, workdir: Path,
                 cleanup: Cleanup) -> tuple[list[RunResult], list[CostRun]]:
    """--metrics-cost: poolproxy with the admin HTTP server off vs on and scraped, alternating."""
    admin_off, scraped = start_cost_pair(
        lambda path, admin: mysql_poolproxy(path, server, args.pool_size, admin=admin,
                               workers=args.workers),
        workdir, cleanup)

    warm_up(args, sysbench, server, workdir)
    results: list[RunResult] = []

    def run_one(test: str, target: str, proxy: Poolproxy) -> tuple[float | None, float | None, str]:
        result = run_sysbench(sysbench, test, target, proxy.port, args.threads, args.duration,
                              proxy, server, args.sysbench_arg, workdir)
        results.append(result)
        return result.tps, result.proxy_cpu_ms_per_1000, result.error

    print(f"metrics cost: {len(args.tests)} tests x {args.repeat} rounds x (admin off, scraped"
          f" every {args.scrape_interval:g}s) x {args.duration}s, {args.threads} threads\n",
          flush=True)
    cost_runs = measure_metrics_cost([(t, t) for t in args.tests], args.repeat,
                                     args.scrape_interval, admin_off, scraped, run_one)
    return results, cost_runs


def warm_up(args: argparse.Namespace, sysbench: str, server: MariaDbServer,
            workdir: Path) -> None:
    if args.warmup > 0:
        print(f"warm-up: {args.warmup}s of direct oltp_point_select ...", flush=True)
        run_sysbench(sysbench, "oltp_point_select", "warmup", server.port, args.threads,
                     args.warmup, None, server, args.sysbench_arg, workdir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    sysbench = sysbench_binary()
    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1) * 0.5:
        print(f"warning: load average is {load_before[0]:.1f} on {os.cpu_count()} CPUs; "
              "something else is running and the figures will be noisy", file=sys.stderr)
    cleanup = Cleanup()
    workdir = make_workdir("pp-mysql-bench-", args.keep, cleanup)
    try:
        print(f"starting MariaDB in {workdir} ...", flush=True)
        server = MariaDbServer.create(workdir)
        cleanup.add("MariaDB", server.stop)
        db_version = str(server.execute("SELECT VERSION()")[0][0])
        prepare_tables(sysbench, server, workdir)

        cost_runs: list[CostRun] = []
        if args.metrics_cost:
            results, cost_runs = metrics_cost(args, sysbench, server, workdir, cleanup)
        else:
            results = compare(args, sysbench, server, workdir, cleanup)

        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "mariadb": db_version,
            "sysbench": sysbench_version(sysbench),
            "poolproxy_commit": git_describe(),
            "duration_s": args.duration,
            "threads": args.threads,
            "tables": TABLES,
            "table_size": TABLE_SIZE,
            "pool_size": args.pool_size,
            "rounds": args.rounds,
            "poolproxy_workers": args.workers,
            "sysbench_extra_args": args.sysbench_arg,
        }
        print()
        if args.metrics_cost:
            print(metrics_cost_tables(cost_runs))
            print()
            print(
                f"{meta['cpus']} CPUs, MariaDB {db_version}, {meta['sysbench']}, poolproxy"
                f" {meta['poolproxy_commit']}; --db-ps-mode=disable --threads={args.threads}"
                f" --time={args.duration}, {TABLES} tables x {TABLE_SIZE} rows, pool size"
                f" {args.pool_size}{workers_note(args.workers)}. Each round runs poolproxy with"
                " the admin HTTP server off,"
                " then an identical poolproxy with it on while GET /metrics runs every"
                f" {args.scrape_interval:g}s. cost = 1 - median(scraped tps) / median(admin-off"
                " tps); noise = (max - min) / median of one configuration's runs. CPU ="
                " poolproxy's utime+stime per transaction. (!) = the run or its scrapes had"
                " problems, see below."
            )
        else:
            print(markdown_table(results, args.tests))
            print()
            print(
                f"{meta['cpus']} CPUs, MariaDB {db_version}, {meta['sysbench']}, poolproxy"
                f" {meta['poolproxy_commit']}; --db-ps-mode=disable (test@auto: --db-ps-mode=auto,"
                f" prepared statements) --threads={args.threads}"
                f" --time={args.duration}, {TABLES} tables x {TABLE_SIZE} rows, pool size"
                f" {args.pool_size}{workers_note(args.workers)}. qps counts BEGIN/COMMIT. proxy"
                " CPU = poolproxy's"
                " utime+stime during the run per 1000 transactions (= µs per transaction). (!) ="
                " the run had problems, see below."
                + (f" Each figure: the median-tps run of {args.rounds} interleaved rounds;"
                   " ratios: median (range) of the same-round ratios."
                   if args.rounds > 1 else "")
            )
        failed = [r for r in results if not r.ok]
        for r in failed:
            print(f"\n### problem: {r.test} via {r.target}\n{r.error}")
            if r.proxy_log_tail:
                print(f"--- {r.target} log tail ---\n{r.proxy_log_tail}")
        scrape_problems = metrics_scrape_problems(cost_runs)
        for problem in scrape_problems:
            print(f"\n{problem}")
        if args.json is not None:
            payload: dict[str, Any] = {
                "meta": meta,
                "runs": [asdict(r) | {
                    "ok": r.ok,
                    "proxy_cpu_ms_per_1000": r.proxy_cpu_ms_per_1000,
                    "proxy_cpu_us_per_query": r.proxy_cpu_us_per_query,
                    "mariadb_cpu_ms_per_1000": r.mariadb_cpu_ms_per_1000,
                } for r in results],
            }
            if args.metrics_cost:
                payload["metrics_cost"] = metrics_cost_json(cost_runs, args.repeat,
                                                            args.scrape_interval)
            args.json.write_text(json.dumps(payload, indent=2) + "\n")
            print(f"\nresults written to {args.json}")
        return 1 if failed or scrape_problems else 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
