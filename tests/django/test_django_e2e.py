"""Django end to end through poolproxy in transaction mode (issue 6, Must show 1), on
PostgreSQL (psycopg 3) and MariaDB (mysqlclient).

The Django project lives next to this file (``pp_project``, ``pp_app``); Django itself only
ever runs in subprocesses (``manage.py`` and ``scenarios.py``), configured through ``PP_*``
environment variables, so that no Django state leaks into the rest of the suite (which does
not use pytest-django). What each scenario asserts is documented in ``scenarios.py``.

Per backend one proxy runs with four listeners on the same server:

- ``main``: ``pool_size: 4`` (less than the 16 Django threads that use it)
- ``one``: ``pool_size: 1`` and a short ``query_wait_timeout``: clients share one server, so
  session state that leaks between them is seen, and a pinned client blocks the others
- ``reap``: ``pool_size: 4`` and ``server_idle_timeout: 1s`` (set per database): servers are
  closed and replaced under persistent Django connections (``CONN_MAX_AGE=600``), and the
  test database's idle servers are gone before PostgreSQL's DROP DATABASE gives up
- ``idle``: ``client_idle_timeout: 1s``: poolproxy closes idle persistent Django connections

A fresh database is created for each backend and ``migrate`` builds it from scratch through the
proxy; Django's test runner creates and drops its own test database through the proxy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ProxyProcess, make_config, mysql_listener, pg_listener
from tests.harness.util import metric

DJANGO_DIR = Path(__file__).resolve().parent
DBNAME = "pp_django"
TEST_DBNAME = "test_pp_django"
POOL_SIZE = 4
THREADS = 16
QUERY_WAIT_ONE = 2  # seconds a client waits for the single server of listener "one"
SUBPROCESS_TIMEOUT = 120


@dataclass
class DjangoTarget:
    """One backend: its database server, the proxy in front of it, and how to run Django."""

    engine: str  # "postgresql" | "mysql"
    server: Any
    proxy: ProxyProcess
    migrate_output: str = ""
    mysql_tz_tables: bool = False  # the fixture loaded MariaDB's time zone tables
    timings: dict[str, float] = field(default_factory=dict)

    # Duck-typed like the harness's ProxyFactory so that conftest.py appends the proxy log
    # tail to the report of a failed test.
    @property
    def procs(self) -> list[ProxyProcess]:
        return [self.proxy]

    def stop_all(self) -> None:
        self.proxy.stop()

    def env(self, listener: str = "main", **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PP_", "PG", "DJANGO_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="pp_project.settings",
            PYTHONPATH=str(DJANGO_DIR),
            PP_ENGINE=self.engine,
            PP_HOST="127.0.0.1",
            PP_PORT=str(self.proxy.port(listener)),
            PP_NAME=DBNAME,
            PP_TEST_NAME=TEST_DBNAME,
            PP_LISTENER=listener,
            PP_POOL_SIZE=str(1 if listener == "one" else POOL_SIZE),
            PP_THREADS=str(THREADS),
        )
        if self.proxy.admin_port is not None:
            env["PP_ADMIN_POOLS_URL"] = f"http://127.0.0.1:{self.proxy.admin_port}/pools"
        env.update(extra)
        return env

    def run(self, args: list[str], listener: str = "main", check: bool = True,
            **extra: str) -> subprocess.CompletedProcess[str]:
        """Run ``python <args>`` in tests/django (a Django command or scenarios.py)."""
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, *args], cwd=DJANGO_DIR, env=self.env(listener, **extra),
            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False)
        self.timings[" ".join(args[:3])] = round(time.monotonic() - started, 2)
        if check and proc.returncode != 0:
            pytest.fail(
                f"{' '.join(args)} (listener {listener}, {self.engine}) exited with "
                f"{proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n"
                f"--- stderr ---\n{proc.stderr[-8000:]}", pytrace=False)
        return proc

    def manage(self, *args: str, listener: str = "main", check: bool = True,
               **extra: str) -> subprocess.CompletedProcess[str]:
        return self.run(["manage.py", *args], listener=listener, check=check, **extra)

    def scenario(self, name: str, listener: str = "main", **extra: str) -> dict[str, Any]:
        proc = self.run(["scenarios.py", name], listener=listener, **extra)
        for line in proc.stdout.splitlines():
            if line.startswith("PP_RESULT "):
                result = json.loads(line[len("PP_RESULT "):])
                print(f"{self.engine} {name}: {json.dumps(result)}")
                return result
        pytest.fail(f"scenario {name} printed no result:\n{proc.stdout}\n{proc.stderr}")

    def database_exists(self, name: str) -> bool:
        if self.engine == "postgresql":
            return bool(self.server.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                            (name,)))
        return bool(self.server.execute(
            "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,)))


def _fresh_database(engine: str, server: Any) -> bool:
    """An empty database for ``migrate`` to build from scratch (and no leftover test db);
    on MariaDB also the time zone tables (True if they are there)."""
    if engine == "postgresql":
        for name in (DBNAME, TEST_DBNAME):
            server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.execute(f'CREATE DATABASE "{DBNAME}" OWNER app')
        return False
    else:
        for name in (DBNAME, TEST_DBNAME):
            server.execute(f"DROP DATABASE IF EXISTS `{name}`")
        server.execute(f"CREATE DATABASE `{DBNAME}` CHARACTER SET utf8mb4")
        server.execute(f"GRANT ALL ON `{DBNAME}`.* TO 'app'@'%'")
        return _load_mysql_time_zones(server)


def _load_mysql_time_zones(server: Any) -> bool:
    """Django's ``__date`` / ``Trunc*`` lookups with USE_TZ need MariaDB's time zone tables
    (CONVERT_TZ); load the few zones the scenarios use, as a MariaDB install script would."""
    client = shutil.which("mariadb") or shutil.which("mysql")
    tzinfo = shutil.which("mariadb-tzinfo-to-sql") or shutil.which("mysql_tzinfo_to_sql")
    if not client or not tzinfo:
        return False
    for zone in ("UTC", "Asia/Tokyo"):
        path = Path("/usr/share/zoneinfo") / zone
        loaded = server.execute("SELECT 1 FROM mysql.time_zone_name WHERE Name = %s", (zone,))
        if loaded or not path.exists():
            continue
        sql = subprocess.run([tzinfo, str(path), zone], capture_output=True, check=True).stdout
        subprocess.run([client, "--no-defaults", f"--socket={server.socket_path}", "-uroot",
                        "mysql"], input=sql, capture_output=True, check=True, timeout=60)
    return True


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
def dj(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[DjangoTarget]:
    engine = request.param
    if engine == "postgresql":
        server = request.getfixturevalue("pg_server")
        listener = pg_listener
    else:
        server = request.getfixturevalue("mariadb_server")
        listener = mysql_listener
    config = make_config(
        listener(server, name="main", pool_size=POOL_SIZE),
        listener(server, name="one", pool_size=1, query_wait_timeout=f"{QUERY_WAIT_ONE}s"),
        # server_idle_timeout per database, the way docs/django.md suggests for test databases.
        listener(server, name="reap", pool_size=POOL_SIZE, databases={
            "*": {}, DBNAME: {"server_idle_timeout": "1s"},
            TEST_DBNAME: {"server_idle_timeout": "1s"}}),
        listener(server, name="idle", pool_size=POOL_SIZE, client_idle_timeout="1s"),
    )
    proxy = ProxyProcess(config, tmp_path_factory.mktemp(f"django_{engine}"))
    tz_tables = _fresh_database(engine, server)
    proxy.start()
    target = DjangoTarget(engine, server, proxy, mysql_tz_tables=tz_tables)
    try:
        target.migrate_output = target.manage("migrate", "--noinput", "-v", "1").stdout
        yield target
    finally:
        proxy.stop()
        print(f"\n{engine} subprocess timings (s): {target.timings}")


# --------------------------------------------------------------------------- tests


def test_migrate_from_scratch(dj: DjangoTarget) -> None:
    assert "Applying pp_app.0001_initial... OK" in dj.migrate_output, dj.migrate_output
    assert "Applying pp_app.0002_seed_tags... OK" in dj.migrate_output
    assert "Applying auth.0001_initial... OK" in dj.migrate_output
    result = dj.scenario("migrated")
    assert result["pp_app_migrations"] == 2
    # Backwards (RunPython reverse + RemoveIndex) and forwards again.
    back = dj.manage("migrate", "pp_app", "0001", "--noinput").stdout
    assert "Unapplying pp_app.0002_seed_tags... OK" in back, back
    again = dj.manage("migrate", "--noinput").stdout
    assert "Applying pp_app.0002_seed_tags... OK" in again, again
    plan = dj.manage("showmigrations", "pp_app").stdout
    assert "[X] 0001_initial" in plan and "[X] 0002_seed_tags" in plan, plan


def test_crud_json_fk_unique(dj: DjangoTarget) -> None:
    result = dj.scenario("crud")
    assert result["authors_left"] == 1


def test_atomic_nested_savepoints_and_rollbacks(dj: DjangoTarget) -> None:
    result = dj.scenario("atomic")
    assert result["server_per_transaction"] == 1


def test_select_for_update_from_threads(dj: DjangoTarget) -> None:
    result = dj.scenario("select_for_update")
    assert result["balance"] == THREADS * 10
    assert result["servers_used"] <= POOL_SIZE
    assert result["pool"]["max_servers"] <= POOL_SIZE, result["pool"]


def test_bulk_create(dj: DjangoTarget) -> None:
    result = dj.scenario("bulk")
    assert result["events"] == 2000


def test_update_or_create_races(dj: DjangoTarget) -> None:
    result = dj.scenario("races")
    assert result["created"] == 14


def test_iterator_and_server_side_cursors(dj: DjangoTarget) -> None:
    """DISABLE_SERVER_SIDE_CURSORS=True works everywhere; on PostgreSQL, without it, iterator()
    outside atomic() declares a WITH HOLD cursor that pins the client (other clients of a
    pool_size 1 pool then wait for query_wait_timeout). psycopg 3 with server_side_binding
    and a prepare_threshold (named prepared statements) does NOT pin: poolproxy prepares the
    statements on whichever server the client gets."""
    pg = dj.engine == "postgresql"
    if pg:
        pins_before = metric(dj.proxy, "poolproxy_client_pins_total", listener="one",
                             reason="prepared_statement")
        parses_before = metric(dj.proxy, "poolproxy_prepared_statements_total",
                               listener="one", side="client")
    result = dj.scenario("iterator", listener="one")
    if pg:
        blocked = result["ssc_autocommit_then_other_client"]
        assert blocked["seconds"] >= QUERY_WAIT_ONE * 0.8, blocked
        assert "query_wait_timeout" in blocked["error"], blocked
        assert blocked["sqlstate"] == "57014", blocked
        assert not result["prep_then_other_client"]["blocked"]
        assert not result["ssb_then_other_client"]["blocked"]
        assert not result["prep_client_then_other_client"]["blocked"]
        assert not result["after_ssc_closed"]["blocked"]
        assert not result["after_prep_closed"]["blocked"]
        # The prep alias did prepare named statements, and no client was pinned for that.
        assert metric(dj.proxy, "poolproxy_prepared_statements_total", listener="one",
                      side="client") > parses_before
        assert metric(dj.proxy, "poolproxy_client_pins_total", listener="one",
                      reason="prepared_statement") == pins_before


def test_use_tz_with_tokyo_time_zone(dj: DjangoTarget) -> None:
    result = dj.scenario("time_zones")
    if dj.engine == "mysql":
        assert result["tz_tables_loaded"] == dj.mysql_tz_tables, result


def test_many_threads_conn_max_age_0(dj: DjangoTarget) -> None:
    result = dj.scenario("threads", PP_CONN_MAX_AGE="0")
    assert result["threads"] > result["pool_size"]
    assert result["servers_first_half"] <= POOL_SIZE


def test_many_threads_persistent_connections_with_health_checks(dj: DjangoTarget) -> None:
    """CONN_MAX_AGE=600 + CONN_HEALTH_CHECKS: 16 persistent Django connections over 4 servers,
    which poolproxy closes (server_idle_timeout 1s) and replaces while Django keeps its
    connections open."""
    result = dj.scenario("threads", listener="reap", PP_CONN_MAX_AGE="600",
                         PP_HEALTH_CHECKS="1", PP_PAUSE_FOR_REAP="2.5")
    assert result["servers_second_half"] <= POOL_SIZE
    assert result["pool"]["max_clients"] >= THREADS, result["pool"]


@pytest.mark.parametrize("health_checks", [True, False], ids=["health_checks", "no_checks"])
def test_persistent_connection_closed_by_client_idle_timeout(
    dj: DjangoTarget, health_checks: bool
) -> None:
    """poolproxy closes a persistent Django connection idle for longer than its
    client_idle_timeout. CONN_HEALTH_CHECKS=True hides it (Django reconnects at the start of the
    request); without it, the first request after the pause fails once."""
    result = dj.scenario("idle_client", listener="idle", PP_CONN_MAX_AGE="600",
                         PP_HEALTH_CHECKS="1" if health_checks else "0", PP_IDLE_PAUSE="1.6")
    assert result["connections_opened"] == 2, result
    if health_checks:
        assert result["second_request"] == {"ok": True}, result
    else:
        assert not result["second_request"]["ok"], result


def test_connection_options(dj: DjangoTarget) -> None:
    """PostgreSQL: OPTIONS {"options": "-c TimeZone=UTC"} works, "-c statement_timeout=..." is
    refused at connect (not reported by the server, so it could not be kept per client).
    MySQL: an init_command SET SESSION is replayed per client, and does not pin."""
    dj.scenario("connect_options", listener="one")


def test_session_state_never_leaks_between_clients(dj: DjangoTarget) -> None:
    """pool_size 1: two Django aliases with different time zone / isolation level / sql_mode
    share one server connection; each always sees only its own state."""
    result = dj.scenario("session_leak", listener="one")
    assert result["default"] != result["other"]
    assert result["thread_checks"] > 0


def _run_django_test_runner(dj: DjangoTarget, listener: str, runs: int) -> None:
    """``manage.py test pp_app`` ``runs`` times in a row (the later runs meet whatever pooled
    server connections the earlier ones left to the dropped test database)."""
    for run in range(runs):
        proc = dj.manage("test", "pp_app", "--noinput", "-v", "2", listener=listener,
                         check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"run {run + 1} of {runs}:\n{output[-8000:]}"
        assert "Creating test database for alias 'default'" in output, output[-4000:]
        assert "Destroying test database for alias 'default'" in output
        assert "Ran 4 tests" in output and "OK" in output, output[-4000:]
        assert not dj.database_exists(TEST_DBNAME), "the test database was not dropped"


def test_django_test_runner_with_short_server_idle_timeout(dj: DjangoTarget) -> None:
    """The workaround docs/django.md gives: a server_idle_timeout for the test database below
    the 5 s that PostgreSQL's DROP DATABASE waits for other sessions to leave."""
    _run_django_test_runner(dj, "reap", runs=1)


def test_django_test_runner_creates_and_drops_its_database(
    dj: DjangoTarget, request: pytest.FixtureRequest
) -> None:
    """Default settings (server_idle_timeout 10m). Idle server connections to a
    database are closed when it has no clients for a while, so that Django's test runner can
    DROP DATABASE test_... through the proxy.

    poolproxy closes the idle servers of a "*"-matched database 2 s after its last client left,
    inside PostgreSQL's 5 s DROP DATABASE wait."""
    _run_django_test_runner(dj, "main", runs=2)
