"""What the state database holds, as values: instance and series rows and their states.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "AddOutcome",
    "FailedSeries",
    "InstanceRow",
    "InstanceState",
    "SeriesRow",
    "SpoolStats",
    "SpooledInstance",
    "instance_row",
    "series_row",
]


class InstanceState(StrEnum):
    """Where one received instance is in its life."""

    spooled = "spooled"  # on disk, waiting to be reaped/uploaded
    uploaded = "uploaded"  # confirmed by the destination; file deleted
    skipped = "skipped"  # upload policy said no; file deleted
    failed = "failed"  # permanent error; file kept for support
    superseded = "superseded"  # a newer version of the same SOP instance arrived before upload


class AddOutcome(StrEnum):
    """What `AgentState.add_instance` made of a received instance."""

    new = "new"
    duplicate = "duplicate"  # same SOP Instance UID and content already known: stored once
    replaced = "replaced"  # same SOP Instance UID, other content: a new version


@dataclass(frozen=True, slots=True)
class SpooledInstance:
    """What the SCP hands to the spool after a durable write."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    sha256: str
    size: int
    path: Path  # absolute path of the spooled file
    received_at: float  # epoch seconds when the C-STORE request arrived
    spooled_at: float  # epoch seconds when the file was durable


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """One recorded instance."""

    id: int
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sha256: str
    size: int
    path: Path
    received_at: float
    spooled_at: float
    state: InstanceState
    attempts: int
    next_attempt_at: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """One series and its stored reap decision."""

    series_instance_uid: str
    study_instance_uid: str
    first_received_at: float
    last_received_at: float
    pending: int  # instances in state spooled
    target: dict[str, Any] | None  # the stored reap decision (JSON), None until first reap
    reaped_at: float | None
    failed_at: float | None = None  # set when the series failed as a whole (`fail_series`)
    failure: str | None = None  # why, a PHI-free sentence


@dataclass(frozen=True, slots=True)
class FailedSeries:
    """A series failed as a whole, for health and support."""

    series_instance_uid: str
    failed_at: float
    failure: str
    instances: int  # instances of the series in state failed


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Counts for health reporting."""

    spooled_count: int
    spooled_bytes: int
    failed_count: int
    uploaded_count: int
    skipped_count: int
    oldest_spooled_at: float | None


def instance_row(row: tuple[Any, ...], base: Path) -> InstanceRow:
    """An `InstanceRow` from the columns of `queries.INSTANCE_COLUMNS`; paths under `base`."""
    (
        id_,
        sop,
        series,
        study,
        sha,
        size,
        path,
        received,
        spooled,
        state,
        attempts,
        next_at,
        error,
    ) = row
    return InstanceRow(
        id=id_,
        sop_instance_uid=sop,
        series_instance_uid=series,
        study_instance_uid=study,
        sha256=sha,
        size=size,
        path=base / path,
        received_at=received,
        spooled_at=spooled,
        state=InstanceState(state),
        attempts=attempts,
        next_attempt_at=next_at,
        last_error=error,
    )


def series_row(row: tuple[Any, ...]) -> SeriesRow:
    """A `SeriesRow` from the columns the series queries select."""
    series, study, first, last, pending, target, reaped_at, failed_at, failure = row
    return SeriesRow(
        series_instance_uid=series,
        study_instance_uid=study,
        first_received_at=first,
        last_received_at=last,
        pending=pending,
        target=None if target is None else json.loads(target),
        reaped_at=reaped_at,
        failed_at=failed_at,
        failure=failure,
    )
