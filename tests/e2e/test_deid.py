"""De-identification end to end: scanner → agent → built-in store under `basic` and under a
site's own Flywheel-format profile, with the stored bytes searched for every canary.

A real all-in-one process; the scanner is pynetdicom. The agent's output (its logs) and the
API's answers are searched too: nothing that identifies the patient may leave in any of them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import DataElement
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from tests.support.all_in_one import AllInOne, running_all_in_one
from tests.support.dicom_factory import make_instance
from tests.support.phi_canaries import canary_series, canary_uid
from tests.support.scu import send_datasets

ROUTE = "fw://neuro/study-a/sub-canary/ses-canary"


def _canary_series(tag: str, count: int) -> tuple[list[Dataset], dict[str, str]]:
    """`count` instances of one series with a distinct canary in each identifying attribute."""
    canaries = {
        "PatientName": f"CANARY{tag}^NAME",
        "PatientID": f"CANARY{tag}PID",
        "PatientBirthDate": "19010203",
        "OtherPatientIDs": f"CANARY{tag}OTHERID",
        "PatientAddress": f"CANARY{tag} ADDRESS ROAD",
        "InstitutionName": f"CANARY{tag}HOSPITAL",
        "InstitutionAddress": f"CANARY{tag} INSTITUTION STREET",
        "ReferringPhysicianName": f"CANARY{tag}^REFERRER",
        "OperatorsName": f"CANARY{tag}^OPERATOR",
        "AccessionNumber": f"C{tag}ACC",
        "StudyDescription": f"CANARY{tag} STUDY",
        "SeriesDescription": f"CANARY{tag} SERIES",
        "StudyID": f"C{tag}SID",
        "StationName": f"C{tag}STATION",
        "DeviceSerialNumber": f"CANARY{tag}SERIAL",
        "AdditionalPatientHistory": f"CANARY{tag} HISTORY",
        "RequestingPhysician": f"CANARY{tag}^REQUESTER",
    }
    study, series = generate_uid(), generate_uid()
    datasets = []
    for number in range(1, count + 1):
        ds = make_instance(
            patient_id=canaries["PatientID"],
            study_uid=study,
            series_uid=series,
            series_description=canaries["SeriesDescription"],
            study_description=canaries["StudyDescription"],
            patient_comments=f"{ROUTE} CANARY{tag}COMMENT",
            instance_number=number,
            rows=32,
            cols=32,
            extra={k: v for k, v in canaries.items() if k not in ("PatientID",)},
        )
        request = Dataset()
        request.RequestedProcedureID = f"C{tag}RPID"
        request.ScheduledProcedureStepID = f"C{tag}SPSID"
        request.RequestedProcedureDescription = f"CANARY{tag} NESTED"
        ds.RequestAttributesSequence = DicomSequence([request])
        reference = Dataset()
        reference.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        reference.ReferencedSOPInstanceUID = generate_uid()
        ds.ReferencedStudySequence = DicomSequence([reference])
        ds.add(DataElement(0x00090010, "LO", f"CANARY{tag} CREATOR"))
        ds.add(DataElement(0x00091001, "LO", f"CANARY{tag}PRIVATE"))
        datasets.append(ds)
    canaries["PatientComments"] = f"CANARY{tag}COMMENT"
    canaries["RequestedProcedureDescription"] = f"CANARY{tag} NESTED"
    canaries["Private"] = f"CANARY{tag}PRIVATE"
    canaries["StudyInstanceUID"] = study
    canaries["SeriesInstanceUID"] = series
    canaries["ReferencedSOPInstanceUID"] = (
        datasets[0].ReferencedStudySequence[0].ReferencedSOPInstanceUID
    )
    for ds in datasets:
        canaries[f"SOP{ds.InstanceNumber}"] = ds.SOPInstanceUID
    return datasets, canaries


def _stored(server: AllInOne, group: str) -> list[tuple[dict[str, Any], bytes]]:
    out = []
    for acquisition in server.acquisitions(group=group):
        for file in acquisition["files"]:
            content = server.client.get(f"/api/v1/files/{file['id']}").content
            out.append((acquisition, content))
    return out


def _leaks(canaries: dict[str, str], *texts: bytes | str) -> list[str]:
    found = []
    for name, canary in canaries.items():
        if name == "PatientBirthDate":
            continue  # a date can legitimately recur; checked on the dataset instead
        needle = canary.encode()
        if any(needle in (text if isinstance(text, bytes) else text.encode()) for text in texts):
            found.append(name)
    return found


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AllInOne]:
    config = {"timing": {"acquisition_delay": "1s"}, "deid": {"profile": "basic"}}
    with running_all_in_one(tmp_path_factory.mktemp("basic") / "data", config) as server:
        server.client.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
        server.client.post("/api/v1/groups/neuro/projects", json={"label": "study-a"})
        yield server


def test_under_basic_no_canary_reaches_the_store_the_api_or_the_logs(basic: AllInOne) -> None:
    datasets, canaries = _canary_series("B", 3)
    assert send_datasets(basic.dicom_port, datasets) == [0] * 3

    basic.wait_until(lambda: len(_stored(basic, "neuro")) == 3, what="3 de-identified files")
    stored = _stored(basic, "neuro")
    listing = basic.client.get("/api/v1/acquisitions").text
    health = basic.client.get("/api/v1/sites/default/health").text
    assert _leaks(canaries, *(content for _, content in stored)) == []
    assert _leaks(canaries, listing, health, "".join(basic.output)) == []
    for acquisition, content in stored:
        ds = pydicom.dcmread(io.BytesIO(content))
        assert ds.get("PatientBirthDate", "") != "19010203"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        # Routed by the string read before de-identification removed it.
        assert (acquisition["group"], acquisition["project"]) == ("neuro", "study-a")
        assert (acquisition["subject"], acquisition["session"]) == ("sub-canary", "ses-canary")
        assert acquisition["series_instance_uid"] == ds.SeriesInstanceUID
        assert ds.PixelData == datasets[0].PixelData or len(ds.PixelData) == len(
            datasets[0].PixelData
        )
    assert len({pydicom.dcmread(io.BytesIO(c)).SeriesInstanceUID for _, c in stored}) == 1


SITE_PROFILE: dict[str, Any] = {
    "version": 1,
    "name": "st-marys research export",
    "dicom": {
        "date-increment": -30,
        "remove-private-tags": True,
        "fields": [
            {"name": "PatientName", "replace-with": "ANON"},
            {"name": "PatientID", "hash": True},
            {"name": "PatientBirthDate", "remove": True},
            {"name": "StudyDate", "increment-date": True},
            {"name": "InstitutionName", "replace-with": "SITE-A"},
            {"name": "StudyInstanceUID", "hashuid": True},
            {"name": "SeriesInstanceUID", "hashuid": True},
            {"name": "SOPInstanceUID", "hashuid": True},
            {"name": "SeriesDescription", "keep": True},
        ],
    },
}


def test_a_sites_flywheel_profile_is_applied_field_by_field(tmp_path: Path) -> None:
    config = {"timing": {"acquisition_delay": "1s"}, "deid": {"profile": SITE_PROFILE}}
    with running_all_in_one(tmp_path / "data", config) as server:
        server.client.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
        server.client.post("/api/v1/groups/neuro/projects", json={"label": "study-a"})
        datasets, canaries = _canary_series("F", 2)
        assert send_datasets(server.dicom_port, datasets) == [0] * 2
        server.wait_until(lambda: len(_stored(server, "neuro")) == 2, what="2 files")
        stored = [pydicom.dcmread(io.BytesIO(content)) for _, content in _stored(server, "neuro")]

    originals = {ds.SOPInstanceUID: ds for ds in datasets}
    for ds in stored:
        assert ds.PatientName == "ANON"
        assert ds.PatientID != canaries["PatientID"]
        assert ds.PatientID
        assert "PatientBirthDate" not in ds
        assert ds.StudyDate == "20231203"  # 20240102 - 30 days
        assert ds.InstitutionName == "SITE-A"
        assert ds.SeriesDescription == canaries["SeriesDescription"]  # kept as asked
        assert not any(element.tag.is_private for element in ds)
        assert ds.SOPInstanceUID not in originals
        assert ds.StudyInstanceUID != canaries["StudyInstanceUID"]
        # What the profile does not name is kept as received.
        assert ds.Manufacturer == "SYNTHETIC"
    assert len({ds.SeriesInstanceUID for ds in stored}) == 1


def test_under_basic_no_canary_of_table_e1_1_survives_the_whole_pipeline(basic: AllInOne) -> None:
    """Every text, date, time and UID attribute of Table E.1-1, nested sequences and private
    elements, received over DICOM, spooled, reaped, de-identified and stored."""
    series = canary_series(2, study_uid=canary_uid(900001), series_uid=canary_uid(900002))
    for instance in series:
        # The routing string travels in PatientComments, a table attribute basic removes.
        instance.dataset.PatientComments = (
            f"fw://neuro/study-a/sub-table/ses-table {instance.dataset.PatientComments}"
        )
    assert send_datasets(basic.dicom_port, [i.dataset for i in series]) == [0, 0]

    basic.wait_until(
        lambda: sum(len(a["files"]) for a in basic.acquisitions(subject="sub-table")) == 2,
        what="the canary series stored",
    )
    [acquisition] = basic.acquisitions(subject="sub-table", session="ses-table")
    stored = [
        basic.client.get(f"/api/v1/files/{file['id']}").content for file in acquisition["files"]
    ]
    for instance in series:
        leaked = {canary.where for data in stored for canary in instance.found_in(data)}
        # The file meta's canaries never travel over DICOM; everything else must be gone.
        assert leaked == set()
    listing = basic.client.get("/api/v1/acquisitions").content
    logs = "".join(basic.output).encode()
    assert [c.where for c in series[0].found_in(listing + logs)] == []
