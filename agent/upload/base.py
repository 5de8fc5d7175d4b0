"""What every upload destination promises: the `Destination` protocol and its result types.

The uploader only talks to this protocol; one module per destination implements it (see
`builtin_store.py`). A destination classifies its own failures into `UploadError(retryable=...)`
using `agent.retry.is_retryable`, so the uploader never inspects HTTP details.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

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


class UploadError(Exception):
    """An upload that did not succeed; `retryable` says whether trying again can help.

    The message must never hold a DICOM value: it is stored as the instance's last error and
    reported in health.
    """

    def __init__(self, retryable: bool, message: str) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.message = message


class Destination(Protocol):
    """Somewhere instances go once their series has a hierarchy target."""

    async def upload(
        self, instance: InstanceRow, target: HierarchyTarget, routing: RoutingConfig
    ) -> UploadResult:
        """Send one spooled instance; return only once the destination confirmed it.

        Raises `UploadError` for every failure.
        """

    async def aclose(self) -> None:
        """Release connections; safe to call more than once."""
