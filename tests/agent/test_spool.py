"""Spool: durable content-addressed writes, out-of-space handling and start-up recovery."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.spool import Spool, SpoolFull
from agent.state import AddOutcome, AgentState
from tests.support.dicom_factory import encode_part10, make_instance

SERIES = "1.2.826.0.1.3680043.8.498.11"
STUDY = "1.2.826.0.1.3680043.8.498.10"


def part10(sop: str = "1.2.826.0.1.3680043.8.498.12") -> bytes:
    return encode_part10(
        make_instance(
            patient_id="SPOOLTEST",
            study_uid=STUDY,
            series_uid=SERIES,
            sop_uid=sop,
            series_description="spool test",
            study_description="spool study",
        )
    )


def store(spool: Spool, data: bytes, sop: str = "1.2.826.0.1.3680043.8.498.12") -> AddOutcome:
    return spool.store(
        data,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        series_instance_uid=SERIES,
        study_instance_uid=STUDY,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        received_at=100.0,
    )


def spool_files(spool: Spool) -> list[Path]:
    return sorted(path for path in (spool.root / "files").rglob("*") if path.is_file())


def test_store_writes_the_bytes_content_addressed_and_records_them(
    spool: Spool, state: AgentState
) -> None:
    data = part10()

    assert store(spool, data) is AddOutcome.new

    sha = hashlib.sha256(data).hexdigest()
    (row,) = state.spooled_instances(SERIES)
    assert row.path == spool.root / "files" / sha[:2] / f"{sha}.dcm"
    assert (row.sha256, row.size, row.received_at) == (sha, len(data), 100.0)
    assert row.path.read_bytes() == data
    assert list((spool.root / "tmp").iterdir()) == []


def test_storing_the_same_bytes_twice_keeps_one_file_and_one_row(
    spool: Spool, state: AgentState
) -> None:
    data = part10()

    store(spool, data)
    assert store(spool, data) is AddOutcome.duplicate

    assert len(spool_files(spool)) == 1
    assert len(state.spooled_instances(SERIES)) == 1


def test_store_raises_spool_full_below_the_reserve_and_leaves_nothing(
    tmp_path: Path, state: AgentState
) -> None:
    spool = Spool(tmp_path / "spool", state, reserve_bytes=1 << 62)

    with pytest.raises(SpoolFull, match="below the reserve"):
        store(spool, part10())

    assert spool_files(spool) == []
    assert list((spool.root / "tmp").iterdir()) == []
    assert state.stats().spooled_count == 0


def test_store_raises_spool_full_on_a_full_disk_and_leaves_no_partial_file(
    tiny_filesystem: Path, state: AgentState
) -> None:
    spool = Spool(tiny_filesystem / "spool", state)
    outcomes: list[AddOutcome | SpoolFull] = []
    # 1 MiB of tmpfs holds a handful of ~130 KB instances; the loop ends with SpoolFull.
    while not outcomes or not isinstance(outcomes[-1], SpoolFull):
        sop = f"1.2.3.{len(outcomes)}"
        try:
            outcomes.append(store(spool, part10(sop), sop))
        except SpoolFull as full:
            outcomes.append(full)

    assert outcomes[0] is AddOutcome.new
    assert "ran out of disk space" in str(outcomes[-1])
    assert list((spool.root / "tmp").iterdir()) == []
    recorded = {row.path for row in state.spooled_instances(SERIES)}
    assert set(spool_files(spool)) == recorded
    for row in state.spooled_instances(SERIES):
        assert hashlib.sha256(row.path.read_bytes()).hexdigest() == row.sha256


def test_recover_removes_temp_files_and_unreferenced_files(spool: Spool, state: AgentState) -> None:
    store(spool, part10("1.1"), "1.1")
    (kept,) = state.spooled_instances(SERIES)
    (spool.root / "tmp" / "crashed-mid-write.part").write_bytes(b"partial")
    # A crash between rename and commit leaves a complete file that no row references.
    orphan = spool.root / "files" / "ab" / ("ab" + "0" * 62 + ".dcm")
    orphan.write_bytes(b"never acknowledged")

    report = spool.recover()

    assert (report.temp_files_removed, report.orphans_removed, report.missing_files) == (1, 1, 0)
    assert spool_files(spool) == [kept.path]
    assert list((spool.root / "tmp").iterdir()) == []


def test_recover_keeps_files_of_failed_rows_and_removes_those_of_finished_rows(
    spool: Spool, state: AgentState
) -> None:
    store(spool, part10("1.1"), "1.1")
    store(spool, part10("1.2"), "1.2")
    failed, uploaded = state.spooled_instances(SERIES)
    state.mark_failed(failed.id, "permanent")
    state.mark_uploaded(uploaded.id, "file-1")
    # As if the process died after the commit but before the file was deleted.
    uploaded.path.write_bytes(b"leftover")

    report = spool.recover()

    assert report.orphans_removed == 1
    assert spool_files(spool) == [failed.path]


def test_recover_counts_rows_whose_file_is_gone(spool: Spool, state: AgentState) -> None:
    store(spool, part10("1.1"), "1.1")
    (row,) = state.spooled_instances(SERIES)
    row.path.unlink()

    assert spool.recover().missing_files == 1


def test_a_new_spool_on_existing_directories_keeps_their_files(
    tmp_path: Path, spool: Spool, state: AgentState
) -> None:
    store(spool, part10())

    reopened = Spool(tmp_path / "spool", state)

    assert reopened.recover().orphans_removed == 0
    assert len(spool_files(reopened)) == 1


def test_a_negative_reserve_is_refused(tmp_path: Path, state: AgentState) -> None:
    with pytest.raises(ValueError, match="reserve_bytes"):
        Spool(tmp_path / "spool", state, reserve_bytes=-1)


def test_a_data_directory_moved_as_a_whole_keeps_its_spooled_files(tmp_path: Path) -> None:
    state = AgentState.open(tmp_path / "data" / "state.db")
    store(Spool(tmp_path / "data" / "spool", state), part10())
    state.close()
    (tmp_path / "data").rename(tmp_path / "moved")

    moved_state = AgentState.open(tmp_path / "moved" / "state.db")
    try:
        report = Spool(tmp_path / "moved" / "spool", moved_state).recover()
        (row,) = moved_state.spooled_instances(SERIES)
    finally:
        moved_state.close()

    assert (report.orphans_removed, report.missing_files) == (0, 0)
    assert row.path.is_relative_to(tmp_path / "moved")
    assert row.path.exists()
