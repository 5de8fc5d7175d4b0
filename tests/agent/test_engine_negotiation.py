"""The lean acceptor remembers recent A-ASSOCIATE-RQs with their decoding and negotiation
(a PACS sends the same bytes for every C-MOVE): the remembered answer is the one negotiation
gives, requests are told apart by every byte, and the allowlist is still asked for every
association."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
)

from agent.dicom.engine import pdu as pdu_module
from agent.dicom.engine.pdu import accept, decode_request, negotiate, read_request
from agent.dicom.listeners import Listener
from tests.support.raw_dicom import association_request, connect, read_pdu, rejection

StartListener = Callable[..., Listener]
_ASSOCIATE_AC, _ASSOCIATE_RJ = 0x02, 0x03

# The shape of Orthanc's C-MOVE sub-association: many contexts, some the acceptor refuses.
_CONTEXTS = [
    (MRImageStorage, ExplicitVRLittleEndian),
    (MRImageStorage, ImplicitVRLittleEndian),
    (CTImageStorage, JPEG2000Lossless),
    ("1.2.3.4.5.6.7", ExplicitVRLittleEndian),
]


def test_a_repeated_request_is_decoded_and_negotiated_once_with_negotiations_answer() -> None:
    pdu = association_request(_CONTEXTS, calling="PACS")
    first, again = read_request(pdu), read_request(bytes(pdu))
    assert again is first
    assert (first.calling_ae_title, first.called_ae_title) == ("PACS", "CONNECTOR")
    remembered = accept(first, 16384)
    assert accept(again, 16384) is remembered
    fresh = negotiate(decode_request(pdu), 16384)
    assert remembered == fresh
    assert dict(remembered.abstract_syntaxes) == {
        1: MRImageStorage,
        3: MRImageStorage,
        5: CTImageStorage,
    }
    with pytest.raises(TypeError):
        remembered.transfer_syntaxes[9] = ExplicitVRLittleEndian  # type: ignore[index]


def test_requests_differing_in_one_field_are_told_apart() -> None:
    base = read_request(association_request(_CONTEXTS, calling="PACS"))
    other_peer = read_request(association_request(_CONTEXTS, calling="INTRUDER"))
    other_contexts = read_request(association_request(_CONTEXTS[:1], calling="PACS"))
    assert other_peer.calling_ae_title == "INTRUDER"
    assert accept(base, 16384).accept_pdu != accept(other_peer, 16384).accept_pdu
    assert dict(accept(other_contexts, 16384).abstract_syntaxes) == {1: MRImageStorage}
    assert accept(base, 16384) is not accept(base, 32768)
    assert accept(base, 32768).accept_pdu != accept(base, 16384).accept_pdu


def test_a_large_request_is_decoded_and_negotiated_each_time_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    large = association_request(_CONTEXTS, calling="LARGE")
    monkeypatch.setattr(pdu_module, "_REMEMBERED_REQUEST_BYTES", len(large) - 1)
    first, again = read_request(large), read_request(large)
    assert first is not again
    assert first == again
    assert accept(first, 16384) is not accept(first, 16384)
    assert accept(first, 16384) == negotiate(decode_request(large), 16384)
    monkeypatch.setattr(pdu_module, "_REMEMBERED_REQUEST_BYTES", len(large))
    assert read_request(large) is read_request(large)


def test_a_request_that_does_not_decode_fails_every_time() -> None:
    pdu = association_request(_CONTEXTS)
    truncated = pdu[:6] + pdu[6:-3]
    for _ in range(2):
        with pytest.raises(ValueError, match="longer than what holds it"):
            read_request(truncated)


@pytest.mark.parametrize("intake_engine", ["lean"], indirect=True)
def test_the_allowlist_decides_each_association_of_a_remembered_request(
    start_listener: StartListener,
) -> None:
    listener = start_listener(peers=(("PACS", "127.0.0.1"),))
    for calling, allowed in [("PACS", True), ("OTHER", False), ("PACS", True), ("OTHER", False)]:
        if allowed:
            with connect(listener.port) as sock:
                sock.sendall(association_request(_CONTEXTS, calling=calling))
                answer = read_pdu(sock)
            assert answer is not None
            assert answer[0] == _ASSOCIATE_AC
        else:
            assert rejection(listener.port, calling=calling) is not None
