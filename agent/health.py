"""The agent's health: live counters of the pipeline and a snapshot computed from them + state.

`PipelineCounters` is updated by the reaper and uploader as things happen (it is reset by a
restart); `take_snapshot` joins it with the durable numbers of the state database and the
spool disk into a `HealthSnapshot`, which the CLI prints and the control-plane link reports.
In pull mode the snapshot also holds one `PullSourceHealth` per source (from
`agent.pull.service`) and the query-time check. No field holds a DICOM value.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.state import AgentState
from common.logging import series_key
from common.messages import (
    MAX_PULL_SOURCES,
    MAX_TEXT_LENGTH,
    DicomRejectionCount,
    FailedSeriesReport,
    HealthReport,
    PullSourceReport,
)

_DAY_SECONDS = 86400.0
# "Longest reap" is taken over this sliding window, so one slow series stops counting an
# hour later instead of keeping the agent degraded until it restarts.
REAP_WINDOW_SECONDS = 3600.0
# Reaps remembered inside the window; beyond it the shortest are dropped first (see
# `record_reap`), which never changes the longest.
_MAX_REAPS_KEPT = 4096


__all__ = [
    "FailedSeriesHealth",
    "HealthSnapshot",
    "PipelineCounters",
    "PullSourceHealth",
    "health_report",
    "take_snapshot",
]


@dataclass
class PipelineCounters:
    """What the pipeline did since this process started."""

    uploads_succeeded: int = 0
    uploads_failed: int = 0
    retries_scheduled: int = 0
    deferred_instances: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    upload_failing_since: float | None = None
    """Start of the current run of failed upload attempts; None once one succeeds."""
    consecutive_upload_failures: int = 0
    reap_window_seconds: float = REAP_WINDOW_SECONDS
    # (finished at, duration) of recent series processing, oldest first.
    _reaps: deque[tuple[float, float]] = dataclasses.field(default_factory=deque)

    def record_reap(self, duration: float, at: float) -> None:
        """Remember that processing a series took `duration` seconds, ending at `at`."""
        reaps = self._reaps
        # A reap shorter than a later one can never be the longest again: drop those, so the
        # deque is decreasing in duration and its head is the window's longest.
        while reaps and reaps[-1][1] <= duration:
            reaps.pop()
        reaps.append((at, duration))
        if len(reaps) > _MAX_REAPS_KEPT:
            reaps.popleft()

    def longest_reap(self, now: float) -> float:
        """The longest processing that ended within the window before `now`; 0 if none."""
        reaps = self._reaps
        while reaps and reaps[0][0] < now - self.reap_window_seconds:
            reaps.popleft()
        return reaps[0][1] if reaps else 0.0

    @property
    def longest_reap_seconds(self) -> float:
        """The longest processing still remembered (without expiring the window)."""
        return self._reaps[0][1] if self._reaps else 0.0

    def record_upload_success(self) -> None:
        """An instance was confirmed by its destination: any failing run is over."""
        self.uploads_succeeded += 1
        self.upload_failing_since = None
        self.consecutive_upload_failures = 0

    def record_upload_failure(self, at: float) -> None:
        """An upload attempt failed (retried or for good) at `at`."""
        if self.upload_failing_since is None:
            self.upload_failing_since = at
        self.consecutive_upload_failures += 1

    def record_error(self, message: str, at: float) -> None:
        """Remember the latest error (a PHI-free message) and when it happened."""
        self.last_error = message
        self.last_error_at = at


@dataclass(frozen=True, slots=True)
class PullSourceHealth:
    """One pull source: its start-up C-ECHO, its last query round and its series.

    Times are epoch seconds, durations seconds. A query that failed or timed out shows as
    `last_round_ok` False with `last_query_error`, never as a source without series.
    """

    source: str  # AE_TITLE@host:port
    retrieve: str  # move | get
    echo_ok: bool | None  # None until the start-up C-ECHO answered or failed
    echo_error: str | None
    last_round_at: float | None
    last_round_duration: float | None
    last_round_ok: bool | None  # None before the first round
    last_query_error: str | None  # the last round's error; None once a round succeeds
    consecutive_failed_rounds: int
    series_seen: int  # listed by the last successful round
    series_tracked: int  # in the ledger (including vanished ones inside the grace period)
    series_waiting: int  # still to retrieve: new, short, or grown since retrieved
    series_retrieved: int
    series_short: int  # retrieval stayed short; retried with a backoff
    instances_missing: int  # what the short series lack
    series_vanished: int  # gone from the source, remembered for the grace period
    retrievals_in_flight: int
    retrievals_succeeded: int  # since this process started
    retrievals_failed: int  # since this process started (no answer, failure status, short)
    instances_retrieved: int  # new instances spooled by retrievals since this process started
    last_retrieve_error: str | None
    echo_at: float | None = None


@dataclass(frozen=True, slots=True)
class FailedSeriesHealth:
    """A series failed as a whole, by its PHI-free key; `failed_at` in epoch seconds."""

    series_key: str
    reason: str
    failed_at: float
    instances: int


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """One reading of the agent's health; all durations in seconds, sizes in bytes."""

    at: float
    config_revision: int | None
    spool_depth: int
    spool_bytes: int
    failed_instances: int
    deferred_instances: int
    uploads_open: bool
    uploads_succeeded: int
    uploads_failed: int
    retries_scheduled: int
    oldest_unuploaded_age: float | None
    longest_reap: float
    reap_time_threshold: float
    reap_over_threshold: bool
    disk_free_bytes: int
    disk_headroom_bytes: int
    disk_total_bytes: int
    disk_reserve_bytes: int
    listener_ok: bool
    last_error: str | None
    last_error_at: float | None
    # Pull mode: the longest of the sources' last query rounds against query_time_threshold.
    last_query_duration: float | None = None
    query_time_threshold: float | None = None
    query_over_threshold: bool = False
    pull_sources: tuple[PullSourceHealth, ...] = ()
    failed_series: int = 0
    failed_series_recent: tuple[FailedSeriesHealth, ...] = ()
    skipped_series: dict[str, int] = dataclasses.field(default_factory=dict)
    # (reason, source address, count) of refused associations, largest first.
    dicom_rejections: tuple[tuple[str, str, int], ...] = ()
    tls_certificate_not_after: float | None = None
    tls_certificate_days_left: float | None = None
    tls_problem: str | None = None
    reap_window: float = REAP_WINDOW_SECONDS
    upload_failing_since: float | None = None
    consecutive_upload_failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the CLI and the health report)."""
        return dataclasses.asdict(self)


def take_snapshot(
    state: AgentState,
    counters: PipelineCounters,
    *,
    spool_dir: Path,
    reserve_bytes: int,
    reap_time_threshold: float,
    config_revision: int | None,
    uploads_open: bool,
    listener_ok: bool,
    now: float,
    pull_sources: Sequence[PullSourceHealth] = (),
    query_time_threshold: float | None = None,
    dicom_rejections: Sequence[tuple[str, str, int]] = (),
    tls_certificate_not_after: float | None = None,
    tls_problem: str | None = None,
) -> HealthSnapshot:
    """Compute the health snapshot (blocking: reads the state database and the disk)."""
    stats = state.stats()
    failed_series, recent_failures = state.failed_series()
    skipped_series = state.skipped_series()
    durations = [
        source.last_round_duration
        for source in pull_sources
        if source.last_round_duration is not None
    ]
    last_query = max(durations) if durations else None
    disk = shutil.disk_usage(spool_dir)
    free = disk.free
    oldest = stats.oldest_spooled_at
    longest_reap = counters.longest_reap(now)
    return HealthSnapshot(
        at=now,
        config_revision=config_revision,
        spool_depth=stats.spooled_count,
        spool_bytes=stats.spooled_bytes,
        failed_instances=stats.failed_count,
        deferred_instances=counters.deferred_instances,
        uploads_open=uploads_open,
        uploads_succeeded=counters.uploads_succeeded,
        uploads_failed=counters.uploads_failed,
        retries_scheduled=counters.retries_scheduled,
        oldest_unuploaded_age=None if oldest is None else max(0.0, now - oldest),
        longest_reap=longest_reap,
        reap_time_threshold=reap_time_threshold,
        reap_over_threshold=longest_reap > reap_time_threshold,
        disk_free_bytes=free,
        disk_headroom_bytes=free - reserve_bytes,
        disk_total_bytes=disk.total,
        disk_reserve_bytes=reserve_bytes,
        listener_ok=listener_ok,
        last_error=counters.last_error,
        last_error_at=counters.last_error_at,
        last_query_duration=last_query,
        query_time_threshold=query_time_threshold,
        query_over_threshold=(
            last_query is not None
            and query_time_threshold is not None
            and last_query > query_time_threshold
        ),
        pull_sources=tuple(pull_sources),
        failed_series=failed_series,
        skipped_series=skipped_series,
        failed_series_recent=tuple(
            FailedSeriesHealth(
                series_key(failed.series_instance_uid),
                failed.failure,
                failed.failed_at,
                failed.instances,
            )
            for failed in recent_failures
        ),
        dicom_rejections=tuple(dicom_rejections),
        tls_certificate_not_after=tls_certificate_not_after,
        tls_certificate_days_left=(
            None
            if tls_certificate_not_after is None
            else (tls_certificate_not_after - now) / _DAY_SECONDS
        ),
        tls_problem=tls_problem,
        reap_window=counters.reap_window_seconds,
        upload_failing_since=counters.upload_failing_since,
        consecutive_upload_failures=counters.consecutive_upload_failures,
    )


def _when(at: float | None) -> dt.datetime | None:
    return None if at is None else dt.datetime.fromtimestamp(at, dt.UTC)


def _text(value: str | None) -> str | None:
    return None if value is None else value[:MAX_TEXT_LENGTH]


def pull_source_report(source: PullSourceHealth) -> PullSourceReport:
    """One source's health as the wire report carries it."""
    return PullSourceReport(
        source=source.source[:128],
        echo_ok=source.echo_ok,
        echo_error=_text(source.echo_error),
        echo_at=_when(source.echo_at),
        query_ok=source.last_round_ok,
        query_error=_text(source.last_query_error),
        query_at=_when(source.last_round_at),
        query_duration_s=source.last_round_duration,
        consecutive_failed_queries=source.consecutive_failed_rounds,
        series_short=source.series_short,
        instances_missing=source.instances_missing,
        retrievals_failed=source.retrievals_failed,
        last_retrieve_error=_text(source.last_retrieve_error),
    )


def health_report(snapshot: HealthSnapshot) -> HealthReport:
    """The snapshot as the wire `HealthReport` the link sends every heartbeat."""
    last_error = snapshot.last_error
    at = snapshot.last_error_at
    return HealthReport(
        listener_ok=snapshot.listener_ok,
        uploads_open=snapshot.uploads_open,
        last_query_duration_s=snapshot.last_query_duration,
        longest_reap_s=snapshot.longest_reap,
        reap_window_s=snapshot.reap_window,
        spool_depth=snapshot.spool_depth,
        spool_bytes=snapshot.spool_bytes,
        deferred_uploads=snapshot.deferred_instances,
        failed_instances=snapshot.failed_instances,
        uploads_succeeded=snapshot.uploads_succeeded,
        uploads_failed=snapshot.uploads_failed,
        retries_scheduled=snapshot.retries_scheduled,
        uploads_failing_for_s=(
            None
            if snapshot.upload_failing_since is None
            else max(0.0, snapshot.at - snapshot.upload_failing_since)
        ),
        consecutive_upload_failures=snapshot.consecutive_upload_failures,
        pull_sources=[
            pull_source_report(source) for source in snapshot.pull_sources[:MAX_PULL_SOURCES]
        ],
        oldest_unuploaded_age_s=snapshot.oldest_unuploaded_age,
        disk_free_bytes=snapshot.disk_free_bytes,
        disk_total_bytes=snapshot.disk_total_bytes,
        disk_reserve_bytes=snapshot.disk_reserve_bytes,
        last_error=None if last_error is None else last_error[:MAX_TEXT_LENGTH],
        last_error_at=None if at is None else dt.datetime.fromtimestamp(at, dt.UTC),
        failed_series=snapshot.failed_series,
        skipped_series=dict(snapshot.skipped_series),
        failed_series_recent=[
            FailedSeriesReport(
                series_key=failed.series_key,
                reason=failed.reason[:MAX_TEXT_LENGTH],
                failed_at=dt.datetime.fromtimestamp(failed.failed_at, dt.UTC),
                instances=failed.instances,
            )
            for failed in snapshot.failed_series_recent
        ],
        dicom_rejections=[
            DicomRejectionCount(reason=reason, source=source[:64], count=count)
            for reason, source, count in snapshot.dicom_rejections[:512]
        ],
        tls_certificate_expires_at=(
            None
            if snapshot.tls_certificate_not_after is None
            else dt.datetime.fromtimestamp(snapshot.tls_certificate_not_after, dt.UTC)
        ),
        tls_certificate_days_left=snapshot.tls_certificate_days_left,
        tls_problem=None
        if snapshot.tls_problem is None
        else snapshot.tls_problem[:MAX_TEXT_LENGTH],
    )
