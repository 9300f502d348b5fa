"""The PgBouncer-compatible admin console: SHOW HELP|POOLS|STATS|STATS_TOTALS|STATS_AVERAGES|
SERVERS|CLIENTS|DATABASES|CONFIG|VERSION|LISTS, RELOAD, PAUSE [db], RESUME [db], SHUTDOWN, over
PostgreSQL's simple query protocol.

Column names follow PgBouncer's, so pgbouncer_exporter and operators' habits carry over; pools of
both protocols are listed (a trailing `listener` column tells them apart).

SHOW STATS: the `total_*` columns are the live counters since the pool was created. The `avg_*`
columns are computed as PgBouncer's src/stats.c computes them: every stats period (PgBouncer's
`stats_period`, 60 s) `StatsPeriods.refresh` snapshots every pool's counters, keeping the last two
snapshots ("newer" and "older"); an average is (live counter - older snapshot) / (now - time of
the older snapshot), so it covers the last one to two stats periods. `avg_xact_count`,
`avg_query_count`, `avg_recv`, `avg_sent`, `avg_server_assignment_count` and the prepared
statement rates (`avg_client_parse_count`, `avg_server_parse_count`, `avg_bind_count`) are per
second; `avg_xact_time` and `avg_query_time` are microseconds per transaction / query in that
window, `avg_wait_time` microseconds per server assignment (PgBouncer >= 1.21; the columns and
their order are PgBouncer 1.23's). Before the first refresh the window starts
one second before the process did, as in PgBouncer (`stats_setup`).

Testing knob: the environment variable POOLPROXY_STATS_PERIOD (seconds, default 60) shortens the
stats period, so tests need not wait a minute. It is not a config key on purpose.

The console reaches the running process only through `Operations`, which `proxy.daemon.Daemon`
implements structurally (this module never imports the daemon).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .. import __version__
from ..config import Config, format_duration
from ..pool import ClientState, Clock, Pool, ServerState
from ..postgres import codec

if TYPE_CHECKING:
    from ..core.listener import ListenerRuntime
    from ..workers import WorkerContext

log = logging.getLogger("poolproxy.console")

TEXT, INT8, NUMERIC = 25, 20, 1700
ADMIN_DATABASES = frozenset(("poolproxy", "pgbouncer"))

#: PgBouncer's default stats_period (seconds).
DEFAULT_STATS_PERIOD = 60.0
STATS_PERIOD_ENV = "POOLPROXY_STATS_PERIOD"

#: SHOW HELP's text, laid out as PgBouncer's (a NOTICE "Console usage" with this as DETAIL).
HELP = ("\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|VERSION|LISTS"
        "\n\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES"
        "\n\tRELOAD"
        "\n\tPAUSE [<db>]"
        "\n\tRESUME [<db>]"
        "\n\tSHUTDOWN")


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


def _tls_text(conn: Any) -> str:
    """The ``tls`` column: ``TLSv1.3/TLS_AES_256_GCM_SHA384``, empty for plaintext."""
    info = getattr(conn, "tls", None)
    return "" if info is None else str(info)


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _notice(message: str, detail: str) -> bytes:
    """A NoticeResponse with a DETAIL field (what PgBouncer's SHOW HELP sends)."""
    fields = [b"S" + codec.cstr("NOTICE"), b"V" + codec.cstr("NOTICE"), b"C" + codec.cstr("00000"),
              b"M" + codec.cstr(message), b"D" + codec.cstr(detail)]
    return codec.message(b"N", b"".join(fields) + b"\x00")


# ---------------------------------------------------------------------- stats periods

#: Counters of one pool: transactions, queries, bytes received (client to server), bytes sent,
#: transaction time, query time (seconds), wait time (seconds), server assignments (times a
#: client got a server, waiting or not), prepared statements parsed by clients, prepared on
#: servers, and executions bound.
Counters = tuple[float, ...]
ZERO: Counters = (0, 0, 0, 0, 0.0, 0.0, 0.0, 0, 0, 0, 0)


def pool_counters(pool: Pool) -> Counters:
    st = pool.stats
    # poolproxy does not time single queries: like the total_query_time column has always
    # done, the query time is the time servers were held (the transaction time).
    return (st.transactions, st.queries, st.bytes_in, st.bytes_out, st.xact_time_total,
            st.xact_time_total, st.wait_time_total, st.wait_count, st.client_parses,
            st.server_parses, st.binds)


def stats_period_from_env() -> float:
    raw = os.environ.get(STATS_PERIOD_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_STATS_PERIOD
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %gs", STATS_PERIOD_ENV, raw,
                    DEFAULT_STATS_PERIOD)
        return DEFAULT_STATS_PERIOD
    return value if value > 0 else DEFAULT_STATS_PERIOD


def averages(cur: Sequence[float], old: Sequence[float], duration: float) -> list[int]:
    """PgBouncer's calc_average: rates per second over `duration` for the counts and bytes,
    microseconds per transaction / query / server assignment for the times. In SHOW STATS
    order: avg_server_assignment_count, avg_xact_count, avg_query_count, avg_recv, avg_sent,
    avg_xact_time, avg_query_time, avg_wait_time, avg_client_parse_count,
    avg_server_parse_count, avg_bind_count (all 0 when `duration` is not positive)."""
    if duration <= 0:
        return [0] * 11
    xacts, queries, rx, tx, xtime, qtime, wtime, assigned, cparse, sparse, binds = (
        max(0.0, c - o) for c, o in zip(cur, old, strict=True))
    return [int(assigned / duration), int(xacts / duration), int(queries / duration),
            int(rx / duration), int(tx / duration), _us(xtime / xacts) if xacts else 0,
            _us(qtime / queries) if queries else 0, _us(wtime / assigned) if assigned else 0,
            int(cparse / duration), int(sparse / duration), int(binds / duration)]


class StatsPeriods:
    """The last two stats-period snapshots of every pool's counters (PgBouncer's
    `newer_stats` / `older_stats` and `new_stamp` / `old_stamp`, rotated by `refresh_stats`).

    `run()` refreshes every `period` seconds; `refresh(now)` is what tests call with a fake
    clock. Only counters the pools already keep are read, never on the per-query path."""

    def __init__(self, pools: Callable[[], Iterable[Pool]], clock: Clock = time.monotonic,
                 period: float | None = None) -> None:
        self.pools = pools
        self.clock = clock
        self.period = period if period is not None else stats_period_from_env()
        now = clock()
        self.new_stamp = now
        self.old_stamp = now - 1.0  # as PgBouncer's stats_setup: never divide by ~0
        # id(pool) -> (pool, counters): the pool is kept to tell a reused id from its owner.
        self.newer: dict[int, tuple[Pool, Counters]] = {}
        self.older: dict[int, tuple[Pool, Counters]] = {}

    def refresh(self, now: float | None = None) -> None:
        self.old_stamp = self.new_stamp
        self.new_stamp = self.clock() if now is None else now
        self.older = self.newer
        self.newer = {id(p): (p, pool_counters(p)) for p in self.pools()}

    def older_of(self, pool: Pool) -> Counters:
        """`pool`'s counters at the older snapshot (zero for a pool created since then)."""
        entry = self.older.get(id(pool))
        return entry[1] if entry is not None and entry[0] is pool else ZERO

    def window(self, now: float | None = None) -> float:
        """The averages' window: from the older snapshot to now."""
        return (self.clock() if now is None else now) - self.old_stamp

    async def run(self) -> None:
        due = self.new_stamp
        while True:
            due += self.period
            await asyncio.sleep(max(0.0, due - self.clock()))
            try:
                self.refresh()
            except Exception:
                log.exception("stats refresh failed")
            due = max(due, self.new_stamp - self.period)  # a stalled loop does not catch up


class Operations(Protocol):
    """What the console needs of the running process (`proxy.daemon.Daemon` has all of it)."""

    @property
    def config(self) -> Config: ...

    @property
    def listeners(self) -> list[ListenerRuntime]: ...

    @property
    def worker(self) -> WorkerContext | None: ...

    @property
    def paused_databases(self) -> set[str]: ...

    @property
    def started(self) -> float:
        """When the process started (time.time())."""
        ...

    @property
    def stats_periods(self) -> StatsPeriods: ...

    def reload(self) -> bool: ...

    def request_stop(self) -> None: ...


class Console:
    """Executes console commands against the running process."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops

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
            if what == "HELP":
                return _notice("Console usage", HELP) + codec.command_complete("SHOW")
            handler: Callable[[], bytes] | None = {
                "POOLS": self.show_pools, "STATS": self.show_stats, "SERVERS": self.show_servers,
                "STATS_TOTALS": self.show_stats_totals,
                "STATS_AVERAGES": self.show_stats_averages,
                "CLIENTS": self.show_clients, "DATABASES": self.show_databases,
                "CONFIG": self.show_config, "VERSION": self.show_version,
                "LISTS": self.show_lists,
            }.get(what)
            if handler is None:
                raise ConsoleError(f"unknown SHOW command: {arg or '(none)'}; use SHOW HELP")
            return handler()
        worker = self.ops.worker
        if verb == "RELOAD":
            if worker is not None:
                # Every worker reloads: the supervisor checks the file and signals them all.
                from ..config import ConfigError, load_config
                try:
                    load_config(self.ops.config.source)
                except ConfigError as exc:
                    raise ConsoleError(f"RELOAD failed: the config file is invalid: {exc}; "
                                       "the running config is kept", "F0000") from None
                os.kill(os.getppid(), signal.SIGHUP)
            elif not self.ops.reload():
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
                self.ops.request_stop()
            return codec.command_complete("SHUTDOWN")
        raise ConsoleError(f"unknown command: {verb}; poolproxy's console supports SHOW, RELOAD, "
                           "PAUSE, RESUME, SHUTDOWN; use SHOW HELP")

    # ------------------------------------------------------------------ helpers
    def _pools(self, database: str | None = None) -> list[tuple[Any, Pool]]:
        out = []
        for rt in self.ops.listeners:
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

    # PgBouncer 1.23's columns, in its order.
    _TOTAL_COLS = ["server_assignment_count", "xact_count", "query_count", "received", "sent",
                   "xact_time", "query_time", "wait_time", "client_parse_count",
                   "server_parse_count", "bind_count"]
    _AVG_COLS = ["server_assignment_count", "xact_count", "query_count", "recv", "sent",
                 "xact_time", "query_time", "wait_time", "client_parse_count",
                 "server_parse_count", "bind_count"]
    _PLAIN_COLS = ["server_assignment_count", "xact_count", "query_count", "bytes_received",
                   "bytes_sent", "xact_time", "query_time", "wait_time", "client_parse_count",
                   "server_parse_count", "bind_count"]

    def _stats_rows(self) -> list[tuple[str, str, list[int], list[int]]]:
        """Per (database, listener): (database, listener, totals, averages), PgBouncer's
        figures (see the module doc); totals are microseconds for the times."""
        periods = self.ops.stats_periods
        now = periods.clock()
        per_db: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        for rt, pool in self._pools():
            cur, old = per_db.setdefault((pool.database, rt.name), ([0.0] * 11, [0.0] * 11))
            for i, (c, o) in enumerate(zip(pool_counters(pool), periods.older_of(pool),
                                           strict=True)):
                cur[i] += c
                old[i] += o
        window = periods.window(now)
        rows = []
        for (db, listener), (cur, old) in sorted(per_db.items()):
            xacts, queries, rx, tx, xtime, qtime, wtime, assigned, cparse, sparse, binds = cur
            totals = [int(assigned), int(xacts), int(queries), int(rx), int(tx), _us(xtime),
                      _us(qtime), _us(wtime), int(cparse), int(sparse), int(binds)]
            rows.append((db, listener, totals, averages(cur, old, window)))
        return rows

    def show_stats(self) -> bytes:
        cols = [("database", TEXT), *((f"total_{c}", INT8) for c in self._TOTAL_COLS),
                *((f"avg_{c}", INT8) for c in self._AVG_COLS), ("listener", TEXT)]
        rows = [[db, *totals, *avgs, listener]
                for db, listener, totals, avgs in self._stats_rows()]
        return _result(cols, rows, "SHOW")

    def show_stats_totals(self) -> bytes:
        cols = [("database", TEXT), *((c, INT8) for c in self._PLAIN_COLS), ("listener", TEXT)]
        rows = [[db, *totals, listener] for db, listener, totals, _avgs in self._stats_rows()]
        return _result(cols, rows, "SHOW")

    def show_stats_averages(self) -> bytes:
        cols = [("database", TEXT), *((c, INT8) for c in self._PLAIN_COLS), ("listener", TEXT)]
        rows = [[db, *avgs, listener] for db, listener, _totals, avgs in self._stats_rows()]
        return _result(cols, rows, "SHOW")

    _CONN_COLS = [("type", TEXT), ("user", TEXT), ("database", TEXT), ("state", TEXT),
                  ("addr", TEXT), ("port", INT8), ("local_addr", TEXT), ("local_port", INT8),
                  ("connect_time", TEXT), ("request_time", TEXT), ("wait", INT8),
                  ("wait_us", INT8), ("close_needed", INT8), ("ptr", TEXT), ("link", TEXT),
                  ("remote_pid", INT8), ("tls", TEXT), ("application_name", TEXT),
                  ("prepared_statements", INT8), ("listener", TEXT)]

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
                             pid, _tls_text(server), "", getattr(server, "prepared_count", int)(),
                             rt.name])
        return _result(self._CONN_COLS, rows, "SHOW")

    def show_clients(self) -> bytes:
        rows = []
        for rt in self.ops.listeners:
            for client in list(rt.clients):
                pool = client.pool
                state = {ClientState.ACTIVE: "active", ClientState.WAITING: "waiting",
                         ClientState.IDLE: "active", ClientState.LOGIN: "login"}.get(
                    client.state, "closed")
                addr, _, port = client.peer.rpartition(":")
                wait = (pool.clock() - client.wait_started) if (
                    pool is not None and client.state is ClientState.WAITING) else 0.0
                params = getattr(client, "params", {}) or {}
                rows.append(["C", client.user, pool.database if pool else getattr(client, "database", ""),
                             state,
                             addr, int(port) if port.isdigit() else 0, "", 0, "", "",
                             int(wait), _us(wait) % 1_000_000, 0, f"{id(client):x}",
                             f"{id(client.server):x}" if client.server else "",
                             client.key[0] if client.key else 0, _tls_text(client),
                             params.get("application_name", ""), client.prepared_count(),
                             rt.name])
        return _result(self._CONN_COLS, rows, "SHOW")

    def show_databases(self) -> bytes:
        cols = [("name", TEXT), ("host", TEXT), ("port", INT8), ("database", TEXT),
                ("force_user", TEXT), ("pool_size", INT8), ("min_pool_size", INT8),
                ("reserve_pool", INT8), ("pool_mode", TEXT), ("max_connections", INT8),
                ("current_connections", INT8), ("paused", INT8), ("disabled", INT8),
                ("listener", TEXT)]
        rows = []
        for rt in self.ops.listeners:
            cfg = rt.config
            for name, db in cfg.databases.items():
                settings = cfg.settings_for(db, None)
                current = sum(p.total for p in rt.pools.values()
                              if name == "*" or p.database == name)
                held = self.ops.paused_databases
                paused = "*" in held or name in held or any(
                    p.paused for p in rt.pools.values() if p.database == name)
                rows.append([name, cfg.server.host, cfg.server.port, db.dbname or name, "",
                             settings.pool_size, settings.min_pool_size,
                             settings.reserve_pool_size, settings.pool_mode,
                             settings.max_db_connections, current, int(paused), 0, rt.name])
        return _result(cols, rows, "SHOW")

    def show_config(self) -> bytes:
        from ..config import PoolSettings
        cols = [("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT)]
        cfg = self.ops.config
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
        rows = [["databases", sum(len(rt.config.databases) for rt in self.ops.listeners)],
                ["users", sum(len(rt.config.users) for rt in self.ops.listeners)],
                ["pools", len(pools)],
                ["used_clients", sum(len(rt.clients) for rt in self.ops.listeners)],
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
        self.ops.paused_databases.add(database or "*")
        for pool in pools:
            pool.paused = True
        while any(p.active or p.testing or p.opening for p in pools):
            await asyncio.sleep(0.05)
        log.info("paused %s", database or "all databases")
        return True

    def resume(self, database: str | None) -> None:
        self.ops.paused_databases.discard(database or "*")
        for _rt, pool in self._pools(database):
            pool.resume()
        log.info("resumed %s", database or "all databases")
