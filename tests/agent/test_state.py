"""AgentState: schema, refusal of unusable files, duplicate rules, due series and transitions."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.state import (
    SCHEMA_VERSION,
    AddOutcome,
    AgentState,
    InstanceState,
    InvalidTransitionError,
    SpooledInstance,
    StateError,
)

SERIES = "1.2.826.0.1.3680043.8.498.1"
OTHER_SERIES = "1.2.826.0.1.3680043.8.498.2"
STUDY = "1.2.826.0.1.3680043.8.498.9"


def spooled(
    directory: Path,
    sop: str,
    content: bytes = b"content",
    *,
    series: str = SERIES,
    received_at: float = 100.0,
) -> SpooledInstance:
    """Write `content` content-addressed under `directory` and describe it as the spool would."""
    sha = hashlib.sha256(content).hexdigest()
    path = directory / f"{sha}.dcm"
    path.write_bytes(content)
    return SpooledInstance(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        series_instance_uid=series,
        study_instance_uid=STUDY,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        sha256=sha,
        size=len(content),
        path=path,
        received_at=received_at,
        spooled_at=received_at + 0.01,
    )


@pytest.fixture
def released() -> list[Path]:
    """The files the state handed back to their owner, in order."""
    return []


@pytest.fixture
def state(tmp_path: Path, released: list[Path]) -> Iterator[AgentState]:
    """A state database whose files are owned by a stand-in for the spool that records what
    it is handed and deletes it, as `Spool.release` does."""
    opened = AgentState.open(tmp_path / "state.db")

    def release(path: Path) -> None:
        released.append(path)
        path.unlink(missing_ok=True)

    opened.release_files_with(release)
    yield opened
    opened.close()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    directory = tmp_path / "files"
    directory.mkdir()
    return directory


def test_open_creates_the_schema_at_the_current_version_in_wal_mode(tmp_path: Path) -> None:
    AgentState.open(tmp_path / "state.db").close()

    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_schema")}
    assert {"series", "instances"} <= tables


def test_open_keeps_rows_recorded_before_a_restart(tmp_path: Path, files: Path) -> None:
    first = AgentState.open(tmp_path / "state.db")
    first.add_instance(spooled(files, "1.1"))
    first.close()

    reopened = AgentState.open(tmp_path / "state.db")
    try:
        assert [row.sop_instance_uid for row in reopened.spooled_instances(SERIES)] == ["1.1"]
    finally:
        reopened.close()


def test_open_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database, it is a text file" * 100)

    with pytest.raises(StateError, match="unreadable") as raised:
        AgentState.open(path)
    assert "Do not delete it" in str(raised.value)


def test_open_refuses_a_database_with_damaged_pages(tmp_path: Path, files: Path) -> None:
    path = tmp_path / "state.db"
    state = AgentState.open(path)
    for number in range(200):
        state.add_instance(spooled(files, f"1.{number}", f"content {number}".encode()))
    state.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damaged = bytearray(path.read_bytes())
    page_size = 4096
    damaged[2 * page_size : 4 * page_size] = b"\xa5" * (2 * page_size)
    path.write_bytes(bytes(damaged))

    with pytest.raises(StateError, match="unreadable"):
        AgentState.open(path)


def test_open_refuses_a_schema_written_by_a_newer_agent(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    AgentState.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(StateError, match="newer agent"):
        AgentState.open(path)


def test_open_refuses_an_sqlite_database_that_is_not_agent_state(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE something_else (x INTEGER)")

    with pytest.raises(StateError, match="not an agent state database"):
        AgentState.open(path)


def test_calls_after_close_raise_state_error(state: AgentState) -> None:
    state.close()
    state.close()

    with pytest.raises(StateError, match="closed"):
        state.stats()


def test_add_instance_returns_new_for_an_unknown_sop_instance(
    state: AgentState, files: Path
) -> None:
    assert state.add_instance(spooled(files, "1.1")) is AddOutcome.new

    (row,) = state.spooled_instances(SERIES)
    assert (row.sop_instance_uid, row.state, row.attempts) == ("1.1", InstanceState.spooled, 0)


def test_add_instance_refuses_a_path_that_does_not_exist(state: AgentState, files: Path) -> None:
    instance = spooled(files, "1.1")
    instance.path.unlink()

    with pytest.raises(StateError, match="does not exist"):
        state.add_instance(instance)
    assert state.stats().spooled_count == 0


def test_same_sop_and_content_while_spooled_is_a_duplicate_that_keeps_the_file(
    state: AgentState, files: Path
) -> None:
    state.add_instance(spooled(files, "1.1", b"same"))

    again = spooled(files, "1.1", b"same")
    assert state.add_instance(again) is AddOutcome.duplicate

    assert len(state.spooled_instances(SERIES)) == 1
    assert again.path.read_bytes() == b"same"


def test_same_sop_and_content_after_upload_is_a_duplicate_whose_file_is_removed(
    state: AgentState, files: Path
) -> None:
    state.add_instance(spooled(files, "1.1", b"same"))
    (row,) = state.spooled_instances(SERIES)
    state.mark_uploaded(row.id, "file-1")

    again = spooled(files, "1.1", b"same")
    assert state.add_instance(again) is AddOutcome.duplicate

    assert not again.path.exists()
    assert state.spooled_instances(SERIES) == []


def test_other_content_for_a_spooled_sop_supersedes_it_and_removes_its_file(
    state: AgentState, files: Path
) -> None:
    old = spooled(files, "1.1", b"version one")
    state.add_instance(old)
    (old_row,) = state.spooled_instances(SERIES)

    assert state.add_instance(spooled(files, "1.1", b"version two")) is AddOutcome.replaced

    assert state.instance(old_row.id).state is InstanceState.superseded
    assert not old.path.exists()
    (current,) = state.spooled_instances(SERIES)
    assert current.sha256 == hashlib.sha256(b"version two").hexdigest()


def test_other_content_for_an_uploaded_sop_adds_a_replacing_row(
    state: AgentState, files: Path
) -> None:
    state.add_instance(spooled(files, "1.1", b"version one"))
    (old_row,) = state.spooled_instances(SERIES)
    state.mark_uploaded(old_row.id, "file-1")

    assert state.add_instance(spooled(files, "1.1", b"version two")) is AddOutcome.replaced

    assert state.instance(old_row.id).state is InstanceState.uploaded
    assert len(state.spooled_instances(SERIES)) == 1


def test_same_content_as_a_failed_row_is_spooled_again(state: AgentState, files: Path) -> None:
    first = spooled(files, "1.1", b"same")
    state.add_instance(first)
    (failed,) = state.spooled_instances(SERIES)
    state.mark_failed(failed.id, "destination said 400")

    assert state.add_instance(spooled(files, "1.1", b"same")) is AddOutcome.new
    (retry,) = state.spooled_instances(SERIES)
    state.mark_uploaded(retry.id, "file-1")

    # The failed row still points at the same content-addressed file, so it stays.
    assert first.path.exists()


def test_mark_uploaded_deletes_the_file_and_is_idempotent(state: AgentState, files: Path) -> None:
    instance = spooled(files, "1.1")
    state.add_instance(instance)
    (row,) = state.spooled_instances(SERIES)

    state.mark_uploaded(row.id, "file-1")
    state.mark_uploaded(row.id, "file-1")

    assert state.instance(row.id).state is InstanceState.uploaded
    assert not instance.path.exists()


def test_mark_skipped_deletes_the_file(state: AgentState, files: Path) -> None:
    instance = spooled(files, "1.1")
    state.add_instance(instance)
    (row,) = state.spooled_instances(SERIES)

    state.mark_skipped(row.id, "opt-out string NOFW")

    assert state.instance(row.id).state is InstanceState.skipped
    assert not instance.path.exists()


def test_mark_failed_keeps_the_file_and_counts_the_attempt(state: AgentState, files: Path) -> None:
    instance = spooled(files, "1.1")
    state.add_instance(instance)
    (row,) = state.spooled_instances(SERIES)

    state.mark_failed(row.id, "destination refused the file")

    failed = state.instance(row.id)
    assert (failed.state, failed.attempts, failed.last_error) == (
        InstanceState.failed,
        1,
        "destination refused the file",
    )
    assert instance.path.exists()


def test_finishing_a_row_superseded_during_its_upload_keeps_it_superseded(
    state: AgentState, files: Path
) -> None:
    state.add_instance(spooled(files, "1.1", b"version one"))
    (old_row,) = state.spooled_instances(SERIES)
    state.add_instance(spooled(files, "1.1", b"version two"))

    state.mark_uploaded(old_row.id, "file-1")
    state.schedule_retry(old_row.id, "timeout", 500.0)

    assert state.instance(old_row.id).state is InstanceState.superseded


def test_state_changes_of_unknown_or_finished_rows_are_refused(
    state: AgentState, files: Path
) -> None:
    state.add_instance(spooled(files, "1.1"))
    (row,) = state.spooled_instances(SERIES)
    state.mark_failed(row.id, "permanent")

    with pytest.raises(InvalidTransitionError, match="no instance with id 999"):
        state.mark_uploaded(999, "file-1")
    with pytest.raises(InvalidTransitionError, match="is failed"):
        state.mark_skipped(row.id, "policy")
    with pytest.raises(InvalidTransitionError, match="is failed"):
        state.schedule_retry(row.id, "timeout", 200.0)
    with pytest.raises(InvalidTransitionError, match="not known"):
        state.set_series_target("9.9.9", {"group": "neuro"})


def test_a_series_is_due_only_after_it_has_been_quiet_long_enough(
    state: AgentState, files: Path
) -> None:
    state.add_instance(spooled(files, "1.1", b"a", received_at=100.0))
    state.add_instance(spooled(files, "1.2", b"b", received_at=110.0))

    assert state.due_series(now=139.9, quiet_seconds=30.0) == []
    (due,) = state.due_series(now=140.0, quiet_seconds=30.0)
    assert (due.series_instance_uid, due.pending) == (SERIES, 2)
    assert (due.first_received_at, due.last_received_at) == (100.0, 110.0)
    assert (due.target, due.reaped_at) == (None, None)


def test_a_series_whose_instances_wait_for_a_retry_is_due_when_the_retry_is(
    state: AgentState, files: Path
) -> None:
    state.add_instance(spooled(files, "1.1", received_at=100.0))
    (row,) = state.spooled_instances(SERIES)

    state.schedule_retry(row.id, "connection refused", next_attempt_at=300.0)

    assert state.due_series(now=299.0, quiet_seconds=30.0) == []
    assert state.spooled_instances(SERIES, now=299.0) == []
    assert [s.series_instance_uid for s in state.due_series(now=300.0, quiet_seconds=30.0)] == [
        SERIES
    ]
    (retry,) = state.spooled_instances(SERIES, now=300.0)
    assert (retry.attempts, retry.last_error, retry.next_attempt_at) == (
        1,
        "connection refused",
        300.0,
    )


def test_a_series_with_nothing_spooled_is_not_due(state: AgentState, files: Path) -> None:
    state.add_instance(spooled(files, "1.1", received_at=100.0))
    (row,) = state.spooled_instances(SERIES)
    state.mark_uploaded(row.id, "file-1")

    assert state.due_series(now=1000.0, quiet_seconds=30.0) == []


def test_due_series_come_oldest_activity_first(state: AgentState, files: Path) -> None:
    state.add_instance(spooled(files, "2.1", b"b", series=OTHER_SERIES, received_at=50.0))
    state.add_instance(spooled(files, "1.1", b"a", received_at=100.0))

    due = state.due_series(now=1000.0, quiet_seconds=30.0)

    assert [s.series_instance_uid for s in due] == [OTHER_SERIES, SERIES]


def test_a_late_instance_of_a_reaped_series_is_due_again_and_keeps_the_target(
    state: AgentState, files: Path
) -> None:
    state.add_instance(spooled(files, "1.1", b"a", received_at=100.0))
    state.set_series_target(SERIES, {"group": "neuro", "project": "p1"})
    (row,) = state.spooled_instances(SERIES)
    state.mark_uploaded(row.id, "file-1")

    state.add_instance(spooled(files, "1.2", b"b", received_at=500.0))

    assert state.due_series(now=529.0, quiet_seconds=30.0) == []
    (due,) = state.due_series(now=530.0, quiet_seconds=30.0)
    assert due.target == {"group": "neuro", "project": "p1"}
    assert due.reaped_at is not None
    assert due.pending == 1


def test_stats_count_instances_by_state(state: AgentState, files: Path) -> None:
    for number, received_at in enumerate((100.0, 200.0, 300.0, 400.0)):
        state.add_instance(
            spooled(files, f"1.{number}", bytes([number]) * 10, received_at=received_at)
        )
    first, second, third, _fourth = state.spooled_instances(SERIES)
    state.mark_uploaded(first.id, "file-1")
    state.mark_skipped(second.id, "policy")
    state.mark_failed(third.id, "permanent")

    stats = state.stats()

    assert (stats.spooled_count, stats.spooled_bytes) == (1, 10)
    assert (stats.uploaded_count, stats.skipped_count, stats.failed_count) == (1, 1, 1)
    assert stats.oldest_spooled_at == pytest.approx(400.01)


def test_series_instance_count_counts_distinct_sops_without_superseded_versions(
    state: AgentState, files: Path
) -> None:
    state.add_instance(spooled(files, "1.1", b"v1"))
    state.add_instance(spooled(files, "1.1", b"v2"))
    state.add_instance(spooled(files, "1.2", b"other"))

    assert state.series_instance_count(SERIES) == 2
    assert state.series_instance_count(OTHER_SERIES) == 0


def test_add_instance_from_many_threads_records_every_instance(
    state: AgentState, files: Path
) -> None:
    def add_range(start: int) -> None:
        for number in range(start, start + 25):
            state.add_instance(spooled(files, f"1.{number}", f"c{number}".encode()))

    threads = [threading.Thread(target=add_range, args=(n * 25,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert state.series_instance_count(SERIES) == 200
    assert state.stats().spooled_count == 200


def test_only_commits_that_let_a_file_be_deleted_wait_for_the_disk(
    state: AgentState, files: Path
) -> None:
    def synchronous() -> int:
        # 1 = NORMAL (the commit does not fsync the WAL), 2 = FULL
        return int(state._connection.execute("PRAGMA synchronous").fetchone()[0])

    state.add_instance(spooled(files, "1.1", b"first"))
    assert synchronous() == 1
    (row,) = state.spooled_instances(SERIES)

    state.add_instance(spooled(files, "1.1", b"a second version"))  # supersedes: deletes a file
    assert synchronous() == 2

    state.add_instance(spooled(files, "1.2", b"other"))
    assert synchronous() == 1
    state.mark_uploaded(row.id + 2, "file-1")
    assert synchronous() == 2
    assert not (files / f"{hashlib.sha256(b'other').hexdigest()}.dcm").exists()


def test_add_recovered_refuses_content_a_row_already_knows_in_any_state(
    state: AgentState, files: Path
) -> None:
    state.add_instance(spooled(files, "1.1", b"first"))
    (row,) = state.spooled_instances(SERIES)
    state.mark_uploaded(row.id, "file-1")

    assert state.add_recovered(spooled(files, "1.1", b"first")) is False
    assert state.add_recovered(spooled(files, "1.2", b"lost row")) is True
    assert [r.sop_instance_uid for r in state.spooled_instances(SERIES)] == ["1.2"]


def test_a_file_no_row_needs_is_handed_to_its_owner_only_after_the_commit(
    state: AgentState, files: Path, released: list[Path]
) -> None:
    instance = spooled(files, "1.1")
    state.add_instance(instance)
    (row,) = state.spooled_instances(SERIES)
    seen: list[str] = []

    def release(path: Path) -> None:
        # What a fresh reader of the database sees when the file is handed over.
        with sqlite3.connect(state.path) as reader:
            seen.append(reader.execute("SELECT state FROM instances").fetchone()[0])
        released.append(path)

    state.release_files_with(release)
    state.mark_uploaded(row.id, "file-1")

    assert seen == ["uploaded"]
    assert released == [instance.path]
    assert instance.path.exists()  # the owner decides; this one kept it


def test_without_an_owner_the_state_deletes_no_file(tmp_path: Path, files: Path) -> None:
    state = AgentState.open(tmp_path / "ownerless.db")
    try:
        instance = spooled(files, "1.1")
        state.add_instance(instance)
        (row,) = state.spooled_instances(SERIES)

        state.mark_uploaded(row.id, "file-1")

        # Left for Spool.recover, which removes files of finished rows at start-up.
        assert instance.path.exists()
        assert state.instance(row.id).state is InstanceState.uploaded
    finally:
        state.close()
