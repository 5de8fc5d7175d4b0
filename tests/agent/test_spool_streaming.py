"""Spool: an instance written into its slot as it arrives (`SlotWriter`), recorded through the
group commit (`Spool.record`), and what a full disk or a full state database leaves behind."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.dicom.intake import identify_spooled
from agent.spool import SlotWriter, Spool, SpoolFull
from agent.state import AddOutcome, AgentState, StateFullError
from tests.support.dicom_factory import encode_part10, make_instance
from tests.support.full_disk import FillingDisk
from tests.support.spool_files import filled_slots

SERIES = "1.2.826.0.1.3680043.8.498.41"
STUDY = "1.2.826.0.1.3680043.8.498.40"


def part10(sop: str) -> bytes:
    return encode_part10(
        make_instance(
            patient_id="SPOOLTEST",
            study_uid=STUDY,
            series_uid=SERIES,
            sop_uid=sop,
            series_description="streaming",
            study_description="spool study",
        )
    )


def record(spool: Spool, written: SlotWriter, sop: str) -> AddOutcome:
    return spool.record(
        written,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        series_instance_uid=SERIES,
        study_instance_uid=STUDY,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        received_at=100.0,
    )


def write_in_pieces(spool: Spool, data: bytes, piece: int = 1000) -> SlotWriter:
    slot = spool.open_slot()
    with memoryview(data) as view:
        for offset in range(0, len(data), piece):
            slot.write(view[offset : offset + piece])
    return slot


def test_an_instance_written_in_pieces_is_hashed_fsynced_and_recorded(
    spool: Spool, state: AgentState
) -> None:
    data = part10("1.2.3.1")

    slot = write_in_pieces(spool, data)

    assert slot.path.read_bytes() == data
    assert state.stats().spooled_count == 0  # nothing recorded before record
    assert record(spool, slot, "1.2.3.1") is AddOutcome.new
    (row,) = state.spooled_instances(SERIES)
    assert (row.path, row.sha256, row.size) == (
        slot.path,
        hashlib.sha256(data).hexdigest(),
        len(data),
    )
    with pytest.raises(ValueError, match="already finished"):
        slot.write(memoryview(b"after"))


def test_the_mapped_bytes_are_what_was_written(spool: Spool) -> None:
    data = part10("1.2.3.1")
    slot = spool.open_slot()
    slot.write(memoryview(data))

    with slot.mapped() as view:
        identity = identify_spooled(view)
        assert bytes(view[:132]) == data[:132]

    assert identity is not None
    assert identity.sop_instance_uid == "1.2.3.1"
    slot.discard()


def test_a_discarded_slot_goes_back_to_the_pool_empty(spool: Spool, state: AgentState) -> None:
    slot = spool.open_slot()
    slot.write(memoryview(part10("1.2.3.1")))

    slot.discard()
    slot.discard()  # idempotent

    assert filled_slots(spool.root) == []
    assert slot.path.exists()  # emptied, not deleted: its name stays durable for the pool
    with pytest.raises(ValueError, match="already finished or discarded"):
        slot.write(memoryview(b"more"))
    assert state.stats().spooled_count == 0


def test_a_full_disk_while_writing_in_pieces_raises_spool_full_and_empties_the_slot(
    tmp_path: Path, state: AgentState
) -> None:
    disk = FillingDisk(free=5000)
    spool = Spool(tmp_path / "spool", state, append_file=disk.append)
    slot = spool.open_slot()
    for _ in range(5):
        slot.write(memoryview(bytes(1000)))

    with pytest.raises(SpoolFull, match="ran out of disk space"):
        slot.write(memoryview(bytes(1000)))

    assert disk.refused == 1
    assert filled_slots(spool.root) == []
    slot.discard()  # already given back: nothing happens


def test_writing_below_the_reserve_raises_spool_full(tmp_path: Path, state: AgentState) -> None:
    spool = Spool(tmp_path / "spool", state, reserve_bytes=1 << 62)
    slot = spool.open_slot()

    with pytest.raises(SpoolFull, match="below the reserve"):
        slot.write(memoryview(b"x"))

    assert filled_slots(spool.root) == []


def test_a_full_state_database_refuses_the_record_and_empties_the_slot(
    spool: Spool, state: AgentState
) -> None:
    with state.transaction(write=False) as db:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        db.execute(f"PRAGMA max_page_count = {pages}")
    outcomes: list[AddOutcome | SpoolFull] = []
    while not outcomes or not isinstance(outcomes[-1], SpoolFull):
        sop = f"1.2.3.{len(outcomes)}"
        try:
            outcomes.append(record(spool, spool.write(part10(sop)), sop))
        except SpoolFull as full:
            outcomes.append(full)

    assert isinstance(outcomes[-1].__cause__, StateFullError)
    assert {row.path for row in state.spooled_instances(SERIES)} == set(filled_slots(spool.root))


def test_stores_from_many_threads_share_commits_and_each_gets_its_own_row(
    tmp_path: Path, state: AgentState
) -> None:
    spool = Spool(tmp_path / "spool", state, slot_batch=8)
    sops = [f"1.2.3.{number}" for number in range(40)]
    data = {sop: part10(sop) for sop in sops}

    def store(sop: str) -> AddOutcome:
        return record(spool, spool.write(data[sop]), sop)

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(store, [*sops, *sops]))  # each twice: once new, once duplicate
    spool.close()

    assert sorted(outcomes) == sorted([AddOutcome.new] * 40 + [AddOutcome.duplicate] * 40)
    rows = state.spooled_instances(SERIES)
    assert sorted(row.sop_instance_uid for row in rows) == sorted(sops)
    for row in rows:
        assert row.path.read_bytes() == data[row.sop_instance_uid]
    assert sorted(filled_slots(spool.root)) == sorted(row.path for row in rows)


def test_a_slot_that_cannot_be_made_durable_fails_alone_and_the_others_are_recorded(
    spool: Spool, state: AgentState
) -> None:
    sops = [f"1.2.3.{number}" for number in range(12)]
    slots = {sop: spool.write(part10(sop)) for sop in sops}
    slots["1.2.3.5"].discard()  # its fsync cannot happen: it fails, nobody else does

    def store(sop: str) -> AddOutcome | Exception:
        try:
            return record(spool, slots[sop], sop)
        except ValueError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = dict(zip(sops, pool.map(store, sops), strict=True))

    assert isinstance(outcomes.pop("1.2.3.5"), ValueError)
    assert set(outcomes.values()) == {AddOutcome.new}
    rows = state.spooled_instances(SERIES)
    assert sorted(row.sop_instance_uid for row in rows) == sorted(outcomes)
    assert filled_slots(spool.root) == sorted(row.path for row in rows)
