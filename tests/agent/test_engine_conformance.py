"""Conformance of both intake engines with dcmtk's storescu: the transfer syntaxes it proposes
(-xe, -xi, -xb, -xs, -xy, -xd), maximum PDU lengths from 16 KB to 128 KB both ways, and a large
instance (over 50 MB) arriving in thousands of P-DATA fragments. Every instance lands byte for
byte (its data set as sent in the accepted syntax) and is answered Success."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from agent.dicom.listeners import Listener
from agent.state import AgentState
from tests.support.dicom_factory import make_instance, make_series, write_files
from tests.support.environment import require_executable, tool_env

pytestmark = pytest.mark.dcmtk

StartListener = Callable[..., Listener]
# storescu sends a file in whichever proposed context the SCP accepted for it, converting
# between uncompressed syntaxes as needed.
_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


def storescu(port: int, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_executable("storescu"),
            "-aet",
            "SCANNER",
            "-aec",
            "CONNECTOR",
            "127.0.0.1",
            str(port),
            *arguments,
        ],
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def series_files(
    directory: Path, count: int, *, transfer_syntax: str
) -> tuple[str, dict[str, Path]]:
    """(series UID, {SOP instance UID: file}) of a new series written to `directory`."""
    series_uid = generate_uid()
    datasets = make_series(
        count,
        patient_id="CONFORMANCE",
        study_uid=generate_uid(),
        series_uid=series_uid,
        series_description="conformance",
        study_description="conformance",
        transfer_syntax=transfer_syntax,
    )
    paths = write_files(datasets, directory)
    return series_uid, {ds.SOPInstanceUID: path for ds, path in zip(datasets, paths, strict=True)}


@pytest.mark.parametrize(
    ("option", "file_syntax", "landed_syntaxes"),
    [
        ("-xe", ExplicitVRLittleEndian, {"1.2.840.10008.1.2.1"}),
        ("-xi", ExplicitVRLittleEndian, {"1.2.840.10008.1.2"}),
        ("-xb", ExplicitVRLittleEndian, {"1.2.840.10008.1.2.2", *_LITTLE_ENDIAN}),
        ("-xs", ExplicitVRLittleEndian, _LITTLE_ENDIAN),
        ("-xd", ExplicitVRLittleEndian, {"1.2.840.10008.1.2.1.99", *_LITTLE_ENDIAN}),
        ("-xy", JPEGBaseline8Bit, {str(JPEGBaseline8Bit)}),
    ],
)
def test_storescu_transfer_syntax_options(
    tmp_path: Path,
    start_listener: StartListener,
    state: AgentState,
    option: str,
    file_syntax: str,
    landed_syntaxes: set[str],
) -> None:
    series_uid, files = series_files(tmp_path / "out", 3, transfer_syntax=file_syntax)
    listener = start_listener()

    result = storescu(listener.port, option, *map(str, files.values()))

    assert result.returncode == 0, result.stderr
    rows = {row.sop_instance_uid: row for row in state.spooled_instances(series_uid)}
    assert set(rows) == set(files)
    for uid, path in files.items():
        received = dcmread(rows[uid].path)
        assert str(received.file_meta.TransferSyntaxUID) in landed_syntaxes
        sent = dcmread(path)
        syntaxes = {str(received.file_meta.TransferSyntaxUID), str(file_syntax)}
        if len(syntaxes) == 1 or syntaxes <= _LITTLE_ENDIAN:
            assert received.PixelData == sent.PixelData
        assert received.SOPInstanceUID == uid


@pytest.mark.parametrize(("receive_pdu", "send_pdu"), [(16384, 16384), (131072, 131072)])
def test_storescu_with_maximum_pdu_lengths_from_16_to_128_kb(
    tmp_path: Path,
    start_listener: StartListener,
    state: AgentState,
    receive_pdu: int,
    send_pdu: int,
) -> None:
    series_uid, files = series_files(tmp_path / "out", 4, transfer_syntax=ExplicitVRLittleEndian)
    listener = start_listener()

    result = storescu(
        listener.port,
        "--max-pdu",
        str(receive_pdu),
        "--max-send-pdu",
        str(send_pdu),
        *map(str, files.values()),
    )

    assert result.returncode == 0, result.stderr
    rows = {row.sop_instance_uid: row for row in state.spooled_instances(series_uid)}
    assert set(rows) == set(files)
    for uid, path in files.items():
        assert dcmread(rows[uid].path).PixelData == dcmread(path).PixelData


def test_a_50_mb_instance_in_16_kb_pdus_lands_whole(
    tmp_path: Path, start_listener: StartListener, state: AgentState
) -> None:
    ds = make_instance(
        patient_id="CONFORMANCE",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="large",
        study_description="conformance",
        rows=5200,
        cols=5200,  # 16-bit pixels: 54 MB, over 3,000 P-DATA-TF PDUs of 16 KB
    )
    (path,) = write_files([ds], tmp_path / "out")
    listener = start_listener()

    result = storescu(listener.port, "--max-send-pdu", "16384", str(path))

    assert result.returncode == 0, result.stderr
    (row,) = state.spooled_instances(ds.SeriesInstanceUID)
    assert row.size > 50_000_000
    assert dcmread(row.path).PixelData == ds.PixelData
