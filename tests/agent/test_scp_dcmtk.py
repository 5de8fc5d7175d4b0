"""DicomListener receiving from dcmtk's storescu, the reference sender scanners resemble."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from agent.dicom.scp import DicomListener
from agent.state import AgentState
from tests.support.dicom_factory import make_series, write_files
from tests.support.environment import require_executable, tool_env

pytestmark = pytest.mark.dcmtk


def storescu(
    port: int, *arguments: str, calling: str = "SCANNER"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_executable("storescu"),
            "-aet",
            calling,
            "-aec",
            "CONNECTOR",
            "127.0.0.1",
            str(port),
            *arguments,
        ],
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_storescu_sends_a_directory_and_every_instance_is_spooled(
    tmp_path: Path, start_listener: Callable[..., DicomListener], state: AgentState
) -> None:
    study, series = generate_uid(), generate_uid()
    explicit = make_series(
        15,
        patient_id="DCMTK",
        study_uid=study,
        series_uid=series,
        series_description="dcmtk",
        study_description="dcmtk study",
    )
    implicit = make_series(
        5,
        patient_id="DCMTK",
        study_uid=study,
        series_uid=series,
        series_description="dcmtk",
        study_description="dcmtk study",
        transfer_syntax=ImplicitVRLittleEndian,
    )
    sent = {ds.SOPInstanceUID: ds for ds in explicit + implicit}
    write_files(sent.values(), tmp_path / "outgoing")
    listener = start_listener()

    result = storescu(listener.port, "+sd", str(tmp_path / "outgoing"))

    assert result.returncode == 0, result.stderr
    rows = state.spooled_instances(series)
    assert {row.sop_instance_uid for row in rows} == set(sent)
    for row in rows:
        received = dcmread(row.path)
        assert received.file_meta.SourceApplicationEntityTitle == "SCANNER"
        assert received.PixelData == sent[row.sop_instance_uid].PixelData


def test_storescu_from_a_peer_outside_the_allowlist_is_rejected(
    tmp_path: Path, start_listener: Callable[..., DicomListener], state: AgentState
) -> None:
    (path,) = write_files(
        make_series(
            1,
            patient_id="DCMTK",
            study_uid=generate_uid(),
            series_uid=generate_uid(),
            series_description="dcmtk",
            study_description="dcmtk study",
        ),
        tmp_path / "outgoing",
    )
    listener = start_listener(peers=[("SCANNER", "127.0.0.1")])

    result = storescu(listener.port, str(path), calling="INTRUDER")

    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    assert state.stats().spooled_count == 0
