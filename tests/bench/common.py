"""Helpers shared by the benchmark scripts ``pg_bench.py`` and ``mysql_bench.py``.

Process CPU accounting from /proc, a TCP readiness wait, the cleanup stack and signal handling
that stop every started process on exit, markdown table cells, poolproxy as a measured
subprocess (``Poolproxy``), and the ``--metrics-cost`` experiment: poolproxy with the admin HTTP
server off against poolproxy whose ``/metrics`` a background thread scrapes during the run
(``MetricsScraper``, ``measure_metrics_cost``, ``metrics_cost_tables``). See tests/bench/README.md.

The scripts import it as ``common`` (a script's own directory is ``sys.path[0]``) after putting
the repository root on ``sys.path``, which the ``tests.harness`` imports here need.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from tests.harness.pgserver import log_tail
from tests.harness.ports import free_port
from tests.harness.proxyproc import ProxyProcess, make_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The requirement: metrics (admin HTTP on, scraped every second) cost < 5% of tps.
METRICS_COST_LIMIT = 0.05
# A scrape counts as good only with HTTP 200 and this metric (always exported) in it.
METRICS_MARKER = b"poolproxy_build_info"
ADMIN_OFF, SCRAPED = "admin-off", "scraped"  # the two --metrics-cost configurations


# --------------------------------------------------------------------------- processes


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """utime + stime of each process still alive, in seconds."""
    used: dict[int, float] = {}
    for pid in pids:
        try:
            data = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        used[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK  # stat fields 14 and 15
    return used


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two ``cpu_seconds`` readings by the processes in both."""
    return round(sum(after[p] - before[p] for p in after if p in before), 3)


def children_cpu_seconds() -> float:
    """utime + stime of our finished (waited-for) children so far, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_tcp(port: int, alive: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until 127.0.0.1:``port`` accepts TCP connections; fail early if ``alive()`` is false."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise RuntimeError(f"{what} exited during startup")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what} does not listen on port {port} after {timeout}s") from None
            time.sleep(0.05)


def as_text(data: str | bytes | None) -> str:
    """Captured output (``TimeoutExpired.stdout`` may be bytes or None) as text."""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


class Poolproxy:
    """poolproxy (``python -m proxy``) via the harness's ProxyProcess, tuned for measuring:
    one listener, log level warning, admin HTTP off unless ``admin`` (then on 127.0.0.1)."""

    def __init__(self, workdir: Path, listener: dict[str, Any], pool_size: int,
                 admin: bool = False, workers: int = 1, python: str | None = None) -> None:
        config = make_config(listener, admin=admin, defaults={"pool_size": pool_size})
        config["logging"] = {"level": "warning", "format": "text"}
        if workers > 1:
            config["workers"] = workers  # pool_size is then split over the worker processes
        # `python`: the interpreter to run it with (default: the one running the script).
        self.process = ProxyProcess(config, workdir,
                                    command=[python, "-m", "proxy"] if python else None)
        self.port = self.process.port(listener["name"])

    def start(self) -> None:
        self.process.start(timeout=30)

    def stop(self) -> None:
        self.process.stop()

    def is_running(self) -> bool:
        return self.process.is_running()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def admin_port(self) -> int | None:
        """The admin HTTP port, None when the admin server is off."""
        return self.process.admin_port

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_tail(lines)


@dataclass
class Interpreter:
    """A Python to run poolproxy with (``--python PATH``), and what it is."""

    path: str
    version: str  # platform.python_version()
    #: Whether poolproxy's compiled modules load in it (else it runs the pure ones).
    compiled: bool
    label: str = ""  # the target's name: poolproxy@<version> (#2, #3, ... when repeated)


def interpreters(paths: Sequence[str]) -> list[Interpreter]:
    """Each ``--python`` interpreter, asked for its version and whether poolproxy's compiled
    modules load in it (built for another Python version, they do not: it runs pure)."""
    found: list[Interpreter] = []
    probe = ("import platform, sys; sys.path.insert(0, sys.argv[1]); import proxy._native as n;"
             " import proxy; print(platform.python_version(), n.compiled)")
    for path in paths:
        try:
            out = subprocess.run([path, "-c", probe, str(REPO_ROOT)], capture_output=True,
                                 text=True, timeout=60, check=True).stdout.split()
        except (OSError, subprocess.SubprocessError) as exc:
            raise SystemExit(f"--python {path}: cannot run poolproxy with it ({exc}); it needs"
                             " poolproxy's dependencies (uvloop, PyYAML, prometheus-client,"
                             " cryptography) installed") from None
        interp = Interpreter(path, out[0], out[1] == "True")
        label = f"poolproxy@{interp.version}"
        taken = sum(1 for i in found if i.label.split("#")[0] == label)
        interp.label = f"{label}#{taken + 1}" if taken else label
        found.append(interp)
    return found


# --------------------------------------------------------------------------- report


class Outcome(Protocol):
    """What the table helpers need from a script's RunResult."""

    tps: float | None

    @property
    def ok(self) -> bool: ...


def fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def mark(result: Outcome | None, text: str) -> str:
    """``text`` with " (!)" when the run had problems; "—" when there was no run."""
    if result is None:
        return "—"
    return text + ("" if result.ok else " (!)")


def cell(result: Outcome | None, attr: str, digits: int = 0) -> str:
    """``result.<attr>`` formatted; "ERR" when the run produced no figure, "(!)" when it
    produced one but had problems."""
    if result is None:
        return "—"
    value: float | None = getattr(result, attr)
    return "ERR" if value is None else mark(result, fmt(value, digits))


def tps_ratio(a: Outcome | None, b: Outcome | None) -> str:
    """a's tps / b's tps, "—" when either is missing."""
    return f"{a.tps / b.tps:.2f}" if a and b and b.tps and a.tps is not None else "—"


def median_runs(results: Sequence[Any], group: str) -> dict[tuple[str, str], Any]:
    """Per (``group`` attribute, target), the run with the median tps (with --rounds; else the
    only run). A whole run is picked, not per-column medians, so its latency and CPU belong
    to it."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for r in results:
        groups.setdefault((getattr(r, group), r.target), []).append(r)
    picked = {}
    for key, runs in groups.items():
        good = sorted((r for r in runs if r.tps is not None), key=lambda r: r.tps or 0.0)
        picked[key] = good[(len(good) - 1) // 2] if good else runs[-1]
    return picked


def paired_ratio(results: Sequence[Any], group: str, value: str, a: str, b: str) -> str:
    """Median over rounds of a's tps / b's tps within the same round, for the runs whose
    ``group`` attribute is ``value`` (the two ran minutes apart at most, so a drift of the
    machine's speed cancels out), with the range."""
    tps = {(r.target, r.round): r.tps for r in results if getattr(r, group) == value and r.ok}
    ratios = sorted(ta / tb for (t, n), ta in tps.items()
                    if t == a and ta and (tb := tps.get((b, n))))
    if not ratios:
        return "—"
    median = statistics.median(ratios)
    if len(ratios) == 1:
        return f"{median:.2f}"
    return f"{median:.2f} ({ratios[0]:.2f}–{ratios[-1]:.2f})"


def table_lines(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def workers_note(workers: int) -> str:
    """Footer text for poolproxy's worker processes (empty for the default single process)."""
    return "" if workers <= 1 else f" (poolproxy: {workers} worker processes sharing it)"


def git_describe() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "proxy"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (proxy/ has uncommitted changes)" if dirty else "")


# --------------------------------------------------------------------------- main


class Cleanup:
    """Stops what was started, in reverse order, once (from ``finally`` or from atexit)."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], None]]] = []
        atexit.register(self.run)

    def add(self, what: str, action: Callable[[], None]) -> None:
        self._actions.append((what, action))

    def run(self) -> None:
        # A second Ctrl-C must not abandon half-stopped servers.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self._actions:
                what, action = self._actions.pop()
                try:
                    action()
                except Exception as exc:
                    print(f"cleanup: stopping {what} failed: {exc}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, previous)


def exit_on_signal(signum: int, frame: FrameType | None) -> None:
    print(f"\n{signal.Signals(signum).name}: stopping everything", file=sys.stderr)
    raise SystemExit(128 + signum)  # unwinds through the finally blocks


def install_signal_handlers() -> None:
    """Ctrl-C raises KeyboardInterrupt, SIGTERM/SIGHUP SystemExit: both unwind to the cleanup."""
    # SIGINT explicitly: a shell that starts us in the background leaves it ignored otherwise.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGHUP, exit_on_signal)


def make_workdir(prefix: str, keep: bool, cleanup: Cleanup) -> Path:
    """A fresh temp dir, removed by ``cleanup`` unless ``keep`` (then its path is printed)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    if keep:
        cleanup.add("(nothing: --keep)", lambda: print(f"work dir kept: {workdir}"))
    else:
        cleanup.add("work dir", lambda: shutil.rmtree(workdir, ignore_errors=True))
    return workdir


def split_choices(parser: argparse.ArgumentParser, option: str, value: str,
                  known: Iterable[str]) -> list[str]:
    """A comma-separated option value as a list; a parser error for an unknown or empty one."""
    known = list(known)
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        parser.error(f"--{option}: unknown {unknown}; choose from {', '.join(known)}")
    return chosen


def add_metrics_cost_args(parser: argparse.ArgumentParser) -> None:
    """The ``--metrics-cost`` options, the same in both scripts."""
    parser.add_argument("--metrics-cost", action="store_true",
                        help="instead of the usual comparison, measure what metrics cost: "
                             "poolproxy with the admin HTTP server off vs on and scraped, "
                             "alternating for --repeat rounds (see tests/bench/README.md)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="--metrics-cost: rounds of (admin off, scraped) runs (default 3)")
    parser.add_argument("--scrape-interval", type=float, default=1.0,
                        help="--metrics-cost: seconds between GET /metrics (default 1.0)")


def check_metrics_cost_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not args.scrape_interval > 0:
        parser.error("--scrape-interval must be above 0")


# --------------------------------------------------------------------------- --metrics-cost


@dataclass
class ScrapeStats:
    """What the scraper saw during one run."""

    url: str
    interval_s: float
    ok: int = 0  # HTTP 200 with METRICS_MARKER in the body
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # distinct failure -> count
    total_s: float = 0.0  # summed wall time of the good scrapes (connect to last byte)
    max_s: float = 0.0
    body_bytes: int | None = None  # size of the last good response body
    samples: int | None = None  # its sample lines (not '#')

    @property
    def mean_ms(self) -> float | None:
        return self.total_s * 1000 / self.ok if self.ok else None

    @property
    def max_ms(self) -> float | None:
        return self.max_s * 1000 if self.ok else None

    @property
    def good(self) -> bool:
        return self.ok > 0 and not self.failed


class MetricsScraper:
    """GET http://127.0.0.1:<port>/metrics every ``interval`` seconds in a daemon thread, from
    ``start()`` (first scrape at once) to ``stop()``, like a Prometheus server would.

    A fresh connection per scrape (no HTTP proxy from the environment). Every failure (no
    connection, status other than 200, no METRICS_MARKER in the body) is counted and kept.
    """

    def __init__(self, port: int, interval: float, timeout: float = 5.0) -> None:
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.stats = ScrapeStats(url=f"http://127.0.0.1:{port}/metrics", interval_s=interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape_once(self) -> None:
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            body = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            self._failure(f"GET /metrics: {type(exc).__name__}: {exc}")
            return
        finally:
            conn.close()
        elapsed = time.perf_counter() - started
        if status != 200:
            self._failure(f"GET /metrics: HTTP {status}")
        elif METRICS_MARKER not in body:
            self._failure(f"GET /metrics: HTTP 200 but no {METRICS_MARKER.decode()} in the body"
                          f" ({len(body)} bytes)")
        else:
            stats = self.stats
            stats.ok += 1
            stats.total_s += elapsed
            stats.max_s = max(stats.max_s, elapsed)
            stats.body_bytes = len(body)
            stats.samples = sum(1 for line in body.splitlines()
                                if line and not line.startswith(b"#"))

    def _failure(self, what: str) -> None:
        self.stats.failed += 1
        self.stats.errors[what] = self.stats.errors.get(what, 0) + 1

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.scrape_once()
            next_at += self.interval
            now = time.monotonic()
            next_at = max(next_at, now)  # a scrape slower than the interval: no catching up
            self._stop.wait(next_at - now)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)
        self._thread.start()

    def stop(self) -> ScrapeStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        return self.stats

    def __enter__(self) -> MetricsScraper:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class CostRun:
    """One --metrics-cost run: one workload, one round, one configuration."""

    workload: str  # the script's name for it (a pgbench mode, a sysbench test)
    label: str  # as shown in the tables
    round: int
    config: str  # ADMIN_OFF or SCRAPED
    target: str  # the run's target name in the script's own records
    tps: float | None
    cpu_us_per_txn: float | None  # poolproxy's utime+stime per transaction
    error: str  # the run's problems ('' if none); scrape failures are in ``scrape``
    scrape: ScrapeStats | None = None

    @property
    def ok(self) -> bool:
        return not self.error and (self.scrape is None or self.scrape.good)


# (workload, target name, poolproxy) -> (tps, poolproxy CPU µs per transaction, error text)
RunOne = Callable[[str, str, Poolproxy], tuple[float | None, float | None, str]]


def check_admin(admin_off: Poolproxy, scraped: Poolproxy) -> None:
    """Before measuring: the first proxy has no admin server, the second serves good /metrics."""
    if admin_off.admin_port is not None:
        raise RuntimeError("the admin-off poolproxy has an admin port")
    if scraped.admin_port is None:
        raise RuntimeError("the scraped poolproxy has no admin port")
    probe = MetricsScraper(scraped.admin_port, 1.0)
    probe.scrape_once()
    if not probe.stats.good:
        raise RuntimeError(f"{probe.stats.url} does not work: {probe.stats.errors}\n"
                           f"{scraped.log_tail()}")
    print(f"admin HTTP: {probe.stats.url} answers ({probe.stats.body_bytes:,} bytes, "
          f"{probe.stats.samples} samples); the admin-off poolproxy has none", flush=True)


def start_cost_pair(make: Callable[[Path, bool], Poolproxy], workdir: Path,
                    cleanup: Cleanup) -> tuple[Poolproxy, Poolproxy]:
    """The two poolproxies --metrics-cost compares, identical but for the admin HTTP server
    (`make(workdir, admin)` builds one); both run throughout the experiment."""
    admin_off = make(workdir / "poolproxy-admin-off", False)
    scraped = make(workdir / "poolproxy-scraped", True)
    cleanup.add("poolproxy (admin off)", admin_off.stop)
    admin_off.start()
    cleanup.add("poolproxy (scraped)", scraped.stop)
    scraped.start()
    return admin_off, scraped


def measure_metrics_cost(
    workloads: Sequence[tuple[str, str]], repeat: int, scrape_interval: float,
    admin_off: Poolproxy, scraped: Poolproxy, run_one: RunOne,
) -> list[CostRun]:
    """For each (workload, label): ``repeat`` rounds of one run through ``admin_off`` then one
    through ``scraped`` while a MetricsScraper GETs its /metrics; ``run_one`` does a run."""
    check_admin(admin_off, scraped)
    runs: list[CostRun] = []
    for workload, label in workloads:
        for round_no in range(1, repeat + 1):
            for config, proxy in ((ADMIN_OFF, admin_off), (SCRAPED, scraped)):
                if not proxy.is_running():
                    print(f"  poolproxy ({config}) is not running; restarting it", flush=True)
                    proxy.stop()
                    proxy.start()
                target = f"poolproxy-{config}-r{round_no}"
                stats: ScrapeStats | None = None
                if config == SCRAPED:
                    assert proxy.admin_port is not None
                    with MetricsScraper(proxy.admin_port, scrape_interval) as scraper:
                        tps, cpu, error = run_one(workload, target, proxy)
                    stats = scraper.stats
                else:
                    tps, cpu, error = run_one(workload, target, proxy)
                run = CostRun(workload=workload, label=label, round=round_no, config=config,
                              target=target, tps=tps, cpu_us_per_txn=cpu, error=error,
                              scrape=stats)
                runs.append(run)
                line = (f"  {workload:<18} round {round_no}/{repeat} {config:<9} tps "
                        f"{fmt(tps):>8}" + (f"  CPU {cpu:.1f} µs/txn" if cpu is not None else ""))
                if stats is not None:
                    line += (f"  scrapes {stats.ok} ok / {stats.failed} failed, mean "
                             f"{fmt(stats.mean_ms, 1)} ms, {fmt(stats.body_bytes)} bytes")
                if error:
                    line += f"  PROBLEM: {error.splitlines()[0]}"
                if stats is not None and stats.failed:
                    line += f"  SCRAPE PROBLEM: {next(iter(stats.errors))}"
                print(line, flush=True)
                time.sleep(1.0)  # let closed connections go away before the next run
    return runs


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _spread(values: Iterable[float | None]) -> float | None:
    """(max - min) / median: the run-to-run noise of one configuration."""
    present = [v for v in values if v is not None]
    if len(present) < 2 or not statistics.median(present):
        return None
    return (max(present) - min(present)) / statistics.median(present)


def metrics_cost_summary(runs: Sequence[CostRun]) -> list[dict[str, Any]]:
    """Per workload: median tps of each configuration and cost = 1 - median(scraped) /
    median(admin off), with the noise and the scrape figures."""
    summary = []
    for workload, label in dict.fromkeys((r.workload, r.label) for r in runs):
        off = [r for r in runs if r.workload == workload and r.config == ADMIN_OFF]
        on = [r for r in runs if r.workload == workload and r.config == SCRAPED]
        med_off, med_on = _median(r.tps for r in off), _median(r.tps for r in on)
        cost = 1 - med_on / med_off if med_off and med_on is not None else None
        scrapes = [r.scrape for r in on if r.scrape is not None]
        good = sum(s.ok for s in scrapes)
        summary.append({
            "workload": workload,
            "label": label,
            "rounds": max((r.round for r in off + on), default=0),
            "tps_admin_off": [r.tps for r in off],
            "tps_scraped": [r.tps for r in on],
            "median_tps_admin_off": med_off,
            "median_tps_scraped": med_on,
            "cost": cost,
            "limit": METRICS_COST_LIMIT,
            "below_limit": None if cost is None else cost < METRICS_COST_LIMIT,
            "spread_admin_off": _spread(r.tps for r in off),
            "spread_scraped": _spread(r.tps for r in on),
            "median_cpu_us_per_txn_admin_off": _median(r.cpu_us_per_txn for r in off),
            "median_cpu_us_per_txn_scraped": _median(r.cpu_us_per_txn for r in on),
            "scrapes_ok": good,
            "scrapes_failed": sum(s.failed for s in scrapes),
            "scrape_mean_ms": sum(s.total_s for s in scrapes) * 1000 / good if good else None,
            "scrape_max_ms": max((s.max_s * 1000 for s in scrapes if s.ok), default=None),
            "metrics_bytes": max((s.body_bytes for s in scrapes if s.body_bytes), default=None),
            "ok": all(r.ok for r in off + on) and bool(off) and bool(on),
        })
    return summary


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.1f}%"


def metrics_cost_tables(runs: Sequence[CostRun]) -> str:
    """Every run, then the summary (median tps per configuration and the cost)."""
    per_run = table_lines(
        ["workload", "round", "poolproxy", "tps", "CPU µs/txn", "scrapes ok/failed",
         "scrape ms mean/max", "/metrics bytes"],
        ([r.label, str(r.round), r.config, mark(r, fmt(r.tps)), fmt(r.cpu_us_per_txn, 1),
          f"{r.scrape.ok}/{r.scrape.failed}" if r.scrape else "—",
          f"{fmt(r.scrape.mean_ms, 1)} / {fmt(r.scrape.max_ms, 1)}" if r.scrape else "—",
          fmt(r.scrape.body_bytes) if r.scrape else "—"] for r in runs),
    )
    rows = []
    for s in metrics_cost_summary(runs):
        verdict = "—" if s["below_limit"] is None else ("yes" if s["below_limit"] else "**no**")
        problem = "" if s["ok"] else " (!)"
        rows.append([
            s["label"], str(s["rounds"]), fmt(s["median_tps_admin_off"]) + problem,
            fmt(s["median_tps_scraped"]) + problem, _pct(s["cost"]), verdict + problem,
            f"{_pct(s['spread_admin_off']).lstrip('+')} / {_pct(s['spread_scraped']).lstrip('+')}",
            f"{fmt(s['median_cpu_us_per_txn_admin_off'], 1)} / "
            f"{fmt(s['median_cpu_us_per_txn_scraped'], 1)}",
            f"{s['scrapes_ok']}/{s['scrapes_failed']}", fmt(s["scrape_mean_ms"], 1),
            fmt(s["metrics_bytes"]),
        ])
    summary = table_lines(
        ["workload", "rounds", "median tps admin off", "median tps scraped",
         "cost (1 - scraped/off)", f"cost < {METRICS_COST_LIMIT:.0%}",
         "noise off / scraped", "CPU µs/txn off / scraped", "scrapes ok/failed",
         "scrape ms mean", "/metrics bytes"],
        rows,
    )
    return "\n".join([*per_run, "", *summary])


def metrics_scrape_problems(runs: Sequence[CostRun]) -> list[str]:
    """One paragraph per scraped run whose scrapes failed (a run's own errors are reported with
    the script's other runs)."""
    problems = []
    for r in runs:
        if r.scrape is None or r.scrape.good:
            continue
        problems.append(
            f"### problem: scraping {r.scrape.url} during {r.label}, round {r.round}\n"
            f"{r.scrape.ok} good scrapes, {r.scrape.failed} failed"
            + "".join(f"\n  {what}  [x{n}]" for what, n in r.scrape.errors.items()))
    return problems


def metrics_cost_json(runs: Sequence[CostRun], repeat: int, interval: float) -> dict[str, Any]:
    return {
        "repeat": repeat,
        "scrape_interval_s": interval,
        "limit": METRICS_COST_LIMIT,
        "runs": [asdict(r) | {
            "ok": r.ok,
            "scrape_mean_ms": r.scrape.mean_ms if r.scrape else None,
            "scrape_max_ms": r.scrape.max_ms if r.scrape else None,
        } for r in runs],
        "summary": metrics_cost_summary(runs),
    }


# A bare uvloop byte forwarder (one server connection per client, no parsing, no pooling): the
# floor for any Python proxy on this machine (docs/benchmarks.md).
FORWARDER_SOURCE = """
import asyncio, sys, uvloop

class Up(asyncio.Protocol):
    def __init__(self, down):
        self.down = down
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.down.transport.write(data)
    def connection_lost(self, exc):
        self.down.transport.close()

class Down(asyncio.Protocol):
    up = None
    def connection_made(self, transport):
        self.transport, self.early = transport, []
        asyncio.get_running_loop().create_task(self.connect())
    async def connect(self):
        try:
            loop = asyncio.get_running_loop()
            if SERVER_HOST.startswith("/"):  # a Unix-domain socket
                _, up = await loop.create_unix_connection(lambda: Up(self), SERVER_HOST)
            else:
                _, up = await loop.create_connection(lambda: Up(self), SERVER_HOST, SERVER_PORT)
        except OSError:
            self.transport.close()
            return
        self.up = up
        for data in self.early:
            up.transport.write(data)
    def data_received(self, data):
        if self.up is None:
            self.early.append(data)
        else:
            self.up.transport.write(data)
    def connection_lost(self, exc):
        if self.up is not None:
            self.up.transport.close()

async def main():
    server = await asyncio.get_running_loop().create_server(Down, "127.0.0.1", LISTEN_PORT)
    await server.serve_forever()

LISTEN_PORT, SERVER_HOST, SERVER_PORT = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
uvloop.run(main())
"""

#: The login floor (pg_bench.py --login-floor): what any asyncio/uvloop pooler must spend per
#: `pgbench -S -C` transaction, whatever its pooling. A uvloop server that logs a client in with
#: SCRAM-SHA-256 for one password, whatever the user name (poolproxy's own sans-IO ScramServer,
#: the least Python a SCRAM login needs), sends the parameters a server reports, answers every
#: Query with one canned row (and pgbench's start-up question about pgbench_accounts with the
#: row it expects), and closes on Terminate.
#: No pool, no database, no statement analysis.
LOGIN_FLOOR_SOURCE = """
import asyncio, struct, sys, uvloop
from proxy.auth.scram import ScramError, ScramServer, make_verifier

def msg(t, body):
    return t + struct.pack("!I", len(body) + 4) + body

def column(name):  # an int4 column of no table
    return name + b"\\0" + bytes(6) + struct.pack("!IhiH", 23, 4, -1, 0)

def row(*values):
    return msg(b"D", struct.pack("!H", len(values)) + b"".join(
        struct.pack("!i", -1) if v is None else struct.pack("!I", len(v)) + v for v in values))

PARAMS = b"".join(msg(b"S", k + b"\\0" + v + b"\\0") for k, v in [
    (b"server_version", b"15.0"), (b"server_encoding", b"UTF8"), (b"client_encoding", b"UTF8"),
    (b"DateStyle", b"ISO, MDY"), (b"TimeZone", b"UTC"), (b"IntervalStyle", b"postgres"),
    (b"integer_datetimes", b"on"), (b"standard_conforming_strings", b"on"),
    (b"application_name", b"pgbench"), (b"is_superuser", b"off"),
    (b"session_authorization", b"app"), (b"default_transaction_read_only", b"off")])
READY = msg(b"Z", b"I")
DONE = msg(b"C", b"SELECT 1\\0") + READY
SELECT = msg(b"T", b"\\0\\1" + column(b"abalance")) + row(b"1") + DONE
TABLE_INFO = (msg(b"T", b"\\0\\3" + column(b"n") + column(b"partstrat") + column(b"count"))
              + row(b"1", None, b"0") + DONE)

class Login(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf, self.started, self.scram = transport, b"", False, None
    def data_received(self, data):
        buf = self.buf + data
        while True:
            if not self.started:
                if len(buf) < 8 or len(buf) < struct.unpack_from("!I", buf)[0]:
                    break
                n, code = struct.unpack_from("!II", buf)
                buf = buf[n:]
                if code == 80877103:  # SSLRequest: no TLS here
                    self.transport.write(b"N")
                    continue
                self.started = True
                self.transport.write(msg(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\\0\\0"))
                continue
            if len(buf) < 5 or len(buf) < struct.unpack_from("!I", buf, 1)[0] + 1:
                break
            n = struct.unpack_from("!I", buf, 1)[0] + 1
            kind, body, buf = buf[:1], buf[5:n], buf[n:]
            if kind == b"p" and self.scram is None:
                self.scram = ScramServer(VERIFIER)
                data_at = body.index(b"\\0") + 5
                first = self.scram.handle_client_first(body[data_at:])
                self.transport.write(msg(b"R", struct.pack("!I", 11) + first))
            elif kind == b"p":
                try:
                    final = self.scram.handle_client_final(body)
                except ScramError:
                    self.transport.close()
                    return
                self.transport.write(msg(b"R", struct.pack("!I", 12) + final)
                                     + msg(b"R", b"\\0\\0\\0\\0") + PARAMS
                                     + msg(b"K", struct.pack("!II", 1, 2)) + READY)
            elif kind == b"Q":
                self.transport.write(TABLE_INFO if b"partstrat" in body else SELECT)
            elif kind == b"X":
                self.transport.close()
                return
        self.buf = buf

async def main():
    server = await asyncio.get_running_loop().create_server(Login, "127.0.0.1", LISTEN_PORT)
    await server.serve_forever()

LISTEN_PORT, VERIFIER = int(sys.argv[1]), make_verifier(sys.argv[2])
uvloop.run(main())
"""


class ChildProcess:
    """A process the benchmark starts itself (PgBouncer, the forwarder) in ``_proc``."""

    _proc: subprocess.Popen[bytes] | None = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


class ScriptProcess(ChildProcess):
    """One of the uvloop scripts of this module (``SOURCE``) as a child process on
    127.0.0.1:<free port> (its first argument), with the repository on its ``sys.path``."""

    NAME = "script"
    SOURCE = ""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.logfile = workdir / f"{self.NAME}.log"
        self.args = args
        self.port = free_port()

    def start(self, timeout: float = 15.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with open(self.logfile, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", self.SOURCE, str(self.port), *self.args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env,
            )
        try:
            wait_tcp(self.port, self.is_running, timeout, self.NAME)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.logfile, lines)


class Forwarder(ScriptProcess):
    """FORWARDER_SOURCE in front of ``host``:``port`` (or the Unix socket ``host``)."""

    NAME = "forwarder"
    SOURCE = FORWARDER_SOURCE

    def __init__(self, workdir: Path, host: str, port: int) -> None:
        super().__init__(workdir, host, str(port))


class LoginFloor(ScriptProcess):
    """LOGIN_FLOOR_SOURCE: logs any user in with SCRAM for ``password``, no database behind."""

    NAME = "login-floor"
    SOURCE = LOGIN_FLOOR_SOURCE

    def __init__(self, workdir: Path, password: str) -> None:
        super().__init__(workdir, password)
