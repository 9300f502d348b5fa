"""The admin HTTP status page (`GET /`) and its data (`GET /status.json`).

What an operator opens first: per pool, clients and servers by state, waiting clients and the
longest wait, transactions and queries per second, pinned clients by reason, server connections
opened and closed by reason, and a chart of the last minutes.

- `StatusHistory` samples every pool's counters every `SAMPLE_INTERVAL` seconds into a ring
  buffer of `HISTORY_SECONDS`, so the page shows history as soon as it loads. Rates are counter
  differences between samples: only counters the pools already keep (`Pool.stats`,
  `ListenerRuntime` counters) are read, at sampling or request time, never on the per-query
  path. Samples fall on wall-clock multiples of the interval, so with `workers: N` the
  supervisor can add the workers' samples of the same instant (`merge_status`).
- `StatusHistory.status()` is the JSON document of one process; `merge_status()` sums the
  workers' documents (the oldest wait takes the maximum), as /metrics and /pools do.
- `PAGE` is the page: one HTML document with its CSS and script inline (no external assets, no
  build step; charts are inline SVG drawn by hand). It fetches `status.json` every second and
  redraws in place, without reloading.

Pools are shown per (listener, database, user); MySQL's per-capability variants of a pool are
summed, as in /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import __version__
from ..pool import Pool
from .metrics import CLIENT_RESULTS, CLIENT_STATES, SERVER_STATES, pool_client_states

if TYPE_CHECKING:
    from ..core.listener import ListenerRuntime
    from .console import Operations

log = logging.getLogger("poolproxy.status")

#: Seconds between two samples of the pools' counters.
SAMPLE_INTERVAL = 2.0
#: How much history the proxy keeps (and the page charts).
HISTORY_SECONDS = 300.0
#: The page polls status.json this often (milliseconds).
POLL_MS = 1000

PoolKey = tuple[str, str, str]


class Sample(NamedTuple):
    """One pool (all its variants) at one sampling instant."""

    t: float  # wall clock, a multiple of the interval
    mono: float  # monotonic clock, for the rates
    xacts: int
    queries: int
    xact_time: float
    tps: float  # rates over the interval that ends here
    qps: float
    waiting: int
    max_wait: float
    clients: int
    servers: int  # active server connections


def _group(listeners: Iterable[ListenerRuntime]) -> dict[PoolKey, list[Pool]]:
    groups: dict[PoolKey, list[Pool]] = {}
    for rt in listeners:
        for pool in rt.pools.values():
            groups.setdefault((pool.listener, pool.database, pool.user), []).append(pool)
    return groups


def _max_wait(pools: Iterable[Pool]) -> float:
    return max((p.clock() - p.waiters[0].wait_started for p in pools if p.waiters), default=0.0)


def _r(value: float, digits: int = 2) -> float:
    return round(value, digits)


class StatusHistory:
    """The in-memory history behind the status page, and its JSON document."""

    def __init__(self, ops: Operations, interval: float = SAMPLE_INTERVAL,
                 keep: float = HISTORY_SECONDS, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ops = ops
        self.interval = interval
        self.keep = keep
        self.wall = wall
        self.clock = clock
        self.samples: dict[PoolKey, deque[Sample]] = {}
        self.last_mono: float | None = None
        self.last_t: float | None = None
        #: When a pool was first seen: the last sample before it existed (its counters were
        #: zero then), or when this history started.
        self.born: dict[PoolKey, float] = {}
        self.start_mono = clock()

    # ------------------------------------------------------------------ sampling
    def sample(self, wall: float | None = None, mono: float | None = None) -> None:
        """Record one sample of every pool (`run()` calls it every interval)."""
        wall = self.wall() if wall is None else wall
        mono = self.clock() if mono is None else mono
        t = round(wall / self.interval) * self.interval
        if t == self.last_t:
            return  # this instant is sampled already
        self.last_t = t
        size = int(self.keep / self.interval) + 1
        for key, group in _group(self.ops.listeners).items():
            xacts = sum(p.stats.transactions for p in group)
            queries = sum(p.stats.queries for p in group)
            history = self.samples.get(key)
            if history is None:
                history = self.samples[key] = deque(maxlen=size)
                self.born[key] = self.last_mono if self.last_mono is not None else self.start_mono
            prev = history[-1] if history else None
            # A pool new since the last sample counted everything it has since then.
            since = prev.mono if prev is not None else self.last_mono
            dt = mono - since if since is not None else 0.0
            tps = qps = 0.0
            if dt > 0:
                tps = max(0, xacts - (prev.xacts if prev else 0)) / dt
                qps = max(0, queries - (prev.queries if prev else 0)) / dt
            history.append(Sample(
                t, mono, xacts, queries, sum(p.stats.xact_time_total for p in group), tps, qps,
                sum(len(p.waiters) for p in group), _max_wait(group),
                sum(p.clients for p in group), sum(len(p.active) for p in group)))
        for key in [k for k, h in self.samples.items() if h and mono - h[-1].mono > self.keep]:
            del self.samples[key]  # a pool gone for longer than the history
            self.born.pop(key, None)
        self.last_mono = mono

    async def run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:
                log.exception("status sample failed")
            # Sleep to the next wall-clock multiple, so every worker samples the same instants;
            # "next" is counted from the instant just sampled, as a timer may fire a little
            # before the multiple it was set for.
            now = self.wall()
            due = (round(now / self.interval) + 1) * self.interval
            await asyncio.sleep(max(0.1 * self.interval, due - now))

    # ------------------------------------------------------------------ the document
    def status(self) -> dict[str, Any]:
        """This process's status document (what /status.json serves)."""
        ops = self.ops
        wall, mono = self.wall(), self.clock()
        listeners = ops.listeners
        client_states = pool_client_states(listeners)
        pinned_by_pool: dict[int, dict[str, int]] = {}
        out_listeners = []
        for rt in listeners:
            pinned: dict[str, int] = {}
            for client in rt.clients:
                reason = getattr(client, "pinned", None)
                if reason:
                    pinned[reason] = pinned.get(reason, 0) + 1
                    if client.pool is not None:
                        by_pool = pinned_by_pool.setdefault(id(client.pool), {})
                        by_pool[reason] = by_pool.get(reason, 0) + 1
            cfg = rt.config
            out_listeners.append({
                "name": rt.name, "protocol": cfg.protocol, "listen": cfg.listen_address,
                "server": str(cfg.server), "clients": len(rt.clients),
                "results": {r: rt.client_results.get(r, 0) for r in CLIENT_RESULTS},
                "pins": dict(sorted(rt.pins.items())), "pinned": dict(sorted(pinned.items())),
                "draining": rt.draining,
            })
        pools = []
        protocols = {rt.name: rt.config.protocol for rt in listeners}
        for key, group in sorted(_group(listeners).items()):
            clients = dict.fromkeys(CLIENT_STATES, 0)
            servers = dict.fromkeys(SERVER_STATES, 0)
            closed: dict[str, int] = {}
            pinned = {}
            for pool in group:
                for state, n in client_states.get(id(pool), {}).items():
                    clients[state] += n
                servers["active"] += len(pool.active)
                servers["idle"] += len(pool.idle)
                servers["login"] += pool.opening
                servers["testing"] += len(pool.testing)
                for reason, n in pool.stats.closed.items():
                    closed[reason] = closed.get(reason, 0) + n
                for reason, n in pinned_by_pool.get(id(pool), {}).items():
                    pinned[reason] = pinned.get(reason, 0) + n
            stats = [p.stats for p in group]
            xacts = sum(st.transactions for st in stats)
            queries = sum(st.queries for st in stats)
            xact_time = sum(st.xact_time_total for st in stats)
            history = self.samples.get(key) or deque()
            # Rates: from the last-but-one sample to now (2 to 4 s with 2 s samples); a pool
            # with fewer samples counted from zero since it appeared.
            if len(history) >= 2:
                ref_mono, ref_x, ref_q, ref_t = (history[-2].mono, history[-2].xacts,
                                                 history[-2].queries, history[-2].xact_time)
            else:
                since = self.born.get(key, self.last_mono)
                ref_mono, ref_x, ref_q, ref_t = (
                    since if since is not None else self.start_mono), 0, 0, 0.0
            dt = max(mono - ref_mono, 1.0)
            dx = max(0, xacts - ref_x)
            tps, qps = dx / dt, max(0, queries - ref_q) / dt
            avg_xact = max(0.0, xact_time - ref_t) / dx if dx else 0.0
            first = group[0]
            pools.append({
                "listener": key[0], "database": key[1], "user": key[2],
                "protocol": protocols.get(key[0], ""), "pool_mode": first.settings.pool_mode,
                "pool_size": sum(p.settings.pool_size for p in group),
                "paused": any(p.paused for p in group),
                "clients": clients, "servers": servers, "max_wait": _r(_max_wait(group), 3),
                "tps": _r(tps), "qps": _r(qps), "avg_xact_ms": _r(avg_xact * 1000, 3),
                "transactions": xacts, "queries": queries,
                "bytes_in": sum(st.bytes_in for st in stats),
                "bytes_out": sum(st.bytes_out for st in stats),
                "opened": sum(st.opened for st in stats), "closed": dict(sorted(closed.items())),
                "pinned": dict(sorted(pinned.items())),
                "history": {
                    "t": [s.t for s in history], "tps": [_r(s.tps) for s in history],
                    "qps": [_r(s.qps) for s in history], "waiting": [s.waiting for s in history],
                    "max_wait": [_r(s.max_wait, 3) for s in history],
                    "clients": [s.clients for s in history],
                    "servers": [s.servers for s in history],
                },
            })
        worker = ops.worker
        return {
            "version": __version__, "now": _r(wall, 3), "started": _r(ops.started, 3),
            "uptime": _r(wall - ops.started, 1), "pid": os.getpid(),
            "worker": worker.index if worker is not None else None,
            "workers": worker.count if worker is not None else 1,
            "sample_interval": self.interval, "history_seconds": self.keep,
            "listeners": out_listeners, "pools": pools,
        }


# ---------------------------------------------------------------------- over workers

_HISTORY_SUMS = ("tps", "qps", "waiting", "clients", "servers")


def _add(into: dict[str, int], other: dict[str, int]) -> None:
    for name, n in other.items():
        into[name] = into.get(name, 0) + n


def merge_status(docs: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    """One status document from the workers' ones: counts and rates are summed, the oldest
    wait takes the maximum, history samples of the same instant are added up."""
    if not docs:
        return {"version": __version__, "now": _r(time.time(), 3), "started": None,
                "uptime": 0, "pid": os.getpid(), "worker": None, "workers": workers,
                "answered": 0, "sample_interval": SAMPLE_INTERVAL,
                "history_seconds": HISTORY_SECONDS, "listeners": [], "pools": [],
                "error": "no worker answered"}
    now = max(d["now"] for d in docs)
    started = min(d["started"] for d in docs)
    listeners: dict[str, dict[str, Any]] = {}
    pools: dict[tuple[str, str, str], dict[str, Any]] = {}
    histories: dict[tuple[str, str, str], dict[float, dict[str, float]]] = {}
    for doc in docs:
        for lst in doc["listeners"]:
            into = listeners.get(lst["name"])
            if into is None:
                listeners[lst["name"]] = {**lst, "results": dict(lst["results"]),
                                          "pins": dict(lst["pins"]),
                                          "pinned": dict(lst["pinned"])}
                continue
            into["clients"] += lst["clients"]
            into["draining"] = into["draining"] or lst["draining"]
            for name in ("results", "pins", "pinned"):
                _add(into[name], lst[name])
        for pool in doc["pools"]:
            key = (pool["listener"], pool["database"], pool["user"])
            hist = histories.setdefault(key, {})
            h = pool["history"]
            for i, t in enumerate(h["t"]):
                point = hist.setdefault(t, {"max_wait": 0.0})
                for name in _HISTORY_SUMS:
                    point[name] = point.get(name, 0) + h[name][i]
                point["max_wait"] = max(point["max_wait"], h["max_wait"][i])
            into = pools.get(key)
            if into is None:
                pools[key] = {**pool, "clients": dict(pool["clients"]),
                              "servers": dict(pool["servers"]), "closed": dict(pool["closed"]),
                              "pinned": dict(pool["pinned"]),
                              "_xact_ms": pool["avg_xact_ms"] * pool["tps"]}
                continue
            for name in ("pool_size", "tps", "qps", "transactions", "queries", "bytes_in",
                         "bytes_out", "opened"):
                into[name] += pool[name]
            into["paused"] = into["paused"] or pool["paused"]
            into["max_wait"] = max(into["max_wait"], pool["max_wait"])
            into["_xact_ms"] += pool["avg_xact_ms"] * pool["tps"]
            for name in ("clients", "servers", "closed", "pinned"):
                _add(into[name], pool[name])
    out_pools = []
    for key in sorted(pools):
        pool = pools[key]
        weighted = pool.pop("_xact_ms")
        if pool["tps"] > 0:
            pool["avg_xact_ms"] = _r(weighted / pool["tps"], 3)
        pool["tps"], pool["qps"] = _r(pool["tps"]), _r(pool["qps"])
        points = sorted(histories[key].items())
        pool["history"] = {"t": [t for t, _ in points],
                           **{name: [_r(p.get(name, 0)) for _, p in points]
                              for name in (*_HISTORY_SUMS, "max_wait")}}
        out_pools.append(pool)
    return {
        "version": docs[0]["version"], "now": now, "started": started,
        "uptime": _r(now - started, 1), "pid": os.getpid(), "worker": None, "workers": workers,
        "answered": len(docs), "sample_interval": docs[0]["sample_interval"],
        "history_seconds": docs[0]["history_seconds"],
        "listeners": [listeners[name] for name in sorted(listeners)], "pools": out_pools,
    }


# ---------------------------------------------------------------------- the page

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>poolproxy status</title>
<link rel="icon" href="data:,">
<style>
:root {
  --bg: #eef1f5; --card: #ffffff; --ink: #17202c; --muted: #5f6b7a; --line: #dde2e9;
  --blue: #2563eb; --blue-soft: rgba(37, 99, 235, .14); --red: #dc2626; --red-soft: #fde8e8;
  --green: #16a34a; --amber: #b45309; --head: #18212f;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: var(--head); color: #e8edf4; padding: 12px 22px; display: flex;
  flex-wrap: wrap; align-items: baseline; gap: 8px 22px; }
header .brand { font-size: 20px; font-weight: 700; letter-spacing: .2px; }
header .brand small { font-weight: 400; color: #9fb0c6; font-size: 13px; margin-left: 6px; }
header .meta { color: #b8c4d4; font-size: 13px; }
header .meta b { color: #fff; font-weight: 600; }
.live { display: inline-block; width: 9px; height: 9px; border-radius: 50%; background: var(--green);
  margin-right: 5px; vertical-align: 0; }
.live.stale { background: var(--red); }
#banner { display: none; background: var(--red); color: #fff; padding: 7px 22px; font-weight: 600; }
.wrap { padding: 16px 22px 28px; }
.listeners { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 14px; }
.chip { background: var(--card); border: 1px solid var(--line); border-radius: 16px; padding: 4px 12px;
  font-size: 12.5px; color: var(--muted); }
.chip b { color: var(--ink); }
.summary { display: grid; grid-template-columns: repeat(auto-fit, minmax(130px, 1fr)); gap: 10px;
  margin-bottom: 16px; }
.tile { background: var(--card); border-radius: 10px; padding: 10px 14px; border: 1px solid var(--line); }
.tile .n { font-size: 28px; font-weight: 700; font-variant-numeric: tabular-nums; line-height: 1.15; }
.tile .l { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .5px; }
.tile.bad { background: var(--red-soft); border-color: #f5b5b5; }
.tile.bad .n { color: var(--red); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(370px, 1fr)); gap: 14px; }
.card { background: var(--card); border-radius: 12px; border: 1px solid var(--line);
  padding: 14px 16px 12px; box-shadow: 0 1px 2px rgba(16, 24, 40, .05); }
.card.alert { border-color: var(--red); box-shadow: 0 0 0 1px var(--red) inset; }
.card h2 { margin: 0; font-size: 17px; display: flex; align-items: baseline; gap: 8px; flex-wrap: wrap; }
.card h2 .sub { color: var(--muted); font-weight: 400; font-size: 12.5px; }
.badge { font-size: 11px; font-weight: 600; border-radius: 4px; padding: 1px 6px; background: #e7ecf3;
  color: #3b4757; text-transform: uppercase; letter-spacing: .4px; }
.badge.paused { background: #fff1d6; color: var(--amber); }
.big { display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px; margin: 12px 0 10px; }
.big > div { border-radius: 8px; background: #f6f8fb; padding: 6px 9px; min-width: 0; }
.big { grid-template-columns: repeat(4, minmax(0, 1fr)); }
.big .n { font-size: 23px; font-weight: 700; font-variant-numeric: tabular-nums; line-height: 1.2;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.n small { font-size: 13px; font-weight: 600; margin-left: 2px; }
.big .l { font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .4px;
  white-space: nowrap; }
.big > .bad { background: var(--red-soft); }
.big .bad .n { color: var(--red); }
.row { display: flex; gap: 8px; align-items: center; margin: 3px 0; font-size: 13px; }
.row .k { width: 64px; color: var(--muted); flex: none; }
.row .v { font-variant-numeric: tabular-nums; }
.bar { flex: 1; height: 8px; background: #e9edf2; border-radius: 4px; overflow: hidden; display: flex;
  max-width: 140px; }
.bar i { display: block; height: 100%; }
.bar .a { background: var(--blue); } .bar .i { background: #93b4f5; } .bar .o { background: #c7d2e0; }
.chart { margin-top: 8px; }
.chart svg { display: block; width: 100%; }
.chart .cap { display: flex; justify-content: space-between; font-size: 11.5px; color: var(--muted); }
.chart .cap .w { color: var(--red); }
.foot { margin-top: 8px; border-top: 1px solid var(--line); padding-top: 7px; font-size: 12.5px;
  color: var(--muted); }
.foot div { margin: 2px 0; }
.foot b { color: var(--ink); font-weight: 600; font-variant-numeric: tabular-nums; }
.pin { color: var(--amber); }
#empty { display: none; color: var(--muted); padding: 30px 0; text-align: center; font-size: 15px; }
footer { color: var(--muted); font-size: 12px; padding: 0 22px 18px; }
footer a { color: var(--muted); }
</style>
</head>
<body>
<header>
  <div class="brand">poolproxy<small id="version"></small></div>
  <div class="meta">up <b id="uptime">-</b></div>
  <div class="meta" id="workers"></div>
  <div class="meta"><span id="live" class="live stale"></span><span id="updated">connecting...</span></div>
</header>
<div id="banner">status.json is not answering: the numbers below are stale</div>
<div class="wrap">
  <div class="listeners" id="listeners"></div>
  <div class="summary" id="summary"></div>
  <div class="grid" id="pools"></div>
  <div id="empty">No pools yet: a pool appears when its first client logs in.</div>
</div>
<footer>Refreshes every second from <a href="status.json">status.json</a> &middot;
  <a href="metrics">/metrics</a> &middot; <a href="pools">/pools</a> &middot; history kept in the
  proxy's memory (<span id="keep">5 min</span>)</footer>
<script>
"use strict";
var POLL_MS = __POLL_MS__;
var lastOk = 0;
function $(id) { return document.getElementById(id); }
function esc(s) {
  return String(s).replace(/[&<>"']/g, function (c) {
    return {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;"}[c];
  });
}
function int(n) { return Math.round(n).toLocaleString("en-US"); }
function rate(x) {
  if (x >= 100) return int(x);
  if (x >= 10) return x.toFixed(1);
  if (x > 0) return x.toFixed(2);
  return "0";
}
function dur(s) {
  if (!s || s <= 0) return "0";
  if (s < 0.001) return (s * 1e6).toFixed(0) + " \u00b5s";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : s < 0.1 ? 1 : 0) + " ms";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + "m " + Math.floor(s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m";
}
// A duration for the big numbers: the unit in small type.
function bigDur(s) {
  var text = dur(s), i = text.lastIndexOf(" ");
  return i < 0 ? esc(text) : esc(text.slice(0, i)) + "<small>" + esc(text.slice(i + 1)) + "</small>";
}
function uptime(s) {
  var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  if (d) return d + "d " + h + "h " + m + "m";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + Math.floor(s % 60) + "s";
  return Math.floor(s) + "s";
}
function bytes(n) {
  var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function pairs(obj) {
  var keys = Object.keys(obj || {}).filter(function (k) { return obj[k] > 0; });
  return keys.map(function (k) { return esc(k) + " <b>" + int(obj[k]) + "</b>"; }).join(", ");
}
function sum(obj) {
  var n = 0;
  for (var k in obj) n += obj[k];
  return n;
}
// A sparkline as inline SVG: `values` at times `ts` (seconds), over [now - span, now].
function path(ts, values, now, span, step, w, h, top, vmax) {
  var d = "", area = "", prev = null, start = null, last = null;
  for (var i = 0; i < ts.length; i++) {
    var x = w * (1 - (now - ts[i]) / span);
    if (x < 0) continue;
    var y = top + h - (vmax > 0 ? values[i] / vmax : 0) * h;
    x = x.toFixed(1); y = y.toFixed(1);
    if (prev === null || ts[i] - prev > step * 2.5) {
      if (start !== null) area += "L" + last + "," + (top + h) + "Z";
      d += "M" + x + "," + y; area += "M" + x + "," + (top + h) + "L" + x + "," + y; start = x;
    } else {
      d += "L" + x + "," + y; area += "L" + x + "," + y;
    }
    prev = ts[i]; last = x;
  }
  if (start !== null) area += "L" + last + "," + (top + h) + "Z";
  return [d, area];
}
function spanLabel(span) {
  return span >= 120 ? Math.round(span / 60) + " min" : Math.round(span) + " s";
}
function chart(p, doc) {
  var h = p.history, span = doc.span, now = doc.now, step = doc.sample_interval;
  var tmax = Math.max.apply(null, [1].concat(h.tps)), wmax = Math.max.apply(null, [0].concat(h.waiting));
  var t = path(h.t, h.tps, now, span, step, 300, 44, 2, tmax * 1.1);
  var wv = path(h.t, h.waiting, now, span, step, 300, 14, 50, wmax);
  var svg = '<svg viewBox="0 0 300 66" preserveAspectRatio="none" height="66" role="img" ' +
    'aria-label="transactions per second and waiting clients, last ' + spanLabel(span) + '">' +
    '<line x1="0" y1="46" x2="300" y2="46" stroke="#dde2e9" stroke-width="1" ' +
    'vector-effect="non-scaling-stroke"/>' +
    '<path d="' + t[1] + '" fill="rgba(37,99,235,.14)" stroke="none"/>' +
    '<path d="' + t[0] + '" fill="none" stroke="#2563eb" stroke-width="1.6" ' +
    'vector-effect="non-scaling-stroke"/>' +
    '<rect x="0" y="50" width="300" height="14" fill="#f6f8fb"/>' +
    (wmax > 0 ? '<path d="' + wv[1] + '" fill="rgba(220,38,38,.55)" stroke="none"/>' : "") +
    "</svg>";
  return '<div class="chart">' + svg + '<div class="cap"><span>tx/s, last ' + spanLabel(span) +
    " &middot; peak " + rate(Math.max.apply(null, [0].concat(h.tps))) + '</span><span class="w">' +
    (wmax > 0 ? "waiting peak " + int(wmax) : "") + "</span></div></div>";
}
function card(p, doc) {
  var c = p.clients, s = p.servers, waiting = c.waiting || 0;
  var key = p.listener + "/" + p.database + "/" + p.user;
  var used = s.active + s.idle + s.login + s.testing, size = Math.max(p.pool_size, used, 1);
  var bar = '<span class="bar" title="servers: active, idle, opening/testing of pool_size ' +
    p.pool_size + '">' +
    '<i class="a" style="width:' + (100 * s.active / size) + '%"></i>' +
    '<i class="i" style="width:' + (100 * s.idle / size) + '%"></i>' +
    '<i class="o" style="width:' + (100 * (s.login + s.testing) / size) + '%"></i></span>';
  var closed = pairs(p.closed), pinned = pairs(p.pinned);
  return '<div class="card' + (waiting ? " alert" : "") + '" data-pool="' + esc(key) + '">' +
    "<h2>" + esc(p.database) + ' <span class="sub">as ' + esc(p.user) + "</span>" +
    '<span class="badge">' + esc(p.listener) + " &middot; " + esc(p.protocol) + "</span>" +
    '<span class="badge">' +
    esc(p.pool_mode) + "</span>" + (p.paused ? '<span class="badge paused">paused</span>' : "") + "</h2>" +
    '<div class="big">' +
    '<div><div class="n v-tps">' + rate(p.tps) + '</div><div class="l">tx/s</div></div>' +
    '<div><div class="n v-qps">' + rate(p.qps) + '</div><div class="l">queries/s</div></div>' +
    "<div" + (waiting ? ' class="bad"' : "") + '><div class="n v-waiting">' + int(waiting) +
    '</div><div class="l">waiting</div></div>' +
    "<div" + (p.max_wait > 0 ? ' class="bad"' : "") + '><div class="n v-maxwait">' + bigDur(p.max_wait) +
    '</div><div class="l">max wait</div></div></div>' +
    '<div class="row"><span class="k">clients</span><span class="v v-clients"><b>' + int(c.active) +
    "</b> active &middot; <b>" + int(waiting) + "</b> waiting &middot; <b>" + int(c.idle) +
    "</b> idle</span></div>" +
    '<div class="row"><span class="k">servers</span>' + bar + '<span class="v v-servers"><b>' +
    int(s.active) +
    "</b> active &middot; <b>" + int(s.idle) + "</b> idle" + (s.login ? " &middot; <b>" + int(s.login) +
    "</b> opening" : "") + (s.testing ? " &middot; <b>" + int(s.testing) + "</b> testing" : "") +
    " / " + int(p.pool_size) + "</span></div>" +
    chart(p, doc) +
    '<div class="foot"><div><b class="v-xacts">' + int(p.transactions) + "</b> transactions &middot; <b>" +
    int(p.queries) + "</b> queries &middot; avg xact <b>" + dur(p.avg_xact_ms / 1000) + "</b> &middot; " +
    bytes(p.bytes_in) + " in / " + bytes(p.bytes_out) + " out</div>" +
    "<div>server connections: opened <b>" + int(p.opened) + "</b> &middot; closed <b>" + int(sum(p.closed)) +
    "</b>" + (closed ? " (" + closed + ")" : "") + "</div>" +
    '<div class="pin">' + (pinned ? "pinned clients: " + pinned : "no pinned clients") + "</div>" +
    "</div></div>";
}
function render(doc) {
  // The charts span the history kept, or since the first sample if that is shorter (1 min at least).
  var first = doc.now;
  doc.pools.forEach(function (p) { if (p.history.t.length) first = Math.min(first, p.history.t[0]); });
  doc.span = Math.min(doc.history_seconds, Math.max(60, doc.now - first));
  $("version").textContent = doc.version;
  $("uptime").textContent = uptime(doc.uptime);
  $("workers").textContent = doc.workers > 1 ? doc.workers + " workers" + (doc.answered !== undefined &&
    doc.answered < doc.workers ? " (" + doc.answered + " answering)" : "") : "1 process, pid " + doc.pid;
  $("keep").textContent = Math.round(doc.history_seconds / 60) + " min";
  $("listeners").innerHTML = doc.listeners.map(function (l) {
    var r = l.results, refused = (r.auth_failed || 0) + (r.limit || 0) + (r.protocol_error || 0);
    return '<span class="chip" data-listener="' + esc(l.name) + '"><b>' + esc(l.name) + "</b> " +
      esc(l.protocol) + " " + esc(l.listen) + " &rarr; " + esc(l.server) + " &middot; <b>" + int(l.clients) +
      "</b> clients &middot; " + int(r.accepted || 0) + " accepted" +
      (refused ? ", " + int(refused) + " refused" : "") +
      (sum(l.pinned) ? ' &middot; <span class="pin">' + int(sum(l.pinned)) + " pinned</span>" : "") +
      (l.draining ? ' &middot; <span class="pin">draining</span>' : "") + "</span>";
  }).join("");
  var t = {clients: 0, waiting: 0, tps: 0, qps: 0, active: 0, idle: 0, maxwait: 0, pinned: 0};
  doc.pools.forEach(function (p) {
    t.clients += p.clients.active + p.clients.waiting + p.clients.idle; t.waiting += p.clients.waiting;
    t.tps += p.tps; t.qps += p.qps; t.active += p.servers.active; t.idle += p.servers.idle;
    t.maxwait = Math.max(t.maxwait, p.max_wait); t.pinned += sum(p.pinned);
  });
  function tile(n, l, bad, cls) {
    return '<div class="tile' + (bad ? " bad" : "") + '"><div class="n ' + cls + '">' + n +
      '</div><div class="l">' + l + "</div></div>";
  }
  $("summary").innerHTML = tile(int(t.clients), "clients", false, "s-clients") +
    tile(int(t.waiting), "waiting", t.waiting > 0, "s-waiting") +
    tile(bigDur(t.maxwait), "longest wait", t.maxwait > 0, "s-maxwait") +
    tile(rate(t.tps), "transactions / s", false, "s-tps") + tile(rate(t.qps), "queries / s", false, "s-qps") +
    tile(int(t.active) + " / " + int(t.active + t.idle), "servers busy / open", false, "s-servers") +
    tile(int(t.pinned), "pinned clients", false, "s-pinned");
  $("pools").innerHTML = doc.pools.map(function (p) { return card(p, doc); }).join("");
  document.title = (t.waiting ? "(" + t.waiting + " waiting) " : "") + "poolproxy status";
  $("empty").style.display = doc.pools.length ? "none" : "block";
}
function tick() {
  var ago = lastOk ? (Date.now() - lastOk) / 1000 : Infinity;
  var stale = ago > 5;
  $("live").className = "live" + (stale ? " stale" : "");
  $("banner").style.display = stale && lastOk ? "block" : "none";
  if (lastOk) $("updated").textContent = "updated " + new Date(lastOk).toLocaleTimeString();
}
function poll() {
  fetch("status.json", {cache: "no-store"}).then(function (r) {
    if (!r.ok) throw new Error("HTTP " + r.status);
    return r.json();
  }).then(function (doc) {
    render(doc);
    lastOk = Date.now();
  }).catch(function () {}).then(function () {
    tick();
    setTimeout(poll, POLL_MS);
  });
}
setInterval(tick, 1000);
poll();
</script>
</body>
</html>
""".replace("__POLL_MS__", str(POLL_MS))
