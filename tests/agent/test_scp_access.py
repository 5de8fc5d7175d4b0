"""Who may associate with the SCP and how many at once: allowlist reasons, the association cap
shared by intake processes, idle and silent connections timed out. Real pynetdicom SCUs held
open on 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.association import Association

from agent.dicom.association_limit import AssociationLimit
from agent.dicom.scp import DicomListener, ScpTimeouts
from agent.rejections import MAX_SOURCES, OTHER_SOURCES, RejectionCounter, RejectionReason
from tests.support.raw_dicom import rejection

StartListener = Callable[..., DicomListener]
_WAIT_SECONDS = 15.0


@pytest.fixture
def held() -> Iterator[list[Association]]:
    """Associations a test opens; released (or aborted) at teardown."""
    opened: list[Association] = []
    yield opened
    for assoc in opened:
        if assoc.is_established:
            assoc.abort()


def associate(
    port: int, held: list[Association], *, calling: str = "SCANNER", called: str = "CONNECTOR"
) -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    held.append(assoc)
    return assoc


def until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + _WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_an_unlisted_address_is_rejected_without_a_reason_and_counted(
    start_listener: StartListener, held: list[Association]
) -> None:
    listener = start_listener(peers=[("SCANNER", "192.0.2.10")])

    assert rejection(listener.port) == (0x01, 0x01, 0x01)
    assert listener.rejections.counts() == {("unlisted_address", "127.0.0.1"): 1}


def test_an_unlisted_calling_ae_title_is_rejected_calling_ae_not_recognised(
    start_listener: StartListener, held: list[Association]
) -> None:
    listener = start_listener(peers=[("SCANNER", "127.0.0.1")])

    assert rejection(listener.port, calling="STRANGER") == (0x01, 0x01, 0x03)
    assert rejection(listener.port, calling="STRANGER") == (0x01, 0x01, 0x03)
    assert listener.rejections.counts() == {("calling_ae_not_recognised", "127.0.0.1"): 2}


def test_a_wrong_called_ae_title_is_rejected_called_ae_not_recognised(
    start_listener: StartListener, held: list[Association]
) -> None:
    listener = start_listener(peers=[("SCANNER", "127.0.0.1")])

    assert rejection(listener.port, called="NOTUS") == (0x01, 0x01, 0x07)
    assert listener.rejections.counts() == {("called_ae_not_recognised", "127.0.0.1"): 1}
    assert associate(listener.port, held).is_established


def test_the_association_over_the_limit_gets_local_limit_exceeded_and_a_freed_slot_is_reused(
    tmp_path: Path, start_listener: StartListener, held: list[Association]
) -> None:
    listener = start_listener(association_limit=AssociationLimit(2, tmp_path / "slots"))
    first, second = associate(listener.port, held), associate(listener.port, held)
    assert first.is_established
    assert second.is_established

    assert rejection(listener.port) == (0x02, 0x03, 0x02)
    assert listener.rejections.counts() == {("association_limit", "127.0.0.1"): 1}
    first.release()
    assert until(lambda: associate(listener.port, held).is_established)


def test_the_limit_is_shared_by_listeners_sharing_the_slot_directory(
    tmp_path: Path, start_listener: StartListener, held: list[Association]
) -> None:
    slots = tmp_path / "slots"
    # Two AssociationLimits open the files separately, as two intake processes do.
    one = start_listener(association_limit=AssociationLimit(2, slots))
    other = start_listener(association_limit=AssociationLimit(2, slots))

    assert associate(one.port, held).is_established
    assert associate(other.port, held).is_established
    assert rejection(one.port) == (0x02, 0x03, 0x02)
    assert rejection(other.port) == (0x02, 0x03, 0x02)


def test_an_idle_association_is_aborted_after_the_network_timeout_and_frees_its_slot(
    tmp_path: Path, start_listener: StartListener, held: list[Association]
) -> None:
    listener = start_listener(
        association_limit=AssociationLimit(1, tmp_path / "slots"),
        timeouts=ScpTimeouts(artim=1.0, dimse=1.0, network=1.0),
    )
    idle = associate(listener.port, held)
    assert idle.is_established

    assert until(lambda: idle.is_aborted)
    assert until(lambda: associate(listener.port, held).is_established)


def test_a_connection_that_never_asks_for_an_association_is_closed_after_artim(
    start_listener: StartListener,
) -> None:
    listener = start_listener(timeouts=ScpTimeouts(artim=0.5, dimse=1.0, network=5.0))

    with socket.create_connection(("127.0.0.1", listener.port), timeout=_WAIT_SECONDS) as silent:
        assert silent.recv(1) == b""  # closed by the SCP, not by our timeout


def test_rejection_counts_keep_a_bounded_number_of_sources() -> None:
    counter = RejectionCounter()
    for index in range(MAX_SOURCES + 50):
        counter.record(RejectionReason.unlisted_address, f"10.0.{index // 256}.{index % 256}")

    counts = counter.counts()

    assert len(counts) == MAX_SOURCES + 1
    assert counts[("unlisted_address", OTHER_SOURCES)] == 50
