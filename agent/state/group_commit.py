"""Group commit: the state rows of instances received on several associations at once, recorded
in one transaction, each caller answered only after that transaction committed.

Every association thread that wrote an instance calls `GroupCommit.submit` and blocks. The
first caller that finds nobody preparing becomes the leader of everything queued by then (its
own item first): it runs the batch through both stages, `prepare` (the spool: fsync each
slot) and then `commit` (`AgentState.add_instances`: the rows in one transaction), and hands
each waiter its own result. Callers that queued meanwhile form the next batch, led by the
first of them.

The two stages are a pipeline (MySQL's binlog group commit has three): each holds one batch at
a time, and a leader hands its stage on only as it enters the next, so batch N+1 prepares
while batch N commits (its fsyncs overlap N's transaction), batches commit in the order they
were taken, a batch waiting for the commit stage keeps the next one queueing (batches stay as
large as the waits allow), and an item is committed only after its own `prepare` succeeded.
Without a `prepare` there is nothing to overlap: a batch is taken only once the commit under
way has ended, so it holds everything that queued meanwhile.

The leader is a caller's own thread, not a thread of its own (LevelDB's write queue, MySQL's
binlog group commit): one association's instance goes straight through with no hand-over
between threads, which on a strict request/response association would be added to every
instance's round trip.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from agent.state.errors import StateError

__all__ = ["BatchCommit", "BatchPrepare", "GroupCommit", "GroupCommitClosedError"]

Item = TypeVar("Item")
Result = TypeVar("Result")

BatchCommit = Callable[[Sequence[Item]], Sequence[Result | Exception]]
"""Commits a batch and returns, in order, each item's result or the exception meant for it.
An exception it raises instead is given to every item of the batch."""

BatchPrepare = Callable[[Sequence[Item]], Sequence[Item | Exception]]
"""Readies a batch for its commit and returns, in order, each item to commit (the same or a
new one) or the exception meant for it (that item is not committed). An exception it raises
instead is given to every item of the batch."""

# The batch a committer takes at most: associations are capped far below (dicom.max_associations),
# so this only bounds how long one transaction holds the writers' lock.
DEFAULT_MAX_BATCH = 64


class GroupCommitClosedError(StateError):
    """The group commit was closed: the item was not recorded (and never will be)."""


class _Waiter(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = False
        self.result: Result | None = None
        self.error: Exception | None = None


class GroupCommit(Generic[Item, Result]):
    """Batches `submit`s from many threads through `prepare` and `commit`; thread-safe."""

    def __init__(
        self,
        commit: BatchCommit[Item, Result],
        *,
        prepare: BatchPrepare[Item] | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        """`commit` records a batch (see `BatchCommit`), after `prepare` readied it, when given
        (see `BatchPrepare`); batches hold at most `max_batch`."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._commit = commit
        self._prepare = prepare
        self._max_batch = max_batch
        self._changed = threading.Condition()
        self._queue: deque[_Waiter[Item, Result]] = deque()
        # Which stage holds a batch (each holds one at most).
        self._preparing = False
        self._committing = False
        self._closed = False
        # Items queued and items answered since the start: `drain` waits for the first to be
        # reached by the second (the queue is first in, first out).
        self._queued = 0
        self._answered = 0

    def submit(self, item: Item) -> Result:
        """Commit `item` (alone or with others) and return its result once committed.

        Raises the exception meant for this item by the prepare or the commit of its batch, or
        `GroupCommitClosedError` when the group commit was closed before the item was queued.
        """
        waiter: _Waiter[Item, Result] = _Waiter(item)
        with self._changed:
            if self._closed:
                raise GroupCommitClosedError(
                    "the state database is closing; the instance was not recorded"
                )
            self._queue.append(waiter)
            self._queued += 1
            # A waiter taken into another's batch is no longer queued: it waits to be done.
            while not waiter.done and not (self._queue and self._queue[0] is waiter):
                self._changed.wait()
            while not waiter.done and not self._may_take():
                self._changed.wait()
            if not waiter.done:
                batch = self._take_batch()
        if not waiter.done:
            self._lead(batch)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[return-value]

    @property
    def waiting(self) -> int:
        """Items queued for a batch that has not started yet."""
        with self._changed:
            return len(self._queue)

    def drain(self) -> None:
        """Wait until every item queued so far has been committed (or failed); later submits
        still work."""
        with self._changed:
            target = self._queued
            while self._answered < target:
                self._changed.wait()

    def close(self) -> None:
        """Refuse new items, then `drain`: nothing queued is dropped. Idempotent."""
        with self._changed:
            self._closed = True
        self.drain()

    def _may_take(self) -> bool:
        """Whether a batch may be taken now (called with the condition held)."""
        return not self._preparing and (self._prepare is not None or not self._committing)

    def _take_batch(self) -> list[_Waiter[Item, Result]]:
        """Called with the condition held by the waiter at the head of the queue."""
        self._preparing = True
        count = min(len(self._queue), self._max_batch)
        return [self._queue.popleft() for _ in range(count)]

    def _lead(self, batch: list[_Waiter[Item, Result]]) -> None:
        """Take `batch` through prepare, then commit, and answer it (the prepare stage was
        taken for it by `_take_batch`)."""
        results: list[Result | Exception] = [StateError("not recorded")] * len(batch)
        stage = "prepare"
        try:
            ready = self._prepared(batch, results)
            with self._changed:
                while self._committing:
                    self._changed.wait()
                self._committing, self._preparing = True, False
                stage = "commit"
                self._changed.notify_all()
            if ready:
                self._committed_into(batch, ready, results)
        except BaseException:
            # Interrupted (KeyboardInterrupt, SystemExit in the leading thread): whether the
            # batch committed is unknown, so nobody gets Success and the peers send again.
            interrupted = StateError("recording the instance was interrupted; it may be lost")
            self._finish(batch, [interrupted] * len(batch), stage)
            raise
        self._finish(batch, results, stage)

    def _prepared(
        self, batch: list[_Waiter[Item, Result]], results: list[Result | Exception]
    ) -> list[tuple[int, Item]]:
        """Run `prepare`; fill in the errors it meant; return the places and items to commit."""
        items = [waiter.item for waiter in batch]
        if self._prepare is None:
            return list(enumerate(items))
        try:
            prepared = list(self._prepare(items))
            _check_count(prepared, batch)
        except Exception as exc:  # each waiter gets it: nobody is answered Success
            results[:] = [exc] * len(batch)
            return []
        ready: list[tuple[int, Item]] = []
        for place, outcome in enumerate(prepared):
            if isinstance(outcome, Exception):
                results[place] = outcome
            else:
                ready.append((place, outcome))
        return ready

    def _committed_into(
        self,
        batch: list[_Waiter[Item, Result]],
        ready: list[tuple[int, Item]],
        results: list[Result | Exception],
    ) -> None:
        """Run `commit` over the prepared items; put what it says for each in `results`."""
        try:
            committed = list(self._commit([item for _, item in ready]))
            _check_count(committed, ready)
        except Exception as exc:  # each waiter gets it: nobody is answered Success
            committed = [exc] * len(ready)
        for (place, _), outcome in zip(ready, committed, strict=True):
            results[place] = outcome

    def _finish(
        self,
        batch: list[_Waiter[Item, Result]],
        results: list[Result | Exception],
        stage: str,
    ) -> None:
        with self._changed:
            for waiter, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    waiter.error = result
                else:
                    waiter.result = result
                waiter.done = True
            self._answered += len(batch)
            if stage == "prepare":  # interrupted before it reached the commit stage
                self._preparing = False
            else:
                self._committing = False
            self._changed.notify_all()


def _check_count(results: Sequence[object], items: Sequence[object]) -> None:
    if len(results) != len(items):
        raise RuntimeError(f"a batch step returned {len(results)} results for {len(items)} items")
