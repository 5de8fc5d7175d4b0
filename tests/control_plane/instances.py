"""Synthetic instances for the control-plane tests, as the Part-10 bytes an agent uploads."""

from __future__ import annotations

import hashlib

from pydicom.uid import generate_uid

from tests.support.dicom_factory import encode_part10, make_instance

DEFAULT_SERIES_UID = "1.2.826.0.1.3680043.8.498.1"
DEFAULT_STUDY_UID = "1.2.826.0.1.3680043.8.498.2"


def part10(
    sop_instance_uid: str,
    *,
    series_instance_uid: str = DEFAULT_SERIES_UID,
    study_instance_uid: str = DEFAULT_STUDY_UID,
    variant: int = 0,
) -> bytes:
    """A small image; another `variant` gives other bytes under the same UIDs."""
    return encode_part10(
        make_instance(
            patient_id="SYNTH-0001",
            study_uid=study_instance_uid,
            series_uid=series_instance_uid,
            sop_uid=sop_instance_uid,
            series_description="synthetic",
            study_description="synthetic",
            rows=8,
            cols=8,
            extra={"ImageComments": f"variant {variant}"},
        )
    )


def new_uid() -> str:
    """A fresh UID for a synthetic instance or series."""
    return str(generate_uid())


def sha256_hex(data: bytes) -> str:
    """The digest the agent announces for `data`."""
    return hashlib.sha256(data).hexdigest()
