"""proxy/mysql/session.py: what one COM_QUERY does to the session.

`analyse()` must (a) record every session variable a client sets, in a form that can be
replayed on another server, (b) pin the client whenever the statement creates state that cannot
be replayed, and (c) leave ordinary statements alone. A missed SET or a missed pin silently
leaks state between clients, so the tests lean on the cases where the text is tricky (comments,
quotes, multi-statements). Over-pinning is acceptable where noted: it costs pooling efficiency,
never correctness.

`replay_sql()` builds the one SET that brings a server's tracked variables to a client's.
"""

from __future__ import annotations

import pytest

from proxy.mysql.session import Analysis, PinReason, analyse, replay_sql


def sets(sql: str | bytes) -> list[tuple[str, str]]:
    a = analyse(sql.encode() if isinstance(sql, str) else sql)
    assert a.pin is None, f"{sql!r} pinned ({a.pin}) instead of being tracked"
    return a.sets


def pin(sql: str | bytes) -> str | None:
    return analyse(sql.encode() if isinstance(sql, str) else sql).pin


def nothing(sql: str) -> bool:
    a = analyse(sql.encode())
    return a.pin is None and not a.sets and a.use is None


# --------------------------------------------------------------------------- SET session vars


@pytest.mark.parametrize(("sql", "expected"), [
    ("SET time_zone = '+00:00'", [("time_zone", "@@session.time_zone = '+00:00'")]),
    ('SET sql_mode="STRICT_TRANS_TABLES"', [("sql_mode", '@@session.sql_mode = "STRICT_TRANS_TABLES"')]),
    ("SET sql_mode=''", [("sql_mode", "@@session.sql_mode = ''")]),
    ("SET sql_mode='it''s'", [("sql_mode", "@@session.sql_mode = 'it''s'")]),
    ("SET sql_mode='a\\'b'", [("sql_mode", "@@session.sql_mode = 'a\\'b'")]),
    ("SET wait_timeout = 100", [("wait_timeout", "@@session.wait_timeout = 100")]),
    ("SET div_precision_increment = -5", [("div_precision_increment",
                                           "@@session.div_precision_increment = -5")]),
    ("SET long_query_time = 1.5", [("long_query_time", "@@session.long_query_time = 1.5")]),
    ("SET foreign_key_checks = OFF", [("foreign_key_checks", "@@session.foreign_key_checks = OFF")]),
    ("SET sql_auto_is_null = DEFAULT", [("sql_auto_is_null", "@@session.sql_auto_is_null = DEFAULT")]),
    ("SET @@session.wait_timeout=100", [("wait_timeout", "@@session.wait_timeout = 100")]),
    ("SET @@SESSION.wait_timeout=100", [("wait_timeout", "@@session.wait_timeout = 100")]),
    ("SET @@local.sql_mode=''", [("sql_mode", "@@session.sql_mode = ''")]),
    ("SET @@foreign_key_checks=0", [("foreign_key_checks", "@@session.foreign_key_checks = 0")]),
    ("SET SESSION sql_auto_is_null = 0", [("sql_auto_is_null", "@@session.sql_auto_is_null = 0")]),
    ("SET LOCAL foreign_key_checks=0", [("foreign_key_checks", "@@session.foreign_key_checks = 0")]),
    ("set session Time_Zone='+01:00'", [("time_zone", "@@session.time_zone = '+01:00'")]),
    ("SET `time_zone` = '+01:00'", [("time_zone", "@@session.time_zone = '+01:00'")]),
    ("SET time_zone := '+01:00'", [("time_zone", "@@session.time_zone = '+01:00'")]),
    ("  SET\n\ttime_zone  =  '+02:00'  ", [("time_zone", "@@session.time_zone = '+02:00'")]),
    ("SET time_zone='+00:00';", [("time_zone", "@@session.time_zone = '+00:00'")]),
    ("SET time_zone='+00:00' -- UTC please", [("time_zone", "@@session.time_zone = '+00:00'")]),
    ("/* django */ SET time_zone='+00:00'", [("time_zone", "@@session.time_zone = '+00:00'")]),
    # MariaDB's name for it is tx_isolation: stored under one key so a later SET of either wins.
    ("SET tx_isolation='READ-COMMITTED'",
     [("transaction_isolation", "@@session.transaction_isolation = 'READ-COMMITTED'")]),
    ("SET tx_read_only=1", [("transaction_read_only", "@@session.transaction_read_only = 1")]),
])
def test_set_session_variable_is_tracked(sql: str, expected: list[tuple[str, str]]) -> None:
    assert sets(sql) == expected


def test_set_several_assignments_in_order() -> None:
    assert sets("SET sql_mode='TRADITIONAL', SESSION time_zone='+00:00', @@session.wait_timeout=60") == [
        ("sql_mode", "@@session.sql_mode = 'TRADITIONAL'"),
        ("time_zone", "@@session.time_zone = '+00:00'"),
        ("wait_timeout", "@@session.wait_timeout = 60"),
    ]


def test_comma_inside_a_quoted_value_does_not_split_the_assignment() -> None:
    assert sets("SET sql_mode='STRICT_TRANS_TABLES,NO_ZERO_DATE', time_zone='+00:00'") == [
        ("sql_mode", "@@session.sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_DATE'"),
        ("time_zone", "@@session.time_zone = '+00:00'"),
    ]


# --------------------------------------------------------------------------- NAMES / CHARACTER SET


@pytest.mark.parametrize(("sql", "text"), [
    ("SET NAMES utf8mb4", "NAMES utf8mb4"),
    ("set names utf8", "NAMES utf8"),
    ("SET NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_ci'", "NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_ci'"),
    ("SET NAMES utf8mb4 COLLATE utf8mb4_bin", "NAMES utf8mb4 COLLATE utf8mb4_bin"),
    ("SET NAMES DEFAULT", "NAMES DEFAULT"),
    ("SET CHARACTER SET latin1", "CHARACTER SET latin1"),
    ("SET CHARSET utf8", "CHARSET utf8"),
])
def test_set_names_and_character_set_are_one_key(sql: str, text: str) -> None:
    assert sets(sql) == [("names", text)]


def test_set_names_with_other_variables() -> None:
    assert sets("SET NAMES utf8mb4, time_zone='+00:00'") == [
        ("names", "NAMES utf8mb4"), ("time_zone", "@@session.time_zone = '+00:00'")]
    assert sets("SET sql_mode='', NAMES latin1") == [
        ("sql_mode", "@@session.sql_mode = ''"), ("names", "NAMES latin1")]


def test_set_names_supersedes_earlier_charset_variables_in_the_same_statement() -> None:
    # NAMES resets character_set_client/connection/results and collation_connection.
    assert sets("SET character_set_client=latin1, collation_connection=latin1_bin, NAMES utf8") == [
        ("names", "NAMES utf8")]
    # ... but not the ones set after it.
    assert sets("SET NAMES utf8, collation_connection=utf8_bin") == [
        ("names", "NAMES utf8"), ("collation_connection", "@@session.collation_connection = utf8_bin")]


# --------------------------------------------------------------------------- not session state


@pytest.mark.parametrize("sql", [
    "SET autocommit=0", "SET autocommit = 1", "SET SESSION autocommit=0", "SET @@autocommit=1",
    "SET AUTOCOMMIT = OFF",
])
def test_set_autocommit_is_not_replayed(sql: str) -> None:
    # poolproxy owns autocommit: the server's status flags decide transaction state.
    assert sets(sql) == []


def test_set_autocommit_among_others_keeps_the_others() -> None:
    assert sets("SET autocommit=0, time_zone='+00:00'") == [
        ("time_zone", "@@session.time_zone = '+00:00'")]


@pytest.mark.parametrize("sql", [
    "SET GLOBAL max_connections=10",
    "SET @@global.max_connections=10",
    "SET @@GLOBAL.sql_mode=''",
    "SET PERSIST max_connections=10",
    "SET PERSIST_ONLY max_connections=10",
    "SET GLOBAL TRANSACTION ISOLATION LEVEL SERIALIZABLE",
])
def test_global_scope_is_not_session_state(sql: str) -> None:
    assert nothing(sql)


def test_mixed_scopes_keep_only_the_session_ones() -> None:
    assert sets("SET SESSION sql_mode='', GLOBAL max_connections=10") == [
        ("sql_mode", "@@session.sql_mode = ''")]
    assert sets("SET GLOBAL max_connections=10, SESSION sql_mode=''") == [
        ("sql_mode", "@@session.sql_mode = ''")]


def test_scope_keyword_carries_over_to_following_assignments() -> None:
    # MySQL and MariaDB: "SET GLOBAL a=1, b=2" sets b GLOBALly too (the last scope keyword
    # applies to the assignments after it; verified on MariaDB 10.11: after SET SESSION
    # net_write_timeout=61; SET GLOBAL net_read_timeout=30, net_write_timeout=60 the session
    # value is still 61). Tracking b as a session variable replays "SET @@session.b = 2" on the
    # client's next servers: a wrong value, or ERR 1228/1229 for a GLOBAL-only variable, which
    # makes every later checkout of that client fail.
    assert sets("SET GLOBAL net_read_timeout=30, net_write_timeout=60") == []


# --------------------------------------------------------------------------- transactions


@pytest.mark.parametrize(("sql", "level"), [
    ("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", "READ-COMMITTED"),
    ("SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED", "READ-UNCOMMITTED"),
    ("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ", "REPEATABLE-READ"),
    ("set session transaction isolation level serializable", "SERIALIZABLE"),
    ("SET LOCAL TRANSACTION ISOLATION LEVEL READ COMMITTED", "READ-COMMITTED"),
    ("SET SESSION TRANSACTION\n  ISOLATION   LEVEL  READ\tCOMMITTED", "READ-COMMITTED"),
])
def test_set_session_transaction_isolation(sql: str, level: str) -> None:
    assert sets(sql) == [("transaction_isolation", f"@@session.transaction_isolation = '{level}'")]


def test_set_session_transaction_access_mode() -> None:
    assert sets("SET SESSION TRANSACTION READ ONLY") == [
        ("transaction_read_only", "@@session.transaction_read_only = 1")]
    assert sets("SET SESSION TRANSACTION READ WRITE") == [
        ("transaction_read_only", "@@session.transaction_read_only = 0")]


@pytest.mark.parametrize("sql", [
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET TRANSACTION READ ONLY",
    "set transaction isolation level read committed",
])
def test_set_transaction_without_scope_pins(sql: str) -> None:
    # It applies to the next transaction only, on this server: keep the server until then.
    assert pin(sql) == PinReason.TRANSACTION_NEXT


def test_set_session_transaction_with_two_characteristics_pins_rather_than_guess() -> None:
    assert pin("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY") == \
        PinReason.UNRECOGNISED_SET


# --------------------------------------------------------------------------- unrecognised SET


@pytest.mark.parametrize("sql", [
    "SET sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')",
    "SET sql_mode = @@sql_mode",
    "SET wait_timeout = 1 + 2",
    "SET time_zone = (SELECT '+00:00')",
    "SET time_zone = '+00:00' + 0",
    "SET ROLE admin",
    "SET PASSWORD = PASSWORD('x')",
    "SET DEFAULT ROLE r FOR app",
    # MariaDB's per-statement variables: harmless, but over-pinning is the safe default.
    "SET STATEMENT max_statement_time=1 FOR SELECT 1",
])
def test_set_with_an_expression_or_unknown_form_pins(sql: str) -> None:
    assert pin(sql) == PinReason.UNRECOGNISED_SET


def test_unrecognised_part_pins_the_whole_statement() -> None:
    a = analyse(b"SET time_zone='+00:00', sql_mode=CONCAT(@@sql_mode, '')")
    assert a.pin == PinReason.UNRECOGNISED_SET


# --------------------------------------------------------------------------- user variables


@pytest.mark.parametrize("sql", [
    "SET @x = 1",
    "SET @x := 1",
    "set @`quoted var` = 1",
    "SET @'x' = 1",
    "SELECT @x := 1",
    "SELECT @x",
    "SELECT * FROM t WHERE id = @last",
    "UPDATE t SET a = @x",
    "SET time_zone='+00:00', @x = 1",
    "EXECUTE s USING @a",
    "select (@rownum := @rownum + 1) AS r from t",
])
def test_user_variables_pin(sql: str) -> None:
    assert pin(sql) == PinReason.USER_VARIABLE


@pytest.mark.parametrize("sql", [
    "SELECT @@version",
    "SELECT @@session.sql_mode, @@global.max_connections",
    "SELECT 'someone@example.com'",
    "INSERT INTO users (email) VALUES ('a@b.c')",
])
def test_system_variables_and_addresses_do_not_pin(sql: str) -> None:
    assert nothing(sql)


@pytest.mark.parametrize("sql", ["SELECT '@x'", "SELECT `@x` FROM t", "SELECT 'price @ 5'"])
def test_at_sign_inside_literals_may_over_pin(sql: str) -> None:
    # Documented over-pin: the analyser does not parse literals for '@', so a quoted "@name"
    # pins the client. Costly only for that client, never incorrect. If the analyser learns
    # to skip literals this test may be relaxed to `pin(sql) in (None, USER_VARIABLE)`.
    assert pin(sql) in (None, PinReason.USER_VARIABLE)


# --------------------------------------------------------------------------- other unreplayable state


@pytest.mark.parametrize(("sql", "reason"), [
    ("CREATE TEMPORARY TABLE t (a int)", PinReason.TEMP_TABLE),
    ("create temporary table if not exists t (a int)", PinReason.TEMP_TABLE),
    ("CREATE OR REPLACE TEMPORARY TABLE t (a int)", PinReason.TEMP_TABLE),
    ("CREATE TEMPORARY TABLE t SELECT 1 AS a", PinReason.TEMP_TABLE),
    ("LOCK TABLES t WRITE", PinReason.LOCK_TABLES),
    ("lock table t read, u write", PinReason.LOCK_TABLES),
    ("SELECT GET_LOCK('name', 10)", PinReason.GET_LOCK),
    ("select get_lock ('name', 10)", PinReason.GET_LOCK),
    ("SELECT RELEASE_LOCK('name')", PinReason.GET_LOCK),
    ("SELECT RELEASE_ALL_LOCKS()", PinReason.GET_LOCK),
    ("PREPARE s FROM 'SELECT 1'", PinReason.SQL_PREPARE),
    ("prepare s from 'select ?'", PinReason.SQL_PREPARE),
    ("DEALLOCATE PREPARE s", PinReason.SQL_PREPARE),
    ("SELECT LAST_INSERT_ID()", PinReason.SESSION_FUNCTION),
    ("select last_insert_id( )", PinReason.SESSION_FUNCTION),
    ("SELECT FOUND_ROWS()", PinReason.SESSION_FUNCTION),
    ("SELECT ROW_COUNT()", PinReason.SESSION_FUNCTION),
    ("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1", PinReason.SESSION_FUNCTION),
    ("HANDLER t OPEN", PinReason.UNRECOGNISED_SET),
])
def test_unreplayable_state_pins(sql: str, reason: str) -> None:
    assert pin(sql) == reason


def test_execute_of_a_prepared_statement_pins() -> None:
    # _PREPARE matches EXECUTE, but the cheap trigger scan (_TRIGGERS) has no word that occurs
    # in "EXECUTE s", so analyse() returns before reaching it. Harmless today only because the
    # PREPARE before it pinned the client; the statement list says EXECUTE pins.
    assert pin("EXECUTE s") == PinReason.SQL_PREPARE


@pytest.mark.parametrize("sql", [
    "CREATE TABLE t (a int)",
    "DROP TABLE t",
    "UNLOCK TABLES",
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t LOCK IN SHARE MODE",
    "SELECT * FROM locks",
    "SELECT prepared_at FROM jobs",
    "SELECT 1",
    "BEGIN", "COMMIT", "ROLLBACK", "START TRANSACTION READ ONLY",
])
def test_ordinary_statements_do_nothing(sql: str) -> None:
    assert nothing(sql)


# --------------------------------------------------------------------------- USE


@pytest.mark.parametrize(("sql", "db"), [
    ("USE app", "app"),
    ("use app2 ", "app2"),
    ("USE `my db`", "my db"),
    ("USE `my``db`", "my`db"),
    ("USE app;", "app"),
    ("/* x */ USE app", "app"),
])
def test_use(sql: str, db: str) -> None:
    a = analyse(sql.encode())
    assert a == Analysis(use=db)


@pytest.mark.parametrize("sql", ["SELECT usefulness FROM t", "SELECT 'use other'", "USE"])
def test_not_use(sql: str) -> None:
    assert analyse(sql.encode()).use is None


# --------------------------------------------------------------------------- comments


@pytest.mark.parametrize("sql", [
    "/* SET @x = 1 */ SELECT 1",
    "SELECT 1 -- SET @x=1\n",
    "SELECT 1 # LOCK TABLES t WRITE",
    "SELECT 1 /* GET_LOCK('a', 1) */",
    "/* multi\nline SET time_zone='x' */ SELECT 2",
])
def test_comments_are_ignored(sql: str) -> None:
    assert nothing(sql)


def test_comment_between_set_and_assignment() -> None:
    assert sets("SET /* tz */ time_zone = '+00:00'") == [("time_zone", "@@session.time_zone = '+00:00'")]


@pytest.mark.parametrize("sql", [
    # MySQL and MariaDB execute the body of /*! ... */ and MariaDB that of /*M! ... */
    # (verified on MariaDB 10.11: both change @@time_zone / @@foreign_key_checks).
    # mysqldump files are full of them; an untracked one leaks into the pool.
    "/*!40014 SET FOREIGN_KEY_CHECKS=0 */",
    "/*!40101 SET NAMES utf8mb4 */",
    "/*M!100100 SET time_zone='+01:00' */",
])
def test_executable_comments_are_tracked_or_pin(sql: str) -> None:
    a = analyse(sql.encode())
    assert a.sets or a.pin, f"{sql!r}: the server executes this SET, the analyser ignores it"


@pytest.mark.parametrize(("sql", "reason"), [
    # Comment markers inside string literals are not comments. Stripping from them to the end
    # of line hides what follows from the analyser: the statement runs, the state leaks.
    ("SELECT '#', @x := 1", PinReason.USER_VARIABLE),
    ("SELECT 'a -- b', GET_LOCK('a', 1)", PinReason.GET_LOCK),
    ("SELECT '#tag', LAST_INSERT_ID()", PinReason.SESSION_FUNCTION),
    ("INSERT INTO t VALUES ('/*'); LOCK TABLES t WRITE; SELECT '*/'", PinReason.LOCK_TABLES),
])
def test_comment_markers_inside_literals_do_not_hide_state(sql: str, reason: str) -> None:
    assert pin(sql) == reason


def test_comment_marker_inside_literal_does_not_hide_a_set() -> None:
    assert sets("SELECT '#'; SET time_zone='+01:00'") == [("time_zone", "@@session.time_zone = '+01:00'")]


# --------------------------------------------------------------------------- multi-statements


def test_multi_statement_sets_are_all_tracked() -> None:
    assert sets("SET time_zone='+00:00'; SET sql_mode='a;b'; SELECT 1") == [
        ("time_zone", "@@session.time_zone = '+00:00'"),
        ("sql_mode", "@@session.sql_mode = 'a;b'"),
    ]


@pytest.mark.parametrize("sql", [
    "SELECT 'x; USE other'",
    'SELECT "x; SET time_zone=\'+05:00\'"',
    "SELECT `weird;name` FROM t",
    "SELECT 'it\\'s; USE other'",
    "SELECT 'it''s; USE other'",
])
def test_semicolon_inside_quotes_does_not_split(sql: str) -> None:
    assert nothing(sql)


def test_use_and_set_in_one_multi_statement() -> None:
    a = analyse(b"USE app2; SET time_zone='+00:00'")
    assert a.use == "app2"
    assert a.sets == [("time_zone", "@@session.time_zone = '+00:00'")]
    assert analyse(b"SELECT 1; USE app2").use == "app2"


def test_pin_in_a_later_statement_is_found() -> None:
    assert pin("SELECT 1; CREATE TEMPORARY TABLE t (a int)") == PinReason.TEMP_TABLE
    assert pin("SET time_zone='+00:00'; LOCK TABLES t WRITE") == PinReason.LOCK_TABLES


# --------------------------------------------------------------------------- SET in other statements


@pytest.mark.parametrize("sql", [
    "UPDATE counter SET n = n + 1 WHERE id = 1",
    "update t set time_zone = '+00:00'",
    "INSERT INTO t SET a = 1",
    "INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = 2",
    "UPDATE t SET a = 1; UPDATE u SET b = 2",
    "SELECT * FROM settings WHERE name = 'sql_mode'",
    "ALTER TABLE t ALTER COLUMN a SET DEFAULT 1",
    "CREATE TABLE t (c SET('a','b'))",
])
def test_set_inside_other_statements_is_not_a_set(sql: str) -> None:
    assert nothing(sql)


# --------------------------------------------------------------------------- replay_sql


def test_replay_nothing_when_equal() -> None:
    state = {"time_zone": "@@session.time_zone = '+00:00'", "names": "NAMES utf8"}
    assert replay_sql(state, dict(state)) is None
    assert replay_sql({}, {}) is None


def test_replay_only_changed_values() -> None:
    target = {"time_zone": "@@session.time_zone = '+01:00'", "sql_mode": "@@session.sql_mode = ''"}
    current = {"time_zone": "@@session.time_zone = '+00:00'", "sql_mode": "@@session.sql_mode = ''"}
    assert replay_sql(target, current) == "SET @@session.time_zone = '+01:00'"


def test_replay_sets_removed_keys_to_default() -> None:
    assert replay_sql({}, {"time_zone": "@@session.time_zone = '+01:00'"}) == \
        "SET @@session.time_zone = DEFAULT"


def test_replay_restores_login_charset_for_removed_names() -> None:
    assert replay_sql({}, {"names": "NAMES latin1"}) == "SET NAMES DEFAULT"
    login = "NAMES utf8mb4 COLLATE utf8mb4_general_ci"
    assert replay_sql({}, {"names": "NAMES latin1"}, login) == f"SET {login}"


def test_replay_puts_names_first() -> None:
    target = {"time_zone": "@@session.time_zone = 'x'", "names": "NAMES latin1"}
    assert replay_sql(target, {}) == "SET NAMES latin1, @@session.time_zone = 'x'"
    # Also a restored login charset comes before the rest.
    login = "NAMES utf8mb4 COLLATE utf8mb4_general_ci"
    sql = replay_sql({"sql_mode": "@@session.sql_mode = ''"},
                     {"time_zone": "@@session.time_zone = 'x'", "names": "NAMES latin1"}, login)
    assert sql is not None and sql.startswith(f"SET {login}, ")
    assert "@@session.time_zone = DEFAULT" in sql and "@@session.sql_mode = ''" in sql


def test_replay_does_not_reset_charset_variables_after_names() -> None:
    # The server had NAMES utf8 + collation_connection=utf8_bin; the client wants NAMES latin1
    # only. Sorting NAMES first gives "SET NAMES latin1, @@session.collation_connection =
    # DEFAULT", and the DEFAULT undoes half of the NAMES: on MariaDB 10.11 the session is then
    # client=latin1 but connection=utf8mb4/utf8mb4_general_ci. The removed charset variables
    # must be reset before NAMES (or not at all: NAMES resets them).
    sql = replay_sql({"names": "NAMES latin1"},
                     {"names": "NAMES utf8",
                      "collation_connection": "@@session.collation_connection = utf8_bin"})
    assert sql is not None
    tail = sql[sql.index("NAMES latin1"):]
    assert "collation_connection" not in tail, sql


def test_replay_resends_charset_variables_after_a_names_change() -> None:
    # Client A: SET NAMES utf8mb4; SET collation_connection='utf8mb4_bin'. The server it gets
    # next had another client set only collation_connection='utf8mb4_bin'. Sending only
    # "SET NAMES utf8mb4" resets collation_connection to utf8mb4_general_ci (verified on
    # MariaDB 10.11), so A silently runs with the wrong collation. Every charset variable of
    # the target that comes after NAMES must be re-sent whenever NAMES is.
    collation = "@@session.collation_connection = 'utf8mb4_bin'"
    sql = replay_sql({"names": "NAMES utf8mb4", "collation_connection": collation},
                     {"collation_connection": collation})
    assert sql is not None and collation in sql and sql.index("NAMES") < sql.index(collation), sql


def test_analyse_output_round_trips_through_replay() -> None:
    vars: dict[str, str] = {}
    for stmt in ("SET NAMES utf8mb4", "SET time_zone='+00:00', sql_mode='ANSI'",
                 "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"):
        for key, text in analyse(stmt.encode()).sets:
            vars[key] = text
    assert replay_sql(vars, {}) == (
        "SET NAMES utf8mb4, @@session.time_zone = '+00:00', @@session.sql_mode = 'ANSI', "
        "@@session.transaction_isolation = 'READ-COMMITTED'")
