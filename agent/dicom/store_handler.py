"""The one C-STORE handler of the intake, whichever engine received the instance: it makes the
instance durable (`agent.dicom.intake`), keeps the association's tally, logs refusals, hands
new series to `on_stored` and returns the status to answer with. The pynetdicom listener, the
lean engine (SCP and C-MOVE destination alike) and the C-GET sink call it.

Must not import pynetdicom. Log lines carry AE titles, hosts, statuses and series keys, never
DICOM values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from pydicom.uid import UID

from agent.dicom.intake import Stored, StoreRefused
from agent.dicom.status import Status
from agent.state import AddOutcome
from common.logging import series_key

__all__ = ["AssociationTally", "StoreHandler"]

_log = structlog.get_logger("agent.dicom.scp")


@dataclass
class AssociationTally:
    """What one association did, for the line logged when it closes."""

    peer_host: str
    opened_at: float = field(default_factory=time.monotonic)
    peer_ae: str | None = None
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes: int = 0
    slot: int | None = None

    def peer_fields(self) -> dict[str, str | None]:
        """The peer's AE title and host, for log lines."""
        return {"peer_ae": self.peer_ae, "peer_host": self.peer_host}


class StoreHandler:
    """Runs one store, counts it, and says which status and error comment to answer with."""

    def __init__(self, on_stored: Callable[[str], None] | None) -> None:
        """`on_stored(series_instance_uid)` is told of every new (not duplicate) instance."""
        self._on_stored = on_stored

    def handle(
        self, tally: AssociationTally | None, store: Callable[[], Stored], sop_class: str
    ) -> tuple[Status, str | None]:
        """Call `store` (which makes one instance durable) and return (status, comment)."""
        try:
            stored = store()
        except StoreRefused as refusal:
            return self._refuse(tally, refusal, sop_class)
        except Exception as exc:
            _log.exception(
                "c-store failed",
                status=f"0x{Status.PROCESSING_FAILURE:04X}",
                error=type(exc).__name__,
                **_fields(tally),
            )
            failure = StoreRefused(
                Status.PROCESSING_FAILURE, "storage failed on the agent; see its log"
            )
            return self._refuse(tally, failure, sop_class)
        duplicate = stored.outcome is AddOutcome.duplicate
        if tally is not None:
            tally.bytes += stored.size
            if duplicate:
                tally.duplicates += 1
            else:
                tally.stored += 1
        series_uid = stored.series_instance_uid
        if self._on_stored is not None and not duplicate and series_uid:
            try:
                self._on_stored(series_uid)
            except Exception:
                # The instance is durable and the reaper polls the state anyway: a lost wake-up
                # only delays it, so the peer still gets Success.
                _log.exception("on_stored callback failed", series_key=series_key(series_uid))
        return Status.SUCCESS, None

    def closed(self, tally: AssociationTally) -> None:
        """Log the line that sums up an association."""
        _log.info(
            "association closed",
            count=tally.stored,
            instance_count=tally.stored + tally.duplicates + tally.failed,
            bytes=tally.bytes,
            duration_ms=round((time.monotonic() - tally.opened_at) * 1000),
            **tally.peer_fields(),
        )

    def _refuse(
        self, tally: AssociationTally | None, refusal: StoreRefused, sop_class: str
    ) -> tuple[Status, str | None]:
        if tally is not None:
            tally.failed += 1
        if refusal.status is not Status.PROCESSING_FAILURE:  # that one was logged with its trace
            _log.warning(
                "c-store refused",
                status=f"0x{refusal.status:04X}",
                sop_class=str(UID(sop_class).name) if sop_class else "unknown",
                reason=refusal.detail,
                **_fields(tally),
            )
        return refusal.status, str(refusal)


def _fields(tally: AssociationTally | None) -> dict[str, str | None]:
    return {} if tally is None else tally.peer_fields()
