"""The daemon: starts listeners and the janitor, handles signals, shuts down gracefully.

Start-up: "started" is logged only once every listen socket (and the admin HTTP server) is
bound; one that cannot be bound ends the process with status 1 and an error naming the
listener and address. Then, and after each reload, every listener's server is probed in the
background (a plain connect, PROBE_TIMEOUT): an unreachable one draws one warning, nothing more.

SIGTERM/SIGINT: stop accepting, let open transactions finish (up to shutdown_timeout), then
close every client with 57P01 / a MySQL shutdown error. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from typing import Any

from prometheus_client import CollectorRegistry

from . import __version__
from .config import Config, ConfigError, ServerAddress, format_address, load_config
from .core.listener import ListenerRuntime, ProtocolAdapter
from .errors import ShuttingDown
from .logs import os_error_text
from .mysql.adapter import MySQLAdapter
from .ops.admin import AdminServer
from .ops.console import Console, ConsoleError, StatsPeriods
from .ops.metrics import CLIENT_STATES, PoolproxyCollector, pool_client_states
from .ops.statuspage import StatusHistory
from .pool import ClientState, CloseReason, Pool
from .pool.janitor import Janitor
from .postgres.adapter import PostgresAdapter
from .tls import TlsError
from .workers import WorkerContext

log = logging.getLogger("poolproxy.daemon")

#: How long the start-up / reload probe of a listener's server waits for a connection.
PROBE_TIMEOUT = 3.0
#: The probe logs in as at most this many configured users per listener.
PROBED_USERS = 8


class StartupError(Exception):
    """A listen socket could not be bound; the message names the listener and address."""


async def probe_server(server: ServerAddress, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if `server` accepts a connection within `timeout` (closed at once, nothing sent),
    else why not."""
    try:
        if server.socket_path:
            connect = asyncio.open_unix_connection(server.socket_path)
        else:
            connect = asyncio.open_connection(server.host, server.port)
        _reader, writer = await asyncio.wait_for(connect, timeout)
    except TimeoutError:
        return f"no connection within {timeout:g}s"
    except OSError as exc:
        return os_error_text(exc)
    except ValueError as exc:  # a host name the resolver refuses to encode
        return str(exc)
    writer.close()
    return None


def adapter_for(protocol: str) -> ProtocolAdapter:
    """The protocol package that runs a listener of `protocol`."""
    if protocol == "mysql":
        return MySQLAdapter()
    return PostgresAdapter()


class Daemon:
    def __init__(self, config: Config, clock: Any = time.monotonic,
                 worker: WorkerContext | None = None) -> None:
        self.config = config
        self.clock = clock
        #: Set when this process is one of several workers (see proxy/workers.py).
        self.worker = worker
        self._control_server: asyncio.AbstractServer | None = None
        self.listeners: list[ListenerRuntime] = []
        self.draining = False
        self._stop = asyncio.Event()
        self._signals = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self.admin: Any = None
        self.paused_databases: set[str] = set()
        self.started = time.time()
        self.stats_periods = StatsPeriods(self.pools, clock)  # SHOW STATS averages
        self.status_history = StatusHistory(self)  # the admin status page's history

    def pools(self) -> list[Pool]:
        return [p for rt in self.listeners for p in rt.pools.values()]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for lcfg in self.config.listeners:
            try:
                rt = ListenerRuntime(lcfg, adapter_for(lcfg.protocol), loop, self.clock)
            except TlsError as exc:
                raise StartupError(f"listener {lcfg.name}: {exc}") from exc
            rt.operations = self
            rt.paused_databases = self.paused_databases
            self.listeners.append(rt)
        janitor = Janitor(self.pools, self.clock,
                          clients=lambda: [c for rt in self.listeners for c in rt.clients])
        self._tasks.append(asyncio.ensure_future(janitor.run()))
        self._tasks.append(asyncio.ensure_future(self.stats_periods.run()))
        self._tasks.append(asyncio.ensure_future(self.status_history.run()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    async def bind(self) -> None:
        loop = asyncio.get_running_loop()
        for rt in self.listeners:
            await rt.adapter.prepare(rt)
        for rt in self.listeners:
            lcfg = rt.config
            host = lcfg.listen_host or None
            inherited = self.worker.fds.get(lcfg.name) if self.worker is not None else None
            try:
                if inherited is not None:
                    # The supervisor bound it; every worker accepts on the same socket.
                    rt.server = await loop.create_server(
                        rt.new_client, sock=socket.socket(fileno=inherited), backlog=1024)
                else:
                    rt.server = await loop.create_server(
                        rt.new_client, host, lcfg.listen_port, reuse_address=True,
                        backlog=1024)
            except OSError as exc:
                raise StartupError(f"listener {lcfg.name} ({lcfg.protocol}) cannot listen on "
                                   f"{lcfg.listen_address}: {os_error_text(exc)}") from exc
            for sock in rt.server.sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log.info("listener %s (%s) on %s -> %s", lcfg.name, lcfg.protocol,
                     lcfg.listen_address, lcfg.server)

    def reload(self) -> bool:
        """Re-read the config file; apply pool settings, users and databases in place.

        Clients stay connected. An invalid file is rejected (logged with its key path) and the
        running config is kept. Listen addresses and servers need a restart (logged)."""
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            count = len(exc.errors)
            for i, error in enumerate(exc.errors, 1):
                log.error("reload rejected, keeping the running config: %s%s", error,
                          f" (problem {i} of {count})" if count > 1 else "")
            return False
        if self.worker is not None:
            new = new.for_worker(self.worker.index, self.worker.count)
        by_name = {lcfg.name: lcfg for lcfg in new.listeners}
        for rt in self.listeners:
            lcfg = by_name.get(rt.name)
            if lcfg is None:
                log.warning("listener %s is gone from the config; it keeps running until restart",
                            rt.name)
                continue
            old = rt.config
            if (lcfg.protocol, lcfg.listen_host, lcfg.listen_port) != (
                    old.protocol, old.listen_host, old.listen_port) or lcfg.server != old.server:
                log.warning("listener %s: listen address, protocol or server changed; "
                            "that takes a restart", rt.name)
            rt.config = lcfg
            rt.reload_tls()  # errors are logged; the previous contexts stay
            for pool in rt.pools.values():
                pool.settings = lcfg.settings_for(lcfg.database(pool.database), lcfg.user(pool.user))
                pool.reconfigured()
        for lcfg in new.listeners:
            if lcfg.name not in {rt.name for rt in self.listeners}:
                log.warning("new listener %s needs a restart to start listening", lcfg.name)
        self.config = new
        log.info("configuration reloaded from %s", new.source)
        self.probe_servers("after the reload")
        return True

    def probe_servers(self, when: str) -> None:
        """In the background, try to connect to every listener's server; warn once for each
        that does not answer. Never blocks, never stops poolproxy (with workers, worker 0 alone
        probes)."""
        if self.worker is not None and self.worker.index != 0:
            return
        self._tasks = [task for task in self._tasks if not task.done()]
        targets = [(rt.name, rt.config.server) for rt in self.listeners]
        self._tasks.append(asyncio.ensure_future(self._probe(targets, when)))

    async def _probe(self, targets: list[tuple[str, ServerAddress]], when: str) -> None:
        results = await asyncio.gather(*(probe_server(server) for _, server in targets),
                                       return_exceptions=True)
        reachable = []
        for (name, server), problem in zip(targets, results, strict=True):
            if problem is None:
                reachable.append(name)
                continue
            if isinstance(problem, asyncio.CancelledError):
                raise problem
            log.warning("listener %s: its server %s is unreachable %s (%s); poolproxy runs on "
                        "and connects when clients need it", name, server, when, problem)
        logins = [(rt, user) for rt in self.listeners if rt.name in reachable
                  for user in list(rt.config.users)[:PROBED_USERS]]
        refusals = await asyncio.gather(
            *(rt.probe_login(user, PROBE_TIMEOUT) for rt, user in logins),
            return_exceptions=True)
        for (rt, user), refusal in zip(logins, refusals, strict=True):
            if isinstance(refusal, asyncio.CancelledError):
                raise refusal
            if refusal is not None:
                log.warning("listener %s: user %s cannot log in to its server %s %s (%s); "
                            "its clients will get this error until the user or its password "
                            "is fixed", rt.name, user, rt.config.server, when, refusal)
        log.info("server probe %s finished", when)

    def request_stop(self) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second stop signal: exiting now")
            self._immediate_exit()
            return
        log.info("stop requested: draining")
        self._stop.set()

    def _immediate_exit(self) -> None:
        for rt in self.listeners:
            rt.close_all(CloseReason.SHUTDOWN)
        raise SystemExit(1)

    async def run(self) -> int:
        """Start, serve until stopped, shut down; the exit status."""
        try:
            await self.start()
            await self.bind()
            await self.start_admin()
            if self.worker is not None:
                await self._start_worker_services(self.worker)
        except StartupError as exc:
            log.error("cannot start: %s", exc)
            self._abandon_start()
            return 1
        log.info("poolproxy %s started with %d listener(s)", __version__, len(self.listeners))
        self.probe_servers("at start-up")
        await self._stop.wait()
        await self.shutdown()
        return 0

    def _abandon_start(self) -> None:
        """Close what a failed start opened (the listeners bound so far, background tasks)."""
        for rt in self.listeners:
            if rt.server is not None:
                rt.server.close()
        for task in self._tasks:
            task.cancel()
        if self.admin is not None:
            self.admin.close()

    # ------------------------------------------------------------------ as one of N workers
    async def _start_worker_services(self, worker: WorkerContext) -> None:
        self._control_server = await asyncio.start_unix_server(self._control,
                                                               worker.control_path())
        self._tasks.append(asyncio.ensure_future(self._watch_supervisor()))
        log.info("worker %d of %d ready", worker.index, worker.count)

    async def _watch_supervisor(self) -> None:
        parent = os.getppid()
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                log.warning("the supervisor is gone: stopping")
                self.request_stop()
                return

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One command line from another worker: cancel, pause or resume; answers one line."""
        try:
            words = (await asyncio.wait_for(reader.readline(), 5.0)).decode().split()
            answer = "ok"
            if len(words) == 4 and words[0] == "cancel":
                rt = next((r for r in self.listeners if r.name == words[1]), None)
                if rt is not None:
                    rt.handle_cancel(int(words[2]), int(words[3]), forwarded=True)
            elif len(words) == 2 and words[0] in ("pause", "resume"):
                database = None if words[1] == "*" else words[1]
                console = Console(self)
                try:
                    if words[0] == "pause":
                        if not await console.pause(database, strict=False):
                            answer = "nopool"
                    else:
                        console.resume(database)
                except ConsoleError as exc:
                    answer = f"error {exc}"
            else:
                answer = "error unknown command"
            writer.write(answer.encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError, TimeoutError) as exc:
            log.debug("control connection failed: %s", exc)
        finally:
            writer.close()

    async def start_admin(self) -> None:
        admin = self.config.admin
        if admin.listen_host is None:
            return
        worker = self.worker
        registry = CollectorRegistry()
        registry.register(PoolproxyCollector(
            lambda: self.listeners,
            effective=lambda pool: {"server_idle_timeout": pool.idle_timeout}))
        self.admin = AdminServer(registry, self.ready, self.pools_snapshot,
                                 self.status_history.status)
        if worker is not None:
            await self.admin.start_unix(worker.admin_path())  # the supervisor serves HTTP
            return
        try:
            await self.admin.start(admin.listen_host, admin.listen_port)
        except OSError as exc:
            self.admin = None
            raise StartupError(
                f"the admin HTTP server (admin.listen) cannot listen on "
                f"{format_address(admin.listen_host, admin.listen_port)}: {os_error_text(exc)}"
            ) from exc

    def ready(self) -> bool:
        """/readyz: listeners accept and the daemon is not draining."""
        return not self.draining and bool(self.listeners) and all(
            rt.server is not None and rt.server.is_serving() for rt in self.listeners)

    def pools_snapshot(self) -> list[dict[str, Any]]:
        states = pool_client_states(self.listeners)
        out = []
        for pool in self.pools():
            snap = pool.snapshot()
            snap["clients"] = states.get(id(pool), dict.fromkeys(CLIENT_STATES, 0))
            snap["listener_tasks"] = next(
                (len(rt._tasks) for rt in self.listeners if pool in rt.pools.values()), 0)
            out.append(snap)
        return out

    async def shutdown(self) -> None:
        # /readyz turns 503 first, so load balancers stop sending before listeners close.
        self.draining = True
        for rt in self.listeners:
            rt.draining = True
            if rt.server is not None:
                rt.server.close()
        timeout = self.config.defaults.shutdown_timeout
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            self._close_idle_clients()
            if not any(rt.active_transactions() for rt in self.listeners):
                break
            await asyncio.sleep(0.05)
        else:
            log.warning("shutdown_timeout (%gs) reached with open transactions", timeout)
        for rt in self.listeners:
            for client in list(rt.clients):
                client.fail(ShuttingDown("poolproxy is shutting down",
                                         hint="reconnect; another instance may be available"))
            rt.close_all(CloseReason.SHUTDOWN)
        for task in self._tasks:
            task.cancel()
        if self.admin is not None:
            self.admin.close()
        if self._control_server is not None:
            self._control_server.close()
        await asyncio.sleep(0.05)  # let transports flush their goodbyes
        log.info("poolproxy stopped")

    def _close_idle_clients(self) -> None:
        for rt in self.listeners:
            for client in list(rt.clients):
                if client.state in (ClientState.IDLE, ClientState.LOGIN) and client.server is None:
                    client.fail(ShuttingDown("poolproxy is shutting down",
                                             hint="reconnect; another instance may be available"))


def run(config: Config, worker: WorkerContext | None = None) -> int:
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        log.warning("uvloop not available; using the default asyncio loop")

    async def main() -> int:
        return await Daemon(config, worker=worker).run()

    try:
        return asyncio.run(main())
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
