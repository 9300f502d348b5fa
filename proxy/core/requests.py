"""The per-server queue of outstanding requests: for every reply a server owes, what to do with it.

Each entry stands for one request whose reply the server (or poolproxy in its place) owes:
- `FORWARD`: the client's own request; its reply goes to the client;
- `SWALLOW`: poolproxy's own request (parameter sync, an injected Parse, an evicting Close); its
  reply is dropped;
- `SYNTHESIZE`: nothing went to the server (the request was answered from poolproxy's own
  state); `reply` is sent to the client when every reply before it has been sent.

Protocols group entries as they need. PostgreSQL has one `Batch` per sync point (a Query, a
Sync, a FunctionCall: each answered by ReadyForQuery), with per-message `steps` only in a batch
where poolproxy changes something (prepared statements); MySQL has one batch per command. The
queue is sans-IO: it decides, the protocol's server session moves the bytes.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator


class Action(enum.Enum):
    FORWARD = "forward"
    SWALLOW = "swallow"
    SYNTHESIZE = "synthesize"


FORWARD = Action.FORWARD
SWALLOW = Action.SWALLOW
SYNTHESIZE = Action.SYNTHESIZE

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

    __slots__ = ("action", "synced", "steps")

    def __init__(self, action: Action, synced: bool) -> None:
        self.action = action
        self.synced = synced  # its sync point went out (an open batch is still growing)
        self.steps: deque[Step] | None = None

    def __repr__(self) -> str:
        return f"<Batch {self.action.value}{'' if self.synced else ' open'} steps={self.steps}>"


class RequestQueue:
    """Outstanding batches of one server connection, oldest first."""

    __slots__ = ("_batches", "precise")

    def __init__(self) -> None:
        self._batches: deque[Batch] = deque()
        #: Batches with steps are queued: the server's replies must be read message by message.
        self.precise = 0

    # ------------------------------------------------------------------ what is owed
    def __len__(self) -> int:
        return len(self._batches)

    def __bool__(self) -> bool:
        return bool(self._batches)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self._batches)

    @property
    def head(self) -> Batch | None:
        return self._batches[0] if self._batches else None

    @property
    def open(self) -> Batch | None:
        """The batch still growing (messages sent after the last sync point), if any."""
        if self._batches:
            last = self._batches[-1]
            if not last.synced:
                return last
        return None

    def forwarded(self) -> int:
        """Sync points of the client's own whose answers are still owed."""
        return sum(1 for b in self._batches if b.synced and b.action is FORWARD)

    # ------------------------------------------------------------------ requests go out
    def add_message(self, action: Action = FORWARD) -> Batch:
        """A message that is not a sync point joins the open batch (opened if needed)."""
        batch = self.open
        if batch is None:
            batch = Batch(action, False)
            self._batches.append(batch)
        return batch

    def sync(self, action: Action = FORWARD) -> Batch:
        """A sync point goes out: it closes the open batch, or is a batch of its own."""
        batch = self.open
        if batch is None or batch.action is not action:
            batch = Batch(action, True)
            self._batches.append(batch)
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
        if batch is self._batches[0] and batch.steps[0].action is SYNTHESIZE:
            return self.due()
        return []

    def add_plain(self, kind: int) -> None:
        """A message of a precise batch whose reply is simply forwarded (kept in order)."""
        batch = self.add_message()
        if batch.steps is not None:
            batch.steps.append(Step(kind, FORWARD))

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
        if not self._batches:
            return None
        batch = self._batches.popleft()
        if batch.steps is not None:
            self.precise -= 1
            for step in batch.steps:  # never answered: the server skipped them
                if step.on_done is not None:
                    step.on_done(False)
        return batch

    def drop_synced(self, count: int) -> None:
        """Forget the last `count` synced client batches whose answers will never come
        (PostgreSQL ignores Sync during COPY FROM STDIN)."""
        kept: list[Batch] = []
        while count and self._batches:
            batch = self._batches.pop()
            if batch.synced and batch.action is FORWARD and not batch.steps:
                count -= 1
            else:
                kept.append(batch)
        self._batches.extend(reversed(kept))

    def clear(self) -> list[Batch]:
        """The server is gone: everything outstanding is dropped (callbacks hear ok=False)."""
        batches = list(self._batches)
        self._batches.clear()
        self.precise = 0
        for batch in batches:
            for step in batch.steps or ():
                if step.on_done is not None:
                    step.on_done(False)
        return batches
