"""WAL checkpoints run on the state's own thread, never inside a commit of its connection."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest

from agent.state import AgentState, SpooledInstance
from agent.state.checkpoint import COMMITS_PER_CHECKPOINT, Checkpointer

_WAIT_SECONDS = 10.0


def spooled(directory: Path, number: int) -> SpooledInstance:
    path = directory / f"slot-{number}.dcm"
    path.write_bytes(b"%d" % number)
    return SpooledInstance(
        sop_instance_uid=f"1.2.3.{number}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        series_instance_uid="1.2.3.999",
        study_instance_uid="1.2.3.998",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        sha256=hashlib.sha256(b"%d" % number).hexdigest(),
        size=1,
        path=path,
        received_at=100.0,
        spooled_at=100.0,
    )


def wal_frames(path: Path) -> int:
    """Frames in the log that are not in the database file yet."""
    with sqlite3.connect(path) as probe:
        (_, log, checkpointed) = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(log) - int(checkpointed)


def test_the_state_connection_never_checkpoints_itself(tmp_path: Path) -> None:
    state = AgentState.open(tmp_path / "state.db")
    try:
        with state.transaction(write=False) as db:
            assert db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    finally:
        state.close()


def checkpoint_threads(path: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"state-checkpoint {path}"]


def test_a_checkpoint_runs_on_its_own_thread_after_enough_commits(tmp_path: Path) -> None:
    state = AgentState.open(tmp_path / "state.db")
    try:
        for number in range(COMMITS_PER_CHECKPOINT - 1):
            state.add_instance(spooled(tmp_path, number))
        assert checkpoint_threads(state.path) == []

        state.add_instance(spooled(tmp_path, COMMITS_PER_CHECKPOINT))

        assert len(checkpoint_threads(state.path)) == 1
    finally:
        state.close()
    assert checkpoint_threads(state.path) == []  # closing the state ends it


def test_a_checkpointer_copies_the_log_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    with sqlite3.connect(path, isolation_level=None) as writer:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("CREATE TABLE t (x BLOB)")
        for _ in range(20):
            writer.execute("INSERT INTO t VALUES (zeroblob(8000))")
        checkpointer = Checkpointer(path, every=3)
        try:
            checkpointer.committed(2)
            assert checkpointer.checkpoints == 0  # not due yet: no thread either
            checkpointer.committed()
            done = threading.Event()
            for _ in range(int(_WAIT_SECONDS / 0.01)):
                if checkpointer.checkpoints:
                    done.set()
                    break
                done.wait(0.01)
            assert done.is_set()
        finally:
            checkpointer.close()
            checkpointer.close()  # idempotent
        assert wal_frames(path) == 0


def test_every_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every"):
        Checkpointer(tmp_path / "x.db", every=0)
