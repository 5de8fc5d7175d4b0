"""The raw facts of the operational figures, kept until the link sends them.

At the end of each upload batch the upload loop adds one `SeriesFigures` (what was received,
stored, failed, retried, the bytes, when the last instance arrived and when the upload ended,
how long the series waited for the upload window, which scanner sent it). The link sends what
accumulated as a `figures` frame before each heartbeat and drops it only once sent; the control
plane keeps them and computes the figures (`GET /api/v1/sites/{site}/metrics`).

The buffer is in memory: a restart loses what was not yet sent (at most one heartbeat's worth
while the link is up). While the link is down the oldest are dropped beyond `capacity`, and
counted.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from common.messages import MAX_FIGURES_PER_FRAME, SeriesFigures

__all__ = ["FiguresBuffer", "calling_ae_of"]

DEFAULT_CAPACITY = 50_000


class FiguresBuffer:
    """Series figures waiting to be sent, oldest first (event-loop thread only)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._items: deque[SeriesFigures] = deque()
        self._capacity = capacity
        self.dropped = 0
        """Figures dropped because the buffer was full (the link was down for long)."""

    def __len__(self) -> int:
        return len(self._items)

    def add(self, figures: SeriesFigures) -> None:
        """Keep `figures` for the next frame; the oldest is dropped when full."""
        if len(self._items) >= self._capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(figures)

    def take(self, limit: int = MAX_FIGURES_PER_FRAME) -> list[SeriesFigures]:
        """Remove and return up to `limit` of the oldest figures."""
        return [self._items.popleft() for _ in range(min(limit, len(self._items)))]

    def give_back(self, figures: Sequence[SeriesFigures]) -> None:
        """Put figures that could not be sent back in front, in their order."""
        self._items.extendleft(reversed(figures))
        while len(self._items) > self._capacity:
            self._items.pop()
            self.dropped += 1


def calling_ae_of(path: Path) -> str | None:
    """The calling AE title the intake wrote into a spooled file's meta (Source Application
    Entity Title, 0002,0016); None when there is none or the file cannot be read (blocking)."""
    try:
        meta = read_file_meta_info(path)
    except (OSError, InvalidDicomError, ValueError):
        return None
    value = meta.get("SourceApplicationEntityTitle")
    text = "" if value is None else str(value).strip()
    return text[:16] or None
