"""AgentState.add_instances: a batch recorded in one transaction gives each instance exactly what
add_instance, called once per instance in order, would give it (dedup and new versions inside
the batch included), and a failed batch is recorded again one by one."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.state import AddOutcome, AgentState, SpooledInstance, StateError, StateFullError

SERIES = "1.2.826.0.1.3680043.8.498.31"
STUDY = "1.2.826.0.1.3680043.8.498.30"
_names = itertools.count()


def spooled(directory: Path, sop: str, content: bytes) -> SpooledInstance:
    """A file of its own (as a slot is) holding `content`, described as the spool would."""
    path = directory / f"slot-{next(_names)}.dcm"
    path.write_bytes(content)
    return SpooledInstance(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        series_instance_uid=SERIES,
        study_instance_uid=STUDY,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        path=path,
        received_at=100.0,
        spooled_at=100.01,
    )


class Recorded:
    """A state database with a stand-in spool that deletes what it is handed."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.state = AgentState.open(directory / "state.db", clock=lambda: 500.0)
        self.released: list[str] = []
        self.state.release_files_with(self._release)

    def _release(self, path: Path) -> None:
        self.released.append(path.name)
        path.unlink(missing_ok=True)

    def rows(self) -> list[tuple[str, str, str, str]]:
        with self.state.transaction(write=False) as db:
            found = db.execute(
                "SELECT sop_instance_uid, sha256, state, path FROM instances ORDER BY id"
            ).fetchall()
        return [(sop, sha, state, Path(path).name) for sop, sha, state, path in found]


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[Recorded]:
    opened = Recorded(tmp_path / "batch")
    yield opened
    opened.state.close()


def test_a_batch_records_every_instance_in_one_transaction(recorded: Recorded) -> None:
    batch = [spooled(recorded.directory, f"1.2.3.{n}", f"content {n}".encode()) for n in range(3)]

    assert recorded.state.add_instances(batch) == [AddOutcome.new] * 3
    assert [row[0] for row in recorded.rows()] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]


def test_the_same_instance_twice_in_a_batch_is_stored_once(recorded: Recorded) -> None:
    first = spooled(recorded.directory, "1.2.3.1", b"same")
    again = spooled(recorded.directory, "1.2.3.1", b"same")

    assert recorded.state.add_instances([first, again]) == [AddOutcome.new, AddOutcome.duplicate]
    assert recorded.rows() == [("1.2.3.1", first.sha256, "spooled", first.path.name)]
    assert recorded.released == [again.path.name]
    assert first.path.exists()


def test_a_new_version_in_the_same_batch_supersedes_the_first(recorded: Recorded) -> None:
    first = spooled(recorded.directory, "1.2.3.1", b"version 1")
    second = spooled(recorded.directory, "1.2.3.1", b"version 2")

    assert recorded.state.add_instances([first, second]) == [
        AddOutcome.new,
        AddOutcome.replaced,
    ]
    assert [row[2] for row in recorded.rows()] == ["superseded", "spooled"]
    assert recorded.released == [first.path.name]


def test_a_batch_that_deletes_an_older_version_commits_synced(recorded: Recorded) -> None:
    older = spooled(recorded.directory, "1.2.3.1", b"version 1")
    recorded.state.add_instance(older)
    statements: list[str] = []
    with recorded.state.transaction(write=False) as db:
        db.set_trace_callback(statements.append)
    try:
        recorded.state.add_instances(
            [
                spooled(recorded.directory, "1.2.3.2", b"other"),
                spooled(recorded.directory, "1.2.3.1", b"version 2"),
            ]
        )
    finally:
        with recorded.state.transaction(write=False) as db:
            db.set_trace_callback(None)

    begin = statements.index("BEGIN IMMEDIATE")
    assert "PRAGMA synchronous = FULL" in statements[:begin]
    assert recorded.released == [older.path.name]


def test_a_batch_of_new_instances_commits_without_waiting_for_the_disk(
    recorded: Recorded,
) -> None:
    recorded.state.add_instance(spooled(recorded.directory, "1.2.3.9", b"first"))  # now NORMAL
    statements: list[str] = []
    with recorded.state.transaction(write=False) as db:
        db.set_trace_callback(statements.append)
    recorded.state.add_instances(
        [spooled(recorded.directory, f"1.2.3.{n}", bytes([n])) for n in range(2)]
    )
    with recorded.state.transaction(write=False) as db:
        db.set_trace_callback(None)

    assert not [s for s in statements if s.startswith("PRAGMA synchronous")]


def test_a_missing_file_fails_only_its_own_instance(recorded: Recorded) -> None:
    good = spooled(recorded.directory, "1.2.3.1", b"good")
    gone = spooled(recorded.directory, "1.2.3.2", b"gone")
    gone.path.unlink()
    also_good = spooled(recorded.directory, "1.2.3.3", b"also good")

    results = recorded.state.add_instances([good, gone, also_good])

    assert results[0] is AddOutcome.new
    assert isinstance(results[1], StateError)
    assert "does not exist" in str(results[1])
    assert results[2] is AddOutcome.new
    assert [row[0] for row in recorded.rows()] == ["1.2.3.1", "1.2.3.3"]


def fill_up(state: AgentState) -> None:
    """Let the database grow no more than it is now."""
    with state.transaction(write=False) as db:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        db.execute(f"PRAGMA max_page_count = {pages}")


def fill_to_the_last_row(recorded: Recorded) -> None:
    for n in range(10_000):
        try:
            recorded.state.add_instance(spooled(recorded.directory, f"1.2.4.{n}", b"%d" % n))
        except StateFullError:
            return
    raise AssertionError("the state database never filled up")


def test_a_full_state_database_fails_every_instance_of_the_batch(recorded: Recorded) -> None:
    fill_up(recorded.state)
    fill_to_the_last_row(recorded)
    rows = recorded.rows()
    batch = [spooled(recorded.directory, f"1.2.3.{n}", bytes([n])) for n in range(3)]

    results = recorded.state.add_instances(batch)

    assert all(isinstance(result, StateFullError) for result in results), results
    assert recorded.rows() == rows
    assert recorded.released == []  # the files are the spool's to give back
    assert all(inst.path.exists() for inst in batch)


def test_a_batch_that_fills_the_database_answers_each_instance_as_if_alone(
    recorded: Recorded,
) -> None:
    fill_up(recorded.state)
    batch = [spooled(recorded.directory, f"1.2.3.{n}", bytes(200) + bytes([n])) for n in range(40)]

    results = recorded.state.add_instances(batch)

    recorded_count = results.index(next(r for r in results if isinstance(r, Exception)))
    assert 0 < recorded_count < len(batch)
    assert results[:recorded_count] == [AddOutcome.new] * recorded_count
    assert all(isinstance(result, StateFullError) for result in results[recorded_count:])
    assert [row[0] for row in recorded.rows()] == [
        inst.sop_instance_uid for inst in batch[:recorded_count]
    ]


# Instances drawn from three SOP Instance UIDs and three contents, so duplicates and new
# versions meet inside batches and across them.
_instances = st.lists(
    st.tuples(st.sampled_from(["1.2.3.1", "1.2.3.2", "1.2.3.3"]), st.sampled_from(b"abc")),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=_instances,
    batch=_instances,
    uploaded=st.sets(st.integers(min_value=0, max_value=11)),
)
def test_a_batch_does_what_one_add_instance_per_instance_does(
    tmp_path_factory: pytest.TempPathFactory,
    before: list[tuple[str, int]],
    batch: list[tuple[str, int]],
    uploaded: set[int],
) -> None:
    worlds = [Recorded(tmp_path_factory.mktemp("world")) for _ in range(2)]
    try:
        outcomes = []
        for world, batched in zip(worlds, (False, True), strict=True):
            for sop, content in before:
                world.state.add_instance(spooled(world.directory, sop, bytes([content])))
            for instance_id in sorted(uploaded):
                row = _row_if_spooled(world.state, instance_id + 1)
                if row:
                    world.state.mark_uploaded(instance_id + 1, "file")
            instances = [spooled(world.directory, sop, bytes([c])) for sop, c in batch]
            if batched:
                outcomes.append(world.state.add_instances(instances))
            else:
                outcomes.append([world.state.add_instance(inst) for inst in instances])
        one_by_one, together = worlds
        assert outcomes[1] == outcomes[0]
        assert _comparable(together) == _comparable(one_by_one)
    finally:
        for world in worlds:
            world.state.close()


def _row_if_spooled(state: AgentState, instance_id: int) -> bool:
    with state.transaction(write=False) as db:
        found = db.execute("SELECT state FROM instances WHERE id = ?", (instance_id,)).fetchone()
    return found is not None and found[0] == "spooled"


def _comparable(world: Recorded) -> tuple[object, ...]:
    """Rows, released and remaining files, with each file named by its place in the order of
    creation (each world names its own files)."""
    kept = [path.name for path in world.directory.glob("slot-*")]
    everything = sorted({*kept, *world.released, *(row[3] for row in world.rows())}, key=_number)
    order = {name: index for index, name in enumerate(everything)}
    return (
        [(sop, sha, state, order[path]) for sop, sha, state, path in world.rows()],
        [order[name] for name in world.released],
        sorted(order[name] for name in kept),
    )


def _number(name: str) -> int:
    return int(name.removeprefix("slot-").removesuffix(".dcm"))
