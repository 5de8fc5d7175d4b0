"""The synthetic MR instances every receiver in the intake benchmark is sent.

Built by the test suite's DICOM factory (tests/support/dicom_factory.py), so the benchmark sends
what the tests send and never a real patient: 256x256 16-bit MR images in explicit VR little
endian, about 130 KB each, with unique SOP Instance UIDs. Must not import pynetdicom or any
dicom-connector package.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_instances(count: int, directory: Path, *, series: int = 10) -> list[Path]:
    """Write count instances of one synthetic MR study into directory; return their paths.

    The study has `series` series of (nearly) equal size, in order: the paths list every
    instance of the first series before the second's, as a scanner sends a study. Several
    series let the agent upload early series while later ones still arrive.
    """
    series = max(1, min(series, count))
    if str(REPO_ROOT) not in sys.path:
        # bench/ scripts run by path, so the repository root (holding tests/) is not importable.
        sys.path.insert(0, str(REPO_ROOT))
    from tests.support.dicom_factory import make_series, write_files

    study_uid = generate_uid()
    size, extra = divmod(count, series)
    paths = []
    for number in range(1, series + 1):
        datasets = make_series(
            size + (1 if number <= extra else 0),
            patient_id="BENCH-0001",
            study_uid=study_uid,
            series_uid=generate_uid(),
            series_description=f"intake benchmark {number}",
            study_description="synthetic MR",
            series_number=number,
            # storescu proposes explicit VR little endian first (-xe): nothing is converted.
            transfer_syntax=ExplicitVRLittleEndian,
        )
        paths += write_files(datasets, directory)
    return paths
