"""Counts of refused DICOM associations, by reason and by source address.

Every intake process keeps a `RejectionCounter`; the extra intake processes send theirs to the
agent (`agent.intake_workers`), which adds them up for health (`RejectionCounter.merged`). The
admin guide asks sites to watch for unauthorised addresses: the counts say who knocked and why.
An address is not patient data; no AE title is kept (a scanner's AE title may name a place).

The number of distinct sources kept is bounded, so a scan from many addresses cannot grow the
agent's memory: past `MAX_SOURCES` further ones are counted under `OTHER_SOURCES`.

Must not import pynetdicom: health reads it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from enum import StrEnum

__all__ = ["MAX_SOURCES", "OTHER_SOURCES", "Key", "RejectionCounter", "RejectionReason"]

MAX_SOURCES = 256
OTHER_SOURCES = "other"


class RejectionReason(StrEnum):
    """Why an association (or the connection before it) was refused."""

    unlisted_address = "unlisted_address"
    """The source address is in no `dicom.peers` entry."""
    calling_ae_not_recognised = "calling_ae_not_recognised"
    """The address is listed, but not with this calling AE title."""
    called_ae_not_recognised = "called_ae_not_recognised"
    """The association was addressed to another AE title than `dicom.ae_title`."""
    association_limit = "association_limit"
    """`dicom.max_associations` were open already."""
    tls_handshake_failed = "tls_handshake_failed"
    """No TLS, or a certificate that is missing, expired or from another CA."""


Key = tuple[str, str]  # (reason, source address)


class RejectionCounter:
    """Thread-safe counts of rejections keyed by (reason, source address)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Key, int] = {}
        self._sources: set[str] = set()

    def record(self, reason: RejectionReason, source: str) -> None:
        """Count one rejection of `source` (an IP address) for `reason`."""
        with self._lock:
            if source not in self._sources:
                if len(self._sources) >= MAX_SOURCES:
                    source = OTHER_SOURCES
                else:
                    self._sources.add(source)
            key = (reason.value, source)
            self._counts[key] = self._counts.get(key, 0) + 1

    def counts(self) -> dict[Key, int]:
        """A copy of the counts."""
        with self._lock:
            return dict(self._counts)

    @staticmethod
    def merged(parts: Iterable[dict[Key, int]]) -> list[tuple[str, str, int]]:
        """(reason, source, count) over several processes' counts, largest first."""
        total: dict[Key, int] = {}
        for part in parts:
            for key, count in part.items():
                total[key] = total.get(key, 0) + count
        return sorted(
            ((reason, source, count) for (reason, source), count in total.items()),
            key=lambda row: (-row[2], row[0], row[1]),
        )
