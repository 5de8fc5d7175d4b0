"""DIMSE status codes the intake answers with, by name (PS3.4 Annex B.2.3, PS3.7 Annex C).

A C-STORE handler returns one of these; nothing else in the agent needs raw hex.
Must not import pynetdicom: it holds plain numbers.
"""

from enum import IntEnum


class Status(IntEnum):
    """Statuses a storage SCP sends back to its peer."""

    SUCCESS = 0x0000
    # Failure: the instance was not stored; the peer should resend later.
    OUT_OF_RESOURCES = 0xA700
    # Failure: the data set's SOP Class UID differs from the one the request announced.
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # Failure: the data set cannot be parsed or lacks what the intake needs.
    CANNOT_UNDERSTAND = 0xC000
    # Failure: something went wrong on our side while storing.
    PROCESSING_FAILURE = 0x0110

    @property
    def is_success(self) -> bool:
        """True for the one status that tells the peer the instance is safe with us."""
        return self is Status.SUCCESS
