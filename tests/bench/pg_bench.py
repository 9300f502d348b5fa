#!/usr/bin/env python3
"""pgbench against direct PostgreSQL, PgBouncer and poolproxy, side by side (a script, not a test).

One run starts a throwaway PostgreSQL (tests/harness), loads the pgbench tables, starts PgBouncer
and poolproxy in front of it (transaction pooling, pool size 20, SCRAM), runs pgbench in each
mode against each target and prints a markdown table: tps, average latency and the pooler's CPU
time per 1000 transactions. Every process it started is stopped on exit, Ctrl-C included.

    python tests/bench/pg_bench.py --duration 15 [--json out.json]

``--pgbouncer PATH`` picks the PgBouncer binary (default /usr/sbin/pgbouncer); given more than
once, every binary is a target of its own, named after its version (``pgbouncer-1.18``,
``pgbouncer-1.25``), in the same interleaved rounds.

``--client-tls`` makes every client leg TLS (``sslmode=require``): PostgreSQL itself (direct),
PgBouncer (``client_tls_sslmode = require``) and poolproxy (``client_tls: require``) present a
certificate made at run time; the server legs stay plain text. ``--tls-storm`` instead measures
whether TLS handshakes block the event loop: a steady client's query latency through poolproxy
while 200 new TLS connections arrive at once, against the same client with no storm.

``--metrics-cost`` runs a different experiment instead: poolproxy with its admin HTTP server off
against poolproxy whose /metrics is scraped every second, alternating for ``--repeat`` rounds,
with the cost of metrics in tps. See tests/bench/README.md.
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a plain script: make `tests.harness` importable
    sys.path.insert(0, str(REPO_ROOT))

# `common` is this directory's common.py (the script's directory is sys.path[0]). Not imported
# as `tests.bench.common`: tests/ is no package, and `mypy tests/bench` would then see the file
# under two module names.
from common import (  # noqa: E402
    ChildProcess,
    Cleanup,
    CostRun,
    Forwarder,
    LoginFloor,
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
    interpreters,
    make_workdir,
    measure_metrics_cost,
    median_runs,
    metrics_cost_json,
    metrics_cost_tables,
    metrics_scrape_problems,
    paired_ratio,
    split_choices,
    start_cost_pair,
    table_lines,
    wait_tcp,
    workers_note,
)

from tests.harness.certs import make_pki  # noqa: E402
from tests.harness.pgserver import (  # noqa: E402
    PgServer,
    ServiceUser,
    log_tail,
    pg_bindir,
    prepare_dir,
    service_user,
)
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.procs import process_tree  # noqa: E402
from tests.harness.proxyproc import pg_listener  # noqa: E402

APP_USER = "app"
APP_PASSWORD = "app-secret"  # created by the harness (SCRAM verifier on the server)
DBNAME = "app"
POOL_SIZE = 20
PGBOUNCER = "/usr/sbin/pgbouncer"  # --pgbouncer's default (Debian 12's package: 1.18)
# PgBouncer tracks protocol-level prepared statements in transaction pooling (and so can run
# `pgbench -M prepared`) from 1.21 on, when max_prepared_statements is above 0.
PREPARED_SINCE = (1, 21)
MAX_PREPARED_STATEMENTS = 200

# pgbench arguments per mode name (--modes picks from these).
MODES: dict[str, list[str]] = {
    "simple": ["-S"],
    "extended": ["-S", "-M", "extended"],
    "prepared": ["-S", "-M", "prepared"],
    "connect": ["-S", "-C"],  # a new connection (and SCRAM login) per transaction
}
DEFAULT_MODES = ("simple", "extended", "connect")
LOGIN_FLOOR_ONLY = ("the login floor answers every query with a canned row and has no database:"
                    " only the connect mode (-C) measures it")
DEFAULT_COST_MODES = ("simple",)  # --metrics-cost: the busiest mode shows the cost best
# Targets run in this order within a round; "pgbouncer" stands for every --pgbouncer binary, each
# a target named after its version (BouncerBuild.label); every --python interpreter runs right
# after "poolproxy" (Interpreter.label). "login-floor" (--login-floor) runs the -C mode only.
TARGETS = ("direct", "pgbouncer", "poolproxy", "forwarder", "login-floor")


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
    round: int = 1  # with --rounds: which round (targets run interleaved, round by round)
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
    unsupported: str = ""  # not run: the target cannot do this mode (why); not a failure

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


_BOUNCER_VERSION_RE = re.compile(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class BouncerBuild:
    """One --pgbouncer binary: its path, what ``--version`` says and its target name."""

    path: str
    version: str  # the first line of `pgbouncer --version`: "PgBouncer 1.25.2"
    number: tuple[int, ...]  # (1, 25, 2); () when the version could not be read
    label: str  # the target name: "pgbouncer-1.25"

    @property
    def prepared_statements(self) -> bool:
        """Whether it can pool named prepared statements (max_prepared_statements)."""
        return self.number >= PREPARED_SINCE

    def unsupported(self, mode: str) -> str:
        """Why this build cannot run ``mode`` ("" when it can)."""
        if "prepared" in MODES[mode] and not self.prepared_statements:
            return (f"{self.version} cannot run -M prepared in transaction pooling (prepared"
                    f" statements need PgBouncer {'.'.join(map(str, PREPARED_SINCE))}+ with"
                    " max_prepared_statements)")
        return ""


def bouncer_builds(paths: list[str]) -> list[BouncerBuild]:
    """The --pgbouncer binaries (the same file given twice counts once), each with a distinct
    label: pgbouncer-<major>.<minor>, else the full version, else a #<n> suffix."""
    builds: list[BouncerBuild] = []
    seen: set[str] = set()
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise SystemExit(f"--pgbouncer {path}: no such executable (apt-get install -y pgbouncer"
                             " for /usr/sbin/pgbouncer, pass the path of another build, or"
                             " --skip-pgbouncer)")
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SystemExit(f"--pgbouncer {path}: --version failed: {exc}") from None
        lines = (out.stdout or out.stderr).strip().splitlines()
        version = lines[0].strip() if lines else "unknown"
        match = _BOUNCER_VERSION_RE.search(version)
        if match is None:
            raise SystemExit(f"--pgbouncer {path}: not a PgBouncer? --version says {version!r}")
        number = tuple(int(part) for part in match.groups() if part is not None)
        taken = {b.label for b in builds}
        label = f"pgbouncer-{number[0]}.{number[1]}"
        if label in taken:
            label = f"pgbouncer-{'.'.join(map(str, number))}"
        base, n = label, 2
        while label in taken:
            label, n = f"{base}#{n}", n + 1
        builds.append(BouncerBuild(path=path, version=version, number=number, label=label))
    return builds


class PgBouncer(ChildProcess):
    """PgBouncer in transaction mode in front of ``pg``, configured from a generated ini file."""

    def __init__(self, workdir: Path, pg: PgServer, pool_size: int, secret: str,
                 build: BouncerBuild, tls: tuple[Path, Path] | None = None,
                 port: int | None = None, reuseport: bool = False) -> None:
        self.build = build
        # PgBouncer refuses to run as root; run it as the account the harness runs PostgreSQL as.
        self.user: ServiceUser | None = service_user("postgres")
        self.workdir = prepare_dir(workdir, self.user)
        self.port = free_port() if port is None else port
        self.ini = self.workdir / "pgbouncer.ini"
        self.logfile = self.workdir / "pgbouncer.log"
        userlist = self.workdir / "userlist.txt"
        # auth_file takes a plain-text password (then PgBouncer runs PBKDF2 for every client
        # login) or the server's SCRAM verifier (then it needs none: the production set-up).
        self._write(userlist, f'"{APP_USER}" "{secret}"\n', 0o600)
        if tls is not None:  # its own copies: PgBouncer runs as another user
            cert, key = self.workdir / "server.crt", self.workdir / "server.key"
            self._write(cert, tls[0].read_text(), 0o644)
            self._write(key, tls[1].read_text(), 0o600)
            tls = (cert, key)
        self._write(self.ini, "\n".join([
            "[databases]",
            f"{DBNAME} = host={pg.host} port={pg.port} dbname={DBNAME}",
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            # so_reuseport: several processes share the port (PgBouncer's way to use more
            # than one core; each has its own pools).
            *(["so_reuseport = 1"] if reuseport else []),
            "pool_mode = transaction",
            f"default_pool_size = {pool_size}",
            "max_client_conn = 1000",
            "auth_type = scram-sha-256",
            f"auth_file = {userlist}",
            "server_tls_sslmode = disable",
            *(["client_tls_sslmode = require", f"client_tls_cert_file = {tls[0]}",
               f"client_tls_key_file = {tls[1]}"] if tls else ["client_tls_sslmode = disable"]),
            f"logfile = {self.logfile}",
            # poolproxy runs at log level warning: keep PgBouncer's per-connection logging off
            # too, so that neither pays for log lines in the -C runs.
            "log_connections = 0",
            "log_disconnections = 0",
            # Named prepared statements (pgbench -M prepared) across server connections (1.21+;
            # older versions do not know the setting).
            *([f"max_prepared_statements = {MAX_PREPARED_STATEMENTS}"]
              if build.prepared_statements else []),
            "",
        ]), 0o644)
        self._out: IO[bytes] | None = None

    def _write(self, path: Path, text: str, mode: int) -> None:
        path.write_text(text)
        os.chmod(path, mode)
        if self.user is not None:
            os.chown(path, self.user.uid, self.user.gid)

    def start(self, timeout: float = 15.0) -> None:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user.uid, group=self.user.gid, extra_groups=[])
        self._out = open(self.workdir / "pgbouncer.out", "ab")
        self._proc = subprocess.Popen(
            [self.build.path, str(self.ini)], cwd=self.workdir, stdin=subprocess.DEVNULL,
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs,
        )
        try:
            wait_tcp(self.port, self.is_running, timeout, self.build.label)
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

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(
            part for part in (log_tail(self.logfile, lines),
                              log_tail(self.workdir / "pgbouncer.out", lines)) if part
        )


class PgBouncerGroup:
    """``processes`` PgBouncers of one build on one port with ``so_reuseport = 1``, as PgBouncer's
    documentation suggests for using several cores. The pool size is split over them (as
    poolproxy's ``workers:`` splits it), so the group holds as many server connections as one
    process would."""

    def __init__(self, workdir: Path, pg: PgServer, pool_size: int, secret: str,
                 build: BouncerBuild, processes: int) -> None:
        self.port = free_port()
        sizes = [pool_size // processes + (1 if i < pool_size % processes else 0)
                 for i in range(processes)]
        self.members = [PgBouncer(workdir / f"p{i + 1}", pg, max(1, size), secret, build,
                                  port=self.port, reuseport=True)
                        for i, size in enumerate(sizes)]

    def start(self) -> None:
        for member in self.members:
            member.start()

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def is_running(self) -> bool:
        return all(member.is_running() for member in self.members)

    @property
    def pid(self) -> int | None:
        return self.members[0].pid

    def pids(self) -> list[int]:
        return [pid for member in self.members if (pid := member.pid) is not None]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(f"[{member.workdir.name}]\n{member.log_tail(lines)}"
                         for member in self.members)


def pg_poolproxy(workdir: Path, pg: PgServer, pool_size: int, admin: bool = False,
                 workers: int = 1, tls: tuple[Path, Path] | None = None,
                 python: str | None = None) -> Poolproxy:
    """poolproxy with one PostgreSQL listener ("pg") for app in front of ``pg``."""
    listener = pg_listener(pg, name="pg", users=[{"name": APP_USER, "password": APP_PASSWORD}])
    if tls is not None:
        listener["client_tls"] = {"mode": "require", "cert_file": str(tls[0]),
                                  "key_file": str(tls[1])}
    return Poolproxy(workdir, listener, pool_size, admin=admin, workers=workers, python=python)


Pooler = PgBouncer | PgBouncerGroup | Poolproxy | Forwarder | LoginFloor


def pooler_pids(pooler: Pooler | None) -> list[int]:
    """The processes whose CPU counts as the pooler's: the process tree of each process."""
    if pooler is None or pooler.pid is None:
        return []
    roots = pooler.pids() if isinstance(pooler, PgBouncerGroup) else [pooler.pid]
    return [pid for root in roots for pid in process_tree(root)]


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


#: libpq's sslmode for the benchmark's clients (--client-tls: require).
SSLMODE = "disable"


def client_env(password: str | None) -> dict[str, str]:
    """Our environment without libpq variables that could redirect pgbench, plus fixed ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", PGSSLMODE=SSLMODE, PGGSSENCMODE="disable", PGCONNECT_TIMEOUT="10")
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
    duration: int, pooler: Pooler | None, rate: int | None = None,
) -> RunResult:
    """One pgbench run (``rate``: at most that many transactions per second, pgbench -R); the
    pooler's CPU use is read from /proc around it."""
    cmd = [
        pgbench, *MODES[mode], "-n", "-c", str(clients), "-j", str(threads), "-T", str(duration),
        *(("-R", str(rate)) if rate else ()),
        "-h", "127.0.0.1", "-p", str(port), "-U", APP_USER, DBNAME,
    ]
    result = RunResult(mode=mode, target=target, clients=clients, threads=threads,
                       duration=duration, command=cmd)
    pids = pooler_pids(pooler)
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
        stdout = as_text(exc.stdout)
        stderr = as_text(exc.stderr)
        result.error = f"pgbench did not finish within {exc.timeout:.0f}s (killed)"
    cpu_after = cpu_seconds(pids)
    result.pgbench_cpu_s = round(children_cpu_seconds() - pgbench_before, 3)
    if pids:
        result.pooler_cpu_s = cpu_delta(cpu_before, cpu_after)
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


# --------------------------------------------------------------------------- report


NOT_SUPPORTED = "n/s"  # table cell of a run the target cannot do (RunResult.unsupported)


def run_cell(run: RunResult | None, attr: str, digits: int = 0) -> str:
    return NOT_SUPPORTED if run is not None and run.unsupported else cell(run, attr, digits)


def mode_ratio(results: list[RunResult], mode: str, a: str, b: str) -> str:
    """paired_ratio of a to b in ``mode``; "n/s" when either cannot run the mode."""
    if any(r.unsupported for r in results if r.mode == mode and r.target in (a, b)):
        return NOT_SUPPORTED
    return paired_ratio(results, "mode", mode, a, b)


def markdown_table(results: list[RunResult], modes: list[str], bouncers: list[str],
                   others: Sequence[str] = ()) -> str:
    """One row per mode: tps, latency and pooler CPU of direct, every PgBouncer (``bouncers``:
    their target names) and poolproxy, with poolproxy's tps ratio to each PgBouncer; then the
    forwarder's table, if it ran, and one for poolproxy under other interpreters (``others``:
    their target names)."""
    by_key = median_runs(results, "mode")
    main_targets = ["direct", *bouncers, "poolproxy"]
    poolers = [*bouncers, "poolproxy"]
    header = [
        "mode", "clients", *(f"{t} tps" for t in main_targets),
        *(f"poolproxy/{b}" for b in bouncers),
        *(f"latency ms {t}" for t in main_targets),
        *(f"CPU ms/1000 txn {t}" for t in poolers),
    ]
    rows = []
    for mode in modes:
        runs = {t: by_key.get((mode, t)) for t in main_targets}
        clients = next((r.clients for r in runs.values() if r is not None), 0)
        rows.append([
            mode_label(mode), str(clients),
            *(run_cell(runs[t], "tps") for t in main_targets),
            *(mode_ratio(results, mode, "poolproxy", b) for b in bouncers),
            *(run_cell(runs[t], "latency_ms", 2) for t in main_targets),
            *(run_cell(runs[t], "cpu_ms_per_1000", 1) for t in poolers),
        ])
    lines = table_lines(header, rows)
    if any(r.target == "forwarder" for r in results):
        lines += ["", *table_lines(
            ["mode", "forwarder tps", *(f"forwarder/{b}" for b in bouncers),
             "poolproxy/forwarder", "latency ms forwarder", "CPU ms/1000 txn forwarder"],
            [[mode_label(mode), cell(by_key.get((mode, "forwarder")), "tps"),
              *(mode_ratio(results, mode, "forwarder", b) for b in bouncers),
              mode_ratio(results, mode, "poolproxy", "forwarder"),
              cell(by_key.get((mode, "forwarder")), "latency_ms", 2),
              cell(by_key.get((mode, "forwarder")), "cpu_ms_per_1000", 1)]
             for mode in modes])]
    floor_modes = [m for m in modes if by_key.get((m, "login-floor")) is not None]
    if floor_modes:
        lines += ["", *table_lines(
            ["mode", "login-floor tps", "latency ms login-floor", "CPU ms/1000 txn login-floor",
             *(f"CPU {t} / login-floor" for t in poolers)],
            [[mode_label(mode), cell(by_key.get((mode, "login-floor")), "tps"),
              cell(by_key.get((mode, "login-floor")), "latency_ms", 2),
              cell(by_key.get((mode, "login-floor")), "cpu_ms_per_1000", 1),
              *(cpu_ratio(by_key.get((mode, t)), by_key.get((mode, "login-floor")))
                for t in poolers)]
             for mode in floor_modes])]
    if others:
        lines += ["", *table_lines(
            ["mode", *(f"{o} {what}" for o in others for what in ("tps", "CPU ms/1000 txn")),
             *(f"{o}/poolproxy" for o in others),
             *(f"{o}/{b}" for o in others for b in bouncers)],
            [[mode_label(mode),
              *(cell(by_key.get((mode, o)), what, digits) for o in others
                for what, digits in (("tps", 0), ("cpu_ms_per_1000", 1))),
              *(mode_ratio(results, mode, o, "poolproxy") for o in others),
              *(mode_ratio(results, mode, o, b) for o in others for b in bouncers)]
             for mode in modes])]
    return "\n".join(lines)


def cpu_ratio(a: RunResult | None, b: RunResult | None) -> str:
    """a's CPU per transaction over b's (the median-tps runs), "—" when either is missing."""
    if a is None or b is None or not a.cpu_ms_per_1000 or not b.cpu_ms_per_1000:
        return "—"
    return f"{a.cpu_ms_per_1000 / b.cpu_ms_per_1000:.2f}"


def mode_label(mode: str) -> str:
    return f"`{' '.join(MODES[mode])}`"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="pgbench: direct PostgreSQL vs PgBouncer vs poolproxy (transaction pooling)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per run (default 15)")
    parser.add_argument("--clients", type=int, default=50, help="pgbench clients (default 50)")
    parser.add_argument("--connect-clients", type=int, default=None,
                        help="clients for the 'connect' (-C) mode (default: --clients)")
    parser.add_argument("--threads", type=int, default=2, help="pgbench -j (default 2)")
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated, from {', '.join(MODES)} "
                             f"(default {','.join(DEFAULT_MODES)}; with --metrics-cost: "
                             f"{','.join(DEFAULT_COST_MODES)})")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE,
                        help=f"server connections per pool, both poolers (default {POOL_SIZE})")
    parser.add_argument("--workers", type=int, default=1,
                        help="poolproxy worker processes (config `workers:`; default 1); the"
                        " pool size is split over them")
    parser.add_argument("--warmup", type=int, default=3,
                        help="seconds of unrecorded direct -S first (default 3; 0: none)")
    parser.add_argument("--pgbouncer", action="append", metavar="PATH",
                        help=f"the PgBouncer binary to compare with (default {PGBOUNCER}); give it"
                             " more than once to run each as a target of its own, named after its"
                             " version (pgbouncer-1.18, pgbouncer-1.25, ...)")
    parser.add_argument("--skip-pgbouncer", action="store_true", help="do not run PgBouncer")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every target this many times, interleaved, and report the run "
                             "with the median tps (default 1; -C runs once)")
    parser.add_argument("--forwarder", action="store_true",
                        help="also run a bare uvloop byte forwarder (one server connection per "
                             "client, no parsing, no pooling): the floor for a Python proxy")
    parser.add_argument("--login-floor", action="store_true",
                        help="also run the login floor in the connect (-C) mode: a bare uvloop"
                             " server that logs clients in with SCRAM and answers pgbench's"
                             " queries with canned rows (no pool, no database)")
    parser.add_argument("--connect-rate", type=int, default=None, metavar="TPS",
                        help="run the connect (-C) mode at this rate for every target (pgbench"
                             " -R), so that CPU per login is compared at the same load")
    parser.add_argument("--python", action="append", metavar="PATH", default=[],
                        help="also run poolproxy with this Python interpreter (it needs"
                             " poolproxy's dependencies), as a target of its own named"
                             " poolproxy@<version>; give it more than once for several")
    parser.add_argument("--pgbouncer-secret", choices=("plain", "scram"), default="plain",
                        help="what PgBouncer's userlist.txt holds for app: the plain password "
                             "(default) or the server's SCRAM verifier")
    add_metrics_cost_args(parser)
    parser.add_argument("--scaling", type=int, metavar="N", default=None,
                        help="instead of the usual comparison: every PgBouncer as one process and"
                             " as N processes sharing the port (so_reuseport), against poolproxy"
                             " with workers: 1 and workers: N (the pool size split over the"
                             " processes in both); see tests/bench/README.md")
    parser.add_argument("--client-tls", action="store_true",
                        help="clients connect with sslmode=require to every target")
    parser.add_argument("--tls-storm", action="store_true",
                        help="measure a steady client's latency during a 200-connection TLS "
                             "storm through poolproxy (instead of pgbench)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work dir (data dir, configs, logs) afterwards")
    args = parser.parse_args(argv)
    if args.modes is None:
        args.modes = ",".join(DEFAULT_COST_MODES if args.metrics_cost else DEFAULT_MODES)
    args.modes = split_choices(parser, "modes", args.modes, MODES)
    check_metrics_cost_args(parser, args)
    if args.scaling is not None and (args.scaling < 2 or args.metrics_cost or args.tls_storm):
        parser.error("--scaling N needs N >= 2 and neither --metrics-cost nor --tls-storm")
    if (args.python or args.login_floor) and (args.scaling or args.metrics_cost
                                              or args.tls_storm):
        parser.error("--python and --login-floor go with the usual comparison: not with"
                     " --scaling, --metrics-cost or --tls-storm")
    if (args.login_floor or args.connect_rate) and "connect" not in args.modes:
        parser.error("--login-floor and --connect-rate need the connect mode (--modes ...,connect)")
    if args.connect_rate is not None and args.connect_rate < 1:
        parser.error("--connect-rate must be at least 1")
    if args.connect_clients is None:
        args.connect_clients = args.clients
    if not args.pgbouncer:
        args.pgbouncer = [PGBOUNCER]
    return args


def compare(args: argparse.Namespace, pgbench: str, pg: PgServer, workdir: Path,
            cleanup: Cleanup, builds: list[BouncerBuild]) -> list[RunResult]:
    """The usual benchmark: every mode against direct PostgreSQL, each PgBouncer in ``builds``
    and poolproxy."""
    poolers: dict[str, Pooler] = {}
    secret = bouncer_secret(args, pg, builds)
    tls_files = None
    if args.client_tls:
        assert pg.pki is not None
        tls_files = (pg.pki.server.cert, pg.pki.server.key)
    for build in builds:
        bouncer = PgBouncer(workdir / build.label.replace("#", "-"), pg, args.pool_size, secret,
                            build, tls=tls_files)
        cleanup.add(build.label, bouncer.stop)
        bouncer.start()
        print(f"{build.label}: {build.path} ({build.version}) on 127.0.0.1:{bouncer.port}",
              flush=True)
        poolers[build.label] = bouncer
    proxy = pg_poolproxy(workdir / "poolproxy", pg, args.pool_size, workers=args.workers,
                         tls=tls_files)
    cleanup.add("poolproxy", proxy.stop)
    proxy.start()
    poolers["poolproxy"] = proxy
    for interp in args.interpreters:
        other = pg_poolproxy(workdir / interp.label.replace("#", "-"), pg, args.pool_size,
                             workers=args.workers, tls=tls_files, python=interp.path)
        cleanup.add(interp.label, other.stop)
        other.start()
        print(f"{interp.label}: {interp.path} ({'compiled' if interp.compiled else 'pure'})",
              flush=True)
        poolers[interp.label] = other
    if args.forwarder:
        forwarder = Forwarder(workdir / "forwarder", pg.host, pg.port)
        cleanup.add("forwarder", forwarder.stop)
        forwarder.start()
        poolers["forwarder"] = forwarder
    if args.login_floor:
        floor = LoginFloor(workdir / "login-floor", APP_PASSWORD)
        cleanup.add("login-floor", floor.stop)
        floor.start()
        poolers["login-floor"] = floor
    ports = {"direct": pg.port, **{name: p.port for name, p in poolers.items()}}

    warm_up(args, pgbench, pg)
    targets = [name for t in TARGETS
               for name in ([b.label for b in builds] if t == "pgbouncer"
                            else [t, *(i.label for i in args.interpreters)] if t == "poolproxy"
                            else [t])
               if name in ports]
    unsupported = {(m, b.label): b.unsupported(m) for m in args.modes for b in builds}
    unsupported.update({(m, "login-floor"): LOGIN_FLOOR_ONLY for m in args.modes
                        if "-C" not in MODES[m]})
    print(f"running {len(args.modes)} modes x {len(targets)} targets x {args.duration}s\n",
          flush=True)
    return run_rounds(args, pgbench, targets, ports, poolers, unsupported)


def bouncer_secret(args: argparse.Namespace, pg: PgServer, builds: list[BouncerBuild]) -> str:
    """What PgBouncer's auth_file holds for app (--pgbouncer-secret)."""
    if builds and args.pgbouncer_secret == "scram":
        secret: str = pg.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                                 (APP_USER,))[0][0]
        return secret
    return APP_PASSWORD


def run_rounds(args: argparse.Namespace, pgbench: str, targets: list[str],
               ports: dict[str, int], poolers: dict[str, Pooler],
               unsupported: dict[tuple[str, str], str]) -> list[RunResult]:
    """Every mode against every target, --rounds times interleaved (-C once); a mode a target
    cannot run is recorded (and printed) once instead."""
    results: list[RunResult] = []
    width = max(len(t) for t in targets)
    # Rounds interleave the targets (direct, PgBouncers, poolproxy, ... then again), so a drift
    # in the machine's speed during the run hits every target alike; the table takes medians.
    rounds = {m: args.rounds if "-C" not in MODES[m] else 1 for m in args.modes}
    for mode, round_no, target in [(m, i, t) for m in args.modes for i in range(rounds[m])
                                   for t in targets]:
        reconnecting = "-C" in MODES[mode]
        clients = args.connect_clients if reconnecting else args.clients
        why_not = unsupported.get((mode, target), "")
        if why_not:
            if round_no == 0:  # recorded (and printed) once, not per round
                results.append(RunResult(mode=mode, target=target, clients=clients,
                                         threads=args.threads, duration=args.duration,
                                         command=[], unsupported=why_not))
                print(f"  {mode:<9} {target:<{width}} not supported: {why_not}", flush=True)
            continue
        pooler = poolers.get(target)
        if pooler is not None and not pooler.is_running():
            print(f"  {target} is not running; restarting it", flush=True)
            pooler.stop()
            pooler.start()
        result = run_pgbench(pgbench, mode, target, ports[target], clients,
                             args.threads, args.duration, pooler,
                             rate=args.connect_rate if reconnecting else None)
        result.round = round_no + 1
        results.append(result)
        cpu = result.cpu_ms_per_1000
        print(f"  {mode:<9} {target:<{width}} {round_no + 1}/{rounds[mode]} tps"
              f" {fmt(result.tps):>8}  latency {fmt(result.latency_ms, 2):>6} ms"
              + (f"  CPU {cpu:.1f} ms/1000 txn" if cpu is not None else "")
              + ("" if result.ok else f"  PROBLEM: {result.error.splitlines()[0]}"),
              flush=True)
        time.sleep(1.0)  # let closed connections' backends exit before the next run
    return results


def metrics_cost(args: argparse.Namespace, pgbench: str, pg: PgServer, workdir: Path,
                 cleanup: Cleanup) -> tuple[list[RunResult], list[CostRun]]:
    """--metrics-cost: poolproxy with the admin HTTP server off vs on and scraped, alternating."""
    admin_off, scraped = start_cost_pair(
        lambda path, admin: pg_poolproxy(path, pg, args.pool_size, admin=admin, workers=args.workers),
        workdir, cleanup)

    warm_up(args, pgbench, pg)
    results: list[RunResult] = []

    def run_one(mode: str, target: str, proxy: Poolproxy) -> tuple[float | None, float | None, str]:
        clients = args.connect_clients if "-C" in MODES[mode] else args.clients
        result = run_pgbench(pgbench, mode, target, proxy.port, clients, args.threads,
                             args.duration, proxy)
        results.append(result)
        return result.tps, result.cpu_ms_per_1000, result.error

    print(f"metrics cost: {len(args.modes)} modes x {args.repeat} rounds x (admin off, scraped"
          f" every {args.scrape_interval:g}s) x {args.duration}s\n", flush=True)
    cost_runs = measure_metrics_cost([(m, mode_label(m)) for m in args.modes], args.repeat,
                                     args.scrape_interval, admin_off, scraped, run_one)
    return results, cost_runs


def scaling_targets(builds: list[BouncerBuild], n: int) -> list[tuple[str, str]]:
    """(single-process target, N-process target) pairs: each PgBouncer build, then poolproxy."""
    return [*((b.label, f"{b.label}-x{n}") for b in builds), ("poolproxy", f"poolproxy-w{n}")]


def scaling(args: argparse.Namespace, pgbench: str, pg: PgServer, workdir: Path,
            cleanup: Cleanup, builds: list[BouncerBuild]) -> list[RunResult]:
    """--scaling N: one process against N, for PgBouncer (so_reuseport) and poolproxy
    (workers: N), every target in every round."""
    n = args.scaling
    secret = bouncer_secret(args, pg, builds)
    poolers: dict[str, Pooler] = {}
    for build in builds:
        name = build.label.replace("#", "-")
        single = PgBouncer(workdir / name, pg, args.pool_size, secret, build)
        group = PgBouncerGroup(workdir / f"{name}-x{n}", pg, args.pool_size, secret, build, n)
        poolers[build.label], poolers[f"{build.label}-x{n}"] = single, group
    poolers["poolproxy"] = pg_poolproxy(workdir / "poolproxy", pg, args.pool_size)
    poolers[f"poolproxy-w{n}"] = pg_poolproxy(workdir / f"poolproxy-w{n}", pg, args.pool_size,
                                              workers=n)
    for name, pooler in poolers.items():
        cleanup.add(name, pooler.stop)
        pooler.start()
        print(f"{name} on 127.0.0.1:{pooler.port}", flush=True)
    warm_up(args, pgbench, pg)
    targets = ["direct", *poolers]
    ports = {"direct": pg.port, **{name: p.port for name, p in poolers.items()}}
    unsupported = {(m, t): b.unsupported(m) for m in args.modes for b in builds
                   for t in (b.label, f"{b.label}-x{n}")}
    print(f"scaling: {len(args.modes)} modes x {len(targets)} targets x {args.duration}s\n",
          flush=True)
    return run_rounds(args, pgbench, targets, ports, poolers, unsupported)


def scaling_table(results: list[RunResult], modes: list[str], builds: list[BouncerBuild],
                  n: int) -> str:
    """One row per (mode, pooler): tps and CPU with 1 and with N processes, the gain, and the
    N-process poolproxy against each N-process PgBouncer."""
    by_key = median_runs(results, "mode")
    pairs = scaling_targets(builds, n)
    header = ["mode", "pooler", "direct tps", "1 process tps", f"{n} processes tps",
              f"{n} / 1", "CPU µs/txn 1 process", f"CPU µs/txn {n} processes",
              *(f"poolproxy-w{n} / {b.label}-x{n}" for b in builds)]
    rows = []
    for mode in modes:
        for one, many in pairs:
            if any(r.unsupported for r in results if r.mode == mode and r.target == one):
                continue
            rows.append([
                mode_label(mode), one, cell(by_key.get((mode, "direct")), "tps"),
                cell(by_key.get((mode, one)), "tps"), cell(by_key.get((mode, many)), "tps"),
                paired_ratio(results, "mode", mode, many, one),
                cell(by_key.get((mode, one)), "cpu_ms_per_1000", 1),
                cell(by_key.get((mode, many)), "cpu_ms_per_1000", 1),
                *((paired_ratio(results, "mode", mode, f"poolproxy-w{n}", f"{b.label}-x{n}")
                   if one == "poolproxy" else "") for b in builds),
            ])
    return "\n".join(table_lines(header, rows))


def tls_storm(args: argparse.Namespace, pg: PgServer, workdir: Path, cleanup: Cleanup,
              builds: list[BouncerBuild]) -> int:
    """A steady client's latency (SELECT 1 every 5 ms) through each pooler while 200 clients
    connect with TLS at once, against the same client without the storm, alternating."""
    import asyncio
    import ssl as ssl_mod

    import asyncpg

    pki = pg.pki
    assert pki is not None
    files = (pki.server.cert, pki.server.key)
    poolers: dict[str, Pooler] = {}
    for build in builds:
        bouncer = PgBouncer(workdir / build.label.replace("#", "-"), pg, args.pool_size,
                            APP_PASSWORD, build, tls=files)
        cleanup.add(build.label, bouncer.stop)
        bouncer.start()
        poolers[build.label] = bouncer
    proxy = pg_poolproxy(workdir / "poolproxy", pg, args.pool_size, tls=files)
    cleanup.add("poolproxy", proxy.stop)
    proxy.start()
    poolers["poolproxy"] = proxy
    ctx = ssl_mod.create_default_context(cafile=str(pki.ca))
    ctx.check_hostname = False
    # The storm runs in a process of its own, so that its 200 client-side handshakes do not
    # stall the steady client's event loop: what is measured is the pooler's.
    storm_code = (
        "import asyncio, ssl, sys, time, asyncpg\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[1]); ctx.check_hostname = False\n"
        "async def main():\n"
        "    t0 = time.perf_counter()\n"
        "    rs = await asyncio.gather(*(asyncpg.connect(host='127.0.0.1', port=int(sys.argv[2]),"
        " user=sys.argv[3], password=sys.argv[4], database=sys.argv[5], ssl=ctx)"
        " for _ in range(int(sys.argv[6]))), return_exceptions=True)\n"
        "    took = time.perf_counter() - t0\n"
        "    ok = [c for c in rs if not isinstance(c, BaseException)]\n"
        "    await asyncio.gather(*(c.close() for c in ok))\n"
        "    print(len(ok), took)\n"
        "asyncio.run(main())\n")

    def storm_process(port: int, n: int) -> tuple[int, float]:
        out = subprocess.run([sys.executable, "-c", storm_code, str(pki.ca), str(port),
                              APP_USER, APP_PASSWORD, DBNAME, str(n)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        ok, took = out.split()
        return int(ok), float(took)

    async def steady(port: int, seconds: float) -> list[float]:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=APP_USER,
                                     password=APP_PASSWORD, database=DBNAME, ssl=ctx)
        out: list[float] = []
        try:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                await conn.fetchval("SELECT 1")
                out.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(0.005)
        finally:
            await conn.close()
        return out

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    async def main() -> None:
        print("| pooler | round | storm | queries | p50 ms | p99 ms | max ms | storm connects |")
        print("|---|---|---|---|---|---|---|---|")
        for round_no in range(1, args.rounds + 1):
            for name, pooler in poolers.items():
                quiet = await steady(pooler.port, 3.0)
                print(f"| {name} | {round_no} | none | {len(quiet)} | {pct(quiet, 0.5):.2f} |"
                      f" {pct(quiet, 0.99):.2f} | {max(quiet):.2f} | - |", flush=True)
                steady_task = asyncio.ensure_future(steady(pooler.port, 3.0))
                await asyncio.sleep(0.5)
                ok, took = await asyncio.to_thread(storm_process, pooler.port, 200)
                noisy = await steady_task
                print(f"| {name} | {round_no} | 200 TLS | {len(noisy)} | {pct(noisy, 0.5):.2f} |"
                      f" {pct(noisy, 0.99):.2f} | {max(noisy):.2f} | {ok}/200 in {took:.2f} s |",
                      flush=True)

    asyncio.run(main())
    return 0


def warm_up(args: argparse.Namespace, pgbench: str, pg: PgServer) -> None:
    if args.warmup > 0:
        print(f"warm-up: {args.warmup}s of direct -S ...", flush=True)
        run_pgbench(pgbench, "simple", "direct", pg.port, args.clients, args.threads,
                    args.warmup, None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.interpreters = interpreters(args.python)
    install_signal_handlers()
    pgbench = pgbench_binary()
    use_pgbouncer = not args.skip_pgbouncer and not args.metrics_cost
    builds = bouncer_builds(args.pgbouncer) if use_pgbouncer else []
    cleanup = Cleanup()
    workdir = make_workdir("pp-bench-", args.keep, cleanup)
    try:
        print(f"starting PostgreSQL in {workdir} ...", flush=True)
        pki = None
        if args.client_tls or args.tls_storm:
            global SSLMODE
            SSLMODE = "require"
            pki = make_pki(workdir / "pki")
        pg = PgServer.create(workdir, tls=pki)
        cleanup.add("PostgreSQL", lambda: pg.stop("fast"))
        pg_version = pg.execute("SHOW server_version")[0][0]
        init_pgbench_tables(pg, pgbench, args.scale, workdir)

        if args.tls_storm:
            return tls_storm(args, pg, workdir, cleanup, builds)
        cost_runs: list[CostRun] = []
        if args.metrics_cost:
            results, cost_runs = metrics_cost(args, pgbench, pg, workdir, cleanup)
        elif args.scaling:
            results = scaling(args, pgbench, pg, workdir, cleanup, builds)
        else:
            results = compare(args, pgbench, pg, workdir, cleanup, builds)

        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "python_executable": sys.executable,
            "pythons": [asdict(i) for i in args.interpreters],
            "postgresql": pg_version,
            "pgbouncer": "; ".join(b.version for b in builds) or None,
            "pgbouncers": [{
                "target": b.label, "path": b.path, "version": b.version,
                "max_prepared_statements": MAX_PREPARED_STATEMENTS if b.prepared_statements
                else None,
            } for b in builds],
            "pgbouncer_secret": args.pgbouncer_secret,
            "poolproxy_commit": git_describe(),
            "duration_s": args.duration,
            "clients": args.clients,
            "connect_clients": args.connect_clients,
            "threads": args.threads,
            "scale": args.scale,
            "pool_size": args.pool_size,
            "poolproxy_workers": args.workers,
            "connect_rate": args.connect_rate,
            "scaling": args.scaling,
        }
        print()
        if args.metrics_cost:
            print(metrics_cost_tables(cost_runs))
            print()
            print(
                f"{meta['cpus']} CPUs, PostgreSQL {pg_version}, poolproxy"
                f" {meta['poolproxy_commit']}; pgbench -j {args.threads} -T {args.duration} -n,"
                f" scale {args.scale}, pool size {args.pool_size}{workers_note(args.workers)}."
                " Each round runs poolproxy with"
                " the admin HTTP server off, then an identical poolproxy with it on while"
                f" GET /metrics runs every {args.scrape_interval:g}s. cost = 1 - median(scraped"
                " tps) / median(admin-off tps); noise = (max - min) / median of one"
                " configuration's runs. CPU = poolproxy's utime+stime per transaction. (!) = the"
                " run or its scrapes had problems, see below."
            )
        else:
            if args.scaling:
                print(scaling_table(results, args.modes, builds, args.scaling))
            else:
                print(markdown_table(results, args.modes, [b.label for b in builds],
                                     [i.label for i in args.interpreters]))
            print()
            print(
                (f"{args.scaling} processes: PgBouncer with so_reuseport = 1, poolproxy with"
                 f" workers: {args.scaling}; the pool size is split over the processes in both. "
                 if args.scaling else "") +
                f"{meta['cpus']} CPUs, PostgreSQL {pg_version},"
                f" {', '.join(b.version for b in builds) or 'no PgBouncer'},"
                f" poolproxy {meta['poolproxy_commit']} (Python {meta['python']}"
                f" {sys.executable}"
                + "".join(f"; {i.label}: {i.path}, {'compiled' if i.compiled else 'pure'}"
                          for i in args.interpreters)
                + f"); pgbench -j {args.threads} -T {args.duration} -n, scale {args.scale}, pool"
                f" size {args.pool_size}{workers_note(args.workers)}."
                + (f" Each figure: the median-tps run of {args.rounds} interleaved rounds"
                   " (-C: one); ratios: median (range) of the ratios within a round."
                   if args.rounds > 1 else "")
                + (f" -C runs at most {args.connect_rate} tps (pgbench -R)."
                   if args.connect_rate else "")
                + " tps excludes connection time except for -C. CPU = the"
                " pooler's utime+stime during the run per 1000 transactions (= µs per"
                " transaction). (!) = the run had problems, see below."
                + (f" {NOT_SUPPORTED} = not run: that PgBouncer cannot do the mode, see below."
                   if any(r.unsupported for r in results) else "")
            )
        for r in results:
            if r.unsupported:
                print(f"\n### not supported: {r.mode} via {r.target}\n{r.unsupported}")
        failed = [r for r in results if not r.ok]
        for r in failed:
            print(f"\n### problem: {r.mode} via {r.target}\n{r.error}")
            if r.pooler_log_tail:
                print(f"--- {r.target} log tail ---\n{r.pooler_log_tail}")
        scrape_problems = metrics_scrape_problems(cost_runs)
        for problem in scrape_problems:
            print(f"\n{problem}")
        if args.json is not None:
            payload: dict[str, Any] = {
                "meta": meta,
                "runs": [asdict(r) | {"cpu_ms_per_1000": r.cpu_ms_per_1000, "ok": r.ok}
                         for r in results],
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
