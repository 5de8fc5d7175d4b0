"""UIDs are remapped consistently: per series, per study, across restarts and late instances,
in the file meta and in references, under basic and under a Flywheel profile's hashuid."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from common.config import DeidConfig
from common.deid.engine import DeidentifiedInstance, Deidentifier
from tests.support.dicom_factory import encode_part10, make_instance
from tests.support.phi_canaries import canary_series

STUDY = "1.2.826.0.1.3680043.10.545.1"
SERIES_A = "1.2.826.0.1.3680043.10.545.1.1"
SERIES_B = "1.2.826.0.1.3680043.10.545.1.2"
HASHUID_PROFILE: dict[str, Any] = {
    "version": 1,
    "dicom": {
        "fields": [
            {"name": name, "hashuid": True}
            # References follow SOPInstanceUID without a rule of their own.
            for name in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
        ]
    },
}
PROFILES: dict[str, Any] = {"basic": "basic", "flywheel": HASHUID_PROFILE}


def _deidentifier(profile: str, salt: str = "salt-one") -> Deidentifier:
    deid = Deidentifier.from_config(DeidConfig(profile=PROFILES[profile]), salt)
    assert deid is not None
    return deid


def _instance(series: str, number: int, *, refers_to: str | None = None) -> bytes:
    ds = make_instance(
        patient_id="PID",
        study_uid=STUDY,
        series_uid=series,
        sop_uid=f"{series}.{number}",
        series_description="S",
        study_description="T",
        instance_number=number,
    )
    if refers_to is not None:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = refers_to
        ds.ReferencedImageSequence = DicomSequence([item])
    return encode_part10(ds)


def _run(deid: Deidentifier, data: list[bytes]) -> list[DeidentifiedInstance]:
    return [deid.deidentify(one) for one in data]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_series_shares_one_new_series_uid_and_a_study_one_new_study_uid(profile: str) -> None:
    series_a = [_instance(SERIES_A, number) for number in (1, 2, 3)]
    out = _run(_deidentifier(profile), [*series_a, _instance(SERIES_B, 1)])

    assert len({one.series_instance_uid for one in out[:3]}) == 1
    assert out[3].series_instance_uid != out[0].series_instance_uid
    assert len({one.study_instance_uid for one in out}) == 1
    assert len({one.sop_instance_uid for one in out}) == 4
    assert STUDY not in {one.study_instance_uid for one in out}
    assert out[0].series_instance_uid != SERIES_A


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_file_meta_and_references_carry_the_new_uids(profile: str) -> None:
    first, second = _run(
        _deidentifier(profile),
        [_instance(SERIES_A, 1), _instance(SERIES_A, 2, refers_to=f"{SERIES_A}.1")],
    )
    ds = dcmread(BytesIO(second.data))

    assert ds.file_meta.MediaStorageSOPInstanceUID == second.sop_instance_uid
    assert ds.SOPInstanceUID == second.sop_instance_uid
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.sop_instance_uid
    assert b"1.2.826.0.1.3680043.10.545" not in second.data


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_restart_and_a_late_instance_get_the_same_uids(profile: str) -> None:
    before = _run(_deidentifier(profile), [_instance(SERIES_A, 1), _instance(SERIES_A, 2)])

    # A new Deidentifier is what an agent builds after a restart or a new config revision.
    restarted = _deidentifier(profile)
    again = restarted.deidentify(_instance(SERIES_A, 1))
    late = restarted.deidentify(_instance(SERIES_A, 9))

    assert again == before[0]
    assert late.series_instance_uid == before[0].series_instance_uid
    assert late.study_instance_uid == before[0].study_instance_uid


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_different_salts_give_different_uids(profile: str) -> None:
    one = _deidentifier(profile, "salt-one").deidentify(_instance(SERIES_A, 1))
    two = _deidentifier(profile, "salt-two").deidentify(_instance(SERIES_A, 1))

    assert one.series_instance_uid != two.series_instance_uid
    assert one.study_instance_uid != two.study_instance_uid
    assert one.sop_instance_uid != two.sop_instance_uid


def test_basic_uids_are_valid_and_under_the_2_25_root() -> None:
    out = _deidentifier("basic").deidentify(_instance(SERIES_A, 1))
    for uid in (out.sop_instance_uid, out.series_instance_uid, out.study_instance_uid):
        assert uid.startswith("2.25.")
        assert len(uid) <= 64
        assert all(part.isdigit() and (part == "0" or part[0] != "0") for part in uid.split("."))


def test_no_profile_means_no_deidentifier() -> None:
    assert Deidentifier.from_config(DeidConfig(), "salt") is None


def test_an_empty_salt_is_refused() -> None:
    with pytest.raises(ValueError, match="salt is required"):
        Deidentifier.from_config(DeidConfig(profile="basic"), "")


def test_a_canary_series_keeps_one_new_series_uid_and_leaks_nothing() -> None:
    series = canary_series(
        3, study_uid="1.2.826.0.1.3680043.10.550.1", series_uid="1.2.826.0.1.3680043.10.550.1.1"
    )
    deid = _deidentifier("basic")

    out = [deid.deidentify(encode_part10(instance.dataset)) for instance in series]

    assert len({one.series_instance_uid for one in out}) == 1
    assert [c.where for i, one in zip(series, out, strict=True) for c in i.found_in(one.data)] == []
