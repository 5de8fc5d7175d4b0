"""What every upload destination promises: the `Destination` protocol and its result types.

The uploader only talks to this protocol; one module per destination implements it (see
`builtin_store.py`). The unit of work is a batch: spooled instances of one series, which share
one hierarchy target, sent in as few requests as the destination's `BatchLimits` allow. A
destination classifies its own failures into `UploadError(retryable=...)` using
`agent.retry.is_retryable`, so the uploader never inspects HTTP details. A destination that
can only send one instance at a time says so with `BatchLimits(max_instances=1, ...)`.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.state import InstanceRow
from common.config import RoutingConfig
from common.hierarchy import HierarchyTarget


@dataclass(frozen=True, slots=True)
class UploadResult:
    """The destination's confirmation: its id for the file and what it did with it."""

    file_id: str
    status: str
    routing_reason: str | None = None
    """Where the store says it filed the instance and why (`unknown_group`...), when it says."""


class UploadError(Exception):
    """An upload that did not succeed; `retryable` says whether trying again can help.

    The message must never hold a DICOM value: it is stored as the instance's last error and
    reported in health.
    """

    def __init__(self, retryable: bool, message: str) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.message = message


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """The most one `Destination.upload_batch` call may carry.

    `max_instances` instances whose sizes add up to at most `max_bytes`; an instance larger
    than `max_bytes` on its own is handed over alone.
    """

    max_instances: int
    max_bytes: int

    def __post_init__(self) -> None:
        if self.max_instances < 1 or self.max_bytes < 1:
            raise ValueError(
                f"batch limits must be at least 1 instance and 1 byte, got {self.max_instances}"
                f" instances and {self.max_bytes} bytes"
            )


class Destination(Protocol):
    """Somewhere instances go once their series has a hierarchy target."""

    @property
    def batch_limits(self) -> BatchLimits:
        """How the uploader must split a series into `upload_batch` calls."""

    async def upload_batch(
        self, instances: Sequence[InstanceRow], target: HierarchyTarget, routing: RoutingConfig
    ) -> list[UploadResult | UploadError]:
        """Send spooled instances of one series (within `batch_limits`); one outcome each.

        Returns, in the order of `instances`, an `UploadResult` for each instance the
        destination confirmed and an `UploadError` for each it refused or could not be sent
        (an unreadable spool file). Returns only once every outcome is known. Raises
        `UploadError` when the request as a whole failed (transport error, 5xx, refusal of
        the whole request): that is then the outcome of every instance.
        """

    async def aclose(self) -> None:
        """Release connections; safe to call more than once."""
