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

from . import __version__
from .pool import BUCKETS, ClientState, CloseReason, Pool

if TYPE_CHECKING:
    from .listener import ListenerRuntime

POOL_LABELS = ("listener", "database", "user")
CLIENT_STATES = ("active", "waiting", "idle")
SERVER_STATES = ("active", "idle", "login", "testing")
CLIENT_RESULTS = ("accepted", "auth_failed", "limit", "protocol_error")
_CLIENT_STATE_LABEL = {ClientState.ACTIVE: "active", ClientState.WAITING: "waiting",
                       ClientState.IDLE: "idle"}
#: Settings exported as gauges (poolproxy_<name>), per pool.
CONFIG_GAUGES = ("pool_size", "min_pool_size", "reserve_pool_size", "max_db_connections",
                 "server_idle_timeout", "server_lifetime", "query_wait_timeout")


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
        for pool in pools:
            labels = _pool_labels(pool)
            counts = client_states.get(id(pool), dict.fromkeys(CLIENT_STATES, 0))
            for state in CLIENT_STATES:
                clients.add_metric([*labels, state], counts[state])
            snap = pool.snapshot()
            for state in SERVER_STATES:
                servers.add_metric([*labels, state], snap["servers"].get(state, 0))
            waiting.add_metric(labels, snap["max_wait"])
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
        nbytes = CounterMetricFamily("poolproxy_bytes", "Bytes forwarded",
                                     labels=[*POOL_LABELS, "direction"])
        for pool in pools:
            labels = _pool_labels(pool)
            st = pool.stats
            _histogram(wait_h, labels, st.wait_hist, st.wait_time_total)
            _histogram(xact_h, labels, st.xact_hist, st.xact_time_total)
            xacts.add_metric(labels, st.transactions)
            queries.add_metric(labels, st.queries)
            opened.add_metric(labels, st.opened)
            for close_reason in CloseReason:
                closed.add_metric([*labels, close_reason.value],
                                  st.closed.get(close_reason.value, 0))
            nbytes.add_metric([*labels, "client_to_server"], st.bytes_in)
            nbytes.add_metric([*labels, "server_to_client"], st.bytes_out)
        yield from (wait_h, xact_h, xacts, queries, opened, closed, nbytes)

        conns = CounterMetricFamily("poolproxy_client_connections",
                                    "Client connection attempts by result",
                                    labels=["listener", "result"])
        pinned = GaugeMetricFamily("poolproxy_clients_pinned",
                                   "Clients held on one server outside a transaction, by reason",
                                   labels=["listener", "reason"])
        pins_total = CounterMetricFamily("poolproxy_client_pins",
                                         "Times a client was pinned, by reason",
                                         labels=["listener", "reason"])
        for rt in listeners:
            for result in CLIENT_RESULTS:
                conns.add_metric([rt.name, result], rt.client_results.get(result, 0))
            current: dict[str, int] = {}
            for client in rt.clients:
                reason = getattr(client, "pinned", None)
                if reason:
                    current[reason] = current.get(reason, 0) + 1
            for reason, n in sorted(current.items()):
                pinned.add_metric([rt.name, reason], n)
            for reason, n in sorted(rt.pins.items()):
                pins_total.add_metric([rt.name, reason], n)
        yield from (conns, pinned, pins_total)

        for name in CONFIG_GAUGES:
            gauge = GaugeMetricFamily(f"poolproxy_{name}", f"Configured {name} (effective value)",
                                      labels=list(POOL_LABELS))
            for pool in pools:
                value: Any = getattr(pool.settings, name)
                if self.effective is not None:
                    value = self.effective(pool).get(name, value)
                gauge.add_metric(_pool_labels(pool), float(value))
            yield gauge
