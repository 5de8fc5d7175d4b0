"""The byte-level Basic Profile (`fast_rewrite`) gives what the pydicom reference (`rewrite`)
gives, and hands every syntax it does not cover to the reference."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from common.deid.basic import build_basic_plan
from common.deid.fast_rewrite import FastPathUnsupported, apply_basic_plan_fast
from common.deid.rewrite import apply_basic_plan, marker_elements
from common.deid.table import BASIC_OPTIONS, BasicOption
from tests.support.dicom_factory import encode_part10
from tests.support.phi_canaries import canary_instance

SALT = "fast-path-salt"
OPTION_SETS: list[tuple[BasicOption, ...]] = [(), *((o,) for o in BASIC_OPTIONS), BASIC_OPTIONS]


def _canary_bytes(syntax: str = "1.2.840.10008.1.2.1", *, undefined: bool = False) -> bytes:
    ds = canary_instance(
        study_uid="1.2.826.0.1.3680043.10.549.1",
        series_uid="1.2.826.0.1.3680043.10.549.1.1",
        sop_uid="1.2.826.0.1.3680043.10.549.1.1.1",
        transfer_syntax=syntax,
    ).dataset
    if undefined:
        for elem in ds.iterall():
            if elem.VR == "SQ":
                elem.is_undefined_length = True
                for item in elem.value:
                    item.is_undefined_length_sequence_item = True
    return encode_part10(ds)


def _reference(data: bytes, options: tuple[BasicOption, ...]) -> Dataset:
    ds = dcmread(BytesIO(data))
    apply_basic_plan(ds, build_basic_plan(options), SALT)
    return ds


def _comparable(ds: Dataset) -> list[tuple[str, object]]:
    """Every element in order, nested ones included; of the file meta, what de-identification
    touches."""
    shown: list[tuple[str, object]] = [("meta", ds.file_meta.MediaStorageSOPInstanceUID)]
    for elem in ds.iterall():
        shown.append((f"{elem.tag} {elem.VR}", elem.value if elem.VR != "SQ" else len(elem.value)))
    assert len(shown) > 50
    return shown


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(o) or "basic")
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined-lengths"])
def test_the_fast_path_matches_the_reference(
    options: tuple[BasicOption, ...], undefined: bool
) -> None:
    data = _canary_bytes(undefined=undefined)
    plan = build_basic_plan(options)

    fast = apply_basic_plan_fast(data, plan, SALT, marker_elements(plan))

    assert _comparable(dcmread(BytesIO(fast.data))) == _comparable(_reference(data, options))


def test_the_fast_path_keeps_compressed_pixel_data_byte_for_byte() -> None:
    data = _canary_bytes(JPEGBaseline8Bit)
    plan = build_basic_plan(())

    fast = apply_basic_plan_fast(data, plan, SALT, marker_elements(plan))

    result = dcmread(BytesIO(fast.data))
    assert result.PixelData == dcmread(BytesIO(data)).PixelData
    assert _comparable(result) == _comparable(_reference(data, ()))


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
)
def test_other_syntaxes_are_left_to_the_reference(syntax: str) -> None:
    plan = build_basic_plan(())
    with pytest.raises(FastPathUnsupported):
        apply_basic_plan_fast(_canary_bytes(syntax), plan, SALT, marker_elements(plan))


def test_a_public_attribute_stored_as_un_is_left_to_the_reference() -> None:
    ds = dcmread(BytesIO(_canary_bytes()))
    ds["PatientName"].VR = "UN"
    ds["PatientName"].value = b"CANARY^AS^UN"
    plan = build_basic_plan(())
    with pytest.raises(FastPathUnsupported):
        apply_basic_plan_fast(encode_part10(ds), plan, SALT, marker_elements(plan))
