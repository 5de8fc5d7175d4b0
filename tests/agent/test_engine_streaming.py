"""The lean engine writes a large instance into its spool slot as it arrives: bounded memory for
a 54 MB instance, byte-for-byte files, and a slot that goes back to the pool empty when the
instance is refused, aborted or runs out of disk. Only the lean engine streams (pynetdicom's
listener holds every data set in memory whole)."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom.tests import encoded_pdu_items

from agent.dicom.engine.commands import decode_command
from agent.dicom.engine.incoming import SPILL_BYTES
from agent.dicom.listeners import IntakeEngine, Listener
from agent.dicom.status import Status
from agent.spool import Spool
from agent.state import AgentState
from tests.support.dicom_factory import encoded_dataset, make_instance, make_series, write_files
from tests.support.environment import require_executable, tool_env
from tests.support.full_disk import FillingDisk
from tests.support.raw_dicom import P_DATA, established, p_data, read_pdu, store_command
from tests.support.scu import send_datasets
from tests.support.spool_files import filled_slots

StartListener = Callable[..., Listener]
_SMALL_SPILL = 20_000  # a 132 KB test instance goes to its slot in 20 KB steps


@pytest.fixture
def intake_engine() -> IntakeEngine:
    """The lean engine only (see the module docstring)."""
    return "lean"


def instance(description: str, *, rows: int = 256, cols: int = 256) -> Dataset:
    return make_instance(
        patient_id="STREAMING",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description=description,
        study_description="streaming",
        rows=rows,
        cols=cols,
    )


def send_raw(sock: socket.socket, sop_instance: str, data: bytes, piece: int = 16_000) -> int:
    """Send one C-STORE in fragments of `piece` bytes; return the status answered."""
    sock.sendall(p_data(1, 0x03, store_command(MRImageStorage, sop_instance)))
    pieces = [data[offset : offset + piece] for offset in range(0, len(data), piece)]
    for index, fragment in enumerate(pieces):
        sock.sendall(p_data(1, 0x02 if index == len(pieces) - 1 else 0x00, fragment))
    answer = read_pdu(sock)
    assert answer is not None
    assert answer[0] == P_DATA
    response = decode_command(answer[1][6:])
    assert response is not None
    return int(response.dataset.Status)


@pytest.mark.dcmtk
def test_a_54_mb_instance_goes_to_its_slot_as_it_arrives_in_bounded_memory(
    tmp_path: Path, start_listener: StartListener, state: AgentState
) -> None:
    ds = instance("large", rows=5200, cols=5200)  # 16-bit pixels: 54 MB
    (path,) = write_files([ds], tmp_path / "out")
    listener = start_listener()
    tracemalloc.start()
    try:
        result = _storescu(listener.port, "--max-send-pdu", "16384", str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.returncode == 0, result.stderr
    (row,) = state.spooled_instances(ds.SeriesInstanceUID)
    assert row.size > 54_000_000
    # What the receiving side allocated: the instance's buffer (at most SPILL_BYTES) and
    # small change, not the 54 MB the instance is (before: its size, grown geometrically).
    assert peak < SPILL_BYTES + (8 << 20), f"peak traced memory {peak} bytes"
    assert hashlib.sha256(row.path.read_bytes()).hexdigest() == row.sha256
    assert dcmread(row.path).PixelData == ds.PixelData


@pytest.mark.dcmtk
def test_instances_spilled_in_small_steps_land_byte_for_byte(
    tmp_path: Path, start_listener: StartListener, state: AgentState
) -> None:
    series = make_series(
        3,
        patient_id="STREAMING",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="spilled",
        study_description="streaming",
    )
    paths = write_files(series, tmp_path / "out")
    listener = start_listener(spill_bytes=_SMALL_SPILL)

    result = _storescu(listener.port, "-xe", "--max-send-pdu", "16384", *map(str, paths))

    assert result.returncode == 0, result.stderr
    rows = {
        row.sop_instance_uid: row for row in state.spooled_instances(series[0].SeriesInstanceUID)
    }
    assert set(rows) == {ds.SOPInstanceUID for ds in series}
    for ds in series:
        row = rows[ds.SOPInstanceUID]
        stored = row.path.read_bytes()
        assert stored.endswith(encoded_dataset(ds))
        assert hashlib.sha256(stored).hexdigest() == row.sha256
        assert row.size == len(stored)
    assert sorted(filled_slots(state.path.parent / "spool")) == sorted(
        r.path for r in rows.values()
    )


def test_a_spilled_instance_that_is_malformed_is_refused_and_its_slot_emptied(
    start_listener: StartListener, spool: Spool, state: AgentState
) -> None:
    listener = start_listener(spill_bytes=_SMALL_SPILL)
    ds = instance("malformed")
    good = instance("good")

    with established(listener.port) as sock:
        broken = encoded_dataset(ds)[:-3]  # cut inside the pixel data
        status = send_raw(sock, ds.SOPInstanceUID, broken)
        assert status == Status.CANNOT_UNDERSTAND
        assert filled_slots(spool.root) == []
        # the same association goes on
        status = send_raw(sock, good.SOPInstanceUID, encoded_dataset(good))
        assert status == Status.SUCCESS
        sock.sendall(encoded_pdu_items.a_release_rq)
        read_pdu(sock)

    (row,) = state.spooled_instances(good.SeriesInstanceUID)
    assert filled_slots(spool.root) == [row.path]


def test_an_abort_in_the_middle_of_a_spilled_instance_leaves_no_file(
    start_listener: StartListener, spool: Spool, state: AgentState
) -> None:
    listener = start_listener(spill_bytes=_SMALL_SPILL)
    ds = instance("aborted")
    encoded = encoded_dataset(ds)

    with established(listener.port) as sock:
        sock.sendall(p_data(1, 0x03, store_command(MRImageStorage, ds.SOPInstanceUID)))
        sock.sendall(p_data(1, 0x00, encoded[:100_000]))  # five spills' worth, not the last
        sock.sendall(encoded_pdu_items.a_abort)
        assert read_pdu(sock) is None  # closed without an answer

    assert send_datasets(listener.port, [instance("after")]) == [0]  # the listener goes on
    listener.stop(timeout=5)  # the aborted association's thread has ended
    assert filled_slots(spool.root) == _all_rows(state)
    assert len(_all_rows(state)) == 1


def test_a_full_disk_in_the_middle_of_a_spilled_instance_is_out_of_resources(
    tmp_path: Path, start_listener: StartListener, state: AgentState
) -> None:
    disk = FillingDisk(free=200_000)  # one 132 KB instance fits, the second does not
    small = Spool(tmp_path / "small-spool", state, append_file=disk.append)
    listener = start_listener(spool=small, spill_bytes=_SMALL_SPILL)
    first, second, third = (instance(f"fills {n}") for n in range(3))

    with established(listener.port) as sock:
        assert send_raw(sock, first.SOPInstanceUID, encoded_dataset(first)) == Status.SUCCESS
        status = send_raw(sock, second.SOPInstanceUID, encoded_dataset(second))
        assert status == Status.OUT_OF_RESOURCES
        assert disk.refused == 1
        assert filled_slots(small.root) == _all_rows(state)
        disk.free = 1 << 30  # space returns: the same association stores again
        assert send_raw(sock, third.SOPInstanceUID, encoded_dataset(third)) == Status.SUCCESS

    assert len(_all_rows(state)) == 2
    assert filled_slots(small.root) == _all_rows(state)


def _all_rows(state: AgentState) -> list[Path]:
    with state.transaction(write=False) as db:
        paths = [path for (path,) in db.execute("SELECT path FROM instances")]
    return sorted(state.path.parent / path for path in paths)


def _storescu(port: int, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_executable("storescu"),
            "-aet",
            "SCANNER",
            "-aec",
            "CONNECTOR",
            "127.0.0.1",
            str(port),
            *arguments,
        ],
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_instances_of_different_sizes_on_one_association_each_land_exactly(
    start_listener: StartListener, spool: Spool, state: AgentState
) -> None:
    """The association reuses its buffer from one instance to the next: nothing of a larger
    earlier instance, or of a refused one, may end up in a later file."""
    listener = start_listener()
    large, small, broken, last = (
        instance("large", rows=400, cols=400),
        instance("small", rows=64, cols=64),
        instance("broken", rows=300, cols=300),
        instance("last", rows=128, cols=128),
    )

    with established(listener.port) as sock:
        assert send_raw(sock, large.SOPInstanceUID, encoded_dataset(large)) == Status.SUCCESS
        assert send_raw(sock, small.SOPInstanceUID, encoded_dataset(small)) == Status.SUCCESS
        cut = encoded_dataset(broken)[:-5]
        assert send_raw(sock, broken.SOPInstanceUID, cut) == Status.CANNOT_UNDERSTAND
        assert send_raw(sock, last.SOPInstanceUID, encoded_dataset(last)) == Status.SUCCESS
        sock.sendall(encoded_pdu_items.a_release_rq)
        read_pdu(sock)

    for ds in (large, small, last):
        (row,) = state.spooled_instances(ds.SeriesInstanceUID)
        stored = row.path.read_bytes()
        assert stored.endswith(encoded_dataset(ds))
        assert dcmread(row.path).SOPInstanceUID == ds.SOPInstanceUID
        assert len(stored) == row.size
