"""GroupCommit: submits of many threads batched into one commit, each answered only after the
commit that holds its item, with its own result or error; closing drains and refuses."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from agent.state import GroupCommit, GroupCommitClosedError, StateError

_WAIT_SECONDS = 10.0


class GatedCommit:
    """A batch commit that records its batches and, while `gate` is closed, holds the first
    batch inside the commit (so others queue behind it)."""

    def __init__(self, answer: Callable[[str], str | Exception] = str.upper) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.inside = threading.Event()
        self.answer = answer

    def __call__(self, items: Sequence[str]) -> list[str | Exception]:
        self.inside.set()
        assert self.gate.wait(_WAIT_SECONDS)
        self.batches.append(list(items))
        return [self.answer(item) for item in items]


def queue_behind_first(
    commit: GroupCommit[str, str], gated: GatedCommit, pool: ThreadPoolExecutor, items: list[str]
) -> list[Future[str]]:
    """Submit items[0], wait until it is inside its commit, then queue the rest in order."""
    futures = [pool.submit(commit.submit, items[0])]
    assert gated.inside.wait(_WAIT_SECONDS)
    for count, item in enumerate(items[1:], start=1):
        futures.append(pool.submit(commit.submit, item))
        while commit.waiting < count:  # queued in this order before the next is submitted
            threading.Event().wait(0.001)
    return futures


def test_a_lone_submit_is_committed_at_once_by_its_own_thread() -> None:
    threads: list[str] = []

    def commit(items: Sequence[str]) -> list[str | Exception]:
        threads.append(threading.current_thread().name)
        return [item.upper() for item in items]

    assert GroupCommit(commit).submit("a") == "A"
    assert threads == [threading.current_thread().name]


def test_submits_that_wait_on_a_commit_are_batched_into_the_next_in_arrival_order() -> None:
    gated = GatedCommit()
    commit: GroupCommit[str, str] = GroupCommit(gated)
    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = queue_behind_first(commit, gated, pool, ["a", "b", "c", "d", "e"])
        assert not any(future.done() for future in futures)  # nothing answered before its commit
        gated.gate.set()
        results = [future.result(_WAIT_SECONDS) for future in futures]

    assert results == ["A", "B", "C", "D", "E"]
    assert gated.batches == [["a"], ["b", "c", "d", "e"]]


def test_a_batch_holds_at_most_max_batch_items() -> None:
    gated = GatedCommit()
    commit: GroupCommit[str, str] = GroupCommit(gated, max_batch=2)
    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = queue_behind_first(commit, gated, pool, ["a", "b", "c", "d", "e"])
        gated.gate.set()
        assert [future.result(_WAIT_SECONDS) for future in futures] == ["A", "B", "C", "D", "E"]

    assert gated.batches == [["a"], ["b", "c"], ["d", "e"]]


def test_an_error_meant_for_one_item_reaches_only_its_submitter() -> None:
    def answer(item: str) -> str | Exception:
        return StateError(f"no room for {item}") if item == "c" else item.upper()

    gated = GatedCommit(answer)
    commit: GroupCommit[str, str] = GroupCommit(gated)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = queue_behind_first(commit, gated, pool, ["a", "b", "c", "d"])
        gated.gate.set()
        with pytest.raises(StateError, match="no room for c"):
            futures[2].result(_WAIT_SECONDS)
        assert [futures[i].result(_WAIT_SECONDS) for i in (0, 1, 3)] == ["A", "B", "D"]


def test_a_batch_commit_that_raises_fails_every_item_of_the_batch_and_the_next_batch_works() -> (
    None
):
    calls: list[list[str]] = []

    def commit(items: Sequence[str]) -> list[str | Exception]:
        calls.append(list(items))
        if len(calls) == 2:
            raise StateError("the state database failed")
        if len(calls) == 1:
            assert gate.wait(_WAIT_SECONDS)
        return [item.upper() for item in items]

    gate = threading.Event()
    group: GroupCommit[str, str] = GroupCommit(commit)
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(group.submit, "a")
        while not calls:
            threading.Event().wait(0.001)
        second = pool.submit(group.submit, "b")
        while group.waiting < 1:
            threading.Event().wait(0.001)
        third = pool.submit(group.submit, "c")
        while group.waiting < 2:
            threading.Event().wait(0.001)
        gate.set()
        assert first.result(_WAIT_SECONDS) == "A"
        for failed in (second, third):
            with pytest.raises(StateError, match="failed"):
                failed.result(_WAIT_SECONDS)

    assert group.submit("d") == "D"
    assert calls == [["a"], ["b", "c"], ["d"]]


def test_a_commit_that_returns_the_wrong_number_of_results_fails_its_items() -> None:
    group: GroupCommit[str, str] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        group.submit("a")


def test_an_interrupted_commit_answers_its_waiters_with_an_error_and_lets_the_next_commit() -> None:
    calls: list[list[str]] = []

    def commit(items: Sequence[str]) -> list[str | Exception]:
        calls.append(list(items))
        if len(calls) == 1:
            raise KeyboardInterrupt
        return [item.upper() for item in items]

    group: GroupCommit[str, str] = GroupCommit(commit)
    with pytest.raises(KeyboardInterrupt):
        group.submit("a")
    assert group.submit("b") == "B"


def test_close_commits_everything_queued_then_refuses_new_items() -> None:
    gated = GatedCommit()
    group: GroupCommit[str, str] = GroupCommit(gated)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = queue_behind_first(group, gated, pool, ["a", "b", "c"])
        closing = pool.submit(group.close)
        with pytest.raises(TimeoutError):
            closing.result(0.05)  # still waiting for the queued items
        gated.gate.set()
        closing.result(_WAIT_SECONDS)
        assert gated.batches == [["a"], ["b", "c"]]  # committed before close returned
        assert [future.result(_WAIT_SECONDS) for future in futures] == ["A", "B", "C"]

    with pytest.raises(GroupCommitClosedError, match="not recorded"):
        group.submit("d")
    group.close()  # idempotent


def test_drain_waits_for_what_is_queued_and_submits_go_on_after_it() -> None:
    gated = GatedCommit()
    group: GroupCommit[str, str] = GroupCommit(gated)
    with ThreadPoolExecutor(max_workers=3) as pool:
        queue_behind_first(group, gated, pool, ["a", "b"])
        draining = pool.submit(group.drain)
        with pytest.raises(TimeoutError):
            draining.result(0.05)
        gated.gate.set()
        draining.result(_WAIT_SECONDS)
        assert gated.batches == [["a"], ["b"]]  # committed before drain returned

    assert group.submit("c") == "C"


def test_many_threads_each_get_their_own_result() -> None:
    group: GroupCommit[int, int] = GroupCommit(lambda items: [item * 2 for item in items])
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(group.submit, range(400)))
    assert results == [item * 2 for item in range(400)]


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(lambda items: list(items), max_batch=0)
