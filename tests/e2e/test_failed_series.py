"""Series that cannot leave the site: shown with their reason, retried or discarded from the API.

A real all-in-one process: the scanner is pynetdicom, the agent is the real agent process, the
retry and discard travel as commands over the real agent link. The failure is a
de-identification profile that cannot apply to one instance of a series (a date field that is
not a date): the whole series is held back, nothing of it reaches the store.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from tests.support.all_in_one import AllInOne, running_all_in_one
from tests.support.dicom_factory import make_instance
from tests.support.scu import send_datasets

# The tests write a date that is not a date on purpose; pydicom says so when it is set.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR DA")

SHIFT_DATES: dict[str, Any] = {
    "version": 1,
    "name": "shift dates",
    "dicom": {
        "date-increment": -10,
        "fields": [
            {"name": "StudyDate", "increment-date": True},
            {"name": "PatientName", "replace-with": "REDACTED"},
        ],
    },
}
NAME_ONLY: dict[str, Any] = {
    "version": 1,
    "name": "names only",
    "dicom": {"fields": [{"name": "PatientName", "replace-with": "REDACTED"}]},
}
CONFIG: dict[str, Any] = {
    "timing": {"acquisition_delay": "1s"},
    "deid": {"profile": SHIFT_DATES},
}


def _series(n: int, patient_id: str, *, bad_date_at: int) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    datasets = [
        make_instance(
            patient_id=patient_id,
            study_uid=study,
            series_uid=series,
            series_description="T1",
            study_description="Brain",
            patient_comments="fw://neuro/study-a",
            instance_number=number,
            rows=64,
            cols=64,
        )
        for number in range(1, n + 1)
    ]
    datasets[bad_date_at].StudyDate = "NOTADATE"
    return datasets


def _failed(server: AllInOne) -> list[dict[str, Any]]:
    answer = server.client.get("/api/v1/sites/default/series", params={"state": "failed"})
    answer.raise_for_status()
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def _files(server: AllInOne) -> list[dict[str, Any]]:
    return [f for acq in server.acquisitions(group="neuro") for f in acq["files"]]


@pytest.fixture
def connector(tmp_path: Any) -> Any:
    with running_all_in_one(tmp_path / "data", CONFIG) as server:
        server.client.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
        server.client.post("/api/v1/groups/neuro/projects", json={"label": "study-a"})
        yield server


def test_a_series_that_cannot_be_deidentified_is_held_shown_retried_and_discarded(
    connector: AllInOne,
) -> None:
    held = _series(3, "PAT-HELD", bad_date_at=2)
    dropped = _series(2, "PAT-DROP", bad_date_at=0)
    assert send_datasets(connector.dicom_port, held) == [0] * 3
    assert send_datasets(connector.dicom_port, dropped) == [0] * 2

    connector.wait_until(lambda: len(_failed(connector)) == 2, what="two failed series")
    failed = _failed(connector)
    assert {entry["instances"] for entry in failed} == {3, 2}
    assert all("de-identification failed" in entry["reason"] for entry in failed)
    assert all("NOTADATE" not in entry["reason"] for entry in failed)
    assert _files(connector) == []
    health = connector.client.get("/api/v1/sites/default/health").json()
    assert health["status"] == "degraded"
    assert any("series failed as a whole" in reason for reason in health["agents"][0]["reasons"])
    for text in ("PAT-HELD", "PAT-DROP", "NOTADATE", held[0].SeriesInstanceUID):
        assert text not in str(health)
        assert text not in "".join(connector.output)

    by_size = {entry["instances"]: entry["series_key"] for entry in failed}
    # Support fixes the profile, then retries the series that should go.
    connector.client.put(
        "/api/v1/sites/default/config",
        content=json.dumps({**CONFIG, "deid": {"profile": NAME_ONLY}}),
    ).raise_for_status()
    retried = connector.client.post(f"/api/v1/sites/default/series/{by_size[3]}/retry")
    assert retried.status_code == 200, retried.text
    [result] = retried.json()["results"]
    assert result["ok"], result
    assert "3 instance(s)" in result["detail"]

    connector.wait_until(lambda: len(_files(connector)) == 3, what="the retried series stored")
    for entry in _files(connector):
        stored = connector.client.get(f"/api/v1/files/{entry['id']}").content
        landed = pydicom.dcmread(io.BytesIO(stored))
        assert landed.PatientName == "REDACTED"
        assert b"PAT-HELD" in stored  # the new profile keeps PatientID

    discarded = connector.client.post(f"/api/v1/sites/default/series/{by_size[2]}/discard")
    assert discarded.status_code == 200, discarded.text
    assert discarded.json()["results"][0]["ok"]
    connector.wait_until(lambda: _failed(connector) == [], what="no failed series left")
    assert len(_files(connector)) == 3

    unknown = connector.client.post("/api/v1/sites/default/series/0123456789abcdef/retry")
    assert unknown.status_code == 404
