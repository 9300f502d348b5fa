"""`workers: N`: the config key, each worker's share of the limits, and /metrics over workers."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import ConfigError, PoolSettings, parse_config, share_settings, worker_share
from proxy.workers import merge_metrics

LISTENER: dict[str, Any] = {
    "name": "pg", "protocol": "postgres", "listen": "127.0.0.1:6432",
    "server": {"host": "127.0.0.1", "port": 5432},
    "users": [{"name": "app", "password": "x", "pool_size": 7}],
    "databases": {"*": {}, "big": {"max_db_connections": 9}},
}


def config(**top: Any) -> Any:
    return parse_config(yaml.safe_dump({**top, "listeners": [LISTENER]}), env={})


@pytest.mark.parametrize(("total", "count"), [(20, 2), (20, 3), (7, 4), (1, 1), (5, 5), (100, 7)])
def test_shares_add_up_to_the_total(total: int, count: int) -> None:
    shares = [worker_share(total, i, count, 0) for i in range(count)]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1


def test_share_minimum_and_unlimited() -> None:
    assert [worker_share(1, i, 3, 1) for i in range(3)] == [1, 1, 1]  # every worker needs one
    assert worker_share(0, 1, 3, 1) == 0  # 0 = unlimited stays unlimited


def test_share_settings_splits_limits_only() -> None:
    base = PoolSettings(pool_size=10, min_pool_size=3, reserve_pool_size=1,
                        max_db_connections=0, max_client_conn=1000, query_wait_timeout=12.0)
    parts = [share_settings(base, i, 2) for i in range(2)]
    assert [p.pool_size for p in parts] == [5, 5]
    assert [p.min_pool_size for p in parts] == [2, 1]
    assert [p.reserve_pool_size for p in parts] == [1, 0]
    assert [p.max_db_connections for p in parts] == [0, 0]
    assert [p.max_client_conn for p in parts] == [500, 500]
    assert all(p.query_wait_timeout == 12.0 for p in parts)


def test_workers_key() -> None:
    assert config().workers == 1
    assert config(workers=4).workers == 4
    for bad in (0, -1, "two", 65):
        with pytest.raises(ConfigError) as info:
            config(workers=bad)
        assert info.value.path == "workers"


def test_for_worker_applies_the_share_after_every_override() -> None:
    cfg = config(workers=2)
    for index, expected in ((0, 4), (1, 3)):
        lst = cfg.for_worker(index).listeners[0]
        user = lst.user("app")
        assert lst.settings_for(lst.database("x"), user).pool_size == expected  # user's 7
        big = lst.settings_for(lst.database("big"), None)
        assert big.max_db_connections == (5 if index == 0 else 4)
        assert big.pool_size == 10  # default 20 split
        assert lst.client_limit == 5000
    assert cfg.listeners[0].settings_for(None, None).pool_size == 20  # the supervisor's view


def _families(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


WORKER_TEXT = """\
# HELP poolproxy_build_info poolproxy version
# TYPE poolproxy_build_info gauge
poolproxy_build_info{{version="0.1.0"}} 1.0
# HELP poolproxy_transactions_total Transactions completed
# TYPE poolproxy_transactions_total counter
poolproxy_transactions_total{{database="app",listener="pg",user="app"}} {xacts}
# HELP poolproxy_max_wait_seconds Age of the oldest client waiting for a server
# TYPE poolproxy_max_wait_seconds gauge
poolproxy_max_wait_seconds{{database="app",listener="pg",user="app"}} {wait}
# HELP poolproxy_client_wait_seconds Time from wanting a server to getting one
# TYPE poolproxy_client_wait_seconds histogram
poolproxy_client_wait_seconds_bucket{{database="app",le="0.001",listener="pg",user="app"}} {b1}
poolproxy_client_wait_seconds_bucket{{database="app",le="+Inf",listener="pg",user="app"}} {b2}
poolproxy_client_wait_seconds_count{{database="app",listener="pg",user="app"}} {b2}
poolproxy_client_wait_seconds_sum{{database="app",listener="pg",user="app"}} {s}
"""


def test_merge_metrics_sums_series_and_keeps_maxima() -> None:
    a = WORKER_TEXT.format(xacts=10, wait=0.5, b1=3, b2=4, s=0.25)
    b = WORKER_TEXT.format(xacts=32, wait=2.0, b1=1, b2=5, s=1.0)
    c = WORKER_TEXT.replace('database="app"', 'database="other"').format(
        xacts=7, wait=0.0, b1=0, b2=0, s=0.0)
    merged = _families(merge_metrics([a, b, c]))
    app = (("database", "app"), ("listener", "pg"), ("user", "app"))
    assert merged[("poolproxy_transactions_total", app)] == 42
    assert merged[("poolproxy_max_wait_seconds", app)] == 2.0
    assert merged[("poolproxy_build_info", (("version", "0.1.0"),))] == 1.0
    assert merged[("poolproxy_client_wait_seconds_bucket", tuple(sorted((*app, ("le", "0.001")))))] == 4
    assert merged[("poolproxy_client_wait_seconds_count", app)] == 9
    assert merged[("poolproxy_client_wait_seconds_sum", app)] == 1.25
    other = (("database", "other"), ("listener", "pg"), ("user", "app"))
    assert merged[("poolproxy_transactions_total", other)] == 7
