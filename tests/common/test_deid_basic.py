"""The Basic Profile (PS3.15 Table E.1-1) and its options, checked on canary-laden instances."""

from __future__ import annotations

import datetime as dt
import logging
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from common.config import DeidConfig
from common.deid.engine import Deidentifier, DeidError
from common.deid.table import BASIC_OPTIONS, BasicOption, table_rows
from common.deid.uids import date_offset_days
from tests.support.dicom_factory import encode_part10
from tests.support.phi_canaries import Canary, CanaryInstance, canary_instance

SALT = "test-site-salt"


def _deidentifier(*options: BasicOption) -> Deidentifier:
    deid = Deidentifier.from_config(DeidConfig(profile="basic", options=list(options)), SALT)
    assert deid is not None
    return deid


def _canaries(syntax: str = ExplicitVRLittleEndian) -> CanaryInstance:
    return canary_instance(
        study_uid="1.2.826.0.1.3680043.10.544.71",
        series_uid="1.2.826.0.1.3680043.10.544.72",
        sop_uid="1.2.826.0.1.3680043.10.544.73",
        transfer_syntax=syntax,
    )


def _kept_by_standard(canary: Canary, options: set[BasicOption]) -> bool:
    """What Table E.1-1 says survives: K keeps the value; C keeps it cleaned (a canary is not
    an identifying value of the patient, so cleaning leaves it) except that modified dates
    change DA and DT values. A canary without a row (nested, private) never survives."""
    if canary.row is None:
        return False
    codes = {option: code for option, code in canary.row.options.items() if option in options}
    if "K" in codes.values():
        return True
    cleaned = [option for option, code in codes.items() if code == "C"]
    if "retain_longitudinal_modified_dates" in cleaned:
        return canary.vr not in ("DA", "DT")
    return bool(cleaned)


def test_table_is_the_whole_standard_table() -> None:
    rows = table_rows()
    exact = [row.tag.value for row in rows if row.tag is not None and row.tag.is_exact]
    assert len(rows) > 450
    assert len(exact) == len(set(exact))
    assert any(row.tag is None for row in rows)  # the private-attributes row


# Explicit VR little endian and JPEG go through the byte-level path, the others through pydicom.
@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, JPEGBaseline8Bit, ImplicitVRLittleEndian, ExplicitVRBigEndian],
)
def test_basic_leaves_no_canary_anywhere_in_the_output_bytes(syntax: str) -> None:
    instance = _canaries(syntax)
    original = encode_part10(instance.dataset)
    assert len(instance.found_in(original)) == len(instance.canaries) > 500

    output = _deidentifier().deidentify(original).data

    assert [canary.where for canary in instance.found_in(output)] == []
    result = dcmread(BytesIO(output))
    assert result.PixelData == instance.dataset.PixelData
    assert result.PatientIdentityRemoved == "YES"
    assert result.LongitudinalTemporalInformationModified == "REMOVED"
    assert not [elem for elem in result.iterall() if elem.tag.is_private]


@pytest.mark.parametrize("option", BASIC_OPTIONS)
def test_each_option_keeps_exactly_what_the_table_says(option: BasicOption) -> None:
    instance = _canaries()
    output = _deidentifier(option).deidentify(encode_part10(instance.dataset)).data

    survivors = {canary.where for canary in instance.found_in(output)}
    expected = {c.where for c in instance.canaries if _kept_by_standard(c, {option})}
    assert expected, f"{option} keeps nothing in the canary instance"
    assert survivors == expected


def test_all_options_together_keep_the_union_and_nothing_else() -> None:
    instance = _canaries()
    options = set(BASIC_OPTIONS)
    output = _deidentifier(*BASIC_OPTIONS).deidentify(encode_part10(instance.dataset)).data

    survivors = {canary.where for canary in instance.found_in(output)}
    assert survivors == {c.where for c in instance.canaries if _kept_by_standard(c, options)}


def test_modified_dates_move_back_by_the_site_offset_everywhere() -> None:
    instance = _canaries()
    study_date = dt.datetime.strptime(instance.dataset.StudyDate, "%Y%m%d").date()
    acquisition = instance.dataset.AcquisitionDateTime
    deid = _deidentifier("retain_longitudinal_modified_dates")

    result = dcmread(BytesIO(deid.deidentify(encode_part10(instance.dataset)).data))

    moved = study_date - dt.timedelta(days=date_offset_days(SALT))
    assert result.StudyDate == moved.strftime("%Y%m%d")
    assert result.AcquisitionDateTime[8:] == acquisition[8:]
    assert result.StudyTime == instance.dataset.StudyTime
    assert result.LongitudinalTemporalInformationModified == "MODIFIED"
    assert date_offset_days(SALT) != date_offset_days("another-site")


def test_clean_descriptors_scrubs_the_patients_own_identifiers_from_kept_text() -> None:
    instance = _canaries()
    ds = instance.dataset
    ds.SeriesDescription = f"T1 for {ds.PatientName} id {ds.PatientID} ({ds.PatientBirthDate})"

    result = dcmread(BytesIO(_deidentifier("clean_descriptors").deidentify(encode_part10(ds)).data))

    assert result.SeriesDescription == "T1 for * id * (*)"
    assert result.DeidentificationMethodCodeSequence[1].CodeValue == "113105"


def test_basic_output_is_the_same_for_the_same_input_and_salt() -> None:
    data = encode_part10(_canaries().dataset)
    assert _deidentifier().deidentify(data).data == _deidentifier().deidentify(data).data


def test_a_truncated_instance_fails_or_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pydicom")
    instance = _canaries()
    full = encode_part10(instance.dataset)
    deid = _deidentifier()
    pixel_start = full.find(b"\xe0\x7f\x10\x00OW")
    assert pixel_start > 0

    for cut in range(200, pixel_start + 64, 97):
        data = full[:cut]
        present = instance.found_in(data)
        try:
            output = deid.deidentify(data).data
        except DeidError:
            continue
        leaked = [canary.where for canary in present if canary.value.encode() in output]
        assert leaked == [], f"cut at {cut}"
    # pydicom quotes invalid values (here: truncated UIDs) when it logs them.
    assert [record.getMessage() for record in caplog.records if record.name == "pydicom"] == []
