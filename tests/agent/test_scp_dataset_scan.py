"""The encoded data set walker: UIDs from every syntax, and refusal of anything malformed."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
)

from agent.dicom.dataset_scan import MalformedDatasetError, scan_dataset
from tests.support.dicom_factory import encoded_dataset, make_instance

STUDY = "1.2.826.0.1.3680043.8.498.100"
SERIES = "1.2.826.0.1.3680043.8.498.101"
SOP = "1.2.826.0.1.3680043.8.498.102"


def instance(syntax: str = ExplicitVRLittleEndian, **overrides: object) -> Dataset:
    return make_instance(
        patient_id="SCANTEST",
        study_uid=STUDY,
        series_uid=SERIES,
        sop_uid=SOP,
        series_description="scan",
        study_description="scan study",
        rows=16,
        cols=16,
        transfer_syntax=syntax,
        **overrides,  # type: ignore[arg-type]
    )


def explicit_le_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHL", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
    ],
)
def test_scan_finds_the_uids_in_every_supported_syntax(syntax: str) -> None:
    summary = scan_dataset(encoded_dataset(instance(syntax)), syntax)

    assert summary.study_instance_uid == STUDY
    assert summary.series_instance_uid == SERIES
    assert summary.sop_instance_uid == SOP
    assert summary.sop_class_uid == MRImageStorage


def test_scan_reports_missing_uids_as_none() -> None:
    ds = instance()
    del ds.SeriesInstanceUID
    del ds.SOPClassUID

    summary = scan_dataset(encoded_dataset(ds), ExplicitVRLittleEndian)

    assert (summary.series_instance_uid, summary.sop_class_uid) == (None, None)
    assert summary.study_instance_uid == STUDY


def test_scan_ignores_uids_nested_in_sequences() -> None:
    ds = instance()
    del ds.SeriesInstanceUID
    item = Dataset()
    item.SeriesInstanceUID = "1.2.3.4"
    ds.ReferencedSeriesSequence = Sequence([item])

    summary = scan_dataset(encoded_dataset(ds), ExplicitVRLittleEndian)

    assert summary.series_instance_uid is None


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_scan_walks_nested_sequences_of_undefined_length(syntax: str) -> None:
    inner = Dataset()
    inner.CodeValue = "X"
    outer = Dataset()
    outer.ConceptNameCodeSequence = Sequence([inner])
    ds = instance(syntax, extra={"ContentSequence": Sequence([outer, outer])})
    ds["ContentSequence"].is_undefined_length = True
    ds.ContentSequence[0]["ConceptNameCodeSequence"].is_undefined_length = True

    assert scan_dataset(encoded_dataset(ds), syntax).series_instance_uid == SERIES


def test_scan_reads_an_undefined_length_un_element_as_implicit_sequence() -> None:
    # Inside, elements carry no VR: read as explicit VR this item would be malformed.
    implicit_item = struct.pack("<HHL", 0x0008, 0x0100, 4) + b"CODE"
    un_sequence = (
        struct.pack("<HH2sHL", 0x0009, 0x1010, b"UN", 0, 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + implicit_item
        + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    )
    data = (
        explicit_le_element(0x0008, 0x0016, b"UI", b"1.2\x00")
        + un_sequence
        + explicit_le_element(0x0020, 0x000E, b"UI", b"1.3\x00")
    )

    assert scan_dataset(data, ExplicitVRLittleEndian).series_instance_uid == "1.3"


def test_scan_refuses_a_value_longer_than_what_remains() -> None:
    data = encoded_dataset(instance())

    with pytest.raises(MalformedDatasetError, match=r"truncated: element \(7FE0,0010\)"):
        scan_dataset(data[:-10], ExplicitVRLittleEndian)


def test_scan_refuses_trailing_bytes_after_the_last_element() -> None:
    data = encoded_dataset(instance())

    with pytest.raises(MalformedDatasetError, match="stray bytes"):
        scan_dataset(data + b"\x00\x00\x00", ExplicitVRLittleEndian)


def test_scan_refuses_an_invalid_vr() -> None:
    data = explicit_le_element(0x0008, 0x0016, b"zz", b"1.2\x00")

    with pytest.raises(MalformedDatasetError, match="invalid VR"):
        scan_dataset(data, ExplicitVRLittleEndian)


def test_scan_refuses_an_unclosed_sequence() -> None:
    data = struct.pack("<HH2sHL", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHL", 0xFFFE, 0xE000, 0
    )

    with pytest.raises(MalformedDatasetError, match="truncated: sequence"):
        scan_dataset(data, ExplicitVRLittleEndian)


def test_scan_refuses_a_cut_deflate_stream() -> None:
    data = encoded_dataset(instance(DeflatedExplicitVRLittleEndian))

    with pytest.raises(MalformedDatasetError, match="deflate"):
        scan_dataset(data[: len(data) // 2], DeflatedExplicitVRLittleEndian)


def test_scan_refuses_bytes_that_are_not_deflated() -> None:
    with pytest.raises(MalformedDatasetError, match="does not inflate"):
        scan_dataset(b"\xff" * 64, DeflatedExplicitVRLittleEndian)


def test_scan_accepts_one_pad_byte_after_a_deflate_stream() -> None:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = explicit_le_element(0x0020, 0x000E, b"UI", b"1.3\x00")
    deflated = compressor.compress(raw) + compressor.flush()

    assert scan_dataset(deflated + b"\x00", DeflatedExplicitVRLittleEndian).series_instance_uid
    with pytest.raises(MalformedDatasetError, match="follow the end"):
        scan_dataset(deflated + b"\x00\x00", DeflatedExplicitVRLittleEndian)


def test_scan_refuses_a_uid_that_is_not_ascii() -> None:
    data = explicit_le_element(0x0020, 0x000E, b"UI", "1.2.é".encode("latin-1") + b"\x00")

    with pytest.raises(MalformedDatasetError, match=r"\(0020,000E\) is not an ASCII UID"):
        scan_dataset(data, ExplicitVRLittleEndian)


def test_scan_refuses_an_unknown_transfer_syntax() -> None:
    with pytest.raises(MalformedDatasetError, match="not a known transfer syntax"):
        scan_dataset(b"", "1.2.3.4")


def test_scan_refuses_sequences_nested_too_deeply() -> None:
    item = explicit_le_element(0x0008, 0x0100, b"SH", b"XX")
    for _ in range(40):
        wrapped = struct.pack("<HHL", 0xFFFE, 0xE000, len(item)) + item
        item = explicit_le_element(0x0040, 0xA730, b"SQ", wrapped)

    with pytest.raises(MalformedDatasetError, match="nested deeper"):
        scan_dataset(item, ExplicitVRLittleEndian)


def _top_level_boundaries(data: bytes) -> set[int]:
    """Offsets where a top-level element of the factory's explicit VR LE data set starts."""
    boundaries, pos = {0, len(data)}, 0
    while pos < len(data):
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
            (length,) = struct.unpack_from("<L", data, pos + 8)
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8 + length
        boundaries.add(pos)
    return boundaries


_SMALL = encoded_dataset(instance())
_BOUNDARIES = _top_level_boundaries(_SMALL)


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(min_value=1, max_value=len(_SMALL) - 1))
def test_a_data_set_cut_anywhere_but_between_elements_is_refused(cut: int) -> None:
    if cut in _BOUNDARIES:
        # Cut between two elements: what is left is a shorter, well-formed data set.
        scan_dataset(_SMALL[:cut], ExplicitVRLittleEndian)
    else:
        with pytest.raises(MalformedDatasetError):
            scan_dataset(_SMALL[:cut], ExplicitVRLittleEndian)


@settings(max_examples=500, deadline=None)
@given(
    data=st.binary(max_size=512),
    syntax=st.sampled_from(
        [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit]
    ),
)
def test_arbitrary_bytes_never_raise_anything_but_malformed(data: bytes, syntax: str) -> None:
    with contextlib.suppress(MalformedDatasetError):
        scan_dataset(data, syntax)
