"""`dicom-connector admin route-check` against a real control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from cli.main import app
from tests.control_plane.instances import new_uid, part10, sha256_hex
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


def test_a_session_is_moved_and_purged_from_the_cli(base_url: str) -> None:
    uid, series = new_uid(), new_uid()
    body = part10(uid, series_instance_uid=series)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/dicom"}
    with httpx2.Client(base_url=base_url, headers=headers) as client:
        client.post(
            "/api/v1/ingest",
            content=body,
            params={
                "subject": "sub-1",
                "session": "ses-1",
                "acquisition": "T1",
                "series_instance_uid": series,
                "sop_instance_uid": uid,
                "sha256": sha256_hex(body),
            },
        ).raise_for_status()
        [acquisition] = client.get("/api/v1/acquisitions").json()["items"]
    session_id = acquisition["session_id"]

    moved = _admin(base_url, "sessions", "move", session_id, "neuro", "study-ms")
    assert "neuro/study-ms/sub-1/ses-1" in moved
    assert "unknown/Unsorted" in _admin(base_url, "sessions", "show", session_id)
    purged = _admin(base_url, "sessions", "purge", "--yes", session_id)
    assert "1 file(s)" in purged


def test_a_calling_ae_title_checks_under_that_scanners_fields_and_shows_metadata(
    base_url: str, tmp_path: Path
) -> None:
    config = {
        "dicom": {
            "peers": [
                {"ae_title": "CT1", "host": "10.0.0.5", "routing": {"fields": ["PatientComments"]}}
            ]
        },
        "routing": {"fields": ["StudyComments"]},
        "metadata": {"patterns": [{"field": "StudyDescription", "regex": "^(?P<protocol>\\w+)$"}]},
    }
    with httpx2.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as client:
        client.put("/api/v1/sites/st-marys/config", content=json.dumps(config)).raise_for_status()
    instance = make_instance(
        patient_id="P7",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="T1",
        study_description="Brain",
        patient_comments="fw://neuro/study-ms/sub-3",
        rows=8,
        cols=8,
        extra={"StudyComments": "fw://neuro/wrong"},
    )
    [path] = write_files([instance], tmp_path / "files")

    as_ct = _admin(base_url, "route-check", "--site", "st-marys", "--calling-ae", "CT1", str(path))
    as_site = _admin(base_url, "route-check", "--site", "st-marys", str(path))

    assert "neuro/study-ms/sub-3/Brain" in as_ct
    assert "looked for in dicom.peers[0].routing.fields" in as_ct
    assert "session metadata protocol: Brain" in as_ct
    assert "neuro/Unsorted" in as_site
    assert "looked for in routing.fields" in as_site


@pytest.mark.parametrize(("columns", "whole"), [(None, True), ("80", False)])
def test_piped_output_is_not_cut_at_rich_default_width_unless_columns_says_so(
    base_url: str, columns: str | None, whole: bool
) -> None:
    # A real process with its stdout piped, as into grep or a ticket: without a terminal rich
    # falls back to 80 columns; the admin CLI prints 200 wide then, and COLUMNS still rules.
    env = {name: value for name, value in os.environ.items() if name != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    subject = "sub-" + "x" * 56
    admin = [sys.executable, "-m", "cli", "admin", "--url", base_url, "--token", ADMIN_TOKEN]
    result = subprocess.run(
        [*admin, "route-check", "--site", "st-marys", "--string", f"fw://neuro/study-ms/{subject}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    line = f"neuro/study-ms/{subject}/unknown (acquisition unknown)"
    assert (line in result.stdout.splitlines()) is whole, result.stdout
