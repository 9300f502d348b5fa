"""Protocol-level prepared statements in transaction mode, against a real PostgreSQL.

Drivers run at their defaults (psycopg 3 prepares a query from its fifth execution on, asyncpg
prepares every query it runs) over pools smaller than the client count: every client must get
exact results, no client may be pinned, and no pool may open more servers than `pool_size`.

The corners are raw message scripts run twice, once directly against PostgreSQL and once through
the proxy, and the replies must be the same message for message (errors compared by severity,
SQLSTATE and message; ParameterStatus and BackendKeyData aside). Through the proxy, a script may
"disturb" between its steps: terminate the proxy's server connections, or let another client
use the only server, so that the script's statements must be prepared again elsewhere.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from tests.harness import PgServer, ProxyProcess, make_config, pg_listener
from tests.harness.pgraw import Raw, error_fields, message, simple_query, trust_login
from tests.harness.util import http_get, metric, wait_for

QUERY_WAIT = 3
Msg = tuple[bytes, bytes]


@pytest.fixture(scope="module")
def proxy(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    common: dict[str, Any] = {"query_wait_timeout": f"{QUERY_WAIT}s"}
    config = make_config(
        pg_listener(pg_server, pool_size=2, **common),
        pg_listener(pg_server, name="one", pool_size=1, **common),
        pg_listener(pg_server, name="tiny", pool_size=1, max_prepared_statements=3, **common),
        pg_listener(pg_server, name="trust", auth={"type": "trust"}, pool_size=1, **common),
        pg_listener(pg_server, name="session", pool_mode="session", pool_size=2, **common),
        pg_listener(pg_server, name="off", max_prepared_statements=0, pool_size=1, **common),
        pg_listener(pg_server, name="count", auth={"type": "trust"}, pool_size=1, **common),
        admin_users=["app"],
    )
    proc = ProxyProcess(config, tmp_path_factory.mktemp("pg_prepared_proxy"))
    proc.start()
    yield proc
    proc.stop()


def dsn(proxy: ProxyProcess, listener: str = "pg") -> str:
    return (f"host=127.0.0.1 port={proxy.port(listener)} user=app password=app-secret "
            "dbname=app connect_timeout=10")


def apg(proxy: ProxyProcess, listener: str = "pg") -> Any:
    return asyncpg.connect(host="127.0.0.1", port=proxy.port(listener), user="app",
                           password="app-secret", database="app")


def pins(proxy: ProxyProcess, listener: str) -> float:
    return metric(proxy, "poolproxy_client_pins_total", listener=listener)


def pool_of(proxy: ProxyProcess, listener: str) -> dict[str, Any]:
    import json
    pools = [p for p in json.loads(http_get(proxy, "/pools")) if p["listener"] == listener
             and p["user"] == "app" and p["database"] == "app"]
    assert len(pools) == 1, pools
    return pools[0]


def server_count(proxy: ProxyProcess, listener: str) -> int:
    servers = pool_of(proxy, listener)["servers"]
    return int(servers["active"] + servers["idle"] + servers["login"] + servers["testing"])


# --------------------------------------------------------------------------- drivers at defaults


def test_psycopg_default_threshold_two_clients_one_server(proxy: ProxyProcess) -> None:
    """The issue's first report: two psycopg clients at the default prepare_threshold over
    `pool_size: 1`, in turns, well past the fifth repeat that makes psycopg prepare."""
    before = pins(proxy, "one")
    a = psycopg.connect(dsn(proxy, "one"), autocommit=True)
    b = psycopg.connect(dsn(proxy, "one"), autocommit=True)
    try:
        for i in range(12):
            for name, conn in (("a", a), ("b", b)):
                conn.execute("select set_config('application_name', %s, false)", (name,))
                assert conn.execute("show timezone").fetchone() is not None
                assert conn.execute("select current_setting('application_name'), %s::int",
                                    (i,)).fetchone() == (name, i)
        assert a.prepared_max == 100  # psycopg's defaults, untouched
        assert server_count(proxy, "one") == 1
    finally:
        a.close()
        b.close()
    assert pins(proxy, "one") == before


def test_psycopg_default_eight_clients_over_five(proxy: ProxyProcess, pg_server: PgServer) -> None:
    """8 threads, psycopg at its defaults, `pool_size: 2`: exact results, never more servers
    than the pool size, nothing pinned; then the database terminates the idle backends and
    every client carries on (its statements are prepared again on new servers)."""
    before = pins(proxy, "pg")
    conns = [psycopg.connect(dsn(proxy), autocommit=True) for _ in range(8)]
    failures: list[BaseException] = []
    peak = [0]

    def work(k: int, conn: psycopg.Connection, rounds: int) -> None:
        try:
            for i in range(rounds):
                row = conn.execute("select %s::int * 1000 + %s::int", (k, i)).fetchone()
                assert row == (k * 1000 + i,)
                with conn.transaction():
                    assert conn.execute("select %s::text || 'x'", (str(k),)).fetchone() == (f"{k}x",)
                peak[0] = max(peak[0], server_count(proxy, "pg")) if i % 10 == 0 else peak[0]
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    def run(rounds: int) -> None:
        threads = [threading.Thread(target=work, args=(k, c, rounds)) for k, c in enumerate(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failures, failures

    try:
        run(30)
        with psycopg.connect(pg_server.dsn(dbname="app"), autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                          "where usename = 'app' and datname = 'app' and state = 'idle' "
                          "and pid <> pg_backend_pid()")
        run(10)
        assert peak[0] <= 2
        assert server_count(proxy, "pg") <= 2
    finally:
        for c in conns:
            c.close()
    assert pins(proxy, "pg") == before


def test_asyncpg_default_forty_clients_over_two(proxy: ProxyProcess) -> None:
    """The issue's asyncpg report: 40 connected clients (statement cache at its default) over
    `pool_size: 2`, every one runs queries with parameters, concurrently."""
    before = pins(proxy, "pg")

    async def main() -> None:
        conns = [await apg(proxy) for _ in range(40)]
        try:
            for r in range(3):
                got = await asyncio.gather(*(
                    c.fetchrow("select $1::int as k, $2::text as r, pg_backend_pid() as pid", k,
                               str(r)) for k, c in enumerate(conns)))
                assert [(g["k"], g["r"]) for g in got] == [(k, str(r)) for k in range(40)]
                assert len({g["pid"] for g in got}) <= 2
            async with conns[0].transaction():
                await conns[0].execute("select $1::int", 1)
        finally:
            for c in conns:
                await c.close()

    asyncio.run(main())
    assert server_count(proxy, "pg") <= 2
    assert pins(proxy, "pg") == before


def test_asyncpg_prepared_and_executemany(proxy: ProxyProcess, pg_server: PgServer) -> None:
    """asyncpg's explicit prepare, executemany (a pipeline of Bind/Execute) and cursors."""
    with psycopg.connect(pg_server.dsn(dbname="app"), autocommit=True) as admin:
        admin.execute("drop table if exists prep_many")
        admin.execute("create table prep_many (k int primary key, v text)")
        admin.execute("grant all on prep_many to app")

    async def main() -> None:
        a, b = await apg(proxy, "one"), await apg(proxy, "one")
        try:
            # (An explicit prepare is Parse/Describe/Flush: the server stays with the client,
            # in the implicit transaction Parse began, until its next Sync.)
            stmt = await a.prepare("select v from prep_many where k = $1")
            assert await stmt.fetchval(0) is None
            await b.executemany("insert into prep_many values ($1, $2)",
                                [(k, f"v{k}") for k in range(200)])
            assert [await stmt.fetchval(k) for k in (0, 77, 199)] == ["v0", "v77", "v199"]
            async with b.transaction():
                rows = [r async for r in b.cursor("select k from prep_many order by k")]
            assert [r["k"] for r in rows] == list(range(200))
            assert await stmt.fetchval(5) == "v5"
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_ddl_refused_plan_is_recovered(proxy: ProxyProcess, pg_server: PgServer) -> None:
    """After DDL, PostgreSQL refuses a prepared statement's old plan ("cached plan must not
    change result type", 0A000). poolproxy then closes it on that server, so the drivers'
    usual recovery works: asyncpg prepares again by itself; psycopg fails once (as directly)
    and then prepares again."""
    with psycopg.connect(pg_server.dsn(dbname="app"), autocommit=True) as admin:
        admin.execute("drop table if exists prep_ddl")
        admin.execute("create table prep_ddl (a int)")
        admin.execute("insert into prep_ddl values (1)")
        admin.execute("grant all on prep_ddl to app")

        async def asyncpg_side() -> None:
            conn = await apg(proxy, "one")
            try:
                assert await conn.fetch("select * from prep_ddl") == [(1,)]
                admin.execute("alter table prep_ddl add column b int default 2")
                rows = await conn.fetch("select * from prep_ddl")
                assert [tuple(r) for r in rows] == [(1, 2)]
            finally:
                await conn.close()

        asyncio.run(asyncpg_side())

        conn = psycopg.connect(dsn(proxy, "one"), autocommit=True)
        try:
            for _ in range(6):  # prepared from the fifth on
                assert conn.execute("select * from prep_ddl").fetchall() == [(1, 2)]
            admin.execute("alter table prep_ddl add column c int default 3")
            with pytest.raises(errors.FeatureNotSupported):
                conn.execute("select * from prep_ddl")
            assert conn.execute("select * from prep_ddl").fetchall() == [(1, 2, 3)]
            assert conn.execute("select * from prep_ddl").fetchall() == [(1, 2, 3)]
        finally:
            conn.close()


def test_psycopg_pipeline_with_prepared_statements(proxy: ProxyProcess) -> None:
    """psycopg's pipeline mode: statements prepared from the fifth repeat on, mid-pipeline (no
    Sync between them), with an error in the middle."""
    conn = psycopg.connect(dsn(proxy, "one"), autocommit=True)
    other = psycopg.connect(dsn(proxy, "one"), autocommit=True)
    try:
        for _ in range(3):
            with conn.pipeline():
                curs = [conn.execute("select %s::int + 1", (i,)) for i in range(12)]
                assert [c.fetchone() for c in curs] == [(i + 1,) for i in range(12)]
            assert other.execute("select %s::int", (7,)).fetchone() == (7,)
        with pytest.raises(errors.DivisionByZero), conn.pipeline():
            conn.execute("select %s::int + 1", (1,))
            conn.execute("select 1 / %s::int", (0,))
            conn.execute("select %s::int + 1", (2,))
        assert conn.execute("select %s::int + 1", (5,)).fetchone() == (6,)
    finally:
        conn.close()
        other.close()


def test_copy_and_cancel_with_statements_in_play(proxy: ProxyProcess, pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn(dbname="app"), autocommit=True) as admin:
        admin.execute("drop table if exists prep_copy")
        admin.execute("create table prep_copy (k int, v text)")
        admin.execute("grant all on prep_copy to app")
    conn = psycopg.connect(dsn(proxy, "one"), autocommit=True)
    try:
        for i in range(6):
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
        with conn.cursor().copy("copy prep_copy (k, v) from stdin") as copy:
            for k in range(1000):
                copy.write_row((k, f"row {k}"))
        assert conn.execute("select count(*) from prep_copy where k >= %s", (0,)).fetchone() == (1000,)
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("select pg_sleep(%s)", (10,))
        timer.join()
        for i in range(6):
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
    finally:
        conn.close()


def test_session_mode_keeps_statements_on_the_client_server(proxy: ProxyProcess) -> None:
    """In session mode the client's names reach its server as they are."""
    async def main() -> None:
        conn = await apg(proxy, "session")
        try:
            stmt = await conn.prepare("select $1::int + 40")
            assert await stmt.fetchval(2) == 42
            names = await conn.fetch("select name from pg_prepared_statements")
            assert any(r["name"].startswith("__asyncpg_stmt_") for r in names), names
        finally:
            await conn.close()

    asyncio.run(main())


def test_off_keeps_pinning(proxy: ProxyProcess) -> None:
    """`max_prepared_statements: 0`: a client that prepares is pinned, as before."""
    before = pins(proxy, "off")

    async def main() -> None:
        conn = await apg(proxy, "off")
        try:
            assert await conn.fetchval("select $1::int", 3) == 3
        finally:
            await conn.close()

    asyncio.run(main())
    assert pins(proxy, "off") == before + 1


# --------------------------------------------------------------------------- server-side view


def server_statements(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute(
        "select name, statement from pg_prepared_statements order by name", prepare=False)]


def test_same_sql_shared_same_name_different_sql(proxy: ProxyProcess) -> None:
    """Two clients, one server: the same SQL under two names is prepared once; the same name
    for two different SQL texts stays two statements."""
    async def main() -> None:
        a, b = await apg(proxy, "one"), await apg(proxy, "one")
        try:
            # An explicit prepare holds the server until the next Sync (see above): each one is
            # executed before the other client goes on.
            sa = await a.prepare("select $1::int * 3 /* shared */")
            assert await sa.fetchval(2) == 6
            sb = await b.prepare("select $1::int * 3 /* shared */")
            assert await sb.fetchval(3) == 9
            # asyncpg names its statements __asyncpg_stmt_<n>__ per connection: both clients
            # use the same names for different SQL.
            ta = await a.prepare("select 'a' || $1::text")
            assert await ta.fetchval("x") == "ax"
            tb = await b.prepare("select 'b' || $1::text")
            assert await tb.fetchval("y") == "by"
            assert (await ta.fetchval("z"), await sa.fetchval(1)) == ("az", 3)
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())
    with psycopg.connect(dsn(proxy, "one"), autocommit=True) as conn:
        stmts = server_statements(conn)
    shared = [s for s in stmts if "/* shared */" in s[1]]
    assert len(shared) == 1, stmts
    assert all(name.startswith("poolproxy_") for name, _ in stmts), stmts


def test_lru_bound_under_churn(proxy: ProxyProcess) -> None:
    """`max_prepared_statements: 3`: statements churn through the only server, which never
    holds more than three of them, and every statement keeps working."""
    async def main() -> None:
        a, b = await apg(proxy, "tiny"), await apg(proxy, "tiny")
        try:
            stmts = []
            for k in range(8):
                stmts.append(await a.prepare(f"select $1::int + {k}"))
                assert await stmts[-1].fetchval(0) == k
            for rnd in range(3):
                for k, stmt in enumerate(stmts):
                    assert await stmt.fetchval(rnd) == rnd + k
                    count = await b.fetchval("select count(*) from pg_prepared_statements "
                                             "where name like 'poolproxy%'")
                    assert count <= 3
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- raw scripts


def parse(name: bytes, sql: str, types: tuple[int, ...] = ()) -> bytes:
    body = name + b"\x00" + sql.encode() + b"\x00" + len(types).to_bytes(2, "big")
    body += b"".join(t.to_bytes(4, "big") for t in types)
    return message(b"P", body)


def bind(stmt: bytes, params: tuple[str | None, ...] = (), portal: bytes = b"") -> bytes:
    body = portal + b"\x00" + stmt + b"\x00" + b"\x00\x00" + len(params).to_bytes(2, "big")
    for value in params:
        if value is None:
            body += (-1).to_bytes(4, "big", signed=True)
        else:
            raw = value.encode()
            body += len(raw).to_bytes(4, "big") + raw
    return message(b"B", body + b"\x00\x00")


def describe(kind: bytes, name: bytes) -> bytes:
    return message(b"D", kind + name + b"\x00")


def close(kind: bytes, name: bytes) -> bytes:
    return message(b"C", kind + name + b"\x00")


def execute(portal: bytes = b"") -> bytes:
    return message(b"E", portal + b"\x00\x00\x00\x00\x00")


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\x00")


SYNC = message(b"S")
FLUSH = message(b"H")

#: A step: what to send, and how many ReadyForQuery to wait for (or, for a Flush, how many
#: messages to read); "disturb" is a step that only runs through the proxy, between steps.
Step = tuple[bytes, int] | tuple[bytes, int, str] | str


def normalise(msgs: list[Msg]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for t, body in msgs:
        if t in (b"S", b"K"):
            continue
        if t in (b"E", b"N"):
            f = error_fields(body)
            out.append((t.decode(), (f.get("S"), f.get("C"), f.get("M"))))
        else:
            out.append((t.decode(), body))
    return out


def run(raw: Raw, script: list[Step], disturb: Callable[[str], None] | None) -> list[Any]:
    replies: list[Any] = []
    for step in script:
        if isinstance(step, str):
            if disturb is not None:
                disturb(step)
            continue
        data, count = step[0], step[1]
        raw.send(data)
        got: list[Msg] = []
        if len(step) == 3:  # read `count` messages (after a Flush: no ReadyForQuery)
            while len([m for m in got if m[0] not in (b"S", b"N")]) < count:
                msg = raw.read_message()
                assert msg is not None, got
                got.append(msg)
        else:
            for _ in range(count):
                got.extend(raw.read_until(b"Z"))
        replies.append(normalise(got))
    return replies


def compare(proxy: ProxyProcess, pg_server: PgServer, script: list[Step],
            disturbances: Callable[[str], None] | None = None) -> list[Any]:
    """Run `script` directly and through the proxy; the replies must be the same."""
    direct = trust_login(pg_server.port)
    try:
        expected = run(direct, script, None)
    finally:
        direct.close()
    through = trust_login(proxy.port("trust"))
    try:
        got = run(through, script, disturbances)
        # The session is still sound afterwards.
        assert normalise(simple_query(through, "select 1"))[-1] == ("Z", b"I")
    finally:
        through.close()
    assert got == expected
    return got


def make_disturber(proxy: ProxyProcess, pg_server: PgServer) -> Callable[[str], None]:
    def disturb(what: str) -> None:
        if what == "kill":
            # The database ends the proxy's server connection: statements are gone with it.
            with psycopg.connect(pg_server.dsn(dbname="app"), autocommit=True) as admin:
                admin.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                              "where usename = 'app_trust' and state = 'idle' "
                              "and pid <> pg_backend_pid()")
            wait_for(lambda: server_count_trust() == 0, 5)
        elif what == "other":
            # Another client uses the only server (and its own statements) in between.
            other = trust_login(proxy.port("trust"))
            try:
                other.send(parse(b"o1", "select $1::int * 5") + bind(b"o1", ("2",)) + execute()
                           + SYNC)
                assert [t for t, _ in other.read_until(b"Z")] == [b"1", b"2", b"D", b"C", b"Z"]
            finally:
                other.close()

    def server_count_trust() -> int:
        with psycopg.connect(pg_server.dsn(dbname="app"), autocommit=True) as admin:
            row = admin.execute("select count(*) from pg_stat_activity where usename = "
                                "'app_trust' and pid <> pg_backend_pid()").fetchone()
            return int(row[0]) if row else 0

    return disturb


@pytest.fixture
def disturb(proxy: ProxyProcess, pg_server: PgServer) -> Callable[[str], None]:
    return make_disturber(proxy, pg_server)


def test_statement_lifecycle_matches_direct(proxy: ProxyProcess, pg_server: PgServer,
                                            disturb: Callable[[str], None]) -> None:
    """Parse, Bind, Describe, Execute, Close of named statements; the statement survives the
    loss of its server and another client's use of it; Close frees only this client's name."""
    compare(proxy, pg_server, [
        (parse(b"s1", "select $1::int + 1", (23,)) + bind(b"s1", ("1",)) + describe(b"P", b"")
         + execute() + SYNC, 1),
        "other",
        (bind(b"s1", ("2",)) + execute() + SYNC, 1),
        "kill",
        (describe(b"S", b"s1") + bind(b"s1", ("3",)) + execute() + SYNC, 1),
        (parse(b"s2", "select $1::text || 'x'") + parse(b"s3", "select 42") + SYNC, 1),
        (close(b"S", b"s2") + bind(b"s3") + execute() + close(b"S", b"nope") + SYNC, 1),
        (bind(b"s2", ("a",)) + execute() + SYNC, 1),  # 26000: closed
        (parse(b"s2", "select $1::text || 'y'") + bind(b"s2", ("b",)) + execute() + SYNC, 1),
        (close(b"P", b"noportal") + close(b"S", b"") + SYNC, 1),
    ], disturb)


def test_errors_match_direct(proxy: ProxyProcess, pg_server: PgServer,
                             disturb: Callable[[str], None]) -> None:
    """42P05 on a live name and 26000 on an unknown one skip the rest of the batch to Sync; a
    Parse that fails records nothing; a failed transaction block refuses Parse (25P02) even
    of a statement the server has; a wrong parameter count is the server's own error."""
    compare(proxy, pg_server, [
        (parse(b"a", "select 1") + SYNC, 1),
        (parse(b"a", "select 2") + bind(b"a") + execute() + SYNC, 1),  # 42P05, skipped
        (bind(b"a") + execute() + SYNC, 1),  # still "select 1"
        (bind(b"zz") + execute() + parse(b"b", "select 3") + SYNC, 1),  # 26000, b skipped
        (describe(b"S", b"zz") + SYNC, 1),
        (bind(b"b") + execute() + SYNC, 1),  # 26000: b was never prepared
        (parse(b"c", "select nosuchcolumn") + SYNC, 1),  # 42703: c records nothing
        (parse(b"c", "select 4") + bind(b"c") + execute() + SYNC, 1),
        (bind(b"c", ("1",)) + execute() + SYNC, 1),  # 08P01 from the server
        "other",
        (query("begin") + query("select 1/0"), 2),
        (parse(b"a", "select 1") + SYNC, 1),  # 25P02 (a is live; a direct server says 25P02)
        (parse(b"d", "select 5") + SYNC, 1),  # 25P02
        (bind(b"a") + execute() + SYNC, 1),  # 25P02 from the Bind
        (close(b"S", b"a") + SYNC, 1),  # Close works in a failed block
        (query("rollback"), 1),
        (bind(b"a") + execute() + SYNC, 1),  # 26000: closed
        (parse(b"a", "select 6") + bind(b"a") + execute() + SYNC, 1),
    ], disturb)


def test_flush_pipelines_match_direct(proxy: ProxyProcess, pg_server: PgServer,
                                      disturb: Callable[[str], None]) -> None:
    """Replies in exactly the order requested: Flush without Sync (asyncpg's prepare),
    synthesized ParseComplete between forwarded replies, and several Syncs in one write."""
    compare(proxy, pg_server, [
        (parse(b"p1", "select $1::int") + describe(b"S", b"p1") + FLUSH, 3, "msgs"),
        (bind(b"p1", ("5",)) + execute() + SYNC, 1),
        "other",
        (parse(b"p2", "select $1::int") + describe(b"S", b"p2") + FLUSH, 3, "msgs"),
        (bind(b"p2", ("6",)) + execute() + SYNC + parse(b"p3", "select 7") + SYNC
         + bind(b"p3") + execute() + SYNC, 3),
        "kill",
        (parse(b"p4", "select $1::int") + SYNC + parse(b"p5", "select $1::int") + bind(b"p4", ("1",))
         + execute() + bind(b"p5", ("2",)) + execute() + close(b"S", b"p4") + SYNC, 2),
        (bind(b"p5", ("3",)) + execute() + FLUSH, 3, "msgs"),
        (SYNC, 1),
    ], disturb)


def test_sql_deallocate_and_discard_match_direct(proxy: ProxyProcess, pg_server: PgServer,
                                                 disturb: Callable[[str], None]) -> None:
    """SQL DEALLOCATE name / ALL and DISCARD ALL act on the client's own names; statements that
    another client uses stay on the server (checked below)."""
    compare(proxy, pg_server, [
        (parse(b"d1", "select 1") + parse(b"D2", "select 2") + parse(b"d3", "select 3") + SYNC, 1),
        (query("deallocate d1"), 1),
        (bind(b"d1") + execute() + SYNC, 1),  # 26000
        (query('DEALLOCATE PREPARE "D2"'), 1),
        (query("deallocate nosuch"), 1),  # the server's own 26000
        (bind(b"d3") + execute() + SYNC, 1),
        "other",
        (query("deallocate all"), 1),
        (bind(b"d3") + execute() + SYNC, 1),  # 26000
        (parse(b"d4", "select 4") + SYNC, 1),
        (query("discard all"), 1),
        (bind(b"d4") + execute() + SYNC, 1),  # 26000
        (parse(b"d4", "select 44") + bind(b"d4") + execute() + SYNC, 1),
        (query("begin") + query("select 1/0") + query("deallocate d4") + query("rollback"), 4),
        (bind(b"d4") + execute() + SYNC, 1),  # still there: the DEALLOCATE failed
    ], disturb)


def test_deallocate_keeps_other_clients_statements(proxy: ProxyProcess) -> None:
    """One client's DEALLOCATE ALL never removes a statement another client uses."""
    keeper = trust_login(proxy.port("trust"))
    other = trust_login(proxy.port("trust"))
    try:
        keeper.send(parse(b"k", "select 'kept' /* k */") + SYNC)
        keeper.read_until(b"Z")
        other.send(parse(b"o", "select 'kept' /* k */") + SYNC)
        other.read_until(b"Z")
        other.send(query("deallocate all"))
        assert normalise(other.read_until(b"Z"))[0] == ("C", b"DEALLOCATE ALL\x00")
        listed = simple_query(keeper, "select count(*) from pg_prepared_statements "
                                      "where statement like '%/* k */'")
        assert [b for t, b in listed if t == b"D"] == [b"\x00\x01\x00\x00\x00\x011"]
        keeper.send(bind(b"k") + execute() + SYNC)
        assert [t for t, _ in keeper.read_until(b"Z")] == [b"2", b"D", b"C", b"Z"]
    finally:
        keeper.close()
        other.close()


def test_bad_input_is_refused_while_others_work(proxy: ProxyProcess) -> None:
    """Oversized names are refused with 42622; a Parse flood stops at the per-client limit
    with 54000 (memory stays bounded) and the client's session goes on; a steady client on
    the same pool keeps working throughout."""
    from proxy.postgres.prepared import MAX_CLIENT_STATEMENTS

    steady = psycopg.connect(dsn(proxy, "one"), autocommit=True)
    raw = trust_login(proxy.port("trust"))
    try:
        raw.send(parse(b"n" * 5000, "select 1") + bind(b"") + SYNC)
        msgs = normalise(raw.read_until(b"Z"))
        assert msgs[0][0] == "E" and msgs[0][1][1] == "42622" and msgs[-1] == ("Z", b"I"), msgs
        batch = 500
        for start in range(0, MAX_CLIENT_STATEMENTS + batch, batch):
            raw.send(b"".join(parse(b"f%d" % k, "select 1") for k in range(start, start + batch))
                     + SYNC)
            msgs = normalise(raw.read_until(b"Z"))
            assert steady.execute("select %s::int", (start,)).fetchone() == (start,)
        assert msgs[-2][0] == "E" and msgs[-2][1][1] == "54000", msgs[-3:]
        raw.send(close(b"S", b"f0") + parse(b"again", "select 9") + bind(b"again") + execute()
                 + SYNC)
        assert [t for t, _ in normalise(raw.read_until(b"Z"))] == ["3", "1", "2", "D", "C", "Z"]
    finally:
        raw.close()
        steady.close()


def test_counted_in_show_stats_metrics_and_show_clients(proxy: ProxyProcess) -> None:
    """Two clients prepare the same SQL (2 client parses, 1 server parse) and bind it 5 times:
    SHOW STATS, the metrics, SHOW CLIENTS and SHOW SERVERS count exactly that."""
    a = trust_login(proxy.port("count"))
    b = trust_login(proxy.port("count"))
    try:
        a.send(parse(b"s", "select 11") + bind(b"s") + execute() + bind(b"s") + execute() + SYNC)
        a.read_until(b"Z")
        b.send(parse(b"t", "select 11") + bind(b"t") + execute() + SYNC)
        b.read_until(b"Z")
        b.send(bind(b"t") + execute() + SYNC + bind(b"t") + execute() + SYNC)
        b.read_until(b"Z")
        b.read_until(b"Z")
        labels = {"listener": "count", "database": "app", "user": "app_trust"}
        assert metric(proxy, "poolproxy_prepared_statements_total", side="client", **labels) == 2
        assert metric(proxy, "poolproxy_prepared_statements_total", side="server", **labels) == 1
        assert metric(proxy, "poolproxy_prepared_statement_executions_total", **labels) == 5
        assert metric(proxy, "poolproxy_prepared_statements_cached", **labels) == 1
        assert metric(proxy, "poolproxy_prepared_statements_distinct", **labels) == 1
        with psycopg.connect(host="127.0.0.1", port=proxy.port("pg"), user="app",
                             password="app-secret", dbname="pgbouncer", autocommit=True,
                             connect_timeout=5) as admin:
            cur = admin.execute("SHOW STATS", prepare=False)
            cols = [d.name for d in cur.description or []]
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
            row = next(r for r in rows if r["listener"] == "count" and r["database"] == "app")
            assert (row["total_client_parse_count"], row["total_server_parse_count"],
                    row["total_bind_count"]) == (2, 1, 5), row
            cur = admin.execute("SHOW CLIENTS", prepare=False)
            cols = [d.name for d in cur.description or []]
            counts = sorted(dict(zip(cols, r, strict=True))["prepared_statements"]
                            for r in cur.fetchall()
                            if dict(zip(cols, r, strict=True))["listener"] == "count")
            assert counts == [1, 1], counts
            cur = admin.execute("SHOW SERVERS", prepare=False)
            cols = [d.name for d in cur.description or []]
            servers = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
            assert [s["prepared_statements"] for s in servers if s["listener"] == "count"] == [1]
    finally:
        a.close()
        b.close()


def test_oversized_statement_message_is_refused(proxy: ProxyProcess) -> None:
    """A named Parse announcing more than poolproxy holds for a statement message (64 MiB)
    is a protocol violation (08P01) for that client alone."""
    steady = psycopg.connect(dsn(proxy, "one"), autocommit=True)
    raw = trust_login(proxy.port("trust"))
    try:
        raw.send(b"P" + (100 << 20).to_bytes(4, "big") + b"big\x00select ")
        msgs = normalise(raw.read_all())
        assert msgs and msgs[0][0] == "E" and msgs[0][1][1] == "08P01", msgs
        assert steady.execute("select %s::int", (1,)).fetchone() == (1,)
    finally:
        raw.close()
        steady.close()
