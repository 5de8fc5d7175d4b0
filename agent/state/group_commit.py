"""Group commit: the state rows of instances received on several associations at once, recorded
in one transaction, each caller answered only after that transaction committed.

Every association thread that made an instance durable calls `GroupCommit.submit` and blocks.
The first caller that finds nobody committing becomes the committer for everything queued by
then (its own item first): it runs one batch (`AgentState.add_instances`) and hands each waiter
its own result. Callers that queued meanwhile form the next batch, committed by the first of
them. So at most one batch is being committed per process at a time, and a batch is as large as
the number of associations that waited on the one before it.

The committer is a caller's own thread, not a thread of its own (LevelDB's write queue, MySQL's
binlog group commit): one association's instance goes straight into its transaction with no
hand-over between threads, which on a strict request/response association would be added to
every instance's round trip.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from agent.state.errors import StateError

__all__ = ["BatchCommit", "GroupCommit", "GroupCommitClosedError"]

Item = TypeVar("Item")
Result = TypeVar("Result")

BatchCommit = Callable[[Sequence[Item]], Sequence[Result | Exception]]
"""Commits a batch and returns, in order, each item's result or the exception meant for it.
An exception it raises instead is given to every item of the batch."""

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
    """Batches `submit`s from many threads into calls of `commit`; thread-safe."""

    def __init__(
        self, commit: BatchCommit[Item, Result], *, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        """`commit` records a batch (see `BatchCommit`); batches hold at most `max_batch`."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._commit = commit
        self._max_batch = max_batch
        self._changed = threading.Condition()
        self._queue: deque[_Waiter[Item, Result]] = deque()
        self._committing = False
        self._closed = False
        # Items queued and items answered since the start: `drain` waits for the first to be
        # reached by the second (the queue is first in, first out).
        self._queued = 0
        self._answered = 0

    def submit(self, item: Item) -> Result:
        """Commit `item` (alone or with others) and return its result once committed.

        Raises the exception the batch commit meant for this item, or `GroupCommitClosedError`
        when the group commit was closed before the item was queued.
        """
        waiter: _Waiter[Item, Result] = _Waiter(item)
        with self._changed:
            if self._closed:
                raise GroupCommitClosedError(
                    "the state database is closing; the instance was not recorded"
                )
            self._queue.append(waiter)
            self._queued += 1
            while not waiter.done and (self._committing or self._queue[0] is not waiter):
                self._changed.wait()
            if not waiter.done:
                batch = self._take_batch()
        if not waiter.done:
            self._run(batch)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[return-value]

    @property
    def waiting(self) -> int:
        """Items queued for a commit that has not started yet."""
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

    def _take_batch(self) -> list[_Waiter[Item, Result]]:
        """Called with the condition held by the waiter at the head of the queue."""
        self._committing = True
        count = min(len(self._queue), self._max_batch)
        return [self._queue.popleft() for _ in range(count)]

    def _run(self, batch: list[_Waiter[Item, Result]]) -> None:
        results: list[Result | Exception]
        try:
            results = list(self._commit([waiter.item for waiter in batch]))
            if len(results) != len(batch):
                raise RuntimeError(
                    f"a batch commit returned {len(results)} results for {len(batch)} items"
                )
        except Exception as exc:  # each waiter gets it: nobody is answered Success
            results = [exc] * len(batch)
        except BaseException:
            # Interrupted (KeyboardInterrupt, SystemExit in the committing thread): whether the
            # batch committed is unknown, so nobody gets Success and the peers send again.
            interrupted = StateError("recording the instance was interrupted; it may be lost")
            self._finish(batch, [interrupted] * len(batch))
            raise
        self._finish(batch, results)

    def _finish(
        self, batch: list[_Waiter[Item, Result]], results: list[Result | Exception]
    ) -> None:
        with self._changed:
            for waiter, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    waiter.error = result
                else:
                    waiter.result = result
                waiter.done = True
            self._answered += len(batch)
            self._committing = False
            self._changed.notify_all()
