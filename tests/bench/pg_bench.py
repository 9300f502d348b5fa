#!/usr/bin/env python3
"""pgbench against direct PostgreSQL, PgBouncer and poolproxy, side by side (a script, not a test).

One run starts a throwaway PostgreSQL (tests/harness), loads the pgbench tables, starts PgBouncer
and poolproxy in front of it (transaction pooling, pool size 20, SCRAM), runs pgbench in each
mode against each target and prints a markdown table: tps, average latency and the pooler's CPU
time per 1000 transactions. Every process it started is stopped on exit, Ctrl-C included.

    python tests/bench/pg_bench.py --duration 15 [--json out.json]

See tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a plain script: make `tests.harness` importable
    sys.path.insert(0, str(REPO_ROOT))

from tests.harness.pgserver import (  # noqa: E402
    PgServer,
    ServiceUser,
    log_tail,
    pg_bindir,
    prepare_dir,
    service_user,
)
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.proxyproc import ProxyProcess, make_config, pg_listener  # noqa: E402

APP_USER = "app"
APP_PASSWORD = "app-secret"  # created by the harness (SCRAM verifier on the server)
DBNAME = "app"
POOL_SIZE = 20
PGBOUNCER = "/usr/sbin/pgbouncer"

# pgbench arguments per mode name (--modes picks from these).
MODES: dict[str, list[str]] = {
    "simple": ["-S"],
    "extended": ["-S", "-M", "extended"],
    "prepared": ["-S", "-M", "prepared"],
    "connect": ["-S", "-C"],  # a new connection (and SCRAM login) per transaction
}
DEFAULT_MODES = ("simple", "extended", "connect")
TARGETS = ("direct", "pgbouncer", "poolproxy")

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """One pgbench run against one target."""

    mode: str
    target: str
    clients: int
    threads: int
    duration: int
    command: list[str]
    returncode: int | None = None  # None: pgbench did not finish (timed out)
    tps: float | None = None
    tps_kind: str = ""  # pgbench's own words: "without initial connection time", ...
    latency_ms: float | None = None
    transactions: int | None = None
    failed_transactions: int | None = None
    connection_time_ms: float | None = None  # initial (or, with -C, average) connection time
    pooler_cpu_s: float | None = None  # utime+stime of PgBouncer / poolproxy during the run
    pgbench_cpu_s: float | None = None
    error: str = ""  # empty when the run went well
    pooler_log_tail: str = ""  # attached when the run failed

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def cpu_ms_per_1000(self) -> float | None:
        """Pooler CPU milliseconds per 1000 transactions (= microseconds per transaction)."""
        if self.pooler_cpu_s is None or not self.transactions:
            return None
        return self.pooler_cpu_s * 1e6 / self.transactions


_TPS_RE = re.compile(r"^tps = ([\d.]+) \(([^)]*)\)", re.M)
_LATENCY_RE = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_TXN_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)
_CONN_TIME_RE = re.compile(r"^(?:initial|average) connection time = ([\d.]+) ms", re.M)


def parse_pgbench(output: str, reconnecting: bool) -> dict[str, Any]:
    """The figures in pgbench's report (PostgreSQL 10..17 wording); missing ones are left out.

    pgbench prints one or two tps lines. Without -C we want the figure that excludes connection
    time ("without initial connection time", or "excluding connections establishing" before
    PostgreSQL 14); with -C connecting is part of every transaction, so we want "including".
    """
    found: dict[str, Any] = {}
    tps_lines = [(float(v), kind) for v, kind in _TPS_RE.findall(output)]
    if tps_lines:
        wanted = ("including",) if reconnecting else ("without", "excluding")
        preferred = [t for t in tps_lines if t[1].startswith(wanted)]
        found["tps"], found["tps_kind"] = (preferred or tps_lines)[0]
    for key, regex, conv in (
        ("latency_ms", _LATENCY_RE, float),
        ("transactions", _TXN_RE, int),
        ("failed_transactions", _FAILED_RE, int),
        ("connection_time_ms", _CONN_TIME_RE, float),
    ):
        match = regex.search(output)
        if match:
            found[key] = conv(match.group(1))
    return found


# --------------------------------------------------------------------------- processes


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after the last ')'.
        ppid = int(data[data.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


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


def children_cpu_seconds() -> float:
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


class PgBouncer:
    """PgBouncer in transaction mode in front of ``pg``, configured from a generated ini file."""

    def __init__(self, workdir: Path, pg: PgServer, pool_size: int, secret: str) -> None:
        # PgBouncer refuses to run as root; run it as the account the harness runs PostgreSQL as.
        self.user: ServiceUser | None = service_user("postgres")
        self.workdir = prepare_dir(workdir, self.user)
        self.port = free_port()
        self.ini = self.workdir / "pgbouncer.ini"
        self.logfile = self.workdir / "pgbouncer.log"
        userlist = self.workdir / "userlist.txt"
        # auth_file takes a plain-text password (then PgBouncer runs PBKDF2 for every client
        # login) or the server's SCRAM verifier (then it needs none: the production set-up).
        self._write(userlist, f'"{APP_USER}" "{secret}"\n', 0o600)
        self._write(self.ini, "\n".join([
            "[databases]",
            f"{DBNAME} = host={pg.host} port={pg.port} dbname={DBNAME}",
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "pool_mode = transaction",
            f"default_pool_size = {pool_size}",
            "max_client_conn = 1000",
            "auth_type = scram-sha-256",
            f"auth_file = {userlist}",
            "server_tls_sslmode = disable",
            "client_tls_sslmode = disable",
            f"logfile = {self.logfile}",
            # poolproxy runs at log level warning: keep PgBouncer's per-connection logging off
            # too, so that neither pays for log lines in the -C runs.
            "log_connections = 0",
            "log_disconnections = 0",
            "",
        ]), 0o644)
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def _write(self, path: Path, text: str, mode: int) -> None:
        path.write_text(text)
        os.chmod(path, mode)
        if self.user is not None:
            os.chown(path, self.user.uid, self.user.gid)

    @staticmethod
    def version() -> str:
        out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.splitlines()[0].strip() if out.stdout else "unknown"

    def start(self, timeout: float = 15.0) -> None:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user.uid, group=self.user.gid, extra_groups=[])
        self._out = open(self.workdir / "pgbouncer.out", "ab")
        self._proc = subprocess.Popen(
            [PGBOUNCER, str(self.ini)], cwd=self.workdir, stdin=subprocess.DEVNULL,
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs,
        )
        try:
            wait_tcp(self.port, self.is_running, timeout, "pgbouncer")
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: PgBouncer's immediate shutdown
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._out is not None:
            self._out.close()
            self._out = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(
            part for part in (log_tail(self.logfile, lines),
                              log_tail(self.workdir / "pgbouncer.out", lines)) if part
        )


class Poolproxy:
    """poolproxy (``python -m proxy``) via the harness's ProxyProcess, tuned for measuring."""

    def __init__(self, workdir: Path, pg: PgServer, pool_size: int) -> None:
        listener = pg_listener(pg, name="pg", users=[{"name": APP_USER, "password": APP_PASSWORD}])
        config = make_config(listener, admin=False, defaults={"pool_size": pool_size})
        config["logging"] = {"level": "warning", "format": "text"}
        self.process = ProxyProcess(config, workdir)
        self.port = self.process.port("pg")

    def start(self) -> None:
        self.process.start(timeout=30)

    def stop(self) -> None:
        self.process.stop()

    def is_running(self) -> bool:
        return self.process.is_running()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_tail(lines)


Pooler = PgBouncer | Poolproxy


# --------------------------------------------------------------------------- pgbench


def pgbench_binary() -> str:
    """pgbench of the same PostgreSQL version as the server, else the one on PATH."""
    try:
        candidate = pg_bindir() / "pgbench"
        if candidate.exists():
            return str(candidate)
    except RuntimeError:
        pass
    found = shutil.which("pgbench")
    if not found:
        raise SystemExit("pgbench not found: apt-get install -y postgresql (see README.md)")
    return found


def client_env(password: str | None) -> dict[str, str]:
    """Our environment without libpq variables that could redirect pgbench, plus fixed ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", PGSSLMODE="disable", PGGSSENCMODE="disable", PGCONNECT_TIMEOUT="10")
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def init_pgbench_tables(pg: PgServer, pgbench: str, scale: int, workdir: Path) -> None:
    """``pgbench -i`` as the superuser (trusted on 127.0.0.1), then give the tables to app."""
    print(f"initialising pgbench tables (scale {scale}) ...", flush=True)
    result = subprocess.run(
        [pgbench, "-i", "-q", "-s", str(scale), "-h", pg.host, "-p", str(pg.port),
         "-U", "postgres", DBNAME],
        env=client_env(None), capture_output=True, text=True, check=False, timeout=900,
    )
    (workdir / "pgbench-init.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench -i failed ({result.returncode}):\n{result.stderr[-3000:]}")
    for table in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"):
        pg.execute(f"ALTER TABLE {table} OWNER TO {APP_USER}", dbname=DBNAME)
    pg.execute("VACUUM ANALYZE", dbname=DBNAME)


def run_pgbench(
    pgbench: str, mode: str, target: str, port: int, clients: int, threads: int,
    duration: int, pooler: Pooler | None,
) -> RunResult:
    """One pgbench run; the pooler's CPU use is read from /proc around it."""
    cmd = [
        pgbench, *MODES[mode], "-n", "-c", str(clients), "-j", str(threads), "-T", str(duration),
        "-h", "127.0.0.1", "-p", str(port), "-U", APP_USER, DBNAME,
    ]
    result = RunResult(mode=mode, target=target, clients=clients, threads=threads,
                       duration=duration, command=cmd)
    pids = process_tree(pooler.pid) if pooler is not None and pooler.pid is not None else []
    cpu_before = cpu_seconds(pids)
    pgbench_before = children_cpu_seconds()
    stdout, stderr = "", ""
    try:
        # Generous timeout: a pooler that loses a client's reply would otherwise hang pgbench.
        proc = subprocess.run(cmd, env=client_env(APP_PASSWORD), capture_output=True, text=True,
                              check=False, timeout=duration * 2 + 60)
        stdout, stderr = proc.stdout, proc.stderr
        result.returncode = proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = _text(exc.stdout)
        stderr = _text(exc.stderr)
        result.error = f"pgbench did not finish within {exc.timeout:.0f}s (killed)"
    cpu_after = cpu_seconds(pids)
    result.pgbench_cpu_s = round(children_cpu_seconds() - pgbench_before, 3)
    if pids:
        result.pooler_cpu_s = round(
            sum(cpu_after[p] - cpu_before[p] for p in cpu_after if p in cpu_before), 3)
    for key, value in parse_pgbench(stdout, reconnecting="-C" in MODES[mode]).items():
        setattr(result, key, value)
    problems = []
    if result.returncode not in (0, None):
        problems.append(f"pgbench exited with code {result.returncode}")
    if result.tps is None:
        problems.append("no tps in pgbench's output")
    if result.failed_transactions:
        problems.append(f"{result.failed_transactions} failed transactions")
    if pooler is not None and not pooler.is_running():
        problems.append(f"{target} is not running any more")
    if problems:
        result.error = "; ".join([*filter(None, [result.error]), *problems])
        stderr_lines = stderr.strip().splitlines()
        if stderr_lines:
            # Thousands of identical per-client lines are common: keep the start and the end.
            shown = stderr_lines if len(stderr_lines) <= 30 else [
                *stderr_lines[:15], f"... ({len(stderr_lines) - 30} lines) ...",
                *stderr_lines[-15:]]
            result.error += "\npgbench stderr:\n" + "\n".join(shown)
        if pooler is not None:
            result.pooler_log_tail = pooler.log_tail()
    return result


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _cell(result: RunResult | None, attr: str, digits: int = 0) -> str:
    """``result.<attr>`` formatted; "ERR" when the run produced no figure, "(!)" when it
    produced one but had problems."""
    if result is None:
        return "—"
    value: float | None = getattr(result, attr)
    if value is None:
        return "ERR"
    return _fmt(value, digits) + ("" if result.ok else " (!)")


def markdown_table(results: list[RunResult], modes: list[str]) -> str:
    by_key = {(r.mode, r.target): r for r in results}
    header = [
        "mode", "clients", "direct tps", "pgbouncer tps", "poolproxy tps",
        "poolproxy/pgbouncer", "latency ms direct", "latency ms pgbouncer",
        "latency ms poolproxy", "CPU ms/1000 txn pgbouncer", "CPU ms/1000 txn poolproxy",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for mode in modes:
        runs = {t: by_key.get((mode, t)) for t in TARGETS}
        clients = next((r.clients for r in runs.values() if r is not None), 0)
        pgb, pp = runs["pgbouncer"], runs["poolproxy"]
        ratio = (
            f"{pp.tps / pgb.tps:.2f}" if pgb and pp and pgb.tps and pp.tps is not None else "—"
        )
        row = [
            f"`{' '.join(MODES[mode])}`", str(clients),
            *(_cell(runs[t], "tps") for t in TARGETS),
            ratio,
            *(_cell(runs[t], "latency_ms", 2) for t in TARGETS),
            *(_cell(runs[t], "cpu_ms_per_1000", 1) for t in ("pgbouncer", "poolproxy")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


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


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    print(f"\n{signal.Signals(signum).name}: stopping everything", file=sys.stderr)
    raise SystemExit(128 + signum)  # unwinds through the finally blocks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="pgbench: direct PostgreSQL vs PgBouncer vs poolproxy (transaction pooling)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per run (default 15)")
    parser.add_argument("--clients", type=int, default=50, help="pgbench clients (default 50)")
    parser.add_argument("--connect-clients", type=int, default=None,
                        help="clients for the 'connect' (-C) mode (default: --clients)")
    parser.add_argument("--threads", type=int, default=2, help="pgbench -j (default 2)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"comma-separated, from {', '.join(MODES)} "
                             f"(default {','.join(DEFAULT_MODES)})")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE,
                        help=f"server connections per pool, both poolers (default {POOL_SIZE})")
    parser.add_argument("--warmup", type=int, default=3,
                        help="seconds of unrecorded direct -S first (default 3; 0: none)")
    parser.add_argument("--skip-pgbouncer", action="store_true", help="do not run PgBouncer")
    parser.add_argument("--pgbouncer-secret", choices=("plain", "scram"), default="plain",
                        help="what PgBouncer's userlist.txt holds for app: the plain password "
                             "(default) or the server's SCRAM verifier")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work dir (data dir, configs, logs) afterwards")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    args.modes = modes
    if args.connect_clients is None:
        args.connect_clients = args.clients
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGINT explicitly: a shell that starts us in the background leaves it ignored otherwise.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    pgbench = pgbench_binary()
    if not args.skip_pgbouncer and not os.path.exists(PGBOUNCER):
        raise SystemExit(f"{PGBOUNCER} not found: apt-get install -y pgbouncer "
                         "(or pass --skip-pgbouncer)")
    workdir = Path(tempfile.mkdtemp(prefix="pp-bench-"))
    cleanup = Cleanup()
    if args.keep:
        cleanup.add("(nothing: --keep)", lambda: print(f"work dir kept: {workdir}"))
    else:
        cleanup.add("work dir", lambda: shutil.rmtree(workdir, ignore_errors=True))
    results: list[RunResult] = []
    try:
        print(f"starting PostgreSQL in {workdir} ...", flush=True)
        pg = PgServer.create(workdir)
        cleanup.add("PostgreSQL", lambda: pg.stop("fast"))
        pg_version = pg.execute("SHOW server_version")[0][0]
        init_pgbench_tables(pg, pgbench, args.scale, workdir)

        poolers: dict[str, Pooler] = {}
        if not args.skip_pgbouncer:
            secret = APP_PASSWORD
            if args.pgbouncer_secret == "scram":
                secret = pg.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                                    (APP_USER,))[0][0]
            bouncer = PgBouncer(workdir / "pgbouncer", pg, args.pool_size, secret)
            cleanup.add("PgBouncer", bouncer.stop)
            bouncer.start()
            poolers["pgbouncer"] = bouncer
        proxy = Poolproxy(workdir / "poolproxy", pg, args.pool_size)
        cleanup.add("poolproxy", proxy.stop)
        proxy.start()
        poolers["poolproxy"] = proxy
        ports = {"direct": pg.port, **{name: p.port for name, p in poolers.items()}}

        if args.warmup > 0:
            print(f"warm-up: {args.warmup}s of direct -S ...", flush=True)
            run_pgbench(pgbench, "simple", "direct", pg.port, args.clients, args.threads,
                        args.warmup, None)

        targets = [t for t in TARGETS if t in ports]
        print(f"running {len(args.modes)} modes x {len(targets)} targets x {args.duration}s\n",
              flush=True)
        for mode in args.modes:
            clients = args.connect_clients if "-C" in MODES[mode] else args.clients
            for target in targets:
                pooler = poolers.get(target)
                if pooler is not None and not pooler.is_running():
                    print(f"  {target} is not running; restarting it", flush=True)
                    pooler.stop()
                    pooler.start()
                result = run_pgbench(pgbench, mode, target, ports[target], clients,
                                     args.threads, args.duration, pooler)
                results.append(result)
                cpu = result.cpu_ms_per_1000
                print(f"  {mode:<9} {target:<10} tps {_fmt(result.tps):>8}  latency "
                      f"{_fmt(result.latency_ms, 2):>6} ms"
                      + (f"  CPU {cpu:.1f} ms/1000 txn" if cpu is not None else "")
                      + ("" if result.ok else f"  PROBLEM: {result.error.splitlines()[0]}"),
                      flush=True)
                time.sleep(1.0)  # let closed connections' backends exit before the next run

        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "postgresql": pg_version,
            "pgbouncer": PgBouncer.version() if not args.skip_pgbouncer else None,
            "pgbouncer_secret": args.pgbouncer_secret,
            "poolproxy_commit": git_describe(),
            "duration_s": args.duration,
            "clients": args.clients,
            "connect_clients": args.connect_clients,
            "threads": args.threads,
            "scale": args.scale,
            "pool_size": args.pool_size,
        }
        print()
        print(markdown_table(results, args.modes))
        print()
        print(
            f"{meta['cpus']} CPUs, PostgreSQL {pg_version}, {meta['pgbouncer'] or 'no PgBouncer'},"
            f" poolproxy {meta['poolproxy_commit']}; pgbench -j {args.threads} -T {args.duration}"
            f" -n, scale {args.scale}, pool size {args.pool_size}. tps excludes connection time"
            " except for -C. CPU = the pooler's utime+stime during the run per 1000 transactions"
            " (= µs per transaction). (!) = the run had problems, see below."
        )
        failed = [r for r in results if not r.ok]
        for r in failed:
            print(f"\n### problem: {r.mode} via {r.target}\n{r.error}")
            if r.pooler_log_tail:
                print(f"--- {r.target} log tail ---\n{r.pooler_log_tail}")
        if args.json is not None:
            payload = {
                "meta": meta,
                "runs": [asdict(r) | {"cpu_ms_per_1000": r.cpu_ms_per_1000, "ok": r.ok}
                         for r in results],
            }
            args.json.write_text(json.dumps(payload, indent=2) + "\n")
            print(f"\nresults written to {args.json}")
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
