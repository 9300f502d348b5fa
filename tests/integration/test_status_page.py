"""The status page on the admin HTTP port (`GET /`) and its data (`GET /status.json`).

- Plain HTTP: the page is one self-contained document (no http:// or https:// URL anywhere, no
  external script, style, image or font; a Content-Security-Policy forbids loading any).
- status.json agrees with what the clients do: waiting clients and the longest wait, pinned
  clients by reason, transactions equal to /metrics, a history sampled on wall-clock instants.
- In a real browser (headless Chromium through Selenium): the page shows a pool once a client
  connects and its numbers change while transactions run, without a page reload and without a
  script or CSP error. Screenshots go to the test's temp dir.
- `workers: 2`: the supervisor serves the page and sums the workers' status.json.
- A screenshot with realistic activity (several pools, waiting and pinned clients). Set
  POOLPROXY_STATUS_SCREENSHOT=docs/status-page.png (and POOLPROXY_STATUS_SCREENSHOT_SECONDS,
  default 6) to refresh the one in the docs.

Chromium and chromedriver come from Debian (`apt-get install chromium chromium-driver`, which
scripts/test.sh does), selenium from pip; without them the browser tests are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from proxy import __version__
from proxy.config import PoolSettings
from proxy.ops.statuspage import StatusHistory, merge_status
from proxy.pool import Pool
from tests.harness import PgServer, ProxyProcess, make_config, pg_listener
from tests.harness.util import admin_url, http_get, metric, wait_for

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver", "chromedriver")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1360,900",
                "--hide-scrollbars", "--force-device-scale-factor=1")


# --------------------------------------------------------------------------- helpers


def status(proxy: ProxyProcess) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(http_get(proxy, "/status.json", timeout=3))
    return doc


def pool_of(doc: dict[str, Any], database: str = "app", user: str = "app") -> dict[str, Any]:
    found = [p for p in doc["pools"] if (p["database"], p["user"]) == (database, user)]
    assert len(found) == 1, doc["pools"]
    return found[0]


def pg_connect(proxy: ProxyProcess, user: str = "app", dbname: str = "app",
               **kwargs: Any) -> psycopg.Connection[Any]:
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user=user,
                           password=f"{user}-secret", dbname=dbname, connect_timeout=5, **kwargs)


def until(check: Callable[[], Any], timeout: float, what: str) -> None:
    if not wait_for(check, timeout, 0.1):
        pytest.fail(f"timed out after {timeout}s waiting for: {what}")


class Load:
    """Client threads running transactions through the proxy until stopped."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.done = 0

    def add(self, connect: Callable[[], psycopg.Connection[Any]], sql: str,
            pause: float = 0.0) -> None:
        def body() -> None:
            try:
                with connect() as conn:
                    while not self.stop.is_set():
                        conn.execute(sql)
                        self.done += 1
                        if pause:
                            self.stop.wait(pause)
            except BaseException as exc:  # reported by close()
                if not self.stop.is_set():
                    self.errors.append(exc)
        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        assert not self.errors, self.errors


@pytest.fixture
def load() -> Iterator[Load]:
    running = Load()
    try:
        yield running
    finally:
        running.stop.set()
        for thread in running.threads:
            thread.join(10)


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium through Selenium (skips when either is missing)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    chromium, driver_path = _find(CHROMIUM), _find(CHROMEDRIVER)
    if chromium is None or driver_path is None:
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium "
                    "chromium-driver)")
    options = Options()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()


def js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def text_of(driver: Any, selector: str) -> str | None:
    """The text of the first element matching `selector`, read in the page (no stale handles
    across the page's redraws)."""
    result: str | None = js(driver, "var e = document.querySelector(" + json.dumps(selector) +
                            "); return e ? e.textContent : null;")
    return result


def as_number(text: str | None) -> float:
    return float((text or "nan").replace(",", ""))


def browser_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


# --------------------------------------------------------------------------- plain HTTP


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.scripts_with_src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "srcset", "poster", "data", "xlink:href"):
                self.refs.append((tag, name, value or ""))
            if tag == "script" and name == "src":
                self.scripts_with_src.append(value or "")


def test_page_is_self_contained(pg_server: PgServer, proxy_factory: Any) -> None:
    proxy = proxy_factory(make_config(pg_listener(pg_server)))
    import urllib.request
    with urllib.request.urlopen(admin_url(proxy, "/"), timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        csp = resp.headers["Content-Security-Policy"] or ""
        page = resp.read().decode()
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert http_get(proxy, "/index.html").decode() == page

    parser = _Refs()
    parser.feed(page)
    assert not parser.scripts_with_src, parser.scripts_with_src
    for tag, attr, value in parser.refs:
        low = value.strip().lower()
        assert not low.startswith(("http:", "https:", "//", "ftp:")), (tag, attr, value)
        assert low.startswith(("data:", "#")) or "/" not in low.strip("/"), (tag, attr, value)
    lowered = page.lower()
    for needle in ("http://", "https://", "cdn", "@import", "<iframe", "<img", "@font-face"):
        assert needle not in lowered, needle
    assert "<script>" in page and "<style>" in page  # inline
    assert "status.json" in page

    doc = status(proxy)
    assert doc["version"] == __version__ and doc["workers"] == 1 and doc["pools"] == []
    assert [lst["name"] for lst in doc["listeners"]] == ["pg"]
    assert doc["uptime"] >= 0 and doc["sample_interval"] > 0 and doc["history_seconds"] >= 60


def test_status_json_follows_the_clients(pg_server: PgServer, proxy_factory: Any) -> None:
    listener = pg_listener(pg_server, databases={"*": {}, "app": {"pool_size": 2}})
    proxy = proxy_factory(make_config(listener))
    pinned = pg_connect(proxy)
    holder = pg_connect(proxy, autocommit=False)
    waiter = pg_connect(proxy)
    result: list[Any] = []
    try:
        pinned.execute("SET work_mem = '8MB'")  # unreported state: pinned, holds a server
        holder.execute("SELECT 1")  # a transaction holds the other server
        thread = threading.Thread(target=lambda: result.append(
            waiter.execute("SELECT 2").fetchone()), daemon=True)
        thread.start()
        until(lambda: pool_of(status(proxy))["clients"]["waiting"] == 1, 5, "a waiting client")
        time.sleep(0.3)
        doc = status(proxy)
        pool = pool_of(doc)
        assert pool["max_wait"] >= 0.3, pool
        assert pool["servers"]["active"] == 2 and pool["pool_size"] == 2, pool
        assert pool["pinned"] == {"set": 1}, pool
        assert doc["listeners"][0]["pinned"] == {"set": 1} and doc["listeners"][0]["clients"] == 3
        assert doc["listeners"][0]["pins"] == {"set": 1}
        holder.commit()
        thread.join(5)
        assert result == [(2,)]
        assert pool_of(status(proxy))["clients"]["waiting"] == 0
    finally:
        for conn in (pinned, holder, waiter):
            conn.close()

    with pg_connect(proxy) as conn:
        for i in range(25):
            conn.execute("SELECT %s::int", (i,))
    doc = status(proxy)
    pool = pool_of(doc)
    assert pool["transactions"] == metric(proxy, "poolproxy_transactions_total", database="app")
    assert pool["queries"] == metric(proxy, "poolproxy_queries_total", database="app")
    assert pool["opened"] == metric(proxy, "poolproxy_server_connections_opened_total")
    assert pool["tps"] > 0, pool  # 25+ transactions within the last seconds
    assert isinstance(pool["closed"], dict)
    # The history: samples on multiples of the interval, as many values as instants.
    until(lambda: len(pool_of(status(proxy))["history"]["t"]) >= 2, 6, "two history samples")
    doc = status(proxy)
    hist = pool_of(doc)["history"]
    step = doc["sample_interval"]
    assert all(abs(t / step - round(t / step)) < 1e-6 for t in hist["t"]), hist["t"]
    assert hist["t"] == sorted(hist["t"]) and doc["now"] - hist["t"][-1] <= 2 * step + 1
    assert max(hist["waiting"]) <= 1 and all(v >= 0 for v in hist["tps"]), hist
    for series in ("tps", "qps", "waiting", "max_wait", "clients", "servers"):
        assert len(hist[series]) == len(hist["t"]), series


# --------------------------------------------------------------------------- in a browser


def test_page_in_a_browser_updates_without_reload(pg_server: PgServer, proxy_factory: Any,
                                                  browser: Any, tmp_path: Path) -> None:
    proxy = proxy_factory(make_config(pg_listener(pg_server, pool_size=3)))
    browser.get(admin_url(proxy, "/"))
    until(lambda: text_of(browser, "#version") == __version__, 10, "the page's first render")
    js(browser, "window.__noReload = 42;")
    until(lambda: js(browser, "return getComputedStyle(document.getElementById('empty'))"
                              ".display") == "block", 5, "the 'no pools yet' note")
    listener_chip = text_of(browser, '[data-listener="pg"]') or ""
    assert f"127.0.0.1:{proxy.port('pg')}" in listener_chip, listener_chip
    browser.save_screenshot(str(tmp_path / "status-empty.png"))

    card = '[data-pool="pg/app/app"]'
    with pg_connect(proxy) as conn:
        conn.execute("SELECT 1")
        until(lambda: text_of(browser, card) is not None, 5, "the pool's card")
        until(lambda: as_number(text_of(browser, card + " .v-xacts")) >= 1, 5, "1 transaction")
        shown = as_number(text_of(browser, card + " .v-xacts"))
        for i in range(40):
            conn.execute("SELECT %s::int", (i,))
        until(lambda: as_number(text_of(browser, card + " .v-xacts")) >= shown + 40, 5,
              "the transaction count to rise by 40")
        until(lambda: as_number(text_of(browser, card + " .v-tps")) > 0, 5, "a positive tx/s")
        assert as_number(text_of(browser, ".s-tps")) > 0
        assert as_number(text_of(browser, card + " .v-waiting")) == 0
        assert "1" in (text_of(browser, card + " .v-clients") or "")
        browser.save_screenshot(str(tmp_path / "status-busy.png"))
    assert js(browser, "return window.__noReload;") == 42, "the page reloaded itself"
    assert js(browser, "return document.querySelectorAll('svg').length") >= 1  # the chart
    assert not browser_errors(browser), browser_errors(browser)
    assert (tmp_path / "status-busy.png").stat().st_size > 10_000


# --------------------------------------------------------------------------- workers: 2


def test_page_and_status_json_with_workers(pg_server: PgServer, proxy_factory: Any) -> None:
    config = make_config(pg_listener(pg_server, pool_size=4))
    config["workers"] = 2
    proxy = proxy_factory(config)
    until(lambda: proxy.log_text().count("of 2 ready") == 2, 15, "both workers")
    assert b"status.json" in http_get(proxy, "/")
    conns = [pg_connect(proxy) for _ in range(8)]
    try:
        for i, conn in enumerate(conns):
            for _ in range(i + 1):
                conn.execute("SELECT 1")
        # psycopg prepares a query at the run after its prepare_threshold-th (5 by default),
        # with a Parse + Sync round trip of its own: one more transaction on that connection.
        threshold = conns[0].prepare_threshold
        assert threshold is not None
        total = sum(i + 1 + (i + 1 > threshold) for i in range(len(conns)))
        doc = status(proxy)
        assert doc["workers"] == 2 and doc["answered"] == 2, doc
        pool = pool_of(doc)
        assert pool["transactions"] == total == metric(proxy, "poolproxy_transactions_total")
        assert pool["pool_size"] == 4  # the workers' shares add up to the configured size
        assert sum(pool["clients"].values()) == 8, pool
        assert doc["listeners"][0]["clients"] == 8, doc["listeners"]
        until(lambda: len(pool_of(status(proxy))["history"]["t"]) >= 2, 6, "history")
        hist = pool_of(status(proxy))["history"]
        assert len(set(hist["t"])) == len(hist["t"]), hist["t"]  # the workers' samples merged
    finally:
        for conn in conns:
            conn.close()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _no_connect(pool: Pool) -> Any:
    raise AssertionError("no server connections in this test")


def test_history_samples_wall_clock_instants() -> None:
    wall, mono = FakeClock(1000.0), FakeClock(50.0)
    rt = SimpleNamespace(pools={}, clients=set())
    history = StatusHistory(SimpleNamespace(listeners=[rt]), interval=2.0,  # type: ignore[arg-type]
                            keep=10.0, wall=wall, clock=mono)
    history.sample()  # no pools yet
    pool = Pool("pg", "app", "app", PoolSettings(), _no_connect, mono)
    rt.pools[("app", "app")] = pool
    pool.stats.transactions = pool.stats.queries = 10
    wall.now, mono.now = 1001.999, 51.999  # a timer firing a hair early still samples 1002
    history.sample()
    pool.stats.transactions = 11
    wall.now, mono.now = 1002.004, 52.004  # ...and the same instant is not sampled twice
    history.sample()
    (first,) = history.samples[("pg", "app", "app")]
    # The new pool counted from zero since the sample before it existed.
    assert first.t == 1002.0 and first.tps == pytest.approx(10 / 1.999), first
    pool.stats.transactions = 50
    wall.now, mono.now = 1004.0, 54.0
    history.sample()
    second = history.samples[("pg", "app", "app")][-1]
    assert second.t == 1004.0 and second.tps == pytest.approx(40 / 2.001), second
    for i in range(10):  # the ring buffer keeps `keep` seconds
        wall.now, mono.now = 1006.0 + 2 * i, 56.0 + 2 * i
        history.sample()
    assert [s.t for s in history.samples[("pg", "app", "app")]] == [
        1014.0, 1016.0, 1018.0, 1020.0, 1022.0, 1024.0]


def _worker_doc(index: int, pool: dict[str, Any], history: dict[str, list[float]]) -> dict[str, Any]:
    base = {"listener": "pg", "database": "app", "user": "app", "protocol": "postgres",
            "pool_mode": "transaction", "paused": False, "bytes_in": 10, "bytes_out": 20,
            "opened": 1, "queries": 0, "closed": {}, "pinned": {}, "history": history}
    return {"version": __version__, "now": 1000.0 + index, "started": 900.0 - index,
            "uptime": 100.0, "pid": 100 + index, "worker": index, "workers": 2,
            "sample_interval": 2.0, "history_seconds": 300.0,
            "listeners": [{"name": "pg", "protocol": "postgres", "listen": "x", "server": "y",
                           "clients": 3, "results": {"accepted": 3}, "pins": {"set": index},
                           "pinned": {}, "draining": False}],
            "pools": [{**base, **pool}]}


def test_merge_status_sums_the_workers() -> None:
    zero = {"tps": [], "qps": [], "waiting": [], "max_wait": [], "clients": [], "servers": []}
    a = _worker_doc(0, {"pool_size": 3, "tps": 10.0, "qps": 20.0, "avg_xact_ms": 1.0,
                        "transactions": 100, "max_wait": 0.5,
                        "clients": {"active": 1, "waiting": 2, "idle": 0},
                        "servers": {"active": 3, "idle": 0, "login": 0, "testing": 0},
                        "closed": {"lifetime": 1}, "pinned": {"set": 1}},
                    {**zero, "t": [996.0, 998.0], "tps": [1, 2], "qps": [1, 2], "waiting": [0, 2],
                     "max_wait": [0.0, 0.5], "clients": [1, 3], "servers": [1, 3]})
    b = _worker_doc(1, {"pool_size": 2, "tps": 30.0, "qps": 30.0, "avg_xact_ms": 3.0,
                        "transactions": 50, "max_wait": 0.2,
                        "clients": {"active": 2, "waiting": 1, "idle": 4},
                        "servers": {"active": 2, "idle": 0, "login": 1, "testing": 0},
                        "closed": {"lifetime": 2, "idle_timeout": 1}},
                    {**zero, "t": [998.0, 1000.0], "tps": [5, 6], "qps": [5, 6],
                     "waiting": [1, 1], "max_wait": [0.9, 0.2], "clients": [7, 7],
                     "servers": [3, 3]})
    doc = merge_status([a, b], 2)
    assert (doc["workers"], doc["answered"], doc["now"], doc["started"]) == (2, 2, 1001.0, 899.0)
    assert doc["listeners"][0]["clients"] == 6 and doc["listeners"][0]["pins"] == {"set": 1}
    (pool,) = doc["pools"]
    assert pool["pool_size"] == 5 and pool["transactions"] == 150 and pool["opened"] == 2
    assert pool["tps"] == 40.0 and pool["avg_xact_ms"] == 2.5  # weighted by each worker's tps
    assert pool["max_wait"] == 0.5
    assert pool["clients"] == {"active": 3, "waiting": 3, "idle": 4}
    assert pool["servers"] == {"active": 5, "idle": 0, "login": 1, "testing": 0}
    assert pool["closed"] == {"lifetime": 3, "idle_timeout": 1} and pool["pinned"] == {"set": 1}
    hist = pool["history"]
    assert hist["t"] == [996.0, 998.0, 1000.0]
    assert hist["tps"] == [1, 7, 6] and hist["waiting"] == [0, 3, 1]
    assert hist["max_wait"] == [0.0, 0.9, 0.2] and hist["servers"] == [1, 6, 3]
    assert merge_status([], 2)["answered"] == 0


# --------------------------------------------------------------------------- screenshot


def test_screenshot_with_realistic_activity(pg_server: PgServer, proxy_factory: Any,
                                            browser: Any, load: Load, tmp_path: Path) -> None:
    """Three pools: steady traffic, a small pool with clients queueing, a pinned client."""
    listener = pg_listener(pg_server, pool_size=4,
                           databases={"*": {}, "app2": {"pool_size": 2}})
    proxy = proxy_factory(make_config(listener))
    seconds = float(os.environ.get("POOLPROXY_STATUS_SCREENSHOT_SECONDS", "6"))
    for _ in range(4):  # the application: short transactions
        load.add(lambda: pg_connect(proxy), "SELECT count(*) FROM pg_class", pause=0.004)
    for _ in range(6):  # reports on a 2-server pool: slow queries, clients queue
        load.add(lambda: pg_connect(proxy, user="app2", dbname="app2"),
                 "SELECT pg_sleep(0.15)", pause=0.05)
    pinned = pg_connect(proxy, user="app2", dbname="app")
    try:
        pinned.execute("SET statement_timeout = '30s'")  # pins: statement_timeout is unreported
        load.add(lambda: pg_connect(proxy, user="app2", dbname="app"), "SELECT now()", pause=0.2)
        browser.get(admin_url(proxy, "/"))
        time.sleep(seconds)
        until(lambda: as_number(text_of(browser, '[data-pool="pg/app2/app2"] .v-waiting')) > 0,
              10, "clients waiting in the small pool")
        shot = tmp_path / "status-page.png"
        browser.save_screenshot(str(shot))
        assert not browser_errors(browser), browser_errors(browser)
        target = os.environ.get("POOLPROXY_STATUS_SCREENSHOT")
        if target:
            shutil.copyfile(shot, target)
    finally:
        pinned.close()
        load.close()
