"""Every poolproxy metric, defined once; a collector reads pool state and counters at scrape time.

Nothing here runs on the hot path: sessions bump plain integers in PoolStats / ListenerRuntime,
and `PoolproxyCollector.collect()` turns them into Prometheus families when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import __version__
from ..core.reasons import ClientResult, DisconnectReason
from ..pool import BUCKETS, CLOSE_CATEGORIES, ClientState, CloseReason, Pool

if TYPE_CHECKING:
    from ..core.listener import ListenerRuntime

POOL_LABELS = ("listener", "database", "user")
TLS_RESULTS = ("ok", "failed", "refused")
CLIENT_STATES = ("active", "waiting", "idle")
SERVER_STATES = ("active", "idle", "login", "testing")
CLIENT_RESULTS = tuple(result.value for result in ClientResult)
DISCONNECT_REASONS = tuple(reason.value for reason in DisconnectReason)
CLOSE_CAUSES = tuple(reason.value for reason in CloseReason)
_CLIENT_STATE_LABEL = {ClientState.ACTIVE: "active", ClientState.WAITING: "waiting",
                       ClientState.IDLE: "idle"}
#: Settings exported as gauges (poolproxy_<name>), per pool: limits, then durations.
CONFIG_DURATIONS = ("server_idle_timeout", "server_lifetime", "query_wait_timeout")
CONFIG_GAUGES = ("pool_size", "min_pool_size", "reserve_pool_size", "max_db_connections",
                 *CONFIG_DURATIONS)
#: Families that do not add up over worker processes (counts and limits do): the build, the
#: oldest wait and configured durations take the largest value.
NON_ADDITIVE = frozenset(("poolproxy_build_info", "poolproxy_max_wait_seconds",
                          *(f"poolproxy_{name}" for name in CONFIG_DURATIONS)))


def _pool_labels(pool: Pool) -> list[str]:
    return [pool.listener, pool.database, pool.user]


def _histogram(family: HistogramMetricFamily, labels: list[str], counts: list[int],
               total: float) -> None:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(BUCKETS, counts, strict=False):
        running += count
        buckets.append((repr(bound), running))
    running += counts[-1]
    buckets.append(("+Inf", running))
    family.add_metric(labels, buckets, total)


def _sum_buckets(hists: Iterable[list[int]]) -> list[int]:
    total = [0] * (len(BUCKETS) + 1)
    for hist in hists:
        for i, n in enumerate(hist):
            total[i] += n
    return total


def pool_client_states(listeners: Iterable[ListenerRuntime]) -> dict[int, dict[str, int]]:
    """Clients per pool (keyed by id(pool)) and state."""
    out: dict[int, dict[str, int]] = {}
    for rt in listeners:
        for client in rt.clients:
            pool = client.pool
            label = _CLIENT_STATE_LABEL.get(client.state)
            if pool is None or label is None:
                continue
            counts = out.setdefault(id(pool), dict.fromkeys(CLIENT_STATES, 0))
            counts[label] += 1
    return out


class PoolproxyCollector(Collector):
    def __init__(self, listeners: Callable[[], list[ListenerRuntime]],
                 effective: Callable[[Pool], dict[str, float]] | None = None) -> None:
        self.listeners = listeners
        self.effective = effective

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        listeners = self.listeners()
        pools = [p for rt in listeners for p in rt.pools.values()]
        client_states = pool_client_states(listeners)

        info = GaugeMetricFamily("poolproxy_build_info", "poolproxy version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        clients = GaugeMetricFamily("poolproxy_clients", "Client connections by state",
                                    labels=[*POOL_LABELS, "state"])
        servers = GaugeMetricFamily("poolproxy_servers", "Server connections by state",
                                    labels=[*POOL_LABELS, "state"])
        waiting = GaugeMetricFamily("poolproxy_max_wait_seconds",
                                    "Age of the oldest client waiting for a server",
                                    labels=list(POOL_LABELS))
        # MySQL splits a (database, user) pool by client capabilities; metrics label only by
        # (listener, database, user), so such variants are summed into one series.
        groups: dict[tuple[str, ...], list[Pool]] = {}
        for pool in pools:
            groups.setdefault(tuple(_pool_labels(pool)), []).append(pool)
        for key, group in groups.items():
            labels = list(key)
            ccount = dict.fromkeys(CLIENT_STATES, 0)
            scount = dict.fromkeys(SERVER_STATES, 0)
            max_wait = 0.0
            for pool in group:
                for state, n in client_states.get(id(pool), {}).items():
                    ccount[state] += n
                snap = pool.snapshot()
                for state in SERVER_STATES:
                    scount[state] += snap["servers"].get(state, 0)
                max_wait = max(max_wait, snap["max_wait"])
            for state in CLIENT_STATES:
                clients.add_metric([*labels, state], ccount[state])
            for state in SERVER_STATES:
                servers.add_metric([*labels, state], scount[state])
            waiting.add_metric(labels, max_wait)
        yield clients
        yield servers
        yield waiting

        wait_h = HistogramMetricFamily("poolproxy_client_wait_seconds",
                                       "Time from wanting a server to getting one",
                                       labels=list(POOL_LABELS))
        xact_h = HistogramMetricFamily("poolproxy_transaction_duration_seconds",
                                       "Time a client held a server (one transaction)",
                                       labels=list(POOL_LABELS))
        xacts = CounterMetricFamily("poolproxy_transactions", "Transactions completed",
                                    labels=list(POOL_LABELS))
        queries = CounterMetricFamily("poolproxy_queries", "Queries (responses) completed",
                                      labels=list(POOL_LABELS))
        opened = CounterMetricFamily("poolproxy_server_connections_opened",
                                     "Server connections opened", labels=list(POOL_LABELS))
        closed = CounterMetricFamily("poolproxy_server_connections_closed",
                                     "Server connections closed, by reason",
                                     labels=[*POOL_LABELS, "reason"])
        causes = CounterMetricFamily("poolproxy_server_close_causes",
                                     "Server connections closed, by precise cause",
                                     labels=[*POOL_LABELS, "cause"])
        nbytes = CounterMetricFamily("poolproxy_bytes", "Bytes forwarded",
                                     labels=[*POOL_LABELS, "direction"])
        prepares = CounterMetricFamily(
            "poolproxy_prepared_statements",
            "Prepared statements: prepared by clients, and prepared on servers by poolproxy",
            labels=[*POOL_LABELS, "side"])
        binds = CounterMetricFamily("poolproxy_prepared_statement_executions",
                                    "Executions of prepared statements (Bind / COM_STMT_EXECUTE)",
                                    labels=list(POOL_LABELS))
        cached = GaugeMetricFamily("poolproxy_prepared_statements_cached",
                                   "Prepared statements held on the pool's server connections",
                                   labels=list(POOL_LABELS))
        distinct = GaugeMetricFamily("poolproxy_prepared_statements_distinct",
                                     "Distinct prepared statements the pool's clients use",
                                     labels=list(POOL_LABELS))
        for key, group in groups.items():
            labels = list(key)
            stats = [p.stats for p in group]
            _histogram(wait_h, labels, _sum_buckets(st.wait_hist for st in stats),
                       sum(st.wait_time_total for st in stats))
            _histogram(xact_h, labels, _sum_buckets(st.xact_hist for st in stats),
                       sum(st.xact_time_total for st in stats))
            xacts.add_metric(labels, sum(st.transactions for st in stats))
            queries.add_metric(labels, sum(st.queries for st in stats))
            opened.add_metric(labels, sum(st.opened for st in stats))
            by_category = dict.fromkeys(CLOSE_CATEGORIES, 0)
            for close_reason in CloseReason:
                n = sum(st.closed.get(close_reason.value, 0) for st in stats)
                by_category[close_reason.category] += n
                causes.add_metric([*labels, close_reason.value], n)
            for category, n in by_category.items():
                closed.add_metric([*labels, category], n)
            nbytes.add_metric([*labels, "client_to_server"], sum(st.bytes_in for st in stats))
            nbytes.add_metric([*labels, "server_to_client"], sum(st.bytes_out for st in stats))
            prepares.add_metric([*labels, "client"], sum(st.client_parses for st in stats))
            prepares.add_metric([*labels, "server"], sum(st.server_parses for st in stats))
            binds.add_metric(labels, sum(st.binds for st in stats))
            held = [p.protocol_state.counts() for p in group if p.protocol_state is not None]
            cached.add_metric(labels, sum(h[1] for h in held))
            distinct.add_metric(labels, sum(h[0] for h in held))
        yield from (wait_h, xact_h, xacts, queries, opened, closed, causes, nbytes, prepares,
                    binds, cached, distinct)

        conns = CounterMetricFamily("poolproxy_client_connections",
                                    "Client connection attempts by result",
                                    labels=["listener", "result"])
        pinned = GaugeMetricFamily("poolproxy_clients_pinned",
                                   "Clients held on one server outside a transaction, by reason",
                                   labels=["listener", "reason"])
        pins_total = CounterMetricFamily("poolproxy_client_pins",
                                         "Times a client was pinned, by reason",
                                         labels=["listener", "reason"])
        gone = CounterMetricFamily("poolproxy_client_disconnects",
                                   "Client connections ended, by reason",
                                   labels=["listener", "reason"])
        handshakes = CounterMetricFamily(
            "poolproxy_tls_handshakes", "TLS handshakes with clients and servers, by result",
            labels=["listener", "side", "result"])
        for rt in listeners:
            for side in ("client", "server"):
                for result in TLS_RESULTS:
                    handshakes.add_metric([rt.name, side, result],
                                          rt.tls_handshakes.get((side, result), 0))
            for result in CLIENT_RESULTS:
                conns.add_metric([rt.name, result], rt.client_results.get(result, 0))
            for reason in DISCONNECT_REASONS:
                gone.add_metric([rt.name, reason], rt.disconnects.get(reason, 0))
            current: dict[str, int] = {}
            for client in rt.clients:
                pin = client.pinned
                if pin is not None:
                    current[str(pin)] = current.get(str(pin), 0) + 1
            for reason, n in sorted(current.items()):
                pinned.add_metric([rt.name, reason], n)
            for reason, n in sorted(rt.pins.items()):
                pins_total.add_metric([rt.name, reason], n)
        yield from (conns, pinned, pins_total, gone, handshakes)

        for name in CONFIG_GAUGES:
            gauge = GaugeMetricFamily(f"poolproxy_{name}", f"Configured {name} (effective value)",
                                      labels=list(POOL_LABELS))
            for key, group in groups.items():
                pool = group[0]
                value: Any = getattr(pool.settings, name)
                if self.effective is not None:
                    value = self.effective(pool).get(name, value)
                gauge.add_metric(list(key), float(value))
            yield gauge
