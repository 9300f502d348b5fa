"""Server-side prepared statements (COM_STMT_*) shared across server connections, MariaDB.

Clients are the real binary-protocol drivers at their defaults: mysql-connector-python's
prepared cursors and MariaDB Connector/Python (which prepares every parameterized statement
and, being Connector/C, sends parameter types only on a statement's first execute). With
more clients than `pool_size` they must all get exact results without being pinned; a raw
socket client checks the protocol corners byte by byte against a direct connection.
"""

from __future__ import annotations

import datetime
import decimal
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import mariadb
import mysql.connector
import pytest

from tests.harness import MariaDbServer, ProxyProcess, make_config, mysql_listener
from tests.harness.util import http_get, metric

POOL = 2
CLIENTS = 12
APP_PASSWORD = "app-secret"


@pytest.fixture(scope="module")
def proxy(mariadb_server: MariaDbServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ProxyProcess]:
    config = make_config(
        mysql_listener(mariadb_server, pool_size=POOL, query_wait_timeout="5s"),
        mysql_listener(mariadb_server, name="small", pool_size=1, max_prepared_statements=3,
                       query_wait_timeout="5s"),
        mysql_listener(mariadb_server, name="off", pool_size=1, max_prepared_statements=0,
                       query_wait_timeout="2s"),
    )
    proc = ProxyProcess(config, tmp_path_factory.mktemp("mysql_prepared_proxy"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module", autouse=True)
def schema(mariadb_server: MariaDbServer) -> None:
    for sql in (
        "DROP TABLE IF EXISTS app.ps_items, app.ps_types, app.ps_blobs, app2.ps_items",
        "CREATE TABLE app.ps_items (id INT PRIMARY KEY, owner VARCHAR(32), n INT) ENGINE=InnoDB",
        "CREATE TABLE app2.ps_items (id INT PRIMARY KEY, owner VARCHAR(32), n INT)"
        " ENGINE=InnoDB",
        "CREATE TABLE app.ps_types (id INT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED,"
        " si SMALLINT, mi MEDIUMINT, bi BIGINT, bu BIGINT UNSIGNED, de DECIMAL(20,6),"
        " fl FLOAT, db DOUBLE, dt DATETIME(6), d DATE, t TIME(6), ts TIMESTAMP(3) NULL,"
        " yr YEAR, txt VARCHAR(200) CHARACTER SET utf8mb4, bl BLOB, js JSON, bits BIT(10),"
        " en ENUM('a','b'), nul INT NULL) ENGINE=InnoDB",
        "INSERT INTO app.ps_types VALUES (1, -128, 255, -32768, -8388608, -9223372036854775808,"
        " 18446744073709551615, -12345678901234.123456, 1.5, -2.25e-300,"
        " '2024-02-29 23:59:59.999999', '0001-01-01', '-838:59:59.000000',"
        " '2038-01-19 03:14:07.123', 2155, 'emoji 😀 漢字 ü', x'00ff10', '{\"a\": [1, 2]}',"
        " b'1010101010', 'b', NULL),"
        " (2, 0, 0, 0, 0, 0, 0, 0, 0, 0, '1970-01-01 00:00:00', '9999-12-31', '00:00:00.5',"
        " NULL, 1901, '', x'', 'null', b'0', 'a', NULL),"
        " (3, 127, 1, 1, 1, 9223372036854775807, 1, 0.000001, -1e10, 1e300,"
        " '2000-01-01 12:00:00.000001', '2000-01-01', '-00:00:01.25', NULL, NULL, NULL, NULL,"
        " NULL, NULL, NULL, NULL)",
        "CREATE TABLE app.ps_blobs (id INT PRIMARY KEY, data LONGBLOB) ENGINE=InnoDB",
    ):
        mariadb_server.execute(sql)
    mariadb_server.execute("INSERT INTO app.ps_items VALUES " + ",".join(
        f"({i}, 'owner{i % 7}', {i * 10})" for i in range(1, 201)))
    mariadb_server.execute("INSERT INTO app2.ps_items VALUES (1, 'in app2', -1)")


def connector(proxy: ProxyProcess, listener: str = "mysql", **kw: Any) -> Any:
    """mysql-connector-python at its defaults (autocommit off, as PEP 249 has it)."""
    return mysql.connector.connect(host="127.0.0.1", port=proxy.port(listener), user="app",
                                   password=APP_PASSWORD, database="app", **kw)


def maria(proxy: ProxyProcess, listener: str = "mysql", **kw: Any) -> Any:
    """MariaDB Connector/Python at its defaults (autocommit off, as PEP 249 has it)."""
    return mariadb.connect(host="127.0.0.1", port=proxy.port(listener), user="app",
                           password=APP_PASSWORD, database="app", **kw)


def pins(proxy: ProxyProcess, listener: str) -> float:
    return metric(proxy, "poolproxy_client_pins_total", listener=listener)


def server_count(my: MariaDbServer) -> int:
    return my.connection_count("app")


def prepared_stmt_count(my: MariaDbServer) -> int:
    return int(my.execute("SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'")[0][1])


def run_clients(n: int, work: Any) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait(10)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


# ----------------------------------------------------------------------- drivers, many clients
def test_connector_prepared_cursors_share_a_small_pool(proxy: ProxyProcess,
                                                       mariadb_server: MariaDbServer) -> None:
    """mysql-connector-python's prepared cursors, CLIENTS connected clients over POOL servers:
    exact results, nothing pinned, never more than POOL server connections. At the driver's
    defaults autocommit is off: a server is held from a transaction's first statement to its
    commit and goes back to the pool in between."""
    before = pins(proxy, "mysql")
    conns = [connector(proxy) for _ in range(CLIENTS)]
    peak = 0

    def work(i: int) -> None:
        cur = conns[i].cursor(prepared=True)
        for k in range(30):
            row_id = (i * 31 + k) % 200 + 1
            cur.execute("SELECT id, owner, n FROM ps_items WHERE id = %s", (row_id,))
            assert cur.fetchall() == [(row_id, f"owner{row_id % 7}", row_id * 10)]
            cur.execute("SELECT COUNT(*), SUM(n) FROM ps_items WHERE owner = %s AND n > %s",
                        (f"owner{k % 7}", k))
            (count, total), = cur.fetchall()
            expect = [r for r in range(1, 201) if r % 7 == k % 7 and r * 10 > k]
            assert (count, int(total)) == (len(expect), sum(r * 10 for r in expect))
            conns[i].commit()  # autocommit is off: each unit of work ends its transaction
        cur.close()

    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, server_count(mariadb_server))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        errors = run_clients(CLIENTS, work)
    finally:
        stop.set()
        watcher.join()
        for c in conns:
            c.close()
    assert not errors, errors[:3]
    assert peak <= POOL
    assert pins(proxy, "mysql") == before


def test_mariadb_connector_execute_and_executemany(proxy: ProxyProcess,
                                                   mariadb_server: MariaDbServer) -> None:
    """MariaDB Connector/Python prepares every parameterized statement and sends parameter
    types only on its first execute: later executes land on servers that never saw them
    (poolproxy supplies them). executemany uses COM_STMT_BULK_EXECUTE."""
    mariadb_server.execute("DELETE FROM app.ps_items WHERE id >= 1000")
    before = pins(proxy, "mysql")
    conns = [maria(proxy) for _ in range(CLIENTS)]

    def work(i: int) -> None:
        cur = conns[i].cursor()
        for k in range(20):
            row_id = (i * 17 + k) % 200 + 1
            cur.execute("SELECT owner, n FROM ps_items WHERE id = ?", (row_id,))
            assert cur.fetchall() == [(f"owner{row_id % 7}", row_id * 10)]
            cur.execute("SELECT ? + 1, CONCAT(?, '!')", (k, f"c{i}"))
            assert cur.fetchall() == [(k + 1, f"c{i}!")]
            conns[i].commit()  # autocommit is off: each unit of work ends its transaction
        base = 1000 + i * 100
        cur.executemany("INSERT INTO ps_items (id, owner, n) VALUES (?, ?, ?)",
                        [(base + j, f"bulk{i}", j) for j in range(25)])
        conns[i].commit()
        cur.execute("SELECT COUNT(*), SUM(n) FROM ps_items WHERE owner = ?", (f"bulk{i}",))
        assert cur.fetchall() == [(25, sum(range(25)))]
        conns[i].commit()
        cur.close()

    try:
        errors = run_clients(CLIENTS, work)
    finally:
        for c in conns:
            c.close()
    assert not errors, errors[:3]
    assert mariadb_server.execute(
        "SELECT COUNT(*) FROM app.ps_items WHERE id >= 1000")[0][0] == CLIENTS * 25
    assert pins(proxy, "mysql") == before


# ----------------------------------------------------------------------- binary rows
TYPES_SQL = ("SELECT id, ti, tu, si, mi, bi, bu, de, fl, db, dt, d, t, ts, txt, bl, js, bits,"
             " en, nul FROM ps_types WHERE id >= ? ORDER BY id")


def test_binary_rows_equal_direct(proxy: ProxyProcess, mariadb_server: MariaDbServer) -> None:
    """Every common type through the binary protocol compares equal to a direct connection's
    (both drivers), on a server that had to prepare the statement itself."""
    direct_c = mysql.connector.connect(host=mariadb_server.host, port=mariadb_server.port,
                                       user="app", password=APP_PASSWORD, database="app")
    direct_m = mariadb.connect(host=mariadb_server.host, port=mariadb_server.port, user="app",
                               password=APP_PASSWORD, database="app")
    try:
        cur = direct_c.cursor(prepared=True)
        cur.execute(TYPES_SQL, (1,))
        want_c = cur.fetchall()
        curm = direct_m.cursor()
        curm.execute(TYPES_SQL, (1,))
        want_m = curm.fetchall()
    finally:
        direct_c.close()
        direct_m.close()
    assert len(want_c) == 3 and want_c[0][12] < datetime.timedelta(0)  # TIME, negative
    assert isinstance(want_c[0][7], decimal.Decimal)
    for _ in range(2):  # the second time: prepared on another server, answered from the cache
        a, b = connector(proxy), maria(proxy)
        try:
            cur = a.cursor(prepared=True)
            cur.execute(TYPES_SQL, (1,))
            assert cur.fetchall() == want_c
            curm = b.cursor()
            curm.execute(TYPES_SQL, (1,))
            assert curm.fetchall() == want_m
        finally:
            a.close()
            b.close()


# ----------------------------------------------------------------------- raw protocol
class Raw:
    """A MySQL client on a socket speaking COM_STMT_* by hand (mysql_native_password)."""

    def __init__(self, host: str, port: int, user: str = "app", password: str = APP_PASSWORD,
                 db: str = "app") -> None:
        import hashlib
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""
        _, greeting = self.read()
        pos = greeting.index(b"\0", 1) + 1 + 4
        salt = greeting[pos:pos + 8]
        pos += 8 + 1
        caps_lo = struct.unpack_from("<H", greeting, pos)[0]
        pos += 2 + 1 + 2
        caps_hi = struct.unpack_from("<H", greeting, pos)[0]
        pos += 2 + 1 + 10
        salt += greeting[pos:pos + 12]
        server_caps = caps_lo | caps_hi << 16
        caps = (0x1 | 0x4 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x10000 | 0x20000 | 0x80000) \
            & server_caps
        self.deprecate_eof = False
        h1 = hashlib.sha1(password.encode()).digest()
        h2 = hashlib.sha1(h1).digest()
        scramble = bytes(a ^ b for a, b in zip(h1, hashlib.sha1(salt + h2).digest(),
                                                strict=True))
        body = struct.pack("<IIB23x", caps, 1 << 24, 45) + user.encode() + b"\0" \
            + bytes((len(scramble),)) + scramble + db.encode() + b"\0" \
            + b"mysql_native_password\0"
        self.write(1, body)
        _, ok = self.read()
        assert ok[:1] == b"\0", ok

    def write(self, seq: int, payload: bytes) -> None:
        self.sock.sendall(struct.pack("<I", len(payload))[:3] + bytes((seq,)) + payload)

    def read(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:3], "little")
                if len(self.buf) >= 4 + n:
                    seq, payload = self.buf[3], self.buf[4:4 + n]
                    self.buf = self.buf[4 + n:]
                    return seq, payload
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data

    def command(self, payload: bytes) -> None:
        self.write(0, payload)

    def prepare(self, sql: str) -> tuple[int, int, int]:
        """(statement id, columns, params); raises on ERR."""
        self.command(b"\x16" + sql.encode())
        _, ok = self.read()
        if ok[:1] == b"\xff":
            raise RuntimeError(err_text(ok))
        stmt_id, cols, params = struct.unpack_from("<IHH", ok, 1)
        for _ in range(params + (1 if params else 0) + cols + (1 if cols else 0)):
            self.read()
        return stmt_id, cols, params

    def execute(self, stmt_id: int, values: list[int] | None = None, send_types: bool = True,
                cursor: int = 0) -> bytes:
        body = b"\x17" + struct.pack("<IBI", stmt_id, cursor, 1)
        if values:
            body += bytes((len(values) + 7) // 8) + (b"\x01" if send_types else b"\x00")
            if send_types:
                body += b"\x08\x00" * len(values)  # MYSQL_TYPE_LONGLONG
            body += b"".join(struct.pack("<q", v) for v in values)
        self.command(body)
        return self.response()

    def response(self) -> bytes:
        """The whole response, packets joined (for comparing), ending at OK/ERR/last EOF."""
        out = []
        _, first = self.read()
        out.append(first)
        if first[:1] in (b"\x00", b"\xff"):
            return b"|".join(out)
        eofs = 0
        while True:
            _, p = self.read()
            out.append(p)
            if p[:1] == b"\xff":
                break
            if p[:1] == b"\xfe" and len(p) < 9:
                eofs += 1
                status = struct.unpack_from("<H", p, 3)[0]
                if eofs == 2 or status & 0x40:  # end of rows, or a cursor was opened
                    break
        return b"|".join(out)

    def close(self) -> None:
        self.sock.close()


def err_text(payload: bytes) -> str:
    errno = struct.unpack_from("<H", payload, 1)[0]
    return f"{errno} {payload[9:].decode()}"


def raw(proxy: ProxyProcess, listener: str = "mysql") -> Raw:
    return Raw("127.0.0.1", proxy.port(listener))


def test_raw_exchange_matches_direct(proxy: ProxyProcess, mariadb_server: MariaDbServer) -> None:
    """The same script of COM_STMT_* gets byte-identical replies (statement ids aside)
    through poolproxy and directly: executes without types after the first, a closed id,
    an unknown id (1243), FETCH without a cursor (1421), RESET."""
    def script(c: Raw) -> list[bytes]:
        out = []
        sid, cols, params = c.prepare("SELECT ? * 2, ? + 0")
        out.append(bytes((cols, params)))
        out.append(c.execute(sid, [21, 1]))
        out.append(c.execute(sid, [5, 7], send_types=False))  # types from the first execute
        c.command(b"\x1a" + struct.pack("<I", sid))  # RESET
        out.append(c.response())
        out.append(c.execute(sid, [-3, 0], send_types=False))
        c.command(b"\x1c" + struct.pack("<II", sid, 1))  # FETCH, no cursor
        out.append(c.response().replace(str(sid).encode(), b"<id>"))
        c.command(b"\x19" + struct.pack("<I", sid))  # CLOSE: no reply
        out.append(c.execute(sid, [1, 1]).replace(str(sid).encode(), b"<id>"))
        out.append(c.execute(987654, [1, 1]))
        return out

    d = Raw(mariadb_server.host, mariadb_server.port)
    try:
        want = script(d)
    finally:
        d.close()
    assert b"1243" not in want[1]
    for _ in range(3):
        p = raw(proxy)
        try:
            assert script(p) == want
        finally:
            p.close()


def test_statement_survives_its_server(proxy: ProxyProcess, mariadb_server: MariaDbServer) -> None:
    """A prepared statement keeps working after its server connection was KILLed: it is
    prepared again on the next server (types supplied although the client sends none)."""
    c = raw(proxy, "small")
    try:
        sid, _, _ = c.prepare("SELECT ? + 100")
        assert b"\x00" in c.execute(sid, [1])
        for _ in range(2):
            ids = [r[0] for r in mariadb_server.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'app'")]
            for pid in ids:
                mariadb_server.execute(f"KILL {pid}")
            time.sleep(0.3)
            reply = c.execute(sid, [41], send_types=False)
            assert b"|\x00\x00\x8d\x00\x00\x00\x00\x00\x00\x00|" in reply, reply  # 141
    finally:
        c.close()


def test_lru_bounds_statements_per_server(proxy: ProxyProcess,
                                          mariadb_server: MariaDbServer) -> None:
    """`max_prepared_statements: 3` on a one-server pool: churning 12 distinct statements
    leaves at most 3 prepared on the server (evicted ones closed), and all still work."""
    baseline = prepared_stmt_count(mariadb_server)
    c = raw(proxy, "small")
    try:
        ids = [c.prepare(f"SELECT ? + {k}")[0] for k in range(12)]
        for rnd in range(2):
            for k, sid in enumerate(ids):
                assert err_text_or_ok(c.execute(sid, [rnd])), k
                assert prepared_stmt_count(mariadb_server) - baseline <= 3
    finally:
        c.close()


def err_text_or_ok(reply: bytes) -> bool:
    return not reply.startswith(b"\xff")


def test_no_pin_and_statements_counted(proxy: ProxyProcess) -> None:
    """The pin metric does not move for COM_STMT_PREPARE; /pools and the metrics count the
    statements cached."""
    before = pins(proxy, "mysql")
    c = raw(proxy)
    try:
        sid, _, _ = c.prepare("SELECT ? AS counted")
        c.execute(sid, [1])
        pools = http_get(proxy, "/pools").decode()
        assert '"prepared_statements"' in pools
        assert metric(proxy, "poolproxy_prepared_statements_distinct", listener="mysql") >= 1
        assert metric(proxy, "poolproxy_prepared_statements_total", listener="mysql",
                      side="client") >= 1
    finally:
        c.close()
    assert pins(proxy, "mysql") == before


def test_max_prepared_statements_zero_pins(proxy: ProxyProcess) -> None:
    """`max_prepared_statements: 0` keeps the old behaviour: the client is pinned."""
    before = pins(proxy, "off")
    c = raw(proxy, "off")
    try:
        sid, _, _ = c.prepare("SELECT ?")
        c.execute(sid, [1])
    finally:
        c.close()
    assert pins(proxy, "off") == before + 1


def test_long_data_replayed_before_execute(proxy: ProxyProcess,
                                           mariadb_server: MariaDbServer) -> None:
    """COM_STMT_SEND_LONG_DATA chunks are kept and replayed just before their execute, on
    whichever server runs it (here: one the statement was never prepared on)."""
    c = raw(proxy)
    try:
        sid, _, params = c.prepare("INSERT INTO ps_blobs (id, data) VALUES (?, ?)")
        assert params == 2
        chunks = [bytes([k]) * 300_000 for k in range(1, 6)]
        for chunk in chunks:
            c.command(b"\x18" + struct.pack("<IH", sid, 1) + chunk)  # no reply
        body = b"\x17" + struct.pack("<IBI", sid, 0, 1) + b"\x00\x01" \
            + b"\x08\x00\xfc\x00" + struct.pack("<q", 7)  # id LONGLONG, data BLOB (long data)
        c.command(body)
        assert c.response()[:1] == b"\x00"
    finally:
        c.close()
    got = mariadb_server.execute("SELECT LENGTH(data), MD5(data) FROM app.ps_blobs WHERE id = 7")
    import hashlib
    assert got == [(1_500_000, hashlib.md5(b"".join(chunks)).hexdigest())]


def test_cursor_holds_its_server_until_exhausted(proxy: ProxyProcess) -> None:
    """An execute that opens a cursor keeps the server (pool of one) until the last FETCH;
    another client waits meanwhile and then runs."""
    c = raw(proxy, "small")
    other = raw(proxy, "small")
    try:
        sid, _, _ = c.prepare("SELECT id FROM ps_items WHERE id <= ? ORDER BY id")
        osid, _, _ = other.prepare("SELECT ? + 1")
        first = c.execute(sid, [5], cursor=1)
        assert first.count(b"|") >= 2  # column definitions, EOF with a cursor open
        other.command(b"\x17" + struct.pack("<IBI", osid, 0, 1) + b"\x00\x01\x08\x00"
                      + struct.pack("<q", 1))
        other.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            other.read()  # waits: the cursor holds the only server
        other.sock.settimeout(10)
        rows = 0
        for _ in range(10):
            c.command(b"\x1c" + struct.pack("<II", sid, 2))
            while True:  # binary rows, then an EOF
                _, p = c.read()
                assert p[:1] != b"\xff", err_text(p)
                if p[:1] == b"\xfe" and len(p) < 9:
                    break
                rows += 1
            if struct.unpack_from("<H", p, 3)[0] & 0x80:  # last row sent: the cursor is done
                break
        assert rows == 5
        _, answer = other.read()  # the waiting client got the server
        assert answer[:1] == b"\x01"
    finally:
        c.close()
        other.close()


def test_prepare_flood_is_bounded(proxy: ProxyProcess) -> None:
    """One client preparing without end gets MySQL's 1461 at poolproxy's per-client limit;
    a steady client keeps working meanwhile."""
    from proxy.mysql.prepared import MAX_CLIENT_STATEMENTS
    flood = raw(proxy)
    steady = raw(proxy)
    try:
        ssid, _, _ = steady.prepare("SELECT ? + 0")
        err = b""
        for k in range(MAX_CLIENT_STATEMENTS + 1):
            flood.command(b"\x16" + f"SELECT {k} AS flood".encode())
            _, first = flood.read()
            if first[:1] == b"\xff":
                err = first
                break
            cols = struct.unpack_from("<H", first, 5)[0]
            for _ in range(cols + (1 if cols else 0)):
                flood.read()
            if k % 2000 == 0:
                assert steady.execute(ssid, [k]).startswith(b"\x01")
        assert err and struct.unpack_from("<H", err, 1)[0] == 1461, err
        assert k == MAX_CLIENT_STATEMENTS
        assert steady.execute(ssid, [3]).startswith(b"\x01")
    finally:
        flood.close()
        steady.close()


# ----------------------------------------------------------------------- sysbench
SYSBENCH_THREADS = 8  # four times the pool


def sysbench(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("sysbench")
    if exe is None:
        pytest.skip("sysbench is not installed (Debian: apt-get install sysbench)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("test", ["oltp_point_select", "oltp_read_only"])
def test_sysbench_prepared_mode_over_a_small_pool(proxy: ProxyProcess,
                                                  mariadb_server: MariaDbServer, test: str) -> None:
    """sysbench at its default --db-ps-mode=auto (every statement COM_STMT_*), more threads
    than server connections: zero errors, and no client pinned."""
    common = ["--db-driver=mysql", "--mysql-db=app", "--tables=2", "--table-size=500"]
    sysbench("oltp_read_only", *common, f"--mysql-host={mariadb_server.host}",
             f"--mysql-port={mariadb_server.port}", "--mysql-user=root", "cleanup")
    prep = sysbench("oltp_read_only", *common, f"--mysql-host={mariadb_server.host}",
                    f"--mysql-port={mariadb_server.port}", "--mysql-user=root", "prepare")
    assert prep.returncode == 0, prep.stdout + prep.stderr
    before = pins(proxy, "mysql")
    run = sysbench(test, *common, "--mysql-host=127.0.0.1", f"--mysql-port={proxy.port('mysql')}",
                   "--mysql-user=app", f"--mysql-password={APP_PASSWORD}", "--db-ps-mode=auto",
                   f"--threads={SYSBENCH_THREADS}", "--time=4", "--events=0", "run")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    errors = re.search(r"errors:\s+(\d+)", out)
    done = re.search(r"transactions:\s+(\d+)", out)
    assert errors is not None and done is not None, out
    assert int(errors.group(1)) == 0, out
    assert int(done.group(1)) > 100, out
    assert pins(proxy, "mysql") == before
    assert metric(proxy, "poolproxy_prepared_statement_executions_total", listener="mysql") > 100


def test_bad_statement_input_gets_mysql_errors(proxy: ProxyProcess) -> None:
    """Long data beyond poolproxy's bound fails that execute with 1153 (and nothing is kept);
    an execute with too few parameter values gets the server's own error; meanwhile a steady
    client keeps working, and the statements stay usable."""
    from proxy.mysql.prepared import MAX_LONG_DATA
    c = raw(proxy)
    steady = raw(proxy)
    try:
        ssid, _, _ = steady.prepare("SELECT ? + 0")
        sid, _, _ = c.prepare("INSERT INTO ps_blobs (id, data) VALUES (?, ?)")
        chunk = b"x" * (1 << 20)
        for _ in range(MAX_LONG_DATA // len(chunk) + 1):
            c.command(b"\x18" + struct.pack("<IH", sid, 1) + chunk)
        assert steady.execute(ssid, [1]).startswith(b"\x01")
        body = b"\x17" + struct.pack("<IBI", sid, 0, 1) + b"\x00\x01" + b"\x08\x00\xfc\x00" \
            + struct.pack("<q", 8)
        c.command(body)
        reply = c.response()
        assert reply[:1] == b"\xff" and struct.unpack_from("<H", reply, 1)[0] == 1153, reply
        # Too few values for the parameters: the server's own error, the session goes on.
        c.command(b"\x17" + struct.pack("<IBI", sid, 0, 1) + b"\x00\x01\x08\x00\x08\x00"
                  + struct.pack("<q", 9))
        reply = c.response()
        assert reply[:1] == b"\xff", reply
        assert c.execute(c.prepare("SELECT ? * 3")[0], [5]).startswith(b"\x01")
        assert steady.execute(ssid, [2]).startswith(b"\x01")
    finally:
        c.close()
        steady.close()
