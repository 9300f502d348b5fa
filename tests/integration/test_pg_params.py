"""Reported parameters follow each client across a shared server (issue "Must show 3").

Two clients with different TimeZone / application_name / DateStyle / IntervalStyle /
client_encoding take turns on the one server connection of a ``pool_size: 1`` proxy (proved by
``pg_backend_pid()``); each must always see its own values, in SHOW and in how the server
formats data. Setting a reported parameter outside a transaction must not pin the client.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors, pq

from tests.harness import PgServer, ProxyProcess
from tests.harness.pgclient import connect, discard_all, one, pool_of_one_proxy

QUERY_WAIT = 3


@pytest.fixture(scope="module")
def proxy(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    yield from pool_of_one_proxy(pg_server, tmp_path_factory.mktemp("pg_params_proxy"), QUERY_WAIT)


@pytest.fixture(autouse=True)
def _reset_pooled_server(proxy: ProxyProcess) -> Iterator[None]:
    """After each test, DISCARD ALL on the pooled server (see ``discard_all``)."""
    yield
    discard_all(proxy)


@pytest.fixture(scope="module")
def defaults(pg_server: PgServer) -> dict[str, str]:
    """The server's defaults, read directly (not through the proxy)."""
    names = ("TimeZone", "DateStyle", "IntervalStyle", "application_name", "client_encoding",
             "search_path")
    with psycopg.connect(pg_server.dsn("app", "app-secret", "app"), autocommit=True) as conn:
        values = {n: conn.execute(f"SELECT current_setting('{n}')").fetchone()[0]  # type: ignore[index]
                  for n in names}
    assert values["TimeZone"] not in ("Asia/Tokyo", "America/Sao_Paulo")
    assert values["DateStyle"] == "ISO, MDY"
    return values


def settings(conn: psycopg.Connection) -> tuple[Any, ...]:
    """(server pid, TimeZone, application_name, DateStyle, UTC offset of now()), all from one
    statement, through the extended protocol with a parameter."""
    row = conn.execute(
        "SELECT pg_backend_pid(), current_setting('TimeZone'), current_setting(%s),"
        " current_setting('DateStyle'), to_char(now(), 'OF')", ("application_name",)
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_startup_parameters_per_client(proxy: ProxyProcess, defaults: dict[str, str]) -> None:
    a = connect(proxy, options="-c TimeZone=Asia/Tokyo -c DateStyle=German",
                application_name="client-a")
    b = connect(proxy, options="-c timezone=America/Sao_Paulo", application_name="client-b")
    plain = connect(proxy)
    try:
        # What the proxy reported at login.
        assert a.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert a.info.parameter_status("application_name") == "client-a"
        assert (a.info.parameter_status("DateStyle") or "").startswith("German")
        assert b.info.parameter_status("TimeZone") == "America/Sao_Paulo"
        assert b.info.parameter_status("application_name") == "client-b"
        assert plain.info.parameter_status("TimeZone") == defaults["TimeZone"]
        assert plain.info.parameter_status("application_name") == ""

        pid = one(plain, "SELECT pg_backend_pid()")
        expected = {
            "a": (pid, "Asia/Tokyo", "client-a", "German, DMY", "+09"),
            "b": (pid, "America/Sao_Paulo", "client-b", "ISO, MDY", "-03"),
            "plain": (pid, defaults["TimeZone"], "", "ISO, MDY", "+00"),
        }
        conns = {"a": a, "b": b, "plain": plain}
        for name in itertools.islice(itertools.cycle(["a", "b", "a", "plain", "b"]), 40):
            assert settings(conns[name]) == expected[name], name
        # The server formats data with each client's own settings (simple protocol here).
        assert one(a, "SELECT '2024-01-31'::date::text") == "31.01.2024"
        assert one(b, "SELECT '2024-01-31'::date::text") == "2024-01-31"
        assert one(a, "SELECT '2024-06-01 12:00:00+00'::timestamptz::text"
                   ) == "01.06.2024 21:00:00 JST"
        assert one(b, "SELECT '2024-06-01 12:00:00+00'::timestamptz::text"
                   ) == "2024-06-01 09:00:00-03"
        # pg_stat_activity shows the application_name of the client holding the server.
        assert one(a, "SELECT application_name FROM pg_stat_activity"
                      " WHERE pid = pg_backend_pid()") == "client-a"
        assert one(b, "SELECT application_name FROM pg_stat_activity"
                      " WHERE pid = pg_backend_pid()") == "client-b"
    finally:
        for conn in (a, b, plain):
            conn.close()


def test_set_outside_transaction_per_client(proxy: ProxyProcess,
                                            defaults: dict[str, str]) -> None:
    with connect(proxy) as a, connect(proxy) as b:
        pid = one(a, "SELECT pg_backend_pid()")
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        a.execute("SET application_name = 'set-a'")
        b.execute("SET TIME ZONE 'America/Sao_Paulo'")  # the SQL-standard spelling
        b.execute("SELECT set_config('application_name', %s, false)", ("set-b",))
        b.execute("SET DateStyle = 'SQL, DMY'")
        b.execute("SET IntervalStyle TO postgres_verbose")
        # libpq saw the new values (ParameterStatus went through to the right client).
        assert a.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert b.info.parameter_status("TimeZone") == "America/Sao_Paulo"
        assert b.info.parameter_status("DateStyle") == "SQL, DMY"
        assert b.info.parameter_status("IntervalStyle") == "postgres_verbose"
        assert a.info.parameter_status("IntervalStyle") == defaults["IntervalStyle"]
        for _ in range(25):
            assert settings(a) == (pid, "Asia/Tokyo", "set-a", "ISO, MDY", "+09")
            assert settings(b) == (pid, "America/Sao_Paulo", "set-b", "SQL, DMY", "-03")
            assert one(a, "SELECT '2024-01-31'::date::text") == "2024-01-31"
            assert one(b, "SELECT '2024-01-31'::date::text") == "31/01/2024"
            assert one(a, "SELECT interval '1 day 2 hours'::text") == "1 day 02:00:00"
            assert one(b, "SELECT interval '1 day 2 hours'::text") == "@ 1 day 2 hours"
            with a.transaction():
                assert one(a, "SHOW TimeZone") == "Asia/Tokyo"
                assert one(a, "SHOW application_name") == "set-a"
            with b.transaction():
                assert one(b, "SHOW TimeZone") == "America/Sao_Paulo"
                assert one(b, "SHOW application_name") == "set-b"
        # A third client, and a direct connection, see none of it.
        with connect(proxy) as c:
            assert settings(c) == (pid, defaults["TimeZone"], "", "ISO, MDY", "+00")
            assert one(c, "SHOW IntervalStyle") == defaults["IntervalStyle"]


def test_client_encoding_per_client(proxy: ProxyProcess) -> None:
    with connect(proxy, client_encoding="LATIN1") as latin, connect(proxy) as utf8:
        assert latin.info.encoding == "iso8859-1"
        pid = one(utf8, "SELECT pg_backend_pid()")
        for _ in range(10):
            # If the server sent UTF-8 to the LATIN1 client, psycopg would decode 'Ã©'.
            assert latin.execute("SELECT 'é', length('é'), current_setting('client_encoding'),"
                                 " pg_backend_pid()").fetchone() == ("é", 1, "LATIN1", pid)
            assert latin.execute("SELECT %s::text || 'ü'", ("ä",)).fetchone() == ("äü",)
            assert utf8.execute("SELECT 'é✓', length('é✓'), current_setting('client_encoding'),"
                                " pg_backend_pid()").fetchone() == ("é✓", 2, "UTF8", pid)
        # A character LATIN1 cannot represent is an error for that client only.
        with pytest.raises(errors.UntranslatableCharacter):
            latin.execute("SELECT chr(10003)")
        assert one(latin, "SELECT 'ok'") == "ok"
        assert one(utf8, "SELECT chr(10003)") == "✓"


def test_set_in_rolled_back_transaction_reverts_for_that_client_only(
        proxy: ProxyProcess, defaults: dict[str, str]) -> None:
    with connect(proxy) as a, connect(proxy) as b:
        pid = one(a, "SELECT pg_backend_pid()")
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        b.execute("SET TimeZone = 'America/Sao_Paulo'")

        class Rollback(Exception):
            pass

        with pytest.raises(Rollback):
            with a.transaction():
                a.execute("SET TimeZone = 'Europe/Helsinki'")
                a.execute("SET application_name = 'in-tx'")
                assert one(a, "SHOW TimeZone") == "Europe/Helsinki"
                raise Rollback
        assert a.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert a.info.parameter_status("application_name") == ""
        for _ in range(5):
            assert settings(a) == (pid, "Asia/Tokyo", "", "ISO, MDY", "+09")
            assert settings(b) == (pid, "America/Sao_Paulo", "", "ISO, MDY", "-03")

        # A failed transaction: the error, then ROLLBACK, reverts too.
        a.autocommit = False
        a.execute("SET TimeZone = 'Europe/Helsinki'")
        with pytest.raises(errors.DivisionByZero):
            a.execute("SELECT 1 / 0")
        a.rollback()
        a.autocommit = True
        assert settings(a) == (pid, "Asia/Tokyo", "", "ISO, MDY", "+09")
        assert settings(b) == (pid, "America/Sao_Paulo", "", "ISO, MDY", "-03")

        # A committed SET inside a transaction sticks; SET LOCAL does not.
        with a.transaction():
            a.execute("SET TimeZone = 'Europe/Helsinki'")
            a.execute("SET LOCAL application_name = 'local-only'")
            assert one(a, "SHOW application_name") == "local-only"
        assert a.info.parameter_status("TimeZone") == "Europe/Helsinki"
        for _ in range(5):
            assert settings(a)[:3] == (pid, "Europe/Helsinki", "")
            assert settings(b) == (pid, "America/Sao_Paulo", "", "ISO, MDY", "-03")
        # Savepoints: rolling back to one reverts what was set after it.
        with a.transaction():
            a.execute("SET TimeZone = 'Asia/Tokyo'")
            with pytest.raises(Rollback):
                with a.transaction():
                    a.execute("SET TimeZone = 'UTC'")
                    raise Rollback
            assert one(a, "SHOW TimeZone") == "Asia/Tokyo"
        assert settings(a)[:2] == (pid, "Asia/Tokyo")
        assert settings(b)[:2] == (pid, "America/Sao_Paulo")


def test_reset_returns_to_server_default(proxy: ProxyProcess, defaults: dict[str, str]) -> None:
    with connect(proxy) as a, connect(proxy) as b:
        pid = one(a, "SELECT pg_backend_pid()")
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        a.execute("SET application_name = 'a'")
        a.execute("SET DateStyle = 'German'")
        b.execute("SET TimeZone = 'America/Sao_Paulo'")
        assert settings(a) == (pid, "Asia/Tokyo", "a", "German, DMY", "+09")
        a.execute("RESET TimeZone")
        assert a.info.parameter_status("TimeZone") == defaults["TimeZone"]
        for _ in range(3):
            assert settings(a) == (pid, defaults["TimeZone"], "a", "German, DMY", "+00")
            assert settings(b)[:2] == (pid, "America/Sao_Paulo")
        a.execute("RESET application_name")
        a.execute("SET DateStyle TO DEFAULT")
        assert a.info.parameter_status("application_name") == ""
        assert a.info.parameter_status("DateStyle") == defaults["DateStyle"]
        for _ in range(3):
            assert settings(a) == (pid, defaults["TimeZone"], "", defaults["DateStyle"], "+00")
            assert settings(b)[:2] == (pid, "America/Sao_Paulo")
        b.execute("SET TimeZone TO DEFAULT")
        assert settings(b) == (pid, defaults["TimeZone"], "", defaults["DateStyle"], "+00")
        assert settings(a) == (pid, defaults["TimeZone"], "", defaults["DateStyle"], "+00")


def test_reset_all_returns_to_server_defaults_without_pinning(
        proxy: ProxyProcess, defaults: dict[str, str]) -> None:
    """RESET ALL leaves nothing behind (every setting back at the server default, reported ones
    announced by ParameterStatus), so it is no reason to pin the client."""
    with connect(proxy) as a, connect(proxy) as b:
        pid = one(a, "SELECT pg_backend_pid()")
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        a.execute("SET application_name = 'a'")
        a.execute("SET DateStyle = 'German'")
        b.execute("SET TimeZone = 'America/Sao_Paulo'")
        a.execute("RESET ALL")
        assert a.info.parameter_status("TimeZone") == defaults["TimeZone"]
        assert a.info.parameter_status("application_name") == ""
        assert a.info.parameter_status("DateStyle") == defaults["DateStyle"]
        for _ in range(3):
            assert settings(a) == (pid, defaults["TimeZone"], "", defaults["DateStyle"], "+00")
            assert settings(b) == (pid, "America/Sao_Paulo", "", defaults["DateStyle"], "-03")


@pytest.mark.xfail(strict=True, reason="known limitation (README): RESET of a parameter given at "
                   "startup returns to the pool's server default, not the client's startup value")
def test_reset_after_startup_options_behaves_like_postgres(
        pg_server: PgServer, proxy: ProxyProcess) -> None:
    """RESET goes back to the value the client connected with (its session default), as it
    does on a direct connection; it must not pick up the pooled server's own defaults."""
    options = "-c TimeZone=Asia/Tokyo"
    direct = psycopg.connect(pg_server.dsn("app", "app-secret", "app"), options=options,
                             application_name="startup-name", autocommit=True)
    via = connect(proxy, options=options, application_name="startup-name")
    other = connect(proxy)
    try:
        for conn in (direct, via):
            conn.execute("SET TimeZone = 'America/Sao_Paulo'")
            conn.execute("SET application_name = 'changed'")
            conn.execute("RESET TimeZone")
            conn.execute("RESET application_name")
        expected = one(direct, "SELECT current_setting('TimeZone') || ' ' ||"
                               " current_setting('application_name')")
        assert expected == "Asia/Tokyo startup-name"
        one(other, "SELECT 1")  # someone else used the server in between
        assert one(via, "SELECT current_setting('TimeZone') || ' ' ||"
                        " current_setting('application_name')") == expected
    finally:
        for conn in (direct, via, other):
            conn.close()


def test_login_parameter_status_matches_postgres(pg_server: PgServer, proxy: ProxyProcess
                                                 ) -> None:
    """The ParameterStatus values a client gets at login are the ones PostgreSQL itself would
    report for the same startup options (canonical spelling: drivers such as psycopg read
    DateStyle to parse dates)."""
    options = "-c DateStyle=German -c TimeZone=utc -c IntervalStyle=SQL_STANDARD"
    names = ("DateStyle", "TimeZone", "IntervalStyle", "application_name", "client_encoding")
    with psycopg.connect(pg_server.dsn("app", "app-secret", "app"), options=options,
                         application_name="pstatus") as direct:
        expected = {n: direct.info.parameter_status(n) for n in names}
    assert expected["DateStyle"] == "German, DMY"
    with connect(proxy, options=options, application_name="pstatus") as via:
        assert {n: via.info.parameter_status(n) for n in names} == expected
        one(via, "SELECT 1")
        assert {n: via.info.parameter_status(n) for n in names} == expected


def test_parameter_changes_do_not_pin(proxy: ProxyProcess) -> None:
    """SET of a reported parameter is replayed, not pinned: with one server, a second client
    runs right after each SET (it would time out with 57014 if the first client were pinned)."""
    with connect(proxy) as a:
        pid = one(a, "SELECT pg_backend_pid()")
        for sql in ("SET TimeZone = 'Asia/Tokyo'", "SET application_name = 'x'",
                    "SET DateStyle = 'Postgres, DMY'", "SET IntervalStyle = 'iso_8601'",
                    "SET client_encoding = 'UTF8'", "RESET TimeZone", "SET TIME ZONE LOCAL",
                    "SET standard_conforming_strings = on"):
            a.execute(sql)
            assert a.info.transaction_status == pq.TransactionStatus.IDLE
            with connect(proxy) as b:
                assert one(b, "SELECT pg_backend_pid()") == pid, sql


def test_search_path_startup_option_is_refused_clearly(
        pg_server: PgServer, proxy: ProxyProcess, defaults: dict[str, str]) -> None:
    """PostgreSQL 15 does not report search_path, so the proxy could not keep it per client:
    a `-c search_path=...` startup option is refused with 0A000 naming the parameter, and a
    SET search_path pins the client (so it never leaks to the next one)."""
    with pytest.raises(psycopg.OperationalError, match="search_path"):
        connect(proxy, options="-c search_path=pp_param_schema,public")
    a = connect(proxy)
    try:
        a.execute("SET search_path = pp_param_schema, public")
        pid = one(a, "SELECT pg_backend_pid()")
    finally:
        a.close()
    b = connect(proxy)
    try:
        assert b.execute("SELECT pg_backend_pid(), current_setting('search_path')"
                         ).fetchone() == (pid, defaults["search_path"])
    finally:
        b.close()
