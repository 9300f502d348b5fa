"""The PgBouncer-compatible admin console: SHOW POOLS|STATS|SERVERS|CLIENTS|DATABASES|CONFIG|
VERSION, RELOAD, PAUSE [db], RESUME [db], SHUTDOWN, over PostgreSQL's simple query protocol.

Column names follow PgBouncer's, so pgbouncer_exporter and operators' habits carry over; pools of
both protocols are listed (a trailing `listener` column tells them apart).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import format_duration
from .pool import ClientState, Pool, ServerState
from .postgres import codec

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("poolproxy.console")

TEXT, INT8, NUMERIC = 25, 20, 1700
ADMIN_DATABASES = frozenset(("poolproxy", "pgbouncer"))


class ConsoleError(Exception):
    def __init__(self, message: str, sqlstate: str = "42601") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _result(columns: list[tuple[str, int]], rows: Iterable[Iterable[object]], tag: str) -> bytes:
    rows = list(rows)
    out = [codec.row_description(columns)]
    out.extend(codec.data_row(r) for r in rows)
    out.append(codec.command_complete(f"{tag} {len(rows)}" if tag == "SHOW" else tag))
    return b"".join(out)


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


class Console:
    """Executes console commands against the running daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.started = time.time()

    # ------------------------------------------------------------------ dispatch
    async def execute(self, sql: str) -> bytes:
        """Run one statement (several separated by ';' are run in turn); return the reply
        messages without the final ReadyForQuery."""
        out = []
        for stmt in (s.strip() for s in sql.split(";")):
            if stmt:
                out.append(await self._one(stmt))
        return b"".join(out) if out else codec.message(b"I")

    async def _one(self, stmt: str) -> bytes:
        words = stmt.split()
        verb = words[0].upper()
        arg = words[1] if len(words) > 1 else ""
        if verb == "SHOW":
            what = arg.upper()
            handler: Callable[[], bytes] | None = {
                "POOLS": self.show_pools, "STATS": self.show_stats, "SERVERS": self.show_servers,
                "CLIENTS": self.show_clients, "DATABASES": self.show_databases,
                "CONFIG": self.show_config, "VERSION": self.show_version,
                "LISTS": self.show_lists,
            }.get(what)
            if handler is None:
                raise ConsoleError(f"unknown SHOW command: {arg or '(none)'}; try SHOW POOLS, "
                                   "STATS, SERVERS, CLIENTS, DATABASES, CONFIG, VERSION")
            return handler()
        worker = self.daemon.worker
        if verb == "RELOAD":
            if worker is not None:
                # Every worker reloads: the supervisor checks the file and signals them all.
                from .config import ConfigError, load_config
                try:
                    load_config(self.daemon.config.source)
                except ConfigError as exc:
                    raise ConsoleError(f"RELOAD failed: the config file is invalid: {exc}; "
                                       "the running config is kept", "F0000") from None
                os.kill(os.getppid(), signal.SIGHUP)
            elif not self.daemon.reload():
                raise ConsoleError("RELOAD failed: the config file is invalid (see the log); "
                                   "the running config is kept", "F0000")
            return codec.command_complete("RELOAD")
        if verb == "PAUSE":
            found = await self.pause(arg or None, strict=worker is None)
            if worker is not None:
                found = self._all_workers(await worker.broadcast(f"pause {arg or '*'}"), found)
                if not found:
                    raise ConsoleError(f"no pool for database {arg!r}", "3D000")
            return codec.command_complete("PAUSE")
        if verb == "RESUME":
            self.resume(arg or None)
            if worker is not None:
                self._all_workers(await worker.broadcast(f"resume {arg or '*'}"), True)
            return codec.command_complete("RESUME")
        if verb == "SHUTDOWN":
            if worker is not None:
                os.kill(os.getppid(), signal.SIGTERM)  # the supervisor stops every worker
            else:
                self.daemon.request_stop()
            return codec.command_complete("SHUTDOWN")
        raise ConsoleError(f"unknown command: {verb}; poolproxy's console supports SHOW, RELOAD, "
                           "PAUSE, RESUME, SHUTDOWN")

    # ------------------------------------------------------------------ helpers
    def _pools(self, database: str | None = None) -> list[tuple[Any, Pool]]:
        out = []
        for rt in self.daemon.listeners:
            for pool in rt.pools.values():
                if database is None or pool.database == database:
                    out.append((rt, pool))
        return out

    # ------------------------------------------------------------------ SHOW
    def show_pools(self) -> bytes:
        cols = [("database", TEXT), ("user", TEXT), ("cl_active", INT8), ("cl_waiting", INT8),
                ("cl_active_cancel_req", INT8), ("cl_waiting_cancel_req", INT8),
                ("sv_active", INT8), ("sv_active_cancel", INT8), ("sv_being_canceled", INT8),
                ("sv_idle", INT8), ("sv_used", INT8), ("sv_tested", INT8), ("sv_login", INT8),
                ("maxwait", INT8), ("maxwait_us", INT8), ("pool_mode", TEXT), ("listener", TEXT)]
        rows = []
        for rt, pool in self._pools():
            active = waiting = 0
            for client in rt.clients:
                if client.pool is pool:
                    if client.state is ClientState.WAITING:
                        waiting += 1
                    elif client.state in (ClientState.ACTIVE, ClientState.IDLE):
                        active += 1
            wait = (pool.clock() - pool.waiters[0].wait_started) if pool.waiters else 0.0
            cancelling = sum(1 for s in pool.active if getattr(s, "cancels_in_flight", 0))
            rows.append([pool.database, pool.user, active, waiting, 0, 0, len(pool.active),
                         cancelling, 0, len(pool.idle), 0, len(pool.testing), pool.opening,
                         int(wait), _us(wait) % 1_000_000, pool.settings.pool_mode, rt.name])
        return _result(cols, rows, "SHOW")

    def show_stats(self) -> bytes:
        cols = [("database", TEXT), ("total_xact_count", INT8), ("total_query_count", INT8),
                ("total_received", INT8), ("total_sent", INT8), ("total_xact_time", INT8),
                ("total_query_time", INT8), ("total_wait_time", INT8), ("avg_xact_count", INT8),
                ("avg_query_count", INT8), ("avg_recv", INT8), ("avg_sent", INT8),
                ("avg_xact_time", INT8), ("avg_query_time", INT8), ("avg_wait_time", INT8),
                ("listener", TEXT)]
        per_db: dict[tuple[str, str], list[float]] = {}
        for rt, pool in self._pools():
            st = pool.stats
            acc = per_db.setdefault((pool.database, rt.name), [0.0] * 7)
            for i, v in enumerate((st.transactions, st.queries, st.bytes_in, st.bytes_out,
                                   st.xact_time_total, st.xact_time_total, st.wait_time_total)):
                acc[i] += v
        uptime = max(time.time() - self.started, 1e-9)
        rows = []
        for (db, listener), (xacts, queries, rx, tx, xtime, qtime, wtime) in sorted(
                per_db.items()):
            rows.append([db, int(xacts), int(queries), int(rx), int(tx), _us(xtime), _us(qtime),
                         _us(wtime), int(xacts / uptime), int(queries / uptime), int(rx / uptime),
                         int(tx / uptime), _us(xtime / xacts) if xacts else 0,
                         _us(qtime / queries) if queries else 0,
                         _us(wtime / xacts) if xacts else 0, listener])
        return _result(cols, rows, "SHOW")

    _CONN_COLS = [("type", TEXT), ("user", TEXT), ("database", TEXT), ("state", TEXT),
                  ("addr", TEXT), ("port", INT8), ("local_addr", TEXT), ("local_port", INT8),
                  ("connect_time", TEXT), ("request_time", TEXT), ("wait", INT8),
                  ("wait_us", INT8), ("close_needed", INT8), ("ptr", TEXT), ("link", TEXT),
                  ("remote_pid", INT8), ("tls", TEXT), ("application_name", TEXT),
                  ("listener", TEXT)]

    def show_servers(self) -> bytes:
        rows = []
        for rt, pool in self._pools():
            servers = [*pool.active, *pool.idle, *pool.testing]
            for server in servers:
                state = {ServerState.ACTIVE: "active", ServerState.IDLE: "idle",
                         ServerState.TESTING: "tested", ServerState.LOGIN: "login"}.get(
                    server.state, "closed")
                client = getattr(server, "client", None)
                pid = getattr(server, "key", (getattr(server, "thread_id", 0), 0))[0]
                rows.append(["S", pool.user, pool.database, state, rt.config.server.host,
                             rt.config.server.port, "", 0, "", "", 0, 0, 0,
                             f"{id(server):x}", f"{id(client):x}" if client else "",
                             pid, "", "", rt.name])
        return _result(self._CONN_COLS, rows, "SHOW")

    def show_clients(self) -> bytes:
        rows = []
        for rt in self.daemon.listeners:
            for client in list(rt.clients):
                pool = client.pool
                state = {ClientState.ACTIVE: "active", ClientState.WAITING: "waiting",
                         ClientState.IDLE: "active", ClientState.LOGIN: "login"}.get(
                    client.state, "closed")
                addr, _, port = client.peer.rpartition(":")
                wait = (pool.clock() - client.wait_started) if (
                    pool is not None and client.state is ClientState.WAITING) else 0.0
                params = getattr(client, "params", {}) or {}
                rows.append(["C", client.user, pool.database if pool else client.database, state,
                             addr, int(port) if port.isdigit() else 0, "", 0, "", "",
                             int(wait), _us(wait) % 1_000_000, 0, f"{id(client):x}",
                             f"{id(client.server):x}" if client.server else "",
                             client.key[0] if client.key else 0, "",
                             params.get("application_name", ""), rt.name])
        return _result(self._CONN_COLS, rows, "SHOW")

    def show_databases(self) -> bytes:
        cols = [("name", TEXT), ("host", TEXT), ("port", INT8), ("database", TEXT),
                ("force_user", TEXT), ("pool_size", INT8), ("min_pool_size", INT8),
                ("reserve_pool", INT8), ("pool_mode", TEXT), ("max_connections", INT8),
                ("current_connections", INT8), ("paused", INT8), ("disabled", INT8),
                ("listener", TEXT)]
        rows = []
        for rt in self.daemon.listeners:
            cfg = rt.config
            for name, db in cfg.databases.items():
                settings = cfg.settings_for(db, None)
                current = sum(p.total for p in rt.pools.values()
                              if name == "*" or p.database == name)
                held = self.daemon.paused_databases
                paused = "*" in held or name in held or any(
                    p.paused for p in rt.pools.values() if p.database == name)
                rows.append([name, cfg.server.host, cfg.server.port, db.dbname or name, "",
                             settings.pool_size, settings.min_pool_size,
                             settings.reserve_pool_size, settings.pool_mode,
                             settings.max_db_connections, current, int(paused), 0, rt.name])
        return _result(cols, rows, "SHOW")

    def show_config(self) -> bytes:
        from .config import PoolSettings
        cols = [("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT)]
        cfg = self.daemon.config
        default = PoolSettings()
        rows = []
        for name in PoolSettings.__dataclass_fields__:
            value = getattr(cfg.defaults, name)
            dflt = getattr(default, name)
            fmt = (format_duration if isinstance(value, float) and name not in (
                "server_lifetime_jitter",) else str)
            rows.append([name, fmt(value), fmt(dflt), "yes"])
        admin = cfg.admin
        rows.append(["admin.listen", f"{admin.listen_host}:{admin.listen_port}"
                     if admin.listen_host else "", "127.0.0.1:9127", "no"])
        rows.append(["admin_users", ",".join(admin.admin_users), "", "yes"])
        rows.append(["logging.level", cfg.logging.level, "info", "no"])
        return _result(cols, rows, "SHOW")

    def show_version(self) -> bytes:
        return _result([("version", TEXT)], [[f"poolproxy {__version__}"]], "SHOW")

    def show_lists(self) -> bytes:
        pools = self._pools()
        rows = [["databases", sum(len(rt.config.databases) for rt in self.daemon.listeners)],
                ["users", sum(len(rt.config.users) for rt in self.daemon.listeners)],
                ["pools", len(pools)],
                ["used_clients", sum(len(rt.clients) for rt in self.daemon.listeners)],
                ["used_servers", sum(p.total for _rt, p in pools)]]
        return _result([("list", TEXT), ("items", INT8)], rows, "SHOW")

    # ------------------------------------------------------------------ PAUSE / RESUME
    @staticmethod
    def _all_workers(answers: list[str], found: bool) -> bool:
        """The other workers' answers to a broadcast PAUSE/RESUME: raise if one failed;
        whether any worker (or this one: `found`) has a pool for the database."""
        errors = [a for a in answers if a.startswith("error")]
        if errors:
            raise ConsoleError(f"not every worker did it: {'; '.join(errors)}", "58000")
        return found or any(a == "ok" for a in answers)

    async def pause(self, database: str | None, strict: bool = True) -> bool:
        """Hold new transactions, wait for running ones to finish (database maintenance).
        Returns whether there was a pool for `database`; raises if not and `strict`."""
        pools = [p for _rt, p in self._pools(database)]
        if database is not None and not pools:
            if strict:
                raise ConsoleError(f"no pool for database {database!r}", "3D000")
            return False
        self.daemon.paused_databases.add(database or "*")
        for pool in pools:
            pool.paused = True
        while any(p.active or p.testing or p.opening for p in pools):
            await asyncio.sleep(0.05)
        log.info("paused %s", database or "all databases")
        return True

    def resume(self, database: str | None) -> None:
        self.daemon.paused_databases.discard(database or "*")
        for _rt, pool in self._pools(database):
            pool.resume()
        log.info("resumed %s", database or "all databases")
