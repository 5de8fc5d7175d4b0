"""Spool: durable writes into pre-made slots, out-of-space handling and start-up recovery."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.dicom.intake import identify_spooled
from agent.spool import Spool, SpoolFull
from agent.state import AddOutcome, AgentState
from tests.support.dicom_factory import encode_part10, make_instance
from tests.support.full_disk import FillingDisk
from tests.support.spool_files import filled_slots

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
    return filled_slots(spool.root)


def test_store_writes_the_bytes_into_a_slot_and_records_them(
    spool: Spool, state: AgentState
) -> None:
    data = part10()

    assert store(spool, data) is AddOutcome.new

    (row,) = state.spooled_instances(SERIES)
    assert row.path.parent == spool.root / "slots"
    assert (row.sha256, row.size, row.received_at) == (
        hashlib.sha256(data).hexdigest(),
        len(data),
        100.0,
    )
    assert row.path.read_bytes() == data
    assert spool_files(spool) == [row.path]


def test_each_instance_gets_a_slot_of_its_own_as_the_pool_is_refilled(
    tmp_path: Path, state: AgentState
) -> None:
    spool = Spool(tmp_path / "spool", state, slot_batch=4)

    for number in range(10):
        store(spool, part10(f"1.2.3.{number}"), f"1.2.3.{number}")

    assert len(spool_files(spool)) == 10
    assert {row.path for row in state.spooled_instances(SERIES)} == set(spool_files(spool))


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
    assert state.stats().spooled_count == 0


def test_store_raises_spool_full_on_a_full_disk_and_leaves_no_partial_file(
    tmp_path: Path, state: AgentState
) -> None:
    disk = FillingDisk(free=1 << 20)
    spool = Spool(tmp_path / "spool", state, append_file=disk.append)
    outcomes: list[AddOutcome | SpoolFull] = []
    # 1 MiB holds a handful of ~130 KB instances; the loop ends with SpoolFull.
    while not outcomes or not isinstance(outcomes[-1], SpoolFull):
        sop = f"1.2.3.{len(outcomes)}"
        try:
            outcomes.append(store(spool, part10(sop), sop))
        except SpoolFull as full:
            outcomes.append(full)

    assert outcomes[0] is AddOutcome.new
    assert "ran out of disk space" in str(outcomes[-1])
    recorded = {row.path for row in state.spooled_instances(SERIES)}
    assert set(spool_files(spool)) == recorded
    for row in state.spooled_instances(SERIES):
        assert hashlib.sha256(row.path.read_bytes()).hexdigest() == row.sha256
    assert disk.refused == 1

    disk.free = 1 << 20  # space returns
    assert store(spool, part10("1.2.3.999"), "1.2.3.999") is AddOutcome.new


def test_recover_frees_empty_slots_and_deletes_slots_cut_short(
    spool: Spool, state: AgentState
) -> None:
    store(spool, part10("1.1"), "1.1")
    (kept,) = state.spooled_instances(SERIES)
    whole = part10("1.2")
    # Crashes before the fsync: the instance was never acknowledged, its peer sends it again.
    (spool.root / "slots" / "cut-in-the-data-set.dcm").write_bytes(whole[: len(whole) // 2])
    (spool.root / "slots" / "cut-in-the-preamble.dcm").write_bytes(whole[:100])
    (spool.root / "slots" / "garbage.dcm").write_bytes(b"never acknowledged")
    spool.close()  # no refill under way while the free slots are counted
    free_before = _empty_slots(spool)

    report = spool.recover(identify_spooled)

    assert (report.partial_removed, report.recorded_again, report.missing_files) == (3, 0, 0)
    assert report.free_slots == len(free_before)
    assert spool_files(spool) == [kept.path]
    assert state.stats().spooled_count == 1


def test_recover_records_again_a_whole_slot_whose_row_a_power_cut_took_back(
    tmp_path: Path,
) -> None:
    data = part10("1.1")
    state = AgentState.open(tmp_path / "data" / "state.db")
    spool = Spool(tmp_path / "data" / "spool", state)
    store(spool, data, "1.1")
    (row,) = state.spooled_instances(SERIES)
    state.close()
    # The commit did not wait for the disk; simulate losing it with a state that never had it.
    (tmp_path / "data" / "state.db").unlink()
    for leftover in (tmp_path / "data").glob("state.db-*"):
        leftover.unlink()

    state = AgentState.open(tmp_path / "data" / "state.db")
    try:
        report = Spool(tmp_path / "data" / "spool", state).recover(identify_spooled)
        (again,) = state.spooled_instances(SERIES)
    finally:
        state.close()

    assert (report.recorded_again, report.partial_removed, report.leftovers_removed) == (1, 0, 0)
    assert (again.path, again.sha256, again.size) == (row.path, row.sha256, row.size)
    assert again.sop_instance_uid == "1.1"
    assert again.study_instance_uid == STUDY


def test_recover_deletes_files_of_finished_rows_and_keeps_those_of_failed_rows(
    spool: Spool, state: AgentState
) -> None:
    store(spool, part10("1.1"), "1.1")
    store(spool, part10("1.2"), "1.2")
    failed, uploaded = state.spooled_instances(SERIES)
    state.mark_failed(failed.id, "permanent")
    # As if the process died after the commit but before the file was deleted.
    leftover = uploaded.path.read_bytes()
    state.mark_uploaded(uploaded.id, "file-1")
    uploaded.path.write_bytes(leftover)

    report = spool.recover(identify_spooled)

    assert (report.leftovers_removed, report.recorded_again) == (1, 0)
    assert spool_files(spool) == [failed.path]
    assert state.stats().uploaded_count == 1


def test_recover_never_brings_back_a_superseded_version(spool: Spool, state: AgentState) -> None:
    older = part10("1.1")
    store(spool, older, "1.1")
    (first,) = state.spooled_instances(SERIES)
    newer = encode_part10(
        make_instance(
            patient_id="SPOOLTEST",
            study_uid=STUDY,
            series_uid=SERIES,
            sop_uid="1.1",
            series_description="a corrected version",
            study_description="spool study",
        )
    )
    assert store(spool, newer, "1.1") is AddOutcome.replaced
    first.path.write_bytes(older)  # the older file survived its deletion

    report = spool.recover(identify_spooled)

    assert report.leftovers_removed == 1
    (current,) = state.spooled_instances(SERIES)
    assert current.path.read_bytes() == newer


def test_recover_counts_rows_whose_file_is_gone(spool: Spool, state: AgentState) -> None:
    store(spool, part10("1.1"), "1.1")
    (row,) = state.spooled_instances(SERIES)
    row.path.unlink()

    assert spool.recover(identify_spooled).missing_files == 1


def test_a_recovered_pool_hands_out_the_free_slots_it_found(
    tmp_path: Path, spool: Spool, state: AgentState
) -> None:
    store(spool, part10("1.1"), "1.1")
    spool.close()
    slots_before = set((spool.root / "slots").iterdir())

    reopened = Spool(tmp_path / "spool", state)
    report = reopened.recover(identify_spooled)
    store(reopened, part10("1.2"), "1.2")

    assert (report.free_slots, report.partial_removed, report.leftovers_removed) == (
        len(slots_before) - 1,
        0,
        0,
    )
    (first, second) = sorted(state.spooled_instances(SERIES), key=lambda row: row.id)
    assert second.path in slots_before - {first.path}
    assert len(spool_files(reopened)) == 2


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
        report = Spool(tmp_path / "moved" / "spool", moved_state).recover(identify_spooled)
        (row,) = moved_state.spooled_instances(SERIES)
    finally:
        moved_state.close()

    assert (report.partial_removed, report.leftovers_removed, report.missing_files) == (0, 0, 0)
    assert row.path.is_relative_to(tmp_path / "moved")
    assert row.path.exists()


def _empty_slots(spool: Spool) -> list[Path]:
    return [path for path in (spool.root / "slots").iterdir() if not path.stat().st_size]


def test_threads_storing_at_once_never_share_a_slot(tmp_path: Path, state: AgentState) -> None:
    spool = Spool(tmp_path / "spool", state, slot_batch=2)
    sops = [f"1.2.3.{number}" for number in range(24)]

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(lambda sop: store(spool, part10(sop), sop), sops))
    spool.close()

    assert outcomes == [AddOutcome.new] * len(sops)
    rows = state.spooled_instances(SERIES)
    assert len({row.path for row in rows}) == len(sops)
    for row in rows:
        assert hashlib.sha256(row.path.read_bytes()).hexdigest() == row.sha256


def test_the_spool_deletes_its_files_once_the_state_no_longer_needs_them(
    spool: Spool, state: AgentState
) -> None:
    store(spool, part10("1.1"), "1.1")
    store(spool, part10("1.2"), "1.2")
    store(spool, part10("1.3"), "1.3")
    uploaded, skipped, failed = state.spooled_instances(SERIES)

    state.mark_uploaded(uploaded.id, "file-1")
    state.mark_skipped(skipped.id, "opted_out")
    state.mark_failed(failed.id, "permanent")

    assert spool_files(spool) == [failed.path]
    state.discard_series(SERIES, "support gave up")
    assert spool_files(spool) == []
