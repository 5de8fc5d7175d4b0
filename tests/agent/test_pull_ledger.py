"""The pull ledger in a real state database: stability, vanish and grace, retries, and the
marker that refuses a replaced state file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.pull.ledger import (
    LEDGER_MARKER_NAME,
    PullLedger,
    RemoteSeries,
    SeriesState,
    bind_ledger,
    check_ledger,
)
from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from agent.state import SCHEMA_VERSION, AgentState, StateError
from agent.state.schema import MIGRATIONS
from tests.agent.test_runtime import config_answer
from tests.agent.test_upload_store_double import AGENT_TOKEN, StoreDouble

SOURCE = "PACS@127.0.0.1:104"
OTHER = "SCANNER@127.0.0.1:105"
T0 = 1_700_000_000.0
QUIET = 30.0
GRACE = 7 * 86_400.0


@pytest.fixture
def ledger(state: AgentState) -> PullLedger:
    return PullLedger(state)


def remote(series: str, count: int, study: str = "1.2.3") -> RemoteSeries:
    return RemoteSeries(study_instance_uid=study, series_instance_uid=series, instance_count=count)


def due_uids(ledger: PullLedger, now: float, source: str = SOURCE) -> list[str]:
    return [series.series_instance_uid for series in ledger.due(source, now, QUIET)]


def test_a_new_series_is_due_once_its_count_was_stable_for_the_quiet_time(
    ledger: PullLedger,
) -> None:
    changes = ledger.record_round(SOURCE, [remote("1.1", 3)], T0, GRACE)

    assert (changes.seen, changes.new) == (1, 1)
    assert due_uids(ledger, T0 + QUIET - 1) == []
    assert due_uids(ledger, T0 + QUIET) == ["1.1"]
    tracked = ledger.series(SOURCE, "1.1")
    assert tracked is not None
    assert (tracked.state, tracked.first_retrieval, tracked.remote_count) == (
        SeriesState.new,
        True,
        3,
    )


def test_a_changed_count_starts_the_quiet_time_again(ledger: PullLedger) -> None:
    ledger.record_round(SOURCE, [remote("1.1", 3)], T0, GRACE)
    changes = ledger.record_round(SOURCE, [remote("1.1", 5)], T0 + 20, GRACE)
    ledger.record_round(SOURCE, [remote("1.1", 5)], T0 + 40, GRACE)

    assert changes.changed == 1
    assert due_uids(ledger, T0 + 40) == []
    assert due_uids(ledger, T0 + 20 + QUIET) == ["1.1"]


def test_a_retrieved_series_is_due_again_only_when_its_count_grows(ledger: PullLedger) -> None:
    ledger.record_round(SOURCE, [remote("1.1", 3)], T0, GRACE)
    ledger.mark_retrieved(SOURCE, "1.1", 3, T0 + QUIET)
    assert due_uids(ledger, T0 + 10 * QUIET) == []

    ledger.record_round(SOURCE, [remote("1.1", 2)], T0 + 100, GRACE)
    assert due_uids(ledger, T0 + 100 + QUIET) == []

    ledger.record_round(SOURCE, [remote("1.1", 4)], T0 + 200, GRACE)
    (grown,) = ledger.due(SOURCE, T0 + 200 + QUIET, QUIET)
    assert (grown.state, grown.retrieved_count, grown.remote_count) == (
        SeriesState.retrieved,
        3,
        4,
    )
    assert not grown.first_retrieval


def test_a_series_missing_from_a_round_is_remembered_until_the_grace_period_ends(
    ledger: PullLedger,
) -> None:
    ledger.record_round(SOURCE, [remote("1.1", 3), remote("1.2", 1)], T0, GRACE)
    ledger.mark_retrieved(SOURCE, "1.1", 3, T0 + QUIET)

    gone = ledger.record_round(SOURCE, [remote("1.2", 1)], T0 + 100, GRACE)
    still = ledger.record_round(SOURCE, [remote("1.2", 1)], T0 + 100 + GRACE - 1, GRACE)
    summary = ledger.summary(SOURCE)
    forgotten = ledger.record_round(SOURCE, [remote("1.2", 1)], T0 + 100 + GRACE, GRACE)

    assert (gone.vanished, still.vanished, still.forgotten) == (1, 0, 0)
    assert (summary.tracked, summary.vanished) == (2, 1)
    assert forgotten.forgotten == 1
    assert ledger.series(SOURCE, "1.1") is None


def test_a_vanished_series_listed_again_keeps_what_was_retrieved(ledger: PullLedger) -> None:
    ledger.record_round(SOURCE, [remote("1.1", 3)], T0, GRACE)
    ledger.mark_retrieved(SOURCE, "1.1", 3, T0 + QUIET)
    ledger.record_round(SOURCE, [], T0 + 100, GRACE)
    assert due_uids(ledger, T0 + 200) == []

    back = ledger.record_round(SOURCE, [remote("1.1", 3)], T0 + 3 * 86_400, GRACE)

    assert (back.reappeared, back.new) == (1, 0)
    assert due_uids(ledger, T0 + 4 * 86_400) == []
    tracked = ledger.series(SOURCE, "1.1")
    assert tracked is not None
    assert (tracked.state, tracked.vanished_at) == (SeriesState.retrieved, None)


def test_a_failed_or_short_retrieval_waits_for_its_next_attempt(ledger: PullLedger) -> None:
    ledger.record_round(SOURCE, [remote("1.1", 3), remote("1.2", 4)], T0, GRACE)
    ledger.mark_failed(SOURCE, "1.1", "no answer", T0 + 100)
    ledger.mark_short(SOURCE, "1.2", 2, "2 of 4 missing", T0 + 200)

    assert due_uids(ledger, T0 + 99) == []
    assert due_uids(ledger, T0 + 100) == ["1.1"]
    assert due_uids(ledger, T0 + 200) == ["1.1", "1.2"]
    failed, short = ledger.series(SOURCE, "1.1"), ledger.series(SOURCE, "1.2")
    assert failed is not None
    assert short is not None
    assert (failed.state, failed.retrievals, failed.last_error) == (SeriesState.new, 1, "no answer")
    assert not failed.first_retrieval
    assert (short.state, short.missing) == (SeriesState.short, 2)
    summary = ledger.summary(SOURCE)
    assert (summary.waiting, summary.short, summary.missing_instances) == (2, 1, 2)

    ledger.mark_retrieved(SOURCE, "1.2", 4, T0 + 300)
    done = ledger.series(SOURCE, "1.2")
    assert done is not None
    assert (done.state, done.missing, done.last_error, done.next_attempt_at) == (
        SeriesState.retrieved,
        0,
        None,
        None,
    )


def test_a_round_of_one_source_leaves_the_series_of_another_alone(ledger: PullLedger) -> None:
    ledger.record_round(SOURCE, [remote("1.1", 3)], T0, GRACE)
    ledger.record_round(OTHER, [remote("1.1", 3), remote("2.1", 1)], T0, GRACE)

    changes = ledger.record_round(SOURCE, [], T0 + 100, GRACE)

    assert changes.vanished == 1
    assert ledger.summary(OTHER).vanished == 0
    assert due_uids(ledger, T0 + QUIET, OTHER) == ["1.1", "2.1"]


def test_a_version_1_state_database_is_upgraded_and_keeps_its_instances(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
        db.execute(
            "INSERT INTO series (series_instance_uid, study_instance_uid, first_received_at, "
            "last_received_at) VALUES ('1.1', '1', 1, 1)"
        )
    db.close()

    state = AgentState.open(path)
    try:
        assert state.series("1.1") is not None
        with state.transaction(write=False) as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            (ledger_id,) = db.execute("SELECT value FROM pull_meta").fetchone()
        assert version == SCHEMA_VERSION == 3
        assert len(ledger_id) == 32
        assert PullLedger(state).summary(SOURCE).tracked == 0
    finally:
        state.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    return directory


@pytest.fixture
def bound_state(data_dir: Path) -> Iterator[AgentState]:
    state = AgentState.open(data_dir / "state.db")
    bind_ledger(state, data_dir)
    yield state
    state.close()


def delete_state_files(data_dir: Path) -> None:
    for leftover in data_dir.glob("state.db*"):
        leftover.unlink()


def test_the_ledger_accepts_its_own_state_database_again(
    bound_state: AgentState, data_dir: Path
) -> None:
    marker = (data_dir / LEDGER_MARKER_NAME).read_text()
    bound_state.close()

    reopened = AgentState.open(data_dir / "state.db")
    try:
        bind_ledger(reopened, data_dir)
    finally:
        reopened.close()

    assert (data_dir / LEDGER_MARKER_NAME).read_text() == marker


def test_a_state_database_that_replaced_the_pulled_one_is_refused_loudly(
    bound_state: AgentState, data_dir: Path
) -> None:
    bound_state.close()
    delete_state_files(data_dir)

    fresh = AgentState.open(data_dir / "state.db")
    try:
        with pytest.raises(StateError, match="every series would look new"):
            check_ledger(fresh, data_dir)
    finally:
        fresh.close()


async def test_an_agent_whose_state_file_was_deleted_refuses_to_start(
    bound_state: AgentState, data_dir: Path, tmp_path: Path
) -> None:
    bound_state.close()
    delete_state_files(data_dir)
    token_file = tmp_path / "agent-token"
    token_file.write_text(AGENT_TOKEN, encoding="utf-8")
    store = StoreDouble(config_answer=config_answer())
    store.start()
    try:
        settings = AgentSettings(
            control_plane_url=store.base_url,
            token_file=token_file,
            data_dir=data_dir,
            dicom_host="127.0.0.1",
            dicom_port_override=0,
            spool_reserve_bytes=0,
        )
        with pytest.raises(StateError, match="is not the one this data directory pulled with"):
            await AgentRuntime(settings).run()
    finally:
        store.stop()
