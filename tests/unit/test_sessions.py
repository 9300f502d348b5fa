"""The session core (core/session.py, core/requests.py) with both protocols' sessions on fake
transports: no socket, no database. Bytes go in through `data_received`, and the tests look at
what was written to each side and where the server ended up (linked, back in the pool, closed).

They pin down the rules the integration tests only reach through timing: a server goes back to
the pool only on the right ReadyForQuery (PostgreSQL) or final OK (MySQL), never with anything
unanswered; a lost request is replayed only before the first reply byte and only when it
provably did not run; our own parameter sync is swallowed in order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.mysql import codec as my
from proxy.pool import ClientState, CloseReason, ServerState
from proxy.postgres import codec as pg
from tests.unit.sessionfakes import FakeTransport, World


@pytest.fixture
def pgw() -> Iterator[World]:
    world = World("postgres")
    yield world
    world.close()


@pytest.fixture
def myw() -> Iterator[World]:
    world = World("mysql")
    yield world
    world.close()


# --------------------------------------------------------------------------- PostgreSQL bytes


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def parse(sql: bytes, name: bytes = b"") -> bytes:
    return msg(b"P", name + b"\0" + sql + b"\0\0\0")


BIND = msg(b"B", b"\0\0" + b"\0\0" * 3)
EXECUTE = msg(b"E", b"\0\0\0\0\0")
SYNC, FLUSH = msg(b"S"), msg(b"H")
PARSE_OK, BIND_OK = msg(b"1"), msg(b"2")


def rfq(status: bytes = b"I") -> bytes:
    return pg.ready_for_query(status)


def result(value: str, tag: str = "SELECT 1") -> bytes:
    return pg.row_description([("v", 25)]) + pg.data_row([value]) + pg.command_complete(tag)


def idle(world: World) -> list[Any]:
    return list(world.pool.idle)


# --------------------------------------------------------------------------- release (PG)


def test_pg_release_only_on_ready_for_query_idle(pgw: World) -> None:
    server, st = pgw.pg_server()
    client, ct = pgw.client()
    client.data_received(pg.query("BEGIN"))
    assert client.server is server and client.state is ClientState.ACTIVE
    pgw.flush()
    assert st.take() == pg.query("BEGIN")
    server.data_received(pg.command_complete("BEGIN") + rfq(b"T"))
    assert client.server is server, "inside a transaction: the server stays"
    client.data_received(pg.query("COMMIT"))
    server.data_received(pg.command_complete("COMMIT"))
    assert client.server is server, "no ReadyForQuery yet"
    server.data_received(rfq(b"I"))
    assert client.server is None and idle(pgw) == [server]
    pgw.flush()
    assert ct.take() == (pg.command_complete("BEGIN") + rfq(b"T") + pg.command_complete("COMMIT")
                         + rfq(b"I"))


def test_pg_pipeline_releases_after_the_last_sync(pgw: World) -> None:
    server, _ = pgw.pg_server()
    client, _ = pgw.client()
    batch = parse(b"select 1") + BIND + EXECUTE + SYNC
    client.data_received(batch * 2)
    assert len(server.requests) == 2
    server.data_received(PARSE_OK + BIND_OK + result("1") + rfq())
    assert client.server is server, "one Sync still unanswered"
    server.data_received(PARSE_OK + BIND_OK + result("1") + rfq())
    assert client.server is None and idle(pgw) == [server]


def test_pg_unsynced_execute_keeps_the_server_and_closes_it_when_the_client_leaves(
        pgw: World) -> None:
    server, _ = pgw.pg_server()
    client, _ = pgw.client()
    client.data_received(parse(b"select pg_sleep(1)") + BIND + EXECUTE + FLUSH)
    server.data_received(PARSE_OK + BIND_OK)
    assert client.server is server and server.requests.open is not None
    client.connection_lost(None)
    assert server.state is ServerState.CLOSED and server.close_reason is CloseReason.CLIENT_ABORT
    assert not idle(pgw)


def test_pg_terminate_after_unsynced_messages_does_not_hand_the_server_on(pgw: World) -> None:
    """libpq's PQfinish in pipeline mode: Parse/Bind/Execute and Terminate in one write."""
    server, _ = pgw.pg_server()
    client, ct = pgw.client()
    client.data_received(parse(b"select 'LEAKED'") + BIND + EXECUTE + msg(b"X"))
    pgw.flush()
    assert ct.closed
    client.connection_lost(None)
    assert server.state is ServerState.CLOSED and not idle(pgw)


def test_pg_parameter_sync_is_swallowed_in_order(pgw: World) -> None:
    server, st = pgw.pg_server()
    server.params = {"TimeZone": "UTC"}
    client, ct = pgw.client()
    client.params = {"TimeZone": "Europe/Paris"}
    client.data_received(pg.query("select now()"))
    pgw.flush()
    sent = st.take()
    assert sent.startswith(b"Q") and b"set_config" in sent and sent.endswith(pg.query("select now()"))
    assert [b.action.value for b in server.requests] == ["swallow", "forward"]
    # Our sync's replies and the client's, in one chunk: only the client's reach it.
    server.data_received(result("Europe/Paris", "SELECT 1")
                         + pg.parameter_status("TimeZone", "Europe/Paris") + rfq()
                         + result("now") + rfq())
    pgw.flush()
    assert ct.take() == result("now") + rfq()
    assert client.server is None and idle(pgw) == [server]


# --------------------------------------------------------------------------- loss and retry (PG)


def lose(server: Any, transport: FakeTransport) -> None:
    transport.closed = True
    server.connection_lost(ConnectionResetError("reset"))


def test_pg_begin_lost_before_any_reply_is_replayed(pgw: World) -> None:
    dead, dt = pgw.pg_server()
    fresh, ft = pgw.pg_server()
    client, ct = pgw.client()
    client.data_received(pg.query("BEGIN"))
    assert client.server is not None
    first, first_t = (dead, dt) if client.server is dead else (fresh, ft)
    other, other_t = (fresh, ft) if first is dead else (dead, dt)
    pgw.flush()
    lose(first, first_t)
    assert client.server is other, "replayed on the other server"
    pgw.flush()
    assert other_t.take() == pg.query("BEGIN")
    assert ct.take() == b"", "the client noticed nothing"


def test_pg_write_lost_after_it_left_gets_outcome_unknown(pgw: World) -> None:
    server, st = pgw.pg_server()
    client, ct = pgw.client()
    client.data_received(pg.query("UPDATE t SET n = n + 1"))
    pgw.flush()  # the bytes left poolproxy
    lose(server, st)
    pgw.flush()
    reply = ct.take()
    assert reply[:1] == b"E" and b"C08007\0" in reply and reply.endswith(rfq())
    assert client.server is None and client.state is ClientState.IDLE


def test_pg_write_lost_before_it_left_is_replayed(pgw: World) -> None:
    server, st = pgw.pg_server()
    other, ot = pgw.pg_server()
    client, ct = pgw.client()
    client.data_received(pg.query("UPDATE t SET n = n + 1"))
    first, first_t = (server, st) if client.server is server else (other, ot)
    second_t = ot if first is server else st
    lose(first, first_t)  # before the outbox flushed: the request never left
    pgw.flush()
    assert second_t.take() == pg.query("UPDATE t SET n = n + 1")
    assert ct.take() == b""


def test_pg_no_replay_after_the_first_reply_byte(pgw: World) -> None:
    a, at = pgw.pg_server()
    b, bt = pgw.pg_server()
    client, ct = pgw.client()
    client.data_received(pg.query("select 1"))  # harmless to repeat, but half answered
    pgw.flush()
    first = client.server
    first_t, second_t = (at, bt) if first is a else (bt, at)
    assert first is not None
    first_t.take()
    first.data_received(pg.row_description([("v", 25)]))  # the reply has started
    lose(first, first_t)
    pgw.flush()
    out = ct.take()
    assert out.startswith(pg.row_description([("v", 25)]))
    assert b"C08006\0" in out and out.endswith(rfq())
    assert client.server is None and second_t.take() == b"", "not replayed"


def test_pg_fatal_as_first_reply_is_replayed(pgw: World) -> None:
    a, at = pgw.pg_server()
    b, bt = pgw.pg_server()
    client, ct = pgw.client()
    client.data_received(pg.query("UPDATE t SET n = n + 1"))
    pgw.flush()
    first = client.server
    first_t, second_t = (at, bt) if first is a else (bt, at)
    assert first is not None
    first.data_received(pg.error_response("57P01", "terminating connection due to administrator "
                                          "command", severity="FATAL"))
    pgw.flush()
    assert client.server is not None and client.server is not first
    assert second_t.take() == pg.query("UPDATE t SET n = n + 1")
    assert ct.take() == b""


# --------------------------------------------------------------------------- MySQL


def ok(status: int = my.SERVER_STATUS_AUTOCOMMIT, seq: int = 1) -> bytes:
    return my.encode_packet(seq, my.build_ok(status_flags=status,
                                             capabilities=my.CLIENT_PROTOCOL_41))


def com_query(sql: bytes) -> bytes:
    return my.encode_packet(0, bytes((my.COM_QUERY,)) + sql)


def test_mysql_release_only_on_final_ok_outside_a_transaction(myw: World) -> None:
    server, st = myw.my_server()
    client, ct = myw.client()
    client.data_received(com_query(b"BEGIN"))
    assert client.server is server
    server.data_received(ok(my.SERVER_STATUS_AUTOCOMMIT | my.SERVER_STATUS_IN_TRANS))
    assert client.server is server, "inside a transaction"
    client.data_received(com_query(b"COMMIT"))
    server.data_received(ok())
    assert client.server is None and idle(myw) == [server]


def test_mysql_autocommit_off_holds_the_server_from_a_statement_to_commit(myw: World) -> None:
    """With autocommit off (PEP 249), a transaction runs from any statement to COMMIT or
    ROLLBACK; the server is free before it and after it (nothing is open there)."""
    server, _ = myw.my_server()
    client, _ = myw.client()
    client.data_received(com_query(b"SET autocommit=0"))
    server.data_received(ok(0))
    assert client.server is None  # nothing begun yet
    client.data_received(com_query(b"SELECT CONNECTION_ID()"))
    server.data_received(ok(0))  # no IN_TRANS (no table touched): still the client's transaction
    assert client.server is server
    client.data_received(com_query(b"SAVEPOINT s1"))
    server.data_received(ok(0))
    assert client.server is server
    client.data_received(com_query(b"COMMIT"))
    server.data_received(ok(0))
    assert client.server is None
    client.data_received(com_query(b"SET autocommit=1"))
    server.data_received(ok())
    assert client.server is None


def test_mysql_client_leaving_mid_response_closes_the_server(myw: World) -> None:
    server, _ = myw.my_server()
    client, _ = myw.client()
    client.data_received(com_query(b"SELECT SLEEP(5)"))
    client.connection_lost(None)
    assert server.state is ServerState.CLOSED and not idle(myw)


def test_mysql_autocommit_write_lost_after_it_left_gets_2013_may_have_been_applied(
        myw: World) -> None:
    server, st = myw.my_server()
    client, ct = myw.client()
    client.data_received(com_query(b"UPDATE t SET n = n + 1"))
    myw.flush()
    lose(server, st)
    myw.flush()
    reply = ct.take()
    assert reply[4] == 0xFF and struct.unpack_from("<H", reply, 5)[0] == 2013
    assert b"may or may not" in reply


def test_mysql_begin_lost_is_replayed(myw: World) -> None:
    a, at = myw.my_server()
    b, bt = myw.my_server()
    client, ct = myw.client()
    client.data_received(com_query(b"BEGIN"))
    myw.flush()
    first = client.server
    first_t, second_t = (at, bt) if first is a else (bt, at)
    assert first is not None
    lose(first, first_t)
    myw.flush()
    assert second_t.take() == com_query(b"BEGIN")
    assert ct.take() == b""
