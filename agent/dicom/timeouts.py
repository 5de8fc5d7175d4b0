"""`dicom.timeouts` as the intake engines take them.

Must not import pynetdicom: plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ScpTimeouts"]


@dataclass(frozen=True, slots=True)
class ScpTimeouts:
    """Seconds the SCP waits for a peer (`dicom.timeouts`)."""

    artim: float = 30.0  # connection → A-ASSOCIATE-RQ, release answers, the TLS handshake
    dimse: float = 60.0  # the next DIMSE message
    network: float = 120.0  # no traffic at all on an association
