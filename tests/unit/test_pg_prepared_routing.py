"""Prepared statements in transaction mode, byte by byte (postgres/prepared.py, and the server
session's handling of the request queue it fills).

The router's tests feed whole client messages and look at the bytes that would go to the
server and at the request queue: which replies will be forwarded, swallowed (poolproxy's own
Parse and Close), synthesized (ParseComplete, CloseComplete answered from what poolproxy knows),
replaced (the error a client's request deserves) or stood in for (SQL DEALLOCATE). The session
tests then run client and server sessions on fake transports and check the exact bytes each
side gets, replies split across chunks included.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.core.requests import RequestQueue
from proxy.pool.pool import PoolStats
from proxy.postgres import codec as pg
from proxy.postgres.prepared import (
    _FAILING_BIND,
    _FAILING_PARSE,
    CLOSE_COMPLETE,
    MAX_HELD,
    PARSE_COMPLETE,
    PARTIAL,
    ClientStatements,
    Framer,
    Registry,
    Router,
    ServerStatements,
)
from tests.unit.sessionfakes import World


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def P(name: bytes, sql: bytes, types: tuple[int, ...] = ()) -> bytes:  # noqa: N802
    return msg(b"P", name + b"\0" + sql + b"\0" + struct.pack("!H", len(types))
               + b"".join(struct.pack("!I", t) for t in types))


def B(stmt: bytes, portal: bytes = b"", *params: bytes) -> bytes:  # noqa: N802
    body = portal + b"\0" + stmt + b"\0" + b"\0\0" + struct.pack("!H", len(params))
    body += b"".join(struct.pack("!I", len(p)) + p for p in params)
    return msg(b"B", body + b"\0\0")


def D(kind: bytes, name: bytes) -> bytes:  # noqa: N802
    return msg(b"D", kind + name + b"\0")


def C(kind: bytes, name: bytes) -> bytes:  # noqa: N802
    return msg(b"C", kind + name + b"\0")


def Q(sql: bytes) -> bytes:  # noqa: N802
    return msg(b"Q", sql + b"\0")


E = msg(b"E", b"\0\0\0\0\0")
S = msg(b"S")
H = msg(b"H")
PARSE_OK, BIND_OK, CLOSE_OK = msg(b"1"), msg(b"2"), msg(b"3")


class Side:
    """One pool's registry, a server's statements and request queue, and a client's router."""

    def __init__(self, limit: int = 200) -> None:
        self.registry = Registry(PoolStats())
        self.server = ServerStatements(self.registry)
        self.queue = RequestQueue()
        self.limit = limit
        self.router = self.new_client()

    def new_client(self) -> Router:
        return Router(ClientStatements(self.registry), self.registry)

    def route(self, *messages: bytes, router: Router | None = None, server: Any = None,
              failed: bool = False, copy: bool = False) -> tuple[bytes, list[bytes]]:
        frames = Framer().feed(b"".join(messages))
        return (router or self.router).route(frames, self.server if server is None else server, self.queue,
                                             self.limit, failed, copy)

    def steps(self) -> list[Any]:
        return [None if b.steps is None else [(chr(s.kind), s.action.value) for s in b.steps]
                for b in self.queue]

    def answer_all(self) -> None:
        """The server answers everything successfully."""
        while self.queue:
            while self.queue.step_done(True) is not None:
                self.queue.due()
            self.queue.batch_done()


def name(n: int) -> bytes:
    return b"poolproxy_%d" % n


# --------------------------------------------------------------------------- framing


def test_framer_cuts_whole_messages_and_streams_what_needs_no_rename() -> None:
    f = Framer()
    data = P(b"", b"select 1") + B(b"") + E + S
    assert [t for t, _, _ in f.feed(data)] == list(b"PBES")
    big = Q(b"select '" + b"x" * 100 + b"'")
    frames = f.feed(big[:30])
    assert frames == [(ord("Q"), big[:30], PARTIAL)] and f.in_message
    assert f.feed(big[30:] + S) == [(-1, big[30:], 0), (ord("S"), S, 0)]
    assert not f.in_message
    unnamed = P(b"", b"select '" + b"y" * 100 + b"'")
    assert f.feed(unnamed[:20]) == [(ord("P"), unnamed[:20], PARTIAL)]  # unnamed: streamed
    assert f.feed(unnamed[20:]) == [(-1, unnamed[20:], 0)]


def test_framer_holds_a_named_message_until_it_is_whole() -> None:
    f = Framer()
    named = P(b"s1", b"select '" + b"z" * 1000 + b"'")
    pieces = [named[i:i + 7] for i in range(0, len(named), 7)]
    for piece in pieces[:-1]:
        assert f.feed(piece) == [] and f.in_message
    assert f.feed(pieces[-1] + S) == [(ord("P"), named, 0), (ord("S"), S, 0)]
    header_split = B(b"s1")
    assert f.feed(header_split[:3]) == []
    assert f.feed(header_split[3:]) == [(ord("B"), header_split, 0)]


def test_framer_refuses_bad_lengths_and_oversized_statement_messages() -> None:
    with pytest.raises(ValueError, match="invalid message length"):
        Framer().feed(b"P\x00\x00\x00\x02")
    huge = b"P" + struct.pack("!I", MAX_HELD + 10) + b"s\0"
    with pytest.raises(ValueError, match="MiB"):
        Framer().feed(huge)


# --------------------------------------------------------------------------- routing


def test_first_parse_is_renamed_and_tracked() -> None:
    side = Side()
    out, now = side.route(P(b"s1", b"select $1", (23,)), B(b"s1", b"", b"7"), E, S)
    assert out == P(name(1), b"select $1", (23,)) + B(name(1), b"", b"7") + E + S
    assert now == []
    assert side.steps() == [[("P", "forward"), ("B", "forward"), ("E", "forward")]]
    assert side.registry.stats.client_parses == 1 and side.registry.stats.server_parses == 1
    assert side.registry.stats.binds == 1


def test_same_sql_from_another_client_is_answered_from_what_the_server_has() -> None:
    side = Side()
    side.route(P(b"s1", b"select 1"), S)
    side.answer_all()
    other = side.new_client()
    out, now = side.route(P(b"mine", b"select 1"), B(b"mine"), E, S, router=other)
    assert out == B(name(1)) + E + S, "no Parse reaches the server"
    assert now == [PARSE_COMPLETE], "due at once: nothing is owed before it"
    assert side.steps() == [[("B", "forward"), ("E", "forward")]]
    assert len(side.registry) == 1 and side.registry.stats.server_parses == 1


def test_synthesized_reply_waits_for_the_replies_owed_before_it() -> None:
    side = Side()
    side.route(P(b"s1", b"select 1"), S)
    side.answer_all()
    out, now = side.route(Q(b"select 2"), P(b"again", b"select 1"), S)
    assert out == Q(b"select 2") + S and now == []
    assert side.steps() == [None, [("P", "synthesize")]]
    side.queue.batch_done()  # the Query's ReadyForQuery
    assert side.queue.due() == [PARSE_COMPLETE]


def test_bind_of_a_statement_the_server_has_is_a_plain_batch() -> None:
    side = Side()
    side.route(P(b"s1", b"select 1"), S)
    side.answer_all()
    out, now = side.route(B(b"s1"), E, S)
    assert out == B(name(1)) + E + S and now == []
    assert side.steps() == [None] and side.queue.precise == 0
    assert [s.name for s in side.queue[0].extra] == [name(1)]  # for a 0A000 after DDL


def test_bind_on_a_server_without_the_statement_prepares_it_first() -> None:
    side = Side()
    side.route(P(b"s1", b"select 1"), S)
    side.answer_all()
    elsewhere = ServerStatements(side.registry)
    out, _ = side.route(B(b"s1"), D(b"P", b""), E, S, server=elsewhere)
    assert out == P(name(1), b"select 1") + B(name(1)) + D(b"P", b"") + E + S
    assert side.steps() == [[("P", "swallow"), ("B", "forward"), ("D", "forward"),
                             ("E", "forward")]]
    assert len(elsewhere) == 1


def test_messages_before_the_first_named_one_keep_their_place() -> None:
    """An unsynced batch of unnamed messages, then (in a later write) a named Parse: the
    messages before it are tracked too, so the replies are matched in order."""
    side = Side()
    out, _ = side.route(P(b"", b"select 1"), B(b""), D(b"P", b""), E)
    assert out == P(b"", b"select 1") + B(b"") + D(b"P", b"") + E
    assert side.steps() == [[("P", "forward"), ("B", "forward"), ("D", "forward"),
                             ("E", "forward")]]
    assert not side.queue[0].synced
    out, _ = side.route(P(b"n1", b"select 2"), D(b"S", b"n1"), H)
    assert side.steps() == [[("P", "forward"), ("B", "forward"), ("D", "forward"),
                             ("E", "forward"), ("P", "forward"), ("D", "forward")]]
    side.route(B(b"n1"), E, S)
    assert side.queue[0].synced and len(side.queue) == 1


def test_reparse_of_a_live_name_fails_like_postgresql() -> None:
    side = Side()
    side.route(P(b"s1", b"select 1"), S)
    side.answer_all()
    out, now = side.route(P(b"s1", b"select 2"), B(b"s1"), E, S)
    assert out == _FAILING_PARSE + B(name(1)) + E + S and now == []
    steps = side.queue[0].steps
    assert steps is not None and steps[0].action.value == "replace"
    assert b"42P05" in steps[0].reply and b'"s1" already exists' in steps[0].reply
    assert side.router.client.get(b"s1") is not None  # still "select 1"


def test_unknown_names_fail_with_26000_in_place() -> None:
    side = Side()
    out, _ = side.route(B(b"nope"), E, D(b"S", b"nope2"), S)
    assert out == _FAILING_BIND + E + _FAILING_BIND + S
    steps = side.queue[0].steps
    assert steps is not None
    assert [(chr(s.kind), s.action.value) for s in steps] == [
        ("B", "replace"), ("E", "forward"), ("B", "replace")]
    assert b"26000" in steps[0].reply and b'"nope" does not exist' in steps[0].reply


def test_a_failed_parse_records_nothing() -> None:
    side = Side()
    side.route(P(b"bad", b"select nosuch"), S)
    side.queue.step_done(False)  # the server's error
    side.queue.skip_to_sync()
    side.queue.batch_done()
    assert side.router.client.get(b"bad") is None and len(side.server) == 0
    assert len(side.registry) == 0


def test_parse_in_a_failed_transaction_block_lets_the_server_refuse_it() -> None:
    side = Side()
    side.route(P(b"s1", b"select 1"), S)
    side.answer_all()
    other = side.new_client()
    out, now = side.route(P(b"s1", b"select 1"), S, router=other, failed=True)
    assert out == _FAILING_PARSE + S and now == []  # not a synthesized ParseComplete


def test_close_answers_at_once_and_frees_only_the_clients_name() -> None:
    side = Side()
    side.route(P(b"s1", b"select 1"), S)
    side.answer_all()
    out, now = side.route(C(b"S", b"s1"), C(b"S", b"never"), C(b"P", b"portal"), S)
    assert out == C(b"P", b"portal") + S
    assert now == [CLOSE_COMPLETE, CLOSE_COMPLETE]
    assert side.router.client.get(b"s1") is None
    assert len(side.server) == 1, "the statement stays on the server for other clients"


def test_eviction_closes_the_least_recently_used_first() -> None:
    side = Side(limit=2)
    out, _ = side.route(P(b"a", b"select 1"), P(b"b", b"select 2"), B(b"a"), E,
                        P(b"c", b"select 3"), S)
    assert out == (P(name(1), b"select 1") + P(name(2), b"select 2") + B(name(1)) + E
                   + C(b"S", name(2)) + P(name(3), b"select 3") + S)
    assert side.steps() == [[("P", "forward"), ("P", "forward"), ("B", "forward"),
                             ("E", "forward"), ("C", "swallow"), ("P", "forward")]]
    side.answer_all()
    assert [s.name for s in side.server.lru] == [name(1), name(3)]
    out, _ = side.route(B(b"b"), E, S)
    assert out == C(b"S", name(1)) + P(name(2), b"select 2") + B(name(2)) + E + S


def test_a_skipped_eviction_keeps_the_statement() -> None:
    side = Side(limit=1)
    side.route(P(b"a", b"select 1"), S)
    side.answer_all()
    side.route(B(b"zz"), P(b"b", b"select 2"), S)  # the failing Bind: Close and Parse skipped
    side.queue.step_done(False)
    side.queue.skip_to_sync()
    side.queue.batch_done()
    assert [s.name for s in side.server.lru] == [name(1)]
    assert side.router.client.get(b"b") is None


def test_sql_deallocate_acts_on_the_clients_names() -> None:
    side = Side()
    side.route(P(b"s1", b"select 1"), P(b"S2", b"select 2"), S)
    side.answer_all()
    out, _ = side.route(Q(b"deallocate s1;"))
    assert out == Q(b"SELECT") and side.steps() == [[("Q", "result")]]
    assert side.queue[0].steps[0].reply == pg.command_complete("DEALLOCATE")  # type: ignore[index]
    assert side.router.client.get(b"s1") is None
    side.answer_all()
    out, _ = side.route(Q(b'DEALLOCATE PREPARE "S2"'))
    assert out == Q(b"SELECT") and side.router.client.get(b"S2") is None
    side.answer_all()
    out, _ = side.route(Q(b"deallocate s1"))  # no longer the client's: the server answers
    assert out == Q(b"deallocate s1") and side.steps() == [None]
    assert len(side.server) == 2


def test_deallocate_all_and_its_undo() -> None:
    side = Side()
    side.route(P(b"s1", b"select 1"), S)
    side.answer_all()
    out, _ = side.route(Q(b"DEALLOCATE ALL"))
    assert out == Q(b"SELECT") and len(side.router.client) == 0
    side.queue.step_done(False)  # in a failed transaction block: 25P02
    side.queue.skip_to_sync()
    side.queue.batch_done()
    assert side.router.client.get(b"s1") is not None, "a failed DEALLOCATE changes nothing"


def test_a_refused_plan_is_closed_before_the_next_request() -> None:
    side = Side()
    side.route(P(b"s1", b"select * from t"), S)
    side.answer_all()
    stmt = side.router.client.get(b"s1")
    assert stmt is not None
    side.server.refused([stmt])  # 0A000: cached plan must not change result type
    out, _ = side.route(B(b"s1"), E, S)
    assert out == C(b"S", name(1)) + P(name(1), b"select * from t") + B(name(1)) + E + S
    assert side.steps() == [[("C", "swallow"), ("P", "swallow"), ("B", "forward"),
                             ("E", "forward")]]


def test_syncs_during_copy_are_not_batches() -> None:
    side = Side()
    copy_data = msg(b"d", b"1\t2\n")
    side.route(copy_data, S, copy_data, msg(b"c"), S, copy=True)
    assert len(side.queue) == 1


# --------------------------------------------------------------------------- sessions


@pytest.fixture
def pgw() -> Iterator[World]:
    world = World("postgres")
    yield world
    world.close()


def test_session_renames_and_forwards_replies_in_order(pgw: World) -> None:
    server, st = pgw.pg_server()
    a, at = pgw.client()
    a.data_received(P(b"s1", b"select 1") + B(b"s1") + E + S)
    pgw.flush()
    assert st.take() == P(name(1), b"select 1") + B(name(1)) + E + S
    reply = PARSE_OK + BIND_OK + pg.data_row(["1"]) + pg.command_complete("SELECT 1") + \
        pg.ready_for_query(b"I")
    server.data_received(reply)
    pgw.flush()
    assert at.take() == reply and a.server is None
    # Another client, same SQL, same server: its ParseComplete is poolproxy's.
    b, bt = pgw.client()
    b.data_received(P(b"x", b"select 1") + B(b"x") + E + S)
    pgw.flush()
    assert st.take() == B(name(1)) + E + S
    assert bt.take() == PARSE_OK, "sent at once"
    server.data_received(reply[5:])
    pgw.flush()
    assert bt.take() == reply[5:] and b.server is None


def test_session_swallows_our_parse_split_across_chunks(pgw: World) -> None:
    first, st1 = pgw.pg_server()
    a, at = pgw.client()
    a.data_received(P(b"s1", b"select 1") + S)
    first.data_received(PARSE_OK + pg.ready_for_query(b"I"))
    pgw.flush()
    st1.take()
    at.take()
    # The first server is taken by another client: a second one must prepare s1 itself.
    other, _ = pgw.client()
    other.data_received(pg.query("begin"))
    second, st2 = pgw.pg_server()
    a.data_received(B(b"s1") + E + S)
    pgw.flush()
    assert a.server is second
    assert st2.take() == P(name(1), b"select 1") + B(name(1)) + E + S
    rest = BIND_OK + pg.data_row(["1"]) + pg.command_complete("SELECT 1") + pg.ready_for_query()
    for piece in (PARSE_OK[:2], PARSE_OK[2:] + rest[:3], rest[3:]):
        second.data_received(piece)
    pgw.flush()
    assert at.take() == rest and a.server is None


def test_session_replaces_errors_and_names_the_clients_statement(pgw: World) -> None:
    server, st = pgw.pg_server()
    a, at = pgw.client()
    a.data_received(P(b"mine", b"select 1") + S)
    server.data_received(PARSE_OK + pg.ready_for_query())
    pgw.flush()
    at.take()
    st.take()
    a.data_received(B(b"mine", b"", b"1") + E + S)
    pgw.flush()
    assert st.take() == B(name(1), b"", b"1") + E + S
    server.data_received(pg.error_response(
        "08P01", 'bind message supplies 1 parameters, but prepared statement "poolproxy_1" '
                 "requires 0") + pg.ready_for_query())
    pgw.flush()
    got = at.take()
    assert b'"mine" requires 0' in got and b"poolproxy_" not in got
    # A re-Parse of a live name: the server's error for our failing Parse is replaced.
    a.data_received(P(b"mine", b"select 2") + S)
    pgw.flush()
    assert st.take() == _FAILING_PARSE + S
    server.data_received(pg.error_response("42703", 'column "poolproxy_no_such_column" does '
                                                    "not exist") + pg.ready_for_query())
    pgw.flush()
    got = at.take()
    assert b"42P05" in got and b'"mine" already exists' in got and got.endswith(
        pg.ready_for_query())


def test_session_stands_in_for_sql_deallocate(pgw: World) -> None:
    server, st = pgw.pg_server()
    a, at = pgw.client()
    a.data_received(P(b"s1", b"select 1") + S)
    server.data_received(PARSE_OK + pg.ready_for_query())
    pgw.flush()
    at.take()
    st.take()
    a.data_received(Q(b"deallocate s1"))
    pgw.flush()
    assert st.take() == Q(b"SELECT")
    stand_in = pg.row_description([]) + pg.data_row([]) + pg.command_complete("SELECT 1")
    server.data_received(stand_in[:4])
    server.data_received(stand_in[4:] + pg.ready_for_query())
    pgw.flush()
    assert at.take() == pg.command_complete("DEALLOCATE") + pg.ready_for_query()


def test_session_discard_all_forgets_every_statement(pgw: World) -> None:
    server, st = pgw.pg_server()
    a, at = pgw.client()
    a.data_received(P(b"s1", b"select 1") + S)
    server.data_received(PARSE_OK + pg.ready_for_query())
    assert len(server.statements) == 1
    plain, pt = pgw.client()  # a client that never prepared anything runs DISCARD ALL
    plain.data_received(pg.query("discard all"))
    server.data_received(pg.command_complete("DISCARD ALL") + pg.ready_for_query())
    assert len(server.statements) == 0
    pgw.flush()
    st.take()
    a.data_received(B(b"s1") + E + S)
    pgw.flush()
    assert st.take() == P(name(1), b"select 1") + B(name(1)) + E + S


def test_session_refused_plan_is_closed_on_that_server(pgw: World) -> None:
    server, st = pgw.pg_server()
    a, at = pgw.client()
    a.data_received(P(b"s1", b"select * from t") + S)
    server.data_received(PARSE_OK + pg.ready_for_query())
    a.data_received(B(b"s1") + E + S)
    server.data_received(pg.error_response("0A000", "cached plan must not change result type")
                         + pg.ready_for_query())
    pgw.flush()
    st.take()
    a.data_received(B(b"s1") + E + S)
    pgw.flush()
    assert st.take() == C(b"S", name(1)) + P(name(1), b"select * from t") + B(name(1)) + E + S


# --------------------------------------------------------------------------- the hot path


def test_bind_execute_sync_fast_path_renames_like_route() -> None:
    """Bind+Execute+Sync of a statement the server has: the same bytes and queue entry as the
    general route, without framing; anything else is left to route (None, nothing changed)."""
    side = Side()
    side.route(P(b"s1", b"select $1"), S)
    side.answer_all()
    chunk = B(b"s1", b"", b"42") + E + S
    fast = side.router.bind_execute_sync(chunk, side.server, side.queue)
    assert fast == B(name(1), b"", b"42") + E + S
    stmt = side.router.client.get(b"s1")
    assert len(side.queue) == 1 and side.queue[0].extra == [stmt] and side.queue[0].synced
    assert side.registry.stats.binds == 1
    side.answer_all()
    general, _ = Side.route(side, chunk)
    assert general == fast
    side.answer_all()
    libpq = B(b"s1", b"", b"7") + D(b"P", b"") + E + S  # PQexecPrepared
    assert side.router.bind_execute_sync(libpq, side.server, side.queue) \
        == B(name(1), b"", b"7") + D(b"P", b"") + E + S
    side.answer_all()
    for other in (B(b"nope") + E + S,  # a name the client never prepared: 26000 via route
                  B(b"") + E + S,  # the unnamed statement
                  B(b"s1") + E + H,  # no Sync
                  B(b"s1") + D(b"S", b"s1") + E + S,  # Describe of a statement: route renames it
                  B(b"s1") + D(b"P", b"") + D(b"P", b"") + E + S,
                  B(b"s1") + E + S + Q(b"select 2")):
        assert side.router.bind_execute_sync(other, side.server, side.queue) is None, other
        assert not side.queue
    other_server = ServerStatements(side.registry)  # a server without the statement
    assert side.router.bind_execute_sync(chunk, other_server, side.queue) is None
    assert not side.queue
