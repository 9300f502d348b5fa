"""Shared fixtures: real throwaway database servers and the proxy as a subprocess.

- ``pg_server`` (session): a PostgreSQL cluster of our own (``tests/harness/pgserver.py``).
- ``mariadb_server`` (session, started only when some test asks for it): a MariaDB server.
- ``proxy_factory`` (function): ``proxy_factory.start(config, env=None)`` (or just
  ``proxy_factory(config)``) starts a ``ProxyProcess``; every one is stopped at teardown.
- ``pg_proxy`` (module): a proxy over ``make_config(pg_listener(pg_server, pool_size=5))``.

When a test fails, the log tail of every proxy it used is added to the failure report.

Async tests: the suite does not use pytest-asyncio. An async test is a plain sync test that
calls ``asyncio.run(main())`` (each test gets a fresh event loop; nothing leaks between tests).

Set ``POOLPROXY_KEEP_TEST_DIRS=1`` to keep the servers' data dirs and logs after the session.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `from tests.harness import ...` also under a bare `pytest`
    sys.path.insert(0, str(REPO_ROOT))

from tests.harness import (  # noqa: E402
    MariaDbServer,
    PgServer,
    ProxyProcess,
    make_config,
    pg_listener,
)
from tests.harness.certs import Pki, make_pki  # noqa: E402


class ProxyFactory:
    """Starts proxies for one test and stops them all at its teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[ProxyProcess] = []

    def start(self, config: dict, env: dict[str, str] | None = None) -> ProxyProcess:
        workdir = self.workdir / f"proxy{len(self.procs)}"
        proc = ProxyProcess(config, workdir, env=env)
        self.procs.append(proc)
        proc.start()
        return proc

    __call__ = start

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture(scope="session")
def servers_basedir() -> Iterator[Path]:
    """A short, world-traversable temp dir for the session's servers (Unix socket paths are
    limited to ~100 bytes, and the server user must reach the data dirs)."""
    path = Path(tempfile.mkdtemp(prefix="poolproxy-test-"))
    path.chmod(0o755)
    yield path
    if not os.environ.get("POOLPROXY_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(servers_basedir: Path) -> Iterator[PgServer]:
    server = PgServer.create(servers_basedir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb_server(servers_basedir: Path) -> Iterator[MariaDbServer]:
    server = MariaDbServer.create(servers_basedir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates made for this run (CA, server, client, expired, wrong host, ...)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_pg(servers_basedir: Path, tls_pki: Pki) -> Iterator[PgServer]:
    """PostgreSQL with TLS and users that may only log in over TLS (hostssl); a test that
    swaps its certificate puts the usual one back."""
    server = PgServer.create(servers_basedir, tls=tls_pki)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_mariadb(servers_basedir: Path, tls_pki: Pki) -> Iterator[MariaDbServer]:
    """MariaDB with TLS and users that require it; a test that swaps its certificate puts the
    usual one back."""
    server = MariaDbServer.create(servers_basedir, tls=tls_pki)
    yield server
    server.stop()


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[ProxyFactory]:
    factory = ProxyFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def pg_proxy(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    proc = ProxyProcess(
        make_config(pg_listener(pg_server, pool_size=5)), tmp_path_factory.mktemp("pg_proxy")
    )
    proc.start()
    yield proc
    proc.stop()


def _proxies_of(item: pytest.Item) -> list[Any]:
    """The proxy processes a test used (duck-typed: the harness may be imported twice)."""
    procs: list[Any] = []
    for value in getattr(item, "funcargs", {}).values():
        if hasattr(value, "procs") and hasattr(value, "stop_all"):
            procs.extend(value.procs)
        elif hasattr(value, "log_text") and hasattr(value, "config_path"):
            procs.append(value)
    return procs


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for proc in _proxies_of(item):
            tail = "\n".join(proc.log_text().splitlines()[-80:])
            report.sections.append((f"poolproxy log tail ({proc.log_path})", tail or "(empty)"))
    return report


def pytest_report_header(config: pytest.Config) -> str:
    import proxy

    build = "compiled with mypyc" if proxy.COMPILED else f"pure Python ({proxy._native.reason})"
    return f"poolproxy hot path: {build}"
