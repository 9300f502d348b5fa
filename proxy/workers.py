"""Worker processes (`workers: N`): one supervisor, N poolproxy processes on the same sockets.

One Python event loop tops out at one core. With `workers: N` the supervisor binds N sockets per
listener in one SO_REUSEPORT group and starts N worker processes (`python -m proxy`, each
inheriting its socket); the kernel spreads new connections evenly over them. Each worker runs its own
pools with its share of the connection limits (`config.share_settings`), so all workers
together keep to the configured `pool_size`, `max_db_connections`, ...

What crosses processes:
- PostgreSQL cancel requests: a worker hands out cancel keys whose pid is ≡ its index modulo N;
  a CancelRequest that lands on another worker is forwarded over that worker's control socket.
- Console PAUSE/RESUME are broadcast to every worker; RELOAD and SHUTDOWN signal the supervisor,
  which forwards SIGHUP/SIGTERM to every worker.
- The admin HTTP server runs in the supervisor: `/metrics` sums every worker's series (maxima
  for ages and configured durations), `/pools` lists every worker's pools with a `worker` field,
  `/readyz` is 503 while draining or when a worker is not ready.

A worker that dies is restarted (its clients lost their connections, as with any crash); the
workers exit when the supervisor goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .config import Config, ConfigError, load_config
from .logs import os_error_text
from .ops.admin import AdminServer
from .ops.metrics import NON_ADDITIVE
from .ops.statuspage import merge_status

log = logging.getLogger("poolproxy.workers")

ENV_INDEX = "POOLPROXY_WORKER"
ENV_FDS = "POOLPROXY_WORKER_FDS"
ENV_RUNDIR = "POOLPROXY_RUNDIR"
_RESTART_BACKOFF = 1.0


def admin_path(rundir: str, index: int) -> str:
    """The unix socket of worker `index`'s admin HTTP server (read by the supervisor)."""
    return os.path.join(rundir, f"w{index}.admin")


@dataclass(frozen=True)
class WorkerContext:
    """What a worker process knows about its place among the workers."""

    index: int
    count: int
    fds: dict[str, int]  # listener name -> inherited listening socket
    rundir: str  # the supervisor's directory of per-worker unix sockets

    def admin_path(self, index: int | None = None) -> str:
        return admin_path(self.rundir, self.index if index is None else index)

    def control_path(self, index: int | None = None) -> str:
        return os.path.join(self.rundir, f"w{self.index if index is None else index}.ctl")

    @classmethod
    def from_env(cls) -> WorkerContext | None:
        """Set by the supervisor for the processes it starts ("index/count")."""
        value = os.environ.get(ENV_INDEX)
        if not value:
            return None
        index, count = (int(part) for part in value.split("/"))
        return cls(index, count, json.loads(os.environ[ENV_FDS]), os.environ[ENV_RUNDIR])

    async def send_control(self, index: int, line: str, timeout: float = 60.0) -> str:
        """Send one command line to worker `index`'s control socket; its one-line answer."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.control_path(index)), 5.0)
        try:
            writer.write(line.encode() + b"\n")
            answer = await asyncio.wait_for(reader.readline(), timeout)
            return answer.decode().strip()
        finally:
            writer.close()

    async def broadcast(self, line: str) -> list[str]:
        """`line` to every other worker; their answers ('error ...' for one that failed)."""
        async def one(index: int) -> str:
            try:
                return await self.send_control(index, line)
            except (OSError, TimeoutError) as exc:
                return f"error worker {index}: {exc}"
        return list(await asyncio.gather(*(one(i) for i in range(self.count) if i != self.index)))


# ------------------------------------------------------------------ metrics over workers


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_metrics(texts: Iterable[str]) -> bytes:
    """One Prometheus exposition from several workers' ones: equal series (name and labels)
    are summed, except ages and configured durations, which take the largest value."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name not in families:
                families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                values[fam.name] = {}
            series = values[fam.name]
            use_max = fam.name in NON_ADDITIVE
            for sample in fam.samples:
                key = (sample.name, tuple(sample.labels.items()))
                old = series.get(key)
                if old is None:
                    series[key] = sample.value
                else:
                    series[key] = max(old, sample.value) if use_max else old + sample.value
    for name, fam in families.items():
        for (sample_name, labels), value in values[name].items():
            fam.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry()
    registry.register(_Families(families.values()))
    return generate_latest(registry)


async def _unix_get(path: str, target: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET `target` from the admin HTTP server on unix socket `path`: (status, body)."""
    async def fetch() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(f"GET {target} HTTP/1.0\r\nHost: worker\r\n\r\n".encode())
            data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body
    return await asyncio.wait_for(fetch(), timeout)


# ------------------------------------------------------------------ supervisor


def bind_listeners(config: Config, count: int) -> dict[str, list[socket.socket]]:
    """`count` listening sockets per listener in one SO_REUSEPORT group, one per worker: the
    kernel spreads connections evenly over them (one shared socket lets the least busy process
    win every accept race, which piles clients onto one worker). The supervisor keeps them
    open, so connections that arrive while a worker restarts wait in its socket's queue."""
    socks: dict[str, list[socket.socket]] = {}
    lst = None
    try:
        for lst in config.listeners:
            host = lst.listen_host
            dual = host in ("", "::") and socket.has_dualstack_ipv6()
            group = socks.setdefault(lst.name, [])
            for _ in range(count):
                sock = socket.create_server(
                    (host if host not in ("", "*") else "", lst.listen_port),
                    family=socket.AF_INET6 if dual else socket.AF_INET, backlog=1024,
                    reuse_port=True, dualstack_ipv6=dual)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.set_inheritable(True)
                group.append(sock)
    except OSError as exc:
        for group in socks.values():
            for sock in group:
                sock.close()
        if lst is None:
            raise
        # Name the listener and address, as a single process does (daemon.StartupError).
        raise OSError(exc.errno, f"listener {lst.name} ({lst.protocol}) cannot listen on "
                                 f"{lst.listen_address}: {os_error_text(exc)}") from exc
    return socks


class Supervisor:
    """Starts the workers, forwards signals, restarts dead workers, serves the admin HTTP."""

    def __init__(self, config: Config) -> None:
        if config.source.startswith("<"):
            raise ConfigError("workers", "worker processes need the config in a file")
        self.config = config
        self.count = config.workers
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * self.count
        self.started = [0.0] * self.count
        self.exit_codes: dict[int, int] = {}
        self.draining = False
        self._signals = 0
        self.socks: dict[str, list[socket.socket]] = {}
        self.rundir = ""
        self.admin: Any = None

    def spawn(self, index: int) -> None:
        env = dict(os.environ)
        env[ENV_INDEX] = f"{index}/{self.count}"
        fds = {name: group[index].fileno() for name, group in self.socks.items()}
        env[ENV_FDS] = json.dumps(fds)
        env[ENV_RUNDIR] = self.rundir
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-m", "proxy", "-c", self.config.source], env=env,
            pass_fds=list(fds.values()), stdin=subprocess.DEVNULL)
        self.started[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, self.procs[index].pid)  # type: ignore[union-attr]

    def _signal_workers(self, sig: int) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def request_stop(self) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("stop requested: draining %d workers", self.count)
        self.draining = True
        self._signal_workers(signal.SIGTERM)  # a second one makes the workers exit at once

    def reload(self) -> None:
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            return
        if new.workers != self.count:
            log.warning("workers changed from %d to %d; that takes a restart", self.count,
                        new.workers)
        self._signal_workers(signal.SIGHUP)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.socks = bind_listeners(self.config, self.count)
        self.rundir = tempfile.mkdtemp(prefix="poolproxy-")
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            for index in range(self.count):
                self.spawn(index)
            for lst in self.config.listeners:
                log.info("listener %s (%s) on %s -> %s, %d workers", lst.name, lst.protocol,
                         lst.listen_address, lst.server, self.count)
            await self._start_admin()
            await self._watch()
        finally:
            for group in self.socks.values():
                for sock in group:
                    sock.close()
            if self.admin is not None:
                self.admin.close()
            for proc in self.procs:
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
            shutil.rmtree(self.rundir, ignore_errors=True)
        failed = {i: rc for i, rc in self.exit_codes.items() if rc != 0}
        if failed:
            log.error("workers exited with errors: %s", failed)
        log.info("poolproxy stopped")
        return 1 if failed else 0

    async def _watch(self) -> None:
        restart_at: dict[int, float] = {}
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for index, proc in enumerate(self.procs):
                if proc is None:
                    if not self.draining and now >= restart_at.get(index, 0.0):
                        restart_at.pop(index, None)
                        self.spawn(index)
                    continue
                rc = proc.poll()
                if rc is None:
                    continue
                self.procs[index] = None
                if self.draining:
                    self.exit_codes[index] = rc
                    continue
                log.error("worker %d (pid %d) exited with code %d; starting a new one",
                          index, proc.pid, rc)
                # A worker that dies right after starting would otherwise restart in a loop.
                if now - self.started[index] < 5.0:
                    restart_at[index] = now + _RESTART_BACKOFF
            if self.draining and all(proc is None for proc in self.procs):
                return

    async def _start_admin(self) -> None:
        admin = self.config.admin
        if admin.listen_host is None:
            return
        self.admin = SupervisorAdmin(self)
        await self.admin.start(admin.listen_host, admin.listen_port)

    def worker_admin_paths(self) -> list[tuple[int, str]]:
        return [(i, admin_path(self.rundir, i)) for i in range(self.count)]


class SupervisorAdmin(AdminServer):
    """The admin HTTP server of the supervisor: every answer is gathered from the workers."""

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__(CollectorRegistry(), lambda: False, list)
        self.supervisor = supervisor

    async def _gather(self, target: str) -> list[tuple[int, int, bytes] | None]:
        async def one(index: int, path: str) -> tuple[int, int, bytes] | None:
            try:
                status, body = await _unix_get(path, target)
            except (OSError, TimeoutError, ValueError, IndexError):
                return None
            return index, status, body
        return list(await asyncio.gather(
            *(one(i, p) for i, p in self.supervisor.worker_admin_paths())))

    async def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD") or path not in ("/metrics", "/pools", "/readyz",
                                                         "/status.json"):
            return self._route(method, path)
        answers = await self._gather(path)
        if path == "/readyz":
            ready = not self.supervisor.draining and all(
                a is not None and a[1] == 200 for a in answers)
            if ready:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", b"not ready\n"
        good = [a for a in answers if a is not None and a[1] == 200]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, merge_metrics(a[2].decode() for a in good)
        if path == "/status.json":
            merged = merge_status([json.loads(a[2]) for a in good], self.supervisor.count)
            return 200, "application/json", json.dumps(merged, separators=(",", ":")).encode()
        pools: list[dict[str, Any]] = []
        for index, _status, body in good:
            for pool in json.loads(body):
                pool["worker"] = index
                pools.append(pool)
        return 200, "application/json", json.dumps(pools, indent=1).encode() + b"\n"


def run_supervisor(config: Config) -> int:
    try:
        supervisor = Supervisor(config)
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 1
    try:
        return asyncio.run(supervisor.run())
    except OSError as exc:
        log.error("cannot start: %s", exc.strerror or exc)
        return 1
