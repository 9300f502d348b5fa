"""Sans-IO MySQL/MariaDB response-end detection for transaction pooling: which response shape a
command gets, `ResponseTracker` (finds the end of a response without copying rows) and
`scan_query_response` (recognises a whole small COM_QUERY response from its headers alone).
"""

from __future__ import annotations

import enum

from .messages import (
    ErrPacket,
    OkPacket,
    SessionStateChange,
    StmtPrepareOk,
    is_progress_report,
    parse_err,
    parse_infile_request,
    parse_ok,
    parse_stmt_prepare_ok,
)
from .wire import (
    _NO_MASK,
    _ROW_END_MASK,
    _U32,
    CLIENT_DEPRECATE_EOF,
    CLIENT_OPTIONAL_RESULTSET_METADATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SESSION_TRACK,
    COM_CREATE_DB,
    COM_DEBUG,
    COM_DROP_DB,
    COM_FIELD_LIST,
    COM_INIT_DB,
    COM_PING,
    COM_PROCESS_INFO,
    COM_PROCESS_KILL,
    COM_QUERY,
    COM_QUIT,
    COM_REFRESH,
    COM_RESET_CONNECTION,
    COM_SET_OPTION,
    COM_SHUTDOWN,
    COM_STATISTICS,
    COM_STMT_BULK_EXECUTE,
    COM_STMT_CLOSE,
    COM_STMT_EXECUTE,
    COM_STMT_FETCH,
    COM_STMT_PREPARE,
    COM_STMT_RESET,
    COM_STMT_SEND_LONG_DATA,
    EOF_HEADER,
    ERR_HEADER,
    LOCAL_INFILE_HEADER,
    MARIADB_CLIENT_CACHE_METADATA,
    MARIADB_CLIENT_PROGRESS,
    MAX_PAYLOAD,
    OK_HEADER,
    SERVER_MORE_RESULTS_EXISTS,
    SERVER_SESSION_STATE_CHANGED,
    SERVER_STATUS_CURSOR_EXISTS,
    Buffer,
    PacketWalker,
    ProtocolError,
    read_lenenc_int,
)


# --------------------------------------------------------------------------------------------
# Response-end detection
# --------------------------------------------------------------------------------------------
class ResponseMode(enum.Enum):
    """What shape of server response a command produces."""

    QUERY = "query"  # COM_QUERY: OK | ERR | LOCAL INFILE | text result sets, multi-results
    STMT_EXECUTE = "stmt_execute"  # binary result sets; a cursor ends after the metadata
    SINGLE = "single"  # exactly one OK / ERR / EOF packet (COM_PING, COM_INIT_DB, ...)
    FIELD_LIST = "field_list"  # column definitions until EOF (or ERR)
    STATISTICS = "statistics"  # one string packet (or ERR)
    STMT_PREPARE = "stmt_prepare"  # prepare-OK, param defs [+EOF], column defs [+EOF]
    STMT_FETCH = "stmt_fetch"  # binary rows until EOF / 0xFE-OK (or ERR)
    NO_RESPONSE = "no_response"  # COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA, COM_QUIT


class TrackerState(enum.Enum):
    FIRST = "first"  # expecting the first packet of a (next) result
    COLUMN_DEFS = "column_defs"
    COLUMNS_EOF = "columns_eof"  # EOF after column definitions (no DEPRECATE_EOF)
    ROWS = "rows"
    INFILE = "infile"  # waiting for the client's LOCAL INFILE data and its empty packet
    PARAM_DEFS = "param_defs"
    PARAMS_EOF = "params_eof"
    DONE = "done"


_FIRST = TrackerState.FIRST
_COLUMN_DEFS = TrackerState.COLUMN_DEFS
_COLUMNS_EOF = TrackerState.COLUMNS_EOF
_ROWS = TrackerState.ROWS
_INFILE = TrackerState.INFILE
_PARAM_DEFS = TrackerState.PARAM_DEFS
_PARAMS_EOF = TrackerState.PARAMS_EOF
_DONE = TrackerState.DONE
_M_QUERY = ResponseMode.QUERY
_M_EXECUTE = ResponseMode.STMT_EXECUTE
_M_SINGLE = ResponseMode.SINGLE
_M_STATISTICS = ResponseMode.STATISTICS
_M_PREPARE = ResponseMode.STMT_PREPARE

_COMMAND_MODES: dict[int, ResponseMode] = {
    COM_QUERY: ResponseMode.QUERY,
    COM_PROCESS_INFO: ResponseMode.QUERY,
    COM_STMT_EXECUTE: ResponseMode.STMT_EXECUTE,
    COM_STMT_BULK_EXECUTE: ResponseMode.STMT_EXECUTE,
    COM_FIELD_LIST: ResponseMode.FIELD_LIST,
    COM_STATISTICS: ResponseMode.STATISTICS,
    COM_STMT_PREPARE: ResponseMode.STMT_PREPARE,
    COM_STMT_FETCH: ResponseMode.STMT_FETCH,
    COM_STMT_CLOSE: ResponseMode.NO_RESPONSE,
    COM_STMT_SEND_LONG_DATA: ResponseMode.NO_RESPONSE,
    COM_QUIT: ResponseMode.NO_RESPONSE,
    COM_INIT_DB: ResponseMode.SINGLE,
    COM_PING: ResponseMode.SINGLE,
    COM_RESET_CONNECTION: ResponseMode.SINGLE,
    COM_STMT_RESET: ResponseMode.SINGLE,
    COM_SET_OPTION: ResponseMode.SINGLE,
    COM_REFRESH: ResponseMode.SINGLE,
    COM_PROCESS_KILL: ResponseMode.SINGLE,
    COM_DEBUG: ResponseMode.SINGLE,
    COM_CREATE_DB: ResponseMode.SINGLE,
    COM_DROP_DB: ResponseMode.SINGLE,
    COM_SHUTDOWN: ResponseMode.SINGLE,
}


def response_mode_for_command(command: int) -> ResponseMode | None:
    """The response shape of a command byte; None if the tracker can't follow it
    (COM_CHANGE_USER's auth exchange, replication, COM_MULTI, unknown commands)."""
    return _COMMAND_MODES.get(command)


#: Responses larger than this are left to the ResponseTracker: a big result rarely arrives in
#: one chunk, and scanning a chunk that turns out incomplete would be wasted work.
QUICK_SCAN_LIMIT = 16384
_QUICK_END_FLAGS = (SERVER_MORE_RESULTS_EXISTS | SERVER_SESSION_STATE_CHANGED
                    | SERVER_STATUS_CURSOR_EXISTS)


def scan_query_response(data: bytes, deprecate_eof: bool) -> int:
    """Status flags of a COM_QUERY (or COM_STMT_EXECUTE) response that ``data`` holds exactly
    and completely, or -1. Binary rows (COM_STMT_EXECUTE) start with 0x00 and are skipped by
    their headers like text rows; a cursor's response (no rows, CURSOR_EXISTS) returns -1.

    The hot-path shortcut for what the :class:`ResponseTracker` would find in one chunk with
    one plain OK, or one text result set (column count < 251 sent as one byte, definitions,
    the EOF after them unless ``deprecate_eof``, rows, and a final EOF/OK), each with one-byte
    affected-rows and insert-id and without SERVER_MORE_RESULTS_EXISTS or session-state data.
    Anything else -- ERR, LOCAL INFILE, multi-results, metadata-less result sets,
    continuation packets, bytes after the end, an incomplete response -- returns -1 without
    side effects, and the caller feeds the chunk to the tracker instead.
    """
    n = len(data)
    if n < 5 or n > QUICK_SCAN_LIMIT:
        return -1
    ln = _U32(data, 0)[0] & 0xFFFFFF
    first = data[4]
    if first == OK_HEADER:
        if ln + 4 != n or ln < 7 or data[5] >= 0xFB or data[6] >= 0xFB:
            return -1
        status = data[7] | data[8] << 8
        return -1 if status & _QUICK_END_FLAGS else status
    if ln != 1 or first >= 0xFB:  # 0xFB LOCAL INFILE, 0xFC.. wider counts, 0xFE, 0xFF ERR
        return -1
    pos = 5
    for _ in range(first):  # column definitions: skipped by their headers
        if pos + 4 > n:
            return -1
        pos += 4 + (_U32(data, pos)[0] & 0xFFFFFF)
    if not deprecate_eof:
        if pos + 9 > n or data[pos + 4] != EOF_HEADER or _U32(data, pos)[0] & 0xFFFFFF != 5:
            return -1
        pos += 9
    while pos + 4 < n:
        ln = _U32(data, pos)[0] & 0xFFFFFF
        nxt = pos + 4 + ln
        if ln == MAX_PAYLOAD or nxt > n:
            return -1
        head = data[pos + 4] if ln else 0
        if head == EOF_HEADER and (ln < 9 if not deprecate_eof else True):
            # The end: classic EOF (0xFE, warnings, status) or, with DEPRECATE_EOF, an OK
            # with a 0xFE header (0xFE, affected rows, insert id, status): the status is at
            # payload offset 3 in both, given one-byte integers in the OK.
            if nxt != n or ln < 5 or (deprecate_eof and (data[pos + 5] >= 0xFB
                                                        or data[pos + 6] >= 0xFB)):
                return -1
            status = data[pos + 7] | data[pos + 8] << 8
            return -1 if status & _QUICK_END_FLAGS else status
        if head == ERR_HEADER:
            return -1
        pos = nxt
    return -1


class ResponseTracker:
    """Sans-IO state machine that finds the end of one command's response.

    Feed it complete payloads (:meth:`feed`), packet heads from your own walker
    (:meth:`feed_head`), or raw server bytes exactly as forwarded (:meth:`feed_data`, the
    hot path: column definitions and rows are skipped by header inside the walker, without a
    Python call or a copy per packet).  ``capabilities`` is the negotiated 64-bit value
    (MariaDB extended bits in the upper half).  Reuse one tracker per server connection and
    call :meth:`start` for each command.

    After the response: :attr:`done`; :attr:`failed` / :attr:`error` if an ERR ended it;
    :attr:`status_flags` of the final OK/EOF (after an ERR: the last status seen in this
    response, or None if none was -- treat it conservatively); :attr:`session_state_changes`
    from *every* OK of the response, in order (a multi-statement query has several);
    :attr:`last_ok` (parsed lazily); :attr:`result_sets`.  In state INFILE
    (:attr:`waiting_for_client`) forward the client's packets and report them with
    :meth:`feed_client_data` / :meth:`client_infile_packet` until the empty packet; the
    server then answers like a fresh query (OK / ERR, possibly with more results).
    """

    __slots__ = (
        "mode",
        "capabilities",
        "state",
        "done",
        "failed",
        "error",
        "status_flags",
        "infile_name",
        "prepare_ok",
        "result_sets",
        "consumed",
        "_changes",
        "_last_ok",
        "_last_ok_raw",
        "_deprecate_eof",
        "_meta_flag",
        "_progress",
        "_track",
        "_p41",
        "_cols_left",
        "_params_left",
        "_walker",
        "_client_walker",
    )

    def __init__(self, capabilities: int, mode: ResponseMode = ResponseMode.QUERY) -> None:
        self._walker = PacketWalker()
        self._client_walker: PacketWalker | None = None
        self.start(mode, capabilities)

    def start(self, mode: ResponseMode, capabilities: int | None = None) -> None:
        """Reset for the response to a new command (no allocation)."""
        if capabilities is not None:
            self.capabilities = capabilities
            self._deprecate_eof = bool(capabilities & CLIENT_DEPRECATE_EOF)
            self._meta_flag = bool(
                capabilities & (CLIENT_OPTIONAL_RESULTSET_METADATA | MARIADB_CLIENT_CACHE_METADATA)
            )
            self._progress = bool(capabilities & MARIADB_CLIENT_PROGRESS)
            self._track = bool(capabilities & CLIENT_SESSION_TRACK)
            self._p41 = bool(capabilities & CLIENT_PROTOCOL_41)
        self.mode = mode
        self.done = False
        self.failed = False
        self.error: ErrPacket | None = None
        self.status_flags: int | None = None
        self.infile_name: str | None = None
        self.prepare_ok: StmtPrepareOk | None = None
        self.result_sets = 0
        self.consumed = 0
        self._changes: list[SessionStateChange] | None = None
        self._last_ok: OkPacket | None = None
        self._last_ok_raw: bytes | None = None
        self._cols_left = 0
        self._params_left = 0
        w = self._walker
        if w._in_pkt or w._hdr or w._skip:
            w.reset()  # a previous response was abandoned mid-packet
        if mode is _M_QUERY or mode is _M_EXECUTE:
            self.state = _FIRST
        elif mode is ResponseMode.NO_RESPONSE:
            self.state = _DONE
            self.done = True
        elif mode is ResponseMode.FIELD_LIST or mode is ResponseMode.STMT_FETCH:
            self.state = _ROWS
        else:
            self.state = _FIRST

    @property
    def waiting_for_client(self) -> bool:
        """LOCAL INFILE: the server waits for the client's file data."""
        return self.state is _INFILE

    @property
    def session_state_changes(self) -> list[SessionStateChange]:
        if self._changes is None:
            self._changes = []
        return self._changes

    @property
    def last_ok(self) -> OkPacket | None:
        if self._last_ok is None and self._last_ok_raw is not None:
            self._last_ok = parse_ok(self._last_ok_raw, self.capabilities)
        return self._last_ok

    # -- input -------------------------------------------------------------------------------
    def feed(self, payload: bytes) -> bool:
        """One complete logical server packet; returns :attr:`done`."""
        self._packet(len(payload), payload)
        return self.done

    def feed_head(self, length: int, head: bytes) -> bool:
        """A packet's total length and its first bytes: the whole payload for OK/ERR/EOF, the
        column-count and COM_STMT_PREPARE-OK packets; the first byte for anything else."""
        self._packet(length, head)
        return self.done

    def feed_data(self, data: Buffer) -> bool:
        """Raw server bytes in stream order (any chunking); returns :attr:`done`.

        :attr:`consumed` is then the number of bytes of ``data`` that belong to this response
        (less than ``len(data)`` only if the server sent more after the end or after a LOCAL
        INFILE request).
        """
        if self.state is _DONE or self.state is _INFILE:
            raise ProtocolError(f"unexpected server data in state {self.state.value}")
        w = self._walker
        w.feed(data)
        while True:
            st = self.state
            if st is _ROWS:
                pkt = w.next_packet(_ROW_END_MASK)
            elif st is _COLUMN_DEFS and self.mode is not _M_PREPARE:
                # Definitions are never inspected: let the walker skip them.  The state after
                # them is never DONE here, so advancing now cannot end the response early.
                w.skip_packets(self._cols_left)
                self._cols_left = 0
                self._after_columns()
                continue
            else:
                pkt = w.next_packet(None)
            if pkt is None:
                self.consumed = len(data)
                return False
            self._packet(pkt[1], pkt[2])
            if self.state is _DONE or self.state is _INFILE:
                self.consumed = w.offset
                return self.done

    def client_infile_packet(self, length: int) -> bool:
        """Report one client packet during LOCAL INFILE; True when it was the empty one."""
        if self.state is not _INFILE:
            raise ProtocolError("not waiting for LOCAL INFILE data")
        if length == 0:
            self.state = _FIRST
            return True
        return False

    def feed_client_data(self, data: Buffer) -> bool:
        """Raw client bytes during LOCAL INFILE; True once the terminating empty packet has
        been seen (:attr:`consumed` = bytes of ``data`` up to and including it)."""
        if self.state is not _INFILE:
            raise ProtocolError("not waiting for LOCAL INFILE data")
        w = self._client_walker
        if w is None:
            w = self._client_walker = PacketWalker(head_limit=0)
        w.feed(data)
        # Only empty packets are reported: file data is skipped, never copied.
        pkt = w.next_packet(_NO_MASK)
        if pkt is None:
            self.consumed = len(data)
            return False
        self.consumed = w.offset
        self.state = _FIRST
        return True

    # -- state machine -----------------------------------------------------------------------
    def _packet(self, length: int, head: Buffer) -> None:
        st = self.state
        first = head[0] if length else -1
        if st is _ROWS:
            if first == EOF_HEADER:
                if self._deprecate_eof:
                    if length < MAX_PAYLOAD:
                        self._ok(head)
                        self._end_result()
                elif length < 9:
                    self.status_flags = _eof_flags(head)
                    self._end_result()
            elif first == ERR_HEADER:
                self._err(head)
            return
        if first == ERR_HEADER and st is not _INFILE and st is not _DONE:
            self._err(head)
            return
        if st is _FIRST:
            self._first(length, head, first)
        elif st is _COLUMN_DEFS:
            self._cols_left -= 1
            if self._cols_left <= 0:
                self._after_columns()
        elif st is _COLUMNS_EOF:
            if not (first == EOF_HEADER and length < 9):
                raise ProtocolError("expected EOF after column definitions")
            status = self.status_flags = _eof_flags(head)
            if self.mode is _M_PREPARE:
                self._finish()
            elif self.mode is _M_EXECUTE and status & SERVER_STATUS_CURSOR_EXISTS:
                self._finish()  # cursor opened: rows come later via COM_STMT_FETCH
            else:
                self.state = _ROWS
        elif st is _PARAM_DEFS:
            self._params_left -= 1
            if self._params_left <= 0:
                if self._deprecate_eof:
                    self._prepare_columns()
                else:
                    self.state = _PARAMS_EOF
        elif st is _PARAMS_EOF:
            if not (first == EOF_HEADER and length < 9):
                raise ProtocolError("expected EOF after parameter definitions")
            self.status_flags = _eof_flags(head)
            self._prepare_columns()
        elif st is _INFILE:
            raise ProtocolError("server sent a packet while waiting for LOCAL INFILE data")
        else:
            raise ProtocolError("server sent a packet after the end of the response")

    def _first(self, length: int, head: Buffer, first: int) -> None:
        mode = self.mode
        if mode is _M_QUERY or mode is _M_EXECUTE:
            if first == OK_HEADER:
                self._ok(head)
                self._end_result()
            elif first == LOCAL_INFILE_HEADER:
                self.infile_name = parse_infile_request(head)
                self.state = _INFILE
            elif first == EOF_HEADER or first == -1:
                raise ProtocolError("unexpected packet at the start of a result")
            else:
                n, pos = read_lenenc_int(head, 0)
                if n == 0:
                    raise ProtocolError("column count of 0")
                if self._meta_flag and pos < len(head) and head[pos] == 0:
                    self._after_columns()  # metadata not resent (cached / optional metadata)
                else:
                    self._cols_left = n
                    self.state = _COLUMN_DEFS
        elif mode is _M_STATISTICS:
            self._finish()
        elif mode is _M_SINGLE:
            if first == OK_HEADER:
                self._ok(head)
            elif first == EOF_HEADER and length < MAX_PAYLOAD:  # COM_SET_OPTION, COM_DEBUG
                if self._deprecate_eof:
                    self._ok(head)
                else:
                    self.status_flags = _eof_flags(head)
            else:
                raise ProtocolError(f"unexpected packet 0x{first & 0xFF:02x} in a single reply")
            self._finish()
        elif mode is _M_PREPARE:
            if first != OK_HEADER:
                raise ProtocolError(f"unexpected packet 0x{first & 0xFF:02x} for COM_STMT_PREPARE")
            ok = self.prepare_ok = parse_stmt_prepare_ok(head, self.capabilities)
            if ok.num_params and ok.metadata_follows:
                self._params_left = ok.num_params
                self.state = _PARAM_DEFS
            else:
                self._prepare_columns()
        else:
            raise ProtocolError(f"no packet expected in mode {mode.value}")

    def _after_columns(self) -> None:
        if not self._deprecate_eof:
            self.state = _COLUMNS_EOF
        elif self.mode is _M_PREPARE:
            self._finish()
        else:
            self.state = _ROWS

    def _prepare_columns(self) -> None:
        ok = self.prepare_ok
        assert ok is not None
        if ok.num_columns and ok.metadata_follows:
            self._cols_left = ok.num_columns
            self.state = _COLUMN_DEFS
        else:
            self._finish()

    def _ok(self, head: Buffer) -> None:
        if len(head) < 7:
            raise ProtocolError("truncated OK packet")
        if self._p41 and head[1] < 0xFB and head[2] < 0xFB:
            # Fast path: one-byte affected-rows / insert-id, so the status is at offset 3.
            status = head[3] | head[4] << 8
            if not (status & SERVER_SESSION_STATE_CHANGED and self._track):
                self.status_flags = status
                self._last_ok = None
                self._last_ok_raw = head if type(head) is bytes else bytes(head)
                return
        ok = parse_ok(head, self.capabilities)
        self._last_ok = ok
        self._last_ok_raw = None
        self.status_flags = ok.status_flags
        if ok.session_state_changes:
            if self._changes is None:
                self._changes = []
            self._changes.extend(ok.session_state_changes)

    def _err(self, head: Buffer) -> None:
        if self._progress and is_progress_report(head):
            return  # MariaDB progress report: informational, the response goes on
        self.error = parse_err(head, self.capabilities)
        self.failed = True
        self._finish()

    def _end_result(self) -> None:
        self.result_sets += 1
        status = self.status_flags
        if (
            status is not None
            and status & SERVER_MORE_RESULTS_EXISTS
            and (self.mode is _M_QUERY or self.mode is _M_EXECUTE)
        ):
            self.state = _FIRST
        else:
            self._finish()

    def _finish(self) -> None:
        self.state = _DONE
        self.done = True


def _eof_flags(head: Buffer) -> int:
    """Status flags of a classic EOF packet (0 for the header-only pre-4.1 form)."""
    n = len(head)
    if n >= 5:
        return head[3] | head[4] << 8
    if n == 1:
        return 0
    raise ProtocolError("truncated EOF packet")
