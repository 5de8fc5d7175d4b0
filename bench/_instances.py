"""The synthetic MR instances every receiver in the intake benchmark is sent.

Built by the test suite's DICOM factory (tests/support/dicom_factory.py), so the benchmark sends
what the tests send and never a real patient: 256x256 16-bit MR images in explicit VR little
endian, about 130 KB each, one series with unique SOP Instance UIDs. Must not import pynetdicom
or any dicom-connector package.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_instances(count: int, directory: Path) -> list[Path]:
    """Write count instances of one synthetic MR series into directory and return their paths."""
    if str(REPO_ROOT) not in sys.path:
        # bench/ scripts run by path, so the repository root (holding tests/) is not importable.
        sys.path.insert(0, str(REPO_ROOT))
    from tests.support.dicom_factory import make_series, write_files

    datasets = make_series(
        count,
        patient_id="BENCH-0001",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="intake benchmark",
        study_description="synthetic MR",
        # storescu proposes explicit VR little endian first (-xe), so nothing is converted.
        transfer_syntax=ExplicitVRLittleEndian,
    )
    return write_files(datasets, directory)
