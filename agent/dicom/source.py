"""A pull source as the query/retrieve SCU sees it, whichever requestor engine talks to it:
its address, the error for anything that goes wrong with it, and the `SourceLink` each engine
offers for one open association (`agent.dicom.scu` uses it; `agent.dicom.requestor_lean` and
`agent.dicom.requestor_pynetdicom` provide it).

Must not import pynetdicom. Messages name the source and what went wrong, never a DICOM value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from pydicom.dataset import Dataset

__all__ = [
    "REQUESTOR_ENGINES",
    "Purpose",
    "RequestorEngine",
    "RetrieveCounts",
    "SourceAddress",
    "SourceError",
    "SourceLink",
]

RequestorEngine = Literal["lean", "pynetdicom"]
REQUESTOR_ENGINES: tuple[RequestorEngine, ...] = ("lean", "pynetdicom")
Purpose = Literal["C-ECHO", "C-FIND", "C-MOVE", "C-GET"]
"""What an association is opened for; it decides the presentation contexts proposed."""


class SourceError(Exception):
    """Talking to a pull source failed (no association, no answer in time, a failure status).

    The message names the source and what went wrong, never a DICOM value: it goes to health.
    """


@dataclass(frozen=True, slots=True)
class SourceAddress:
    """Where a pull source listens."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RetrieveCounts:
    """The sub-operation counts of a C-MOVE/C-GET response (None: not given)."""

    completed: int | None = None
    failed: int | None = None
    warning: int | None = None


class SourceLink(Protocol):
    """One open association with a source. `what` names the request in errors ("series-level
    C-FIND"); every method raises `SourceError` when the source does not answer in time, the
    association ends, or it is aborted from another thread."""

    def echo(self) -> int:
        """C-ECHO; the response's status."""
        ...

    def find(self, query: Dataset, what: str) -> Iterator[tuple[int, Dataset | None]]:
        """Study Root C-FIND: (status, identifier) per response, the final one last."""
        ...

    def retrieve(
        self, identifier: Dataset, destination: str | None, what: str
    ) -> Iterator[tuple[int, RetrieveCounts]]:
        """Study Root C-MOVE to `destination`, or C-GET when None: (status, counts) per
        response, the final one last."""
        ...

    def release(self) -> None:
        """Release the association (never raises)."""
        ...

    def abort(self) -> None:
        """Abort the association, from any thread."""
        ...
