"""The per-server queue of outstanding requests: for every reply a server owes, what to do with it.

Each entry stands for one request whose reply the server (or poolproxy in its place) owes:
- `FORWARD`: the client's own request; its reply goes to the client;
- `SWALLOW`: poolproxy's own request (parameter sync, an injected Parse, an evicting Close); its
  reply is dropped;
- `SYNTHESIZE`: nothing went to the server (the request was answered from poolproxy's own
  state); `reply` is sent to the client when every reply before it has been sent;
- `REPLACE`: poolproxy sent a request that makes the server fail (so that the server itself
  skips the rest of the batch, exactly as it would for the client's request), and the server's
  error is replaced by `reply`, the error the client's request deserves;
- `RESULT`: poolproxy sent a stand-in request; if it succeeds, its whole reply is replaced by
  `reply` (the result the client's request would have had), and an error is forwarded.

A SWALLOW request that fails still has its error forwarded: the client must learn why its own
request then fails.

Protocols group entries as they need. PostgreSQL has one `Batch` per sync point (a Query, a
Sync, a FunctionCall: each answered by ReadyForQuery), with per-message `steps` only in a batch
where poolproxy changes something (prepared statements); MySQL has one batch per command. The
queue is sans-IO: it decides, the protocol's server session moves the bytes.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any


class Action(enum.Enum):
    FORWARD = "forward"
    SWALLOW = "swallow"
    SYNTHESIZE = "synthesize"
    REPLACE = "replace"
    RESULT = "result"


FORWARD = Action.FORWARD
SWALLOW = Action.SWALLOW
SYNTHESIZE = Action.SYNTHESIZE
REPLACE = Action.REPLACE
RESULT = Action.RESULT

#: Called when a request's reply has ended (`ok`: it was not an error), e.g. to remember that a
#: statement is now prepared on the server, or to forget it after a failed Parse.
Done = Callable[[bool], None]


class Step:
    """One message of a batch whose reply poolproxy must see on its own."""

    __slots__ = ("kind", "action", "reply", "on_done")

    def __init__(self, kind: int, action: Action, reply: bytes = b"",
                 on_done: Done | None = None) -> None:
        self.kind = kind  # the request's message type / command byte
        self.action = action
        self.reply = reply
        self.on_done = on_done

    def __repr__(self) -> str:
        return f"<Step {chr(self.kind) if 32 < self.kind < 127 else self.kind} {self.action.value}>"


class Batch:
    """The requests up to one sync point (PostgreSQL) or one command (MySQL). `steps` is None
    while nothing in the batch needs handling message by message."""

    __slots__ = ("action", "synced", "steps", "extra")

    def __init__(self, action: Action, synced: bool) -> None:
        self.action = action
        self.synced = synced  # its sync point went out (an open batch is still growing)
        self.steps: deque[Step] | None = None
        #: What the protocol notes about the batch (PostgreSQL: the statements it binds).
        self.extra: Any = None

    def __repr__(self) -> str:
        return f"<Batch {self.action.value}{'' if self.synced else ' open'} steps={self.steps}>"


#: The batch of a plain sync point (a simple Query, or a Sync closing nothing precise): it
#: carries no state of its own, so one shared instance serves every such batch. It is never
#: mutated (an open batch is always a fresh Batch).
PLAIN_BATCH = Batch(FORWARD, True)


#: One shared FORWARD step per message type: plain steps carry no state of their own.
_FORWARD_STEPS: dict[int, Step] = {}


def _forward_step(kind: int) -> Step:
    step = _FORWARD_STEPS.get(kind)
    if step is None:
        step = _FORWARD_STEPS[kind] = Step(kind, FORWARD)
    return step


class RequestQueue(deque[Batch]):
    """Outstanding batches of one server connection, oldest first. A deque, so that "owes
    anything?" (`bool(queue)`) and `len` stay in C on the hot path."""

    __slots__ = ("precise", "error_code")

    def __init__(self) -> None:
        super().__init__()
        #: Batches with steps are queued: the server's replies must be read message by message.
        self.precise = 0
        #: The SQLSTATE of the error that ended the last failed step (for its callback).
        self.error_code = ""

    # ------------------------------------------------------------------ what is owed
    @property
    def head(self) -> Batch | None:
        return self[0] if self else None

    @property
    def open(self) -> Batch | None:
        """The batch still growing (messages sent after the last sync point), if any."""
        if self:
            last = self[-1]
            if not last.synced:
                return last
        return None

    def forwarded(self) -> int:
        """Sync points of the client's own whose answers are still owed."""
        return sum(1 for b in self if b.synced and b.action is FORWARD)

    # ------------------------------------------------------------------ requests go out
    def sent(self, syncs: int, open_after: bool) -> None:
        """The hot path: client messages went out with `syncs` sync points among them, and
        with messages after the last one (`open_after`) or not."""
        if syncs:
            if self and not self[-1].synced:
                self[-1].synced = True
                syncs -= 1
            if syncs == 1:
                self.append(PLAIN_BATCH)
            elif syncs:
                self.extend([PLAIN_BATCH] * syncs)
        if open_after and (not self or self[-1].synced):
            self.append(Batch(FORWARD, False))

    def add_message(self, action: Action = FORWARD) -> Batch:
        """A message that is not a sync point joins the open batch (opened if needed)."""
        batch = self.open
        if batch is None:
            batch = Batch(action, False)
            self.append(batch)
        return batch

    def sync(self, action: Action = FORWARD) -> Batch:
        """A sync point goes out: it closes the open batch, or is a batch of its own."""
        batch = self.open
        if batch is None or batch.action is not action:
            batch = PLAIN_BATCH if action is FORWARD else Batch(action, True)
            self.append(batch)
        else:
            batch.synced = True
        return batch

    def add_step(self, kind: int, action: Action, reply: bytes = b"",
                 on_done: Done | None = None) -> list[bytes]:
        """A message of the open batch whose reply needs handling of its own. Returns the
        replies to synthesize now: a SYNTHESIZE step with nothing owed before it is due at
        once (no reply of the server will come to trigger it)."""
        batch = self.add_message()
        if batch.steps is None:
            batch.steps = deque()
            self.precise += 1
        batch.steps.append(Step(kind, action, reply, on_done))
        if batch is self[0] and batch.steps[0].action is SYNTHESIZE:
            return self.due()
        return []

    def track(self, kinds: Iterable[int] = ()) -> Batch:
        """The open batch (opened if needed) is handled message by message from now on; `kinds`
        are the messages already in it, whose replies are forwarded."""
        batch = self.add_message()
        if batch.steps is None:
            batch.steps = deque()
            self.precise += 1
        for kind in kinds:
            batch.steps.append(_forward_step(kind))
        return batch

    def add_forward(self, kind: int) -> None:
        """A message of the open batch, tracked one by one, whose reply goes to the client."""
        batch = self[-1] if self and not self[-1].synced else self.add_message()
        if batch.steps is None:
            batch.steps = deque()
            self.precise += 1
        batch.steps.append(_forward_step(kind))

    # ------------------------------------------------------------------ replies come back
    def due(self) -> list[bytes]:
        """Pop the SYNTHESIZE steps at the head of the head batch: their replies are due."""
        out: list[bytes] = []
        batch = self.head
        while batch is not None and batch.steps:
            step = batch.steps[0]
            if step.action is not SYNTHESIZE:
                break
            batch.steps.popleft()
            out.append(step.reply)
            if step.on_done is not None:
                step.on_done(True)
        return out

    def step_done(self, ok: bool = True) -> Step | None:
        """The reply to the head batch's next step has ended; returns that step."""
        batch = self.head
        if batch is None or not batch.steps:
            return None
        step = batch.steps.popleft()
        if step.on_done is not None:
            step.on_done(ok)
        return step

    def skip_to_sync(self) -> list[Step]:
        """An error: the server ignores the rest of the head batch up to its sync point (no
        reply, synthesized ones included, as a direct server would give none). Returns the
        dropped steps; their callbacks hear ok=False."""
        batch = self.head
        if batch is None or not batch.steps:
            return []
        dropped = list(batch.steps)
        batch.steps.clear()
        for step in dropped:
            if step.on_done is not None:
                step.on_done(False)
        return dropped

    def batch_done(self) -> Batch | None:
        """The head batch's sync point was answered (ReadyForQuery; MySQL: the response end)."""
        if not self:
            return None
        batch = self.popleft()
        if batch.steps is not None:
            self.precise -= 1
            for step in batch.steps:  # never answered: the server skipped them
                if step.on_done is not None:
                    step.on_done(False)
        return batch

    def ignore_syncs(self, count: int) -> None:
        """PostgreSQL ignores Sync during COPY FROM STDIN: the head batch (the COPY's) does not
        end at the next `count` sync points; it runs on to the one after them."""
        while count > 0 and self and self[0].synced:
            head = self[0]
            if head is PLAIN_BATCH:
                head = self[0] = Batch(FORWARD, True)
            if len(self) > 1:
                nxt = self[1]
                del self[1]
                if nxt.steps:
                    if head.steps is None:
                        head.steps = nxt.steps
                    else:
                        head.steps.extend(nxt.steps)
                        self.precise -= 1
                head.synced = nxt.synced
            else:
                head.synced = False
            count -= 1

    def clear(self) -> None:
        """The server is gone: everything outstanding is dropped (callbacks hear ok=False)."""
        batches = list(self)
        super().clear()
        self.precise = 0
        for batch in batches:
            for step in batch.steps or ():
                if step.on_done is not None:
                    step.on_done(False)
