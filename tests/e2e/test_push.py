"""PUSH end to end: scanner (pynetdicom, dcmtk) → agent → built-in store, checked over HTTP.

Every test runs a real `dicom-connector all-in-one` process on free loopback ports, sends real
associations and reads the result back through the public API.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from tests.support.all_in_one import AllInOne, running_all_in_one
from tests.support.dicom_factory import make_instance, write_files
from tests.support.scu import send_datasets, storescu

FAST = {"timing": {"acquisition_delay": "1s"}}
SUCCESS = 0x0000


@pytest.fixture(scope="module")
def connector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AllInOne]:
    """One connector shared by the tests that need no config of their own.

    Each of those tests uses its own subject, so they cannot see each other's data.
    """
    with running_all_in_one(tmp_path_factory.mktemp("shared") / "data", FAST) as server:
        _create_group(server, "neuro", "study-parkinsons-2024")
        yield server


def _create_group(server: AllInOne, group: str, *projects: str) -> None:
    server.client.post("/api/v1/groups", json={"id": group, "label": group}).raise_for_status()
    for project in projects:
        server.client.post(
            f"/api/v1/groups/{group}/projects", json={"label": project}
        ).raise_for_status()


def _series(
    n: int,
    comments: str | None,
    *,
    patient_id: str = "SYNTH-001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    study_description: str = "Synthetic study",
    first_instance_number: int = 1,
) -> list[Dataset]:
    """`n` ~130 KB MR instances of one series, numbered from `first_instance_number`."""
    return [
        make_instance(
            patient_id=patient_id,
            study_uid=study_uid or _study_uid,
            series_uid=series_uid or _series_uid,
            series_description="T1 MPRAGE",
            study_description=study_description,
            patient_comments=comments,
            instance_number=number,
        )
        for _study_uid, _series_uid in [(generate_uid(), generate_uid())]
        for number in range(first_instance_number, first_instance_number + n)
    ]


def _files_of(server: AllInOne, **filters: str) -> list[dict[str, Any]]:
    return [f for acq in server.acquisitions(**filters) for f in acq["files"]]


def _wait_for_files(server: AllInOne, count: int, **filters: str) -> list[dict[str, Any]]:
    server.wait_until(
        lambda: len(_files_of(server, **filters)) >= count, what=f"{count} files at {filters}"
    )
    return _files_of(server, **filters)


def test_routed_series_lands_in_its_session_byte_for_byte(connector: AllInOne) -> None:
    route = "fw://neuro/study-parkinsons-2024/sub-001/ses-baseline"
    sent = _series(5, f"operator note {route} end")
    assert send_datasets(connector.dicom_port, sent) == [SUCCESS] * 5

    _wait_for_files(connector, 5, subject="sub-001")
    [acq] = connector.acquisitions(subject="sub-001")
    assert (acq["project"], acq["subject"], acq["session"]) == (
        "study-parkinsons-2024",
        "sub-001",
        "ses-baseline",
    )
    assert acq["series_instance_uid"] == sent[0].SeriesInstanceUID
    assert acq["label"] == sent[0].SeriesDescription
    assert acq["routing_reason"] == "routed"
    by_uid = {ds.SOPInstanceUID: ds for ds in sent}
    assert {f["sop_instance_uid"] for f in acq["files"]} == set(by_uid)
    for entry in acq["files"]:
        stored = connector.client.get(f"/api/v1/files/{entry['id']}")
        assert stored.status_code == 200
        assert len(stored.content) == entry["size"]
        landed = pydicom.dcmread(io.BytesIO(stored.content))
        original = by_uid[entry["sop_instance_uid"]]
        assert landed.PixelData == original.PixelData
        assert landed.PatientComments == original.PatientComments


def test_unknown_group_lands_in_unknown_unsorted(connector: AllInOne) -> None:
    sent = _series(2, "fw://nosuchgroup/whatever/sub-9")
    send_datasets(connector.dicom_port, sent)
    _wait_for_files(connector, 2, subject="sub-9")
    [acq] = connector.acquisitions(subject="sub-9")
    assert (acq["group"], acq["project"]) == ("unknown", "Unsorted")
    assert acq["routing_reason"] == "unknown_group"
    assert acq["routing_string"] == "fw://nosuchgroup/whatever/sub-9"


def test_known_group_unknown_project_lands_in_its_unsorted(connector: AllInOne) -> None:
    send_datasets(connector.dicom_port, _series(2, "fw://neuro/typo-project/sub-typo"))
    _wait_for_files(connector, 2, subject="sub-typo")
    [acq] = connector.acquisitions(subject="sub-typo")
    assert (acq["group"], acq["project"]) == ("neuro", "Unsorted")
    assert acq["routing_reason"] == "unknown_project"


def test_missing_routing_string_lands_in_unknown_with_header_labels(connector: AllInOne) -> None:
    sent = _series(2, None, patient_id="PAT-42", study_description="Brain MRI")
    send_datasets(connector.dicom_port, sent)
    _wait_for_files(connector, 2, subject="PAT-42")
    [acq] = connector.acquisitions(subject="PAT-42")
    assert (acq["group"], acq["project"], acq["session"]) == ("unknown", "Unsorted", "Brain MRI")
    assert acq["routing_reason"] == "no_routing_string"


def test_opted_out_series_is_never_uploaded(connector: AllInOne) -> None:
    send_datasets(
        connector.dicom_port, _series(3, "NOFW fw://neuro/study-parkinsons-2024/sub-optout")
    )
    # A later series with the same delay: once it landed, the opted-out one was reaped too.
    marker = _series(1, "fw://neuro/study-parkinsons-2024/sub-marker")
    send_datasets(connector.dicom_port, marker)
    _wait_for_files(connector, 1, group="neuro", subject="sub-marker")
    assert connector.acquisitions(subject="sub-optout") == []


def test_opt_in_uploads_only_marked_series(tmp_path: Path) -> None:
    config = {
        "timing": {"acquisition_delay": "1s"},
        "upload_policy": {"mode": "opt-in", "strings": ["UPLOAD"]},
    }
    with running_all_in_one(tmp_path / "data", config) as server:
        _create_group(server, "neuro", "p1")
        send_datasets(server.dicom_port, _series(2, "fw://neuro/p1/sub-unmarked"))
        send_datasets(server.dicom_port, _series(2, "UPLOAD fw://neuro/p1/sub-marked"))
        _wait_for_files(server, 2, group="neuro", subject="sub-marked")
        assert {a["subject"] for a in server.acquisitions()} == {"sub-marked"}


def test_duplicate_send_is_stored_once(connector: AllInOne) -> None:
    sent = _series(4, "fw://neuro/study-parkinsons-2024/sub-dup")
    send_datasets(connector.dicom_port, sent)
    send_datasets(connector.dicom_port, sent)
    files = _wait_for_files(connector, 4, subject="sub-dup")
    # Resend after upload: the store must still hold each instance once.
    send_datasets(connector.dicom_port, sent)
    marker = _series(1, "fw://neuro/study-parkinsons-2024/sub-after-dup")
    send_datasets(connector.dicom_port, marker)
    _wait_for_files(connector, 1, subject="sub-after-dup")
    files = _files_of(connector, subject="sub-dup")
    assert sorted(f["sop_instance_uid"] for f in files) == sorted(d.SOPInstanceUID for d in sent)


def test_late_instances_join_the_same_acquisition(connector: AllInOne) -> None:
    first = _series(3, "fw://neuro/study-parkinsons-2024/sub-late/ses-1")
    send_datasets(connector.dicom_port, first)
    _wait_for_files(connector, 3, subject="sub-late")
    late = _series(
        2,
        "fw://neuro/study-parkinsons-2024/sub-late/ses-1",
        study_uid=first[0].StudyInstanceUID,
        series_uid=first[0].SeriesInstanceUID,
        first_instance_number=4,
    )
    send_datasets(connector.dicom_port, late)
    _wait_for_files(connector, 5, subject="sub-late")
    [acq] = connector.acquisitions(subject="sub-late")
    uids = [f["sop_instance_uid"] for f in acq["files"]]
    assert sorted(uids) == sorted(d.SOPInstanceUID for d in first + late)


def test_storescu_series_lands(connector: AllInOne, tmp_path: Path) -> None:
    sent = _series(10, "fw://neuro/study-parkinsons-2024/sub-dcmtk/ses-1")
    files = write_files(sent, tmp_path / "outgoing")
    storescu(connector.dicom_port, files)
    landed = _wait_for_files(connector, 10, subject="sub-dcmtk")
    assert {f["sop_instance_uid"] for f in landed} == {d.SOPInstanceUID for d in sent}


def test_restart_resumes_spooled_series(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    slow = {"timing": {"acquisition_delay": "1h"}}
    sent = _series(3, None)
    with running_all_in_one(data_dir, slow) as server:
        assert send_datasets(server.dicom_port, sent) == [SUCCESS] * 3
    with running_all_in_one(data_dir, FAST) as server:
        landed = _wait_for_files(server, 3)
        assert {f["sop_instance_uid"] for f in landed} == {d.SOPInstanceUID for d in sent}


def test_agent_killed_mid_transfer_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sent = _series(120, "fw://neuro/p/sub-kill", study_description="kill")
    acknowledged: list[str] = []
    half_sent = threading.Event()

    def record(ds: Dataset, status: int) -> None:
        if status == SUCCESS:
            acknowledged.append(ds.SOPInstanceUID)
        if len(acknowledged) == 40:
            half_sent.set()

    server = AllInOne(data_dir, FAST)
    try:
        server.start()
        _create_group(server, "neuro", "p")
        agent_pid = server.agent_pid()
        sender = threading.Thread(
            target=lambda: _send_until_aborted(server.dicom_port, sent, record), daemon=True
        )
        sender.start()
        assert half_sent.wait(60)
        os.kill(agent_pid, signal.SIGKILL)
        sender.join(60)
        assert server.wait_for_exit(90) != 0
    finally:
        server.close()
    assert 40 <= len(acknowledged) < len(sent)

    with running_all_in_one(data_dir, FAST) as restarted:
        _wait_for_files(restarted, len(acknowledged), subject="sub-kill")
        files = _files_of(restarted, subject="sub-kill")
        uids = [f["sop_instance_uid"] for f in files]
        assert len(uids) == len(set(uids)), "an instance landed twice"
        assert set(acknowledged) <= set(uids)


def _send_until_aborted(port: int, datasets: list[Dataset], record: Any) -> None:
    # The agent is killed mid-association: the abort is the point of the test. A short
    # timeout: a killed peer's socket may leave the SCU waiting for a response that never comes.
    with contextlib.suppress(ConnectionError, RuntimeError, OSError):
        send_datasets(port, datasets, on_status=record, timeout=3.0)


def test_no_patient_value_reaches_the_logs(tmp_path: Path) -> None:
    secret_values = {
        "PatientName": "Doe^Johnathan",
        "PatientID": "PHI-ID-7731",
        "PatientBirthDate": "19610923",
    }
    sent = _series(
        2,
        "fw://nosuchgroup/p/sub-phi-label",
        patient_id=secret_values["PatientID"],
        study_description="PHI-STUDY-DESCRIPTION",
    )
    for ds in sent:
        ds.PatientName = secret_values["PatientName"]
        ds.PatientBirthDate = secret_values["PatientBirthDate"]
    with running_all_in_one(tmp_path / "data", FAST) as server:
        send_datasets(server.dicom_port, sent)
        _wait_for_files(server, 2, group="unknown")
        server.stop()
        output = "".join(server.output)
    leaked = [
        value
        for value in [
            *secret_values.values(),
            "PHI-STUDY-DESCRIPTION",
            "sub-phi-label",
            sent[0].SeriesInstanceUID,
            sent[0].SOPInstanceUID,
        ]
        if value in output
    ]
    assert leaked == []
