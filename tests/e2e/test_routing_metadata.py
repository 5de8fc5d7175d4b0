"""Per-scanner routing and session metadata end to end: two scanners (dcmtk storescu as CT1,
pynetdicom as MR1) write their routing strings into different attributes; a metadata pattern
fills the session's metadata; an opted-out series is counted per reason in health. A real
`dicom-connector all-in-one`, real associations, results read back through the public API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from cli.main import app
from tests.support.all_in_one import ADMIN_TOKEN, AllInOne, running_all_in_one
from tests.support.dicom_factory import make_instance, write_files
from tests.support.scu import send_datasets, storescu

CONFIG = {
    "timing": {"acquisition_delay": "1s"},
    "dicom": {
        "peers": [
            # The CT writes the routing string into StudyComments; the MR uses the site's field.
            {"ae_title": "CT1", "host": "127.0.0.1", "routing": {"fields": ["StudyComments"]}},
            {"ae_title": "MR1", "host": "127.0.0.1"},
        ]
    },
    "routing": {"fields": ["PatientComments"]},
    "upload_policy": {"mode": "opt-out", "field": "PatientComments", "strings": ["NOFW"]},
    "metadata": {
        "patterns": [
            {"field": "StudyDescription", "regex": "^(?P<protocol>[A-Z]+) (?P<visit>V\\d)$"},
            {"field": "PatientID", "regex": "^(?P<subject>P\\d+)-(?P<cohort>[a-z]+)$"},
        ]
    },
}


@pytest.fixture
def connector(tmp_path: Path) -> Iterator[AllInOne]:
    with running_all_in_one(tmp_path / "data", CONFIG) as server:
        server.client.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
        for project in ("ct-study", "mr-study"):
            server.client.post("/api/v1/groups/neuro/projects", json={"label": project})
        yield server


def _series(
    n: int, *, patient_id: str, study_description: str, comments: dict[str, str]
) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    return [
        make_instance(
            patient_id=patient_id,
            study_uid=study,
            series_uid=series,
            series_description="T1",
            study_description=study_description,
            instance_number=number,
            rows=32,
            cols=32,
            extra=comments,
        )
        for number in range(1, n + 1)
    ]


def _files(server: AllInOne, **filters: str) -> list[dict[str, Any]]:
    return [f for acq in server.acquisitions(**filters) for f in acq["files"]]


def test_each_scanner_routes_by_its_own_field_and_patterns_fill_session_metadata(
    connector: AllInOne, tmp_path: Path
) -> None:
    # Both series hold a routing string in both attributes: which one counts is the scanner's.
    both = {"StudyComments": "fw://neuro/ct-study", "PatientComments": "fw://neuro/mr-study"}
    ct = _series(3, patient_id="P100-alpha", study_description="BRAIN V1", comments=both)
    mr = _series(2, patient_id="P200-beta", study_description="SPINE V2", comments=both)
    opt_out = {"PatientComments": "NOFW"}
    skipped = _series(2, patient_id="P300-gamma", study_description="KNEE V1", comments=opt_out)

    storescu(connector.dicom_port, write_files(ct, tmp_path / "ct"), calling_ae="CT1")
    assert send_datasets(connector.dicom_port, mr, calling_ae="MR1") == [0, 0]
    assert send_datasets(connector.dicom_port, skipped, calling_ae="MR1") == [0, 0]

    connector.wait_until(
        lambda: len(_files(connector, group="neuro")) == 5, what="five files in neuro"
    )
    [ct_acquisition] = connector.acquisitions(project="ct-study")
    [mr_acquisition] = connector.acquisitions(project="mr-study")
    assert (ct_acquisition["subject"], len(ct_acquisition["files"])) == ("P100", 3)
    assert (mr_acquisition["subject"], len(mr_acquisition["files"])) == ("P200", 2)
    assert ct_acquisition["session_metadata"] == {
        "cohort": "alpha",
        "protocol": "BRAIN",
        "visit": "V1",
    }

    session = connector.client.get(f"/api/v1/sessions/{mr_acquisition['session_id']}").json()
    assert session["metadata"] == {"cohort": "beta", "protocol": "SPINE", "visit": "V2"}
    assert session["metadata_conflicts"] == {}

    def skipped_counted() -> bool:
        [agent] = connector.client.get("/api/v1/sites/default/agents").json()["items"]
        report = agent["health"].get("report") or {}
        return bool(report.get("skipped_series") == {"opted_out": 1})

    connector.wait_until(skipped_counted, what="the opted-out series counted in health")
    url = str(connector.client.base_url)
    shown = CliRunner().invoke(
        app,
        ["admin", "--url", url, "--token", ADMIN_TOKEN, "health", "default"],
        env={"COLUMNS": "200"},
    )
    assert shown.exit_code == 0, shown.output
    assert "skipped by the upload policy" in " ".join(shown.output.split())
    assert "opted_out" in shown.output
    assert _files(connector, subject="P300") == []
    # Metadata values come from headers: never in the agent's or the control plane's log.
    log = "".join(connector.output)
    for value in ("alpha", "beta", "BRAIN V1", "SPINE V2", "P100-alpha"):
        assert value not in log
