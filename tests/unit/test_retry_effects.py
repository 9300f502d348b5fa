"""At-most-once: which requests in flight to a lost server may be replayed (proxy/effects.py,
proxy/postgres/retry.py, proxy/mysql/retry.py), byte for byte.

A request may be replayed only if it cannot have made a change durable: it starts an explicit
transaction block and stays in it, or it only touches session state. Everything else that may
write, or that we cannot read (a statement prepared earlier), counts as "may have committed".
"""

from __future__ import annotations

import struct

import pytest

from proxy.core.effects import Effect, is_literal_select, may_have_committed, split_statements
from proxy.mysql import codec as mycodec
from proxy.mysql.retry import command_effects
from proxy.mysql.retry import statement_effect as my_effect
from proxy.postgres.retry import request_effects, sql_effects

E = Effect


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def query(sql: bytes) -> bytes:
    return msg(b"Q", sql + b"\x00")


def parse(sql: bytes, name: bytes = b"") -> bytes:
    return msg(b"P", name + b"\x00" + sql + b"\x00\x00\x00")


def bind(stmt: bytes = b"", portal: bytes = b"") -> bytes:
    return msg(b"B", portal + b"\x00" + stmt + b"\x00" + b"\x00\x00\x00\x00\x00\x00")


def execute(portal: bytes = b"") -> bytes:
    return msg(b"E", portal + b"\x00\x00\x00\x00\x00")


SYNC, FLUSH = msg(b"S"), msg(b"H")


def committed(chunks: list[bytes], in_block: bool = False) -> bool:
    return may_have_committed(request_effects(chunks), in_block)


# --------------------------------------------------------------------------- the state machine


@pytest.mark.parametrize(("effects", "in_block", "expected"), [
    ([], False, False),
    ([E.NONE], False, False),
    ([E.WRITE], False, True),
    ([E.WRITE], True, False),  # rolled back with the session
    ([E.BEGIN, E.WRITE], False, False),
    ([E.BEGIN, E.WRITE, E.COMMIT], False, True),
    ([E.BEGIN, E.WRITE, E.ROLLBACK], False, False),
    ([E.BEGIN, E.ROLLBACK, E.WRITE], False, True),  # autocommit again after the ROLLBACK
    ([E.COMMIT], False, False),  # COMMIT outside a block does nothing
    ([E.COMMIT], True, True),
    ([E.BEGIN_COMMITS, E.WRITE], False, False),
    ([E.BEGIN_COMMITS], True, True),  # MySQL: BEGIN inside a block commits it
    ([E.BEGIN, E.DURABLE], False, True),
    ([E.NONE, E.BEGIN, E.NONE, E.WRITE, E.WRITE], False, False),
])
def test_may_have_committed(effects: list[Effect], in_block: bool, expected: bool) -> None:
    assert may_have_committed(effects, in_block) is expected


# --------------------------------------------------------------------------- lexing


def test_split_statements_ignores_semicolons_and_keywords_in_literals_and_comments() -> None:
    sql = (b"BEGIN; INSERT INTO t VALUES ('a; commit', E'x\\'; commit', $$; commit$$, $q$;$q$)"
           b" -- ; commit\n; /* ; commit */ SELECT \"commit;\"")
    assert split_statements(sql) == [b"begin", b"insert into t values ('', '', '', '')",
                                     b"select ''"]


def test_split_statements_mysql_dialect() -> None:
    sql = b"START TRANSACTION; UPDATE t SET s = 'it\\'s; commit' # ; commit\n; /*!40101 COMMIT */"
    assert split_statements(sql, mysql=True) == [b"start transaction", b"update t set s = ''",
                                                 b"commit"]


@pytest.mark.parametrize(("sql", "literal"), [
    (b"select 1", True), (b"select 'x' as a, 2", True), (b"select null", True),
    (b"select now()", False), (b"select 1 from t", False), (b"select 1 +++ 2", False),
    (b"select f", False), (b"select 1 into t", False),
])
def test_only_constant_selects_are_effect_free(sql: bytes, literal: bool) -> None:
    assert is_literal_select(split_statements(sql)[0]) is literal


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize(("sql", "committed_"), [
    (b"BEGIN", False),
    (b"begin isolation level serializable", False),
    (b"START TRANSACTION READ WRITE", False),
    (b"BEGIN; UPDATE t SET n = n + 1", False),
    (b"BEGIN; UPDATE t SET n = n + 1; COMMIT", True),
    (b"BEGIN; UPDATE t SET n = n + 1; END", True),
    (b"BEGIN; UPDATE t SET n = n + 1; PREPARE TRANSACTION 'x'", True),
    (b"BEGIN; UPDATE t SET n = n + 1; ROLLBACK", False),
    (b"BEGIN; UPDATE t SET n = 1; ROLLBACK TO SAVEPOINT s", False),
    (b"UPDATE t SET n = n + 1", True),
    (b"INSERT INTO t VALUES (1); BEGIN", True),
    (b"SELECT * FROM t", True),  # could call a function that writes
    (b"SELECT 1", False),
    (b"SET TimeZone = 'UTC'", False),
    (b"SHOW search_path", False),
    (b"", False),
    (b"COMMIT PREPARED 'x'", True),
    (b"DO $$BEGIN PERFORM 1; END$$", True),
    (b"VACUUM", True),
])
def test_pg_simple_queries(sql: bytes, committed_: bool) -> None:
    assert committed([query(sql)]) is committed_


def test_pg_extended_protocol_follows_portals_to_their_statements() -> None:
    # BEGIN, then an INSERT, in one pipelined batch: replayable.
    batch = [parse(b"BEGIN"), bind(), execute(), parse(b"INSERT INTO t VALUES ($1)"), bind(),
             execute(), SYNC]
    assert not committed(batch)
    # The same INSERT alone commits at Sync.
    assert committed([parse(b"INSERT INTO t VALUES ($1)"), bind(), execute(), SYNC])
    # Parse/Bind/Describe without Execute run nothing (asyncpg's prepare).
    assert not committed([parse(b"UPDATE t SET n = 1", b"s1"), msg(b"D", b"Ss1\x00"), FLUSH])
    # Named statement and portal.
    assert not committed([parse(b"SELECT 1", b"s1"), bind(b"s1", b"p"), execute(b"p"), SYNC])


def test_pg_unknown_statements_count_as_durable() -> None:
    # Executing a statement prepared in an earlier request: its SQL is not in the batch.
    assert request_effects([bind(b"stmt_from_before"), execute(), SYNC]) == [E.DURABLE]
    assert committed([query(b"BEGIN"), bind(b"stmt_from_before"), execute(), SYNC])
    # A portal that was never bound here.
    assert request_effects([execute(b"p9")]) == [E.DURABLE]
    # FunctionCall.
    assert request_effects([msg(b"F", b"\x00\x00\x00\x01")]) == [E.DURABLE]


def test_pg_messages_may_be_split_anywhere_across_chunks() -> None:
    data = query(b"BEGIN") + query(b"UPDATE t SET n = 1")
    for cut in range(len(data) + 1):
        assert request_effects([data[:cut], data[cut:]]) == [E.BEGIN, E.WRITE]


def test_pg_an_incomplete_message_did_nothing() -> None:
    whole = query(b"UPDATE t SET n = 1")
    assert request_effects([query(b"BEGIN"), whole[:-3]]) == [E.BEGIN]


def test_pg_sql_effects() -> None:
    assert sql_effects(b"begin; commit and chain") == [E.BEGIN, E.COMMIT]
    assert sql_effects(b"abort") == [E.ROLLBACK]
    assert sql_effects(b"DEALLOCATE ALL; DISCARD ALL; RESET ALL; LISTEN x") == [E.NONE] * 4


# --------------------------------------------------------------------------- MySQL


def com_query(sql: bytes) -> bytes:
    return mycodec.encode_packet(0, bytes((mycodec.COM_QUERY,)) + sql)


@pytest.mark.parametrize(("sql", "effect"), [
    (b"BEGIN", E.BEGIN_COMMITS),
    (b"BEGIN WORK", E.BEGIN_COMMITS),
    (b"BEGIN NOT ATOMIC INSERT INTO t VALUES (1) END", E.DURABLE),
    (b"START TRANSACTION WITH CONSISTENT SNAPSHOT", E.BEGIN_COMMITS),
    (b"SET autocommit=0", E.BEGIN),
    (b"SET @@session.autocommit = OFF", E.BEGIN),
    (b"set autocommit = 1", E.COMMIT),
    (b"COMMIT", E.COMMIT),
    (b"ROLLBACK", E.ROLLBACK),
    (b"ROLLBACK TO SAVEPOINT a", E.NONE),
    (b"SET NAMES utf8mb4", E.NONE),
    (b"SET sql_mode = 'ANSI'", E.NONE),
    (b"SET GLOBAL max_connections = 10", E.DURABLE),
    (b"SET @x = (SELECT f())", E.WRITE),
    (b"SET TRANSACTION ISOLATION LEVEL READ COMMITTED", E.NONE),
    (b"USE app", E.NONE),
    (b"SHOW TABLES", E.NONE),
    (b"SELECT 1", E.NONE),
    (b"SELECT * FROM t", E.WRITE),
    (b"INSERT INTO t VALUES (1)", E.WRITE),
    (b"SELECT * FROM t INTO OUTFILE '/tmp/x'", E.DURABLE),
    (b"CREATE TABLE x (a INT)", E.DURABLE),  # implicit commit
    (b"LOCK TABLES t WRITE", E.DURABLE),
    (b"CALL p()", E.DURABLE),
])
def test_mysql_statement_effects(sql: bytes, effect: Effect) -> None:
    assert [my_effect(s) for s in split_statements(sql, mysql=True)] == [effect]


def test_mysql_commands() -> None:
    none = [mycodec.encode_packet(0, bytes((cmd,))) for cmd in (
        mycodec.COM_PING, mycodec.COM_INIT_DB, mycodec.COM_STMT_PREPARE, mycodec.COM_STMT_CLOSE,
        mycodec.COM_STMT_RESET, mycodec.COM_SET_OPTION)]
    assert command_effects(none) == []
    assert command_effects([mycodec.encode_packet(0, bytes((mycodec.COM_STMT_EXECUTE,)))]) \
        == [E.DURABLE]
    assert command_effects([mycodec.encode_packet(0, bytes((mycodec.COM_RESET_CONNECTION,)))]) \
        == [E.ROLLBACK]
    assert not may_have_committed(command_effects([com_query(b"START TRANSACTION")]), False)
    assert may_have_committed(command_effects([com_query(b"UPDATE t SET n = 1")]), False)
    # With autocommit off (the server reports it), a DML statement stays uncommitted.
    assert not may_have_committed(command_effects([com_query(b"UPDATE t SET n = 1")]), True)
    assert may_have_committed(command_effects([com_query(b"COMMIT")]), True)
    assert may_have_committed(command_effects([com_query(b"ALTER TABLE t ADD c INT")]), True)
