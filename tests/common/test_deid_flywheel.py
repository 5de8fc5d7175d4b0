"""Flywheel-format profiles: applied rule by rule, checked when saved, failing without PHI."""

from __future__ import annotations

import copy
import hashlib
import threading
from io import BytesIO
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from common.config import ConfigError, DeidConfig, validate_site_config
from common.deid.engine import Deidentifier, DeidError
from tests.support.dicom_factory import encode_part10, make_instance

SALT = "flywheel-test-salt"
PROFILE: dict[str, Any] = {
    "version": 1,
    "dicom": {
        "date-increment": -5,
        "remove-private-tags": True,
        "fields": [
            {"name": "PatientName", "replace-with": "REDACTED"},
            {"name": "PatientID", "hash": True},
            {"name": "PatientBirthDate", "remove": True},
            {"name": "StudyDate", "increment-date": True},
            {"name": "AcquisitionDateTime", "increment-datetime": True},
            {"name": "SeriesDescription", "keep": True},
            {"name": "(0010,4000)", "remove": True},
            {"name": "SOPInstanceUID", "hashuid": True},
            {"name": "SeriesInstanceUID", "hashuid": True},
            {"name": "StudyInstanceUID", "hashuid": True},
        ],
    },
}


def _deidentifier(profile: dict[str, Any] = PROFILE) -> Deidentifier:
    deid = Deidentifier.from_config(DeidConfig(profile=profile), SALT)
    assert deid is not None
    return deid


def _data(**extra: Any) -> bytes:
    ds = make_instance(
        patient_id="PID-CANARY-77",
        study_uid="1.2.826.0.1.3680043.10.546.1",
        series_uid="1.2.826.0.1.3680043.10.546.1.1",
        sop_uid="1.2.826.0.1.3680043.10.546.1.1.1",
        series_description="T1 AXIAL",
        study_description="BRAIN",
        patient_comments="fw://neuro/study-a",
        extra={
            "PatientName": "CANARY^NAME",
            "PatientBirthDate": "19610203",
            "StudyDate": "20240110",
            "AcquisitionDateTime": "20240110093000.5",
            **extra,
        },
    )
    ds.add_new(0x00090010, "LO", "CANARY CREATOR")
    ds.add_new(0x00091001, "LO", "CANARY PRIVATE")
    return encode_part10(ds)


def test_a_flywheel_profile_is_applied_rule_by_rule() -> None:
    original = dcmread(BytesIO(_data()))
    result = _deidentifier().deidentify(_data())
    ds = dcmread(BytesIO(result.data))

    assert ds.PatientName == "REDACTED"
    assert ds.PatientID not in ("", original.PatientID)
    assert ds.PatientID == dcmread(BytesIO(_deidentifier().deidentify(_data()).data)).PatientID
    assert "PatientBirthDate" not in ds
    assert ds.StudyDate == "20240105"
    assert ds.AcquisitionDateTime.startswith("20240105093000")
    assert ds.SeriesDescription == "T1 AXIAL"
    assert "PatientComments" not in ds
    assert not [elem for elem in ds if elem.tag.is_private]
    assert result.sop_instance_uid == ds.SOPInstanceUID != original.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert result.series_instance_uid == ds.SeriesInstanceUID != original.SeriesInstanceUID
    assert ds.PixelData == original.PixelData
    # The site salt is the one used: another salt hashes the same ID differently.
    other = Deidentifier.from_config(DeidConfig(profile=PROFILE), "other-salt")
    assert other is not None
    assert dcmread(BytesIO(other.deidentify(_data()).data)).PatientID != ds.PatientID


def test_recurse_sequence_applies_each_rule_once_at_every_depth() -> None:
    profile = copy.deepcopy(PROFILE)
    profile["dicom"]["recurse-sequence"] = True
    profile["dicom"]["fields"].append({"regex": "^Operators?Name$", "replace-with": "OP"})
    ds = dcmread(BytesIO(_data()))
    inner = Dataset()
    inner.PatientName = "DEEP^CANARY"
    inner.StudyDate = "20240110"
    inner.add_new(0x00110010, "LO", "DEEP PRIVATE CREATOR")
    item = Dataset()
    item.PatientName = "NESTED^CANARY"
    item.OperatorsName = "NESTED^OPERATOR"
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.546.1.1.7"
    item.ReferencedStudySequence = DicomSequence([inner])
    ds.ReferencedImageSequence = DicomSequence([item])
    referenced = _data(SOPInstanceUID="1.2.826.0.1.3680043.10.546.1.1.7")
    deid = _deidentifier(profile)

    result = dcmread(BytesIO(deid.deidentify(encode_part10(ds)).data))

    assert result.StudyDate == "20240105"  # shifted once, not twice
    nested = result.ReferencedImageSequence[0]
    assert nested.PatientName == "REDACTED"
    assert nested.OperatorsName == "OP"
    assert nested.ReferencedStudySequence[0].PatientName == "REDACTED"
    assert nested.ReferencedStudySequence[0].StudyDate == "20240105"
    assert not [elem for elem in result.iterall() if elem.tag.is_private]
    # The reference follows the referenced instance's new UID.
    assert nested.ReferencedSOPInstanceUID == deid.deidentify(referenced).sop_instance_uid


def test_the_file_meta_keeps_only_what_part10_needs() -> None:
    ds = dcmread(BytesIO(_data()))
    ds.file_meta.SourceApplicationEntityTitle = "CANARYSRCAE"
    ds.file_meta.PrivateInformationCreatorUID = "1.2.826.0.1.3680043.10.546.99"
    ds.file_meta.PrivateInformation = b"CANARYMETAPRIVATE"

    result = _deidentifier().deidentify(encode_part10(ds))

    assert b"CANARYSRCAE" not in result.data
    assert b"CANARYMETAPRIVATE" not in result.data
    meta = dcmread(BytesIO(result.data)).file_meta
    assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert meta.MediaStorageSOPInstanceUID == result.sop_instance_uid


def test_the_original_uid_suffix_does_not_survive_hashuid() -> None:
    result = _deidentifier().deidentify(_data())
    assert not result.sop_instance_uid.endswith(".1.1.1")
    assert b"3680043.10.546" not in result.data


@pytest.mark.parametrize(
    ("dicom", "key", "message"),
    [
        ({"salt": "x", "fields": []}, "deid.profile.dicom.salt", "kept by the control plane"),
        (
            {"fields": [{"name": "PatientID", "remove": True}, {"name": "Nope", "remove": True}]},
            "deid.profile.dicom.fields[1]",
            "unresolvable field name 'Nope'",
        ),
        (
            {"fields": [{"name": "PatientID", "remvoe": True}]},
            "deid.profile.dicom.fields[0]",
            "",
        ),
        (
            {"fields": [{"name": "PatientID", "encrypt": True}]},
            "deid.profile.dicom.fields[0]",
            "",
        ),
        ({"filenames": []}, "deid.profile.dicom.filenames", "uploads instances"),
    ],
)
def test_a_bad_profile_is_refused_when_the_config_is_saved_naming_the_key(
    dicom: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_site_config({"deid": {"profile": {"version": 1, "dicom": dicom}}})
    assert any(problem.startswith(f"{key}: ") for problem in caught.value.problems), str(
        caught.value
    )
    assert message in str(caught.value)


def test_options_without_basic_and_unknown_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="deid: options apply to profile basic only"):
        validate_site_config({"deid": {"profile": PROFILE, "options": ["retain_uids"]}})
    with pytest.raises(ConfigError, match=r"deid.options\[0\]: 'keep_everything' is not"):
        validate_site_config({"deid": {"profile": "basic", "options": ["keep_everything"]}})


def test_a_profile_that_cannot_apply_raises_deid_error_without_the_value() -> None:
    bad_date = "CANARY-DATE-99"
    with pytest.raises(DeidError) as caught:
        _deidentifier().deidentify(_data(StudyDate=bad_date))
    assert "increment-date" in caught.value.reason
    assert bad_date not in str(caught.value)
    assert "CANARY" not in str(caught.value)


def test_a_short_uid_under_hashuid_raises_deid_error_without_the_value() -> None:
    with pytest.raises(DeidError) as caught:
        _deidentifier().deidentify(
            encode_part10(
                make_instance(
                    patient_id="P",
                    study_uid="1.2.3",
                    series_uid="1.2.4",
                    sop_uid="1.2.5",
                    series_description="S",
                    study_description="T",
                )
            )
        )
    assert "hashuid" in caught.value.reason
    assert "1.2.3" not in caught.value.reason


def test_basic_with_modified_dates_refuses_an_unreadable_date_without_the_value() -> None:
    deid = Deidentifier.from_config(
        DeidConfig(profile="basic", options=["retain_longitudinal_modified_dates"]), SALT
    )
    assert deid is not None
    with pytest.raises(DeidError, match=r"\(0008,0020\)") as caught:
        deid.deidentify(_data(StudyDate="CANARY9"))
    assert "CANARY" not in str(caught.value)


@pytest.mark.parametrize("profile", ["basic", "flywheel"])
@pytest.mark.parametrize("data", [b"", b"not dicom at all" * 20])
def test_bytes_that_are_not_dicom_raise_deid_error(data: bytes, profile: str) -> None:
    deid = Deidentifier.from_config(
        DeidConfig(profile="basic" if profile == "basic" else PROFILE), SALT
    )
    assert deid is not None
    with pytest.raises(DeidError, match="not a DICOM Part-10 instance"):
        deid.deidentify(data)


@pytest.mark.parametrize("profile", ["basic", "flywheel"])
def test_a_truncated_instance_raises_deid_error(profile: str) -> None:
    deid = Deidentifier.from_config(
        DeidConfig(profile="basic" if profile == "basic" else PROFILE), SALT
    )
    assert deid is not None
    with pytest.raises(DeidError):
        deid.deidentify(_data()[:700])


def test_preview_lists_each_change_with_before_and_after() -> None:
    changes = {change.keyword: change for change in _deidentifier().preview(_data())}

    assert changes["PatientName"].action == "replaced"
    assert (changes["PatientName"].before, changes["PatientName"].after) == (
        "CANARY^NAME",
        "REDACTED",
    )
    assert changes["PatientBirthDate"].action == "removed"
    assert changes["MediaStorageSOPInstanceUID"].action == "replaced"
    assert "SeriesDescription" not in changes
    assert changes["StudyDate"].after == "20240105"


def test_one_deidentifier_serves_many_threads_with_the_same_results() -> None:
    deid = _deidentifier()
    inputs = [_data(PatientID=f"P{number}") for number in range(8)]
    expected = [hashlib.sha256(deid.deidentify(one).data).hexdigest() for one in inputs]
    results: dict[int, str] = {}

    def work(index: int) -> None:
        for _ in range(5):
            results[index] = hashlib.sha256(deid.deidentify(inputs[index]).data).hexdigest()

    threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[index] for index in range(8)] == expected


def test_the_salt_never_shows_in_the_deidentifiers_repr() -> None:
    assert SALT not in repr(_deidentifier())


def test_a_profile_held_in_other_mapping_types_is_checked_like_a_plain_one() -> None:
    from types import MappingProxyType

    from common.deid.flywheel import profile_problems

    nested = MappingProxyType(
        {
            "version": 1,
            "dicom": MappingProxyType(
                {"fields": (MappingProxyType({"name": "PatientName", "remove": True}),)}
            ),
        }
    )
    assert profile_problems(nested) == []
