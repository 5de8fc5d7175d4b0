"""`dicom-connector admin route-check` against a real control plane."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from cli.main import app
from tests.support.dicom_factory import make_instance, write_files
from tests.support.served_control_plane import ADMIN_TOKEN, served_control_plane


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    with served_control_plane(tmp_path) as url:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx2.Client(base_url=url, headers=headers) as client:
            client.post("/api/v1/sites", json={"name": "st-marys", "timezone": "UTC"})
            client.put(
                "/api/v1/sites/st-marys/config",
                content=json.dumps({"routing": {"fields": ["StudyComments", "PatientComments"]}}),
            ).raise_for_status()
            client.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
            client.post("/api/v1/groups/neuro/projects", json={"label": "study-ms"})
        yield url


def _admin(base_url: str, *args: str) -> str:
    result = CliRunner().invoke(
        app, ["admin", "--url", base_url, "--token", ADMIN_TOKEN, *args], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_a_routing_string_typo_is_answered_with_the_nearest_names(base_url: str) -> None:
    output = _admin(base_url, "route-check", "--string", "fw://nuero/study-ms/sub-1")
    assert "unknown/Unsorted/sub-1" in output
    assert "unknown_group" in output
    assert "did you mean fw://neuro/study-ms ?" in output


def test_a_dicom_file_is_checked_with_the_attributes_the_config_reads(
    base_url: str, tmp_path: Path
) -> None:
    instance = make_instance(
        patient_id="P7",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="T1",
        study_description="Brain",
        patient_comments="fw://neuro/wrong",
        rows=8,
        cols=8,
        extra={"StudyComments": "fw://neuro/study-ms/sub-9"},
    )
    [path] = write_files([instance], tmp_path / "files")

    output = _admin(base_url, "route-check", "--site", "st-marys", str(path))

    assert "neuro/study-ms/sub-9/Brain (acquisition T1)" in output
    assert "reason: routed" in output
