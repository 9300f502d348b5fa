"""The per-server request queue (proxy/core/requests.py), without sockets: batches per sync
point, steps for messages poolproxy handles one by one, and the order in which replies are
forwarded, swallowed or synthesized — across pipelines and with an error in the middle."""

from __future__ import annotations

from proxy.core.requests import FORWARD, SWALLOW, SYNTHESIZE, RequestQueue


def test_batches_close_at_sync_points_and_count_what_is_owed() -> None:
    q = RequestQueue()
    assert not q and q.open is None and q.forwarded() == 0
    q.add_message()  # Parse
    q.add_message()  # Bind
    assert q.open is not None and q.forwarded() == 0  # nothing owed until Sync
    q.sync()  # Sync
    q.sync()  # a simple Query: a batch of its own
    q.add_message()  # Execute of the next, still open
    assert len(q) == 3 and q.forwarded() == 2 and q.open is not None
    assert q.batch_done() is not None and q.forwarded() == 1
    assert q.batch_done() is not None and q.forwarded() == 0
    assert q.open is not None  # the unsynced Execute: the server is not clean yet


def test_swallowed_batches_stay_apart_from_the_clients() -> None:
    q = RequestQueue()
    q.sync(SWALLOW)  # our parameter sync query, ahead of the client's request
    q.add_message()
    q.sync()
    batches = list(q)
    assert [b.action for b in batches] == [SWALLOW, FORWARD]
    assert q.forwarded() == 1
    assert q.batch_done() is batches[0]


def test_synthesized_reply_with_nothing_owed_before_it_is_due_at_once() -> None:
    q = RequestQueue()
    assert q.add_step(ord("P"), SYNTHESIZE, b"1\x00\x00\x00\x04") == [b"1\x00\x00\x00\x04"]
    assert q.precise == 1


def test_pipelined_batch_replies_in_order_with_swallow_and_synthesize() -> None:
    """P(fake: prepared already) B E P(injected, swallow) B E S: the client gets ParseComplete
    first (synthesized), and never sees the injected Parse's ParseComplete."""
    q = RequestQueue()
    done: list[tuple[str, bool]] = []
    due = q.add_step(ord("P"), SYNTHESIZE, b"<1>", on_done=lambda ok: done.append(("fake", ok)))
    assert due == [b"<1>"]
    q.add_step(ord("B"), FORWARD)
    q.add_step(ord("E"), FORWARD)
    q.add_step(ord("P"), SWALLOW, on_done=lambda ok: done.append(("injected", ok)))
    q.add_step(ord("B"), FORWARD)
    q.add_step(ord("E"), FORWARD)
    q.sync()
    # The server's replies: 2 C 1 2 C Z
    actions = []
    for _ in range(5):
        step = q.step_done()
        assert step is not None
        actions.append((chr(step.kind), step.action))
        assert q.due() == []
    assert actions == [("B", FORWARD), ("E", FORWARD), ("P", SWALLOW), ("B", FORWARD),
                       ("E", FORWARD)]
    assert done == [("fake", True), ("injected", True)]
    assert q.batch_done() is not None and not q and q.precise == 0


def test_synthesized_reply_waits_for_the_replies_before_it() -> None:
    q = RequestQueue()
    q.add_step(ord("B"), FORWARD)
    assert q.add_step(ord("C"), SYNTHESIZE, b"<3>") == []  # BindComplete not there yet
    q.add_step(ord("E"), FORWARD)
    q.sync()
    assert q.step_done() is not None  # BindComplete forwarded
    assert q.due() == [b"<3>"]  # now the CloseComplete, before the Execute's reply
    assert q.step_done() is not None and q.due() == []


def test_error_in_the_middle_skips_the_rest_up_to_sync() -> None:
    """Parse B E | P(fake) B E | Sync, and the first Execute fails: PostgreSQL ignores the
    rest until Sync, so nothing more comes — not even the synthesized ParseComplete."""
    q = RequestQueue()
    outcome: dict[str, bool] = {}
    q.add_step(ord("P"), SWALLOW, on_done=lambda ok: outcome.setdefault("injected", ok))
    q.add_step(ord("B"), FORWARD)
    q.add_step(ord("E"), FORWARD)
    q.add_step(ord("P"), SYNTHESIZE, b"<1>", on_done=lambda ok: outcome.setdefault("fake", ok))
    q.add_step(ord("B"), FORWARD)
    q.add_step(ord("E"), FORWARD)
    q.sync()
    assert q.step_done().action is SWALLOW  # type: ignore[union-attr]  # ParseComplete
    assert q.step_done().action is FORWARD  # type: ignore[union-attr]  # BindComplete
    failed = q.step_done(ok=False)  # ErrorResponse for the Execute
    assert failed is not None and chr(failed.kind) == "E"
    dropped = q.skip_to_sync()
    assert [(chr(s.kind), s.action) for s in dropped] == [("P", SYNTHESIZE), ("B", FORWARD),
                                                          ("E", FORWARD)]
    assert q.due() == []
    assert outcome == {"injected": True, "fake": False}
    assert q.batch_done() is not None and not q


def test_tracking_a_batch_keeps_the_place_of_the_messages_before() -> None:
    """Messages sent before the batch needed steps become forwarded steps, in order."""
    q = RequestQueue()
    q.track([ord("P"), ord("B")])
    q.add_step(ord("P"), SWALLOW)
    q.add_forward(ord("B"))
    q.sync()
    head = q.head
    assert head is not None and head.steps is not None and q.precise == 1
    assert [(chr(s.kind), s.action) for s in head.steps] == [
        ("P", FORWARD), ("B", FORWARD), ("P", SWALLOW), ("B", FORWARD)]


def test_copy_in_ignores_the_syncs_sent_during_copy() -> None:
    """Execute(COPY FROM STDIN) Sync Sync ... CopyDone Sync: PostgreSQL answers only the last
    Sync; the COPY's batch runs on to it."""
    q = RequestQueue()
    q.add_message()
    q.sent(2, False)  # Execute + Sync, then another Sync
    q.sent(1, False)  # CopyData, CopyDone, Sync
    assert len(q) == 3
    q.ignore_syncs(2)  # CopyInResponse: the two Syncs sent before it are ignored
    assert len(q) == 1 and q.head is not None and q.head.synced
    q.batch_done()
    assert not q


def test_sent_counts_sync_points_per_chunk() -> None:
    q = RequestQueue()
    q.sent(0, True)  # Parse Bind (no Sync yet)
    q.sent(0, True)  # Execute
    assert len(q) == 1 and q.open is not None
    q.sent(2, True)  # Sync, Query, Parse
    assert len(q) == 3 and q.forwarded() == 2 and q.open is not None
    q.sent(0, False)  # a Flush alone: nothing more owed
    assert len(q) == 3


def test_clear_tells_every_pending_step_it_failed() -> None:
    q = RequestQueue()
    seen: list[bool] = []
    q.add_step(ord("P"), SWALLOW, on_done=seen.append)
    q.sync()
    q.sync()
    assert len(q) == 2
    q.clear()
    assert seen == [False] and not q and q.precise == 0
