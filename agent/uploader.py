"""The upload loop: due series are reaped, then their spooled instances are uploaded.

`UploadLoop.tick` finds the series that have been quiet for `acquisition_delay` (or whose
retries are due), reaps those without a decision, and turns the rest into `UploadBatch`es —
unless the site's working-hours window is closed, in which case reaping goes on and the
instances are counted as deferred. Under a de-identifying profile every due instance of a
series is de-identified (`agent.outgoing`) before any batch of it is sent, so a series that
cannot be de-identified sends nothing: it is failed as a whole, with the reason, and so is
every instance of it that arrives later. `Uploader.upload_batch` picks the series' destination
(`agent.upload.destinations`: the site's, or its group's), cuts the batch into chunks that fit
that destination's `batch_limits`, sends them with at most `concurrency` chunk requests
in flight across all batches, and books each instance's outcome in the state database:
confirmed → `mark_uploaded` (only then is the spool file deleted), permanent → `mark_failed`,
transient → `schedule_retry` with a jittered backoff, so a retry survives a restart. A chunk
whose request failed as a whole books that failure for each of its instances.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from opentelemetry import trace

from agent.figures import FiguresBuffer, calling_ae_of
from agent.health import PipelineCounters
from agent.http_retry import is_retryable
from agent.outgoing import DeidProfile, Outgoing, OutgoingError
from agent.pull.ledger import PullLedger
from agent.reaper import Reaper, ReapError, SeriesDecision, stored_decision
from agent.retry import backoff
from agent.site import SiteSnapshot
from agent.state import AgentState, InstanceRow, SeriesRow
from agent.tracing import InstanceTiming, PipelineTracer, current_traceparent
from agent.upload.base import BatchLimits, Destination, UploadError, UploadResult
from agent.upload.destinations import Destinations
from agent.upload.slots import Slots
from common.config import RoutingConfig
from common.deid.errors import DeidError
from common.hierarchy import HierarchyTarget
from common.logging import series_key
from common.messages import SeriesFigures

# Bounds the rows held in memory for one series; the rest is picked up by the next tick.
MAX_BATCH = 500
# Transient failures are retried with a backoff capped at agent.retry.BACKOFF_CAP_SECONDS, so
# this many attempts is about a week of a destination that never accepts: then the instance is
# failed with the last error, for support to retry or discard (`retry_series`), instead of
# waiting unseen for ever.
RETRY_BUDGET_ATTEMPTS = 4000
# A series that could not be reaped (bad stored decision, bad keyword) is tried again after
# this long rather than on every tick, so the log says it once a minute, not twice a second.
REAP_ERROR_HOLD_OFF_SECONDS = 60.0

# The wall clock stamps receipt and the event loop's monotonic clock runs the timer; a few
# milliseconds keep the wake-up from landing just before the series counts as quiet.
_DUE_TIMER_MARGIN_SECONDS = 0.01

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class UploadBatch:
    """Spooled instances of one reaped series, handed to the uploader together."""

    series_instance_uid: str
    target: HierarchyTarget
    instances: tuple[InstanceRow, ...]
    dispatched_at: float
    processing_started_at: float | None = None
    """When this series' reap began in the tick that made the batch: its processing time
    (health's reap time) runs from here to the end of the upload."""
    deferred_s: float = 0.0
    """How long the series waited for the working-hours window before this batch."""


@dataclass(frozen=True, slots=True)
class BatchReport:
    """How a batch went."""

    uploaded: int
    retrying: int
    failed: int
    bytes_uploaded: int = 0
    routing_reason: str | None = None
    """Where the destination says it filed the batch and why, when it says (the built-in
    store resolves unknown groups and projects)."""
    traceparent: str | None = None
    """The batch's `series` trace (W3C traceparent), for what is reported about it later."""


def split_into_chunks(
    instances: Sequence[InstanceRow], limits: BatchLimits
) -> list[tuple[InstanceRow, ...]]:
    """`instances` in order, cut into the fewest chunks of even counts that `limits` allow.

    Even counts (200 at 64 a chunk make 4 chunks of 50, not 3 of 64 and one of 8) keep the
    chunks sent side by side about equally long. A chunk is closed early when the next
    instance would take it over `limits.max_bytes`, so an instance larger than that travels
    alone.
    """
    if not instances:
        return []
    count = math.ceil(len(instances) / limits.max_instances)
    smaller, larger_count = divmod(len(instances), count)
    chunks: list[tuple[InstanceRow, ...]] = []
    start = 0
    for number in range(count):
        end = start + smaller + (1 if number < larger_count else 0)
        chunks += _within_bytes(instances[start:end], limits.max_bytes)
        start = end
    return chunks


def _within_bytes(
    instances: Sequence[InstanceRow], max_bytes: int
) -> list[tuple[InstanceRow, ...]]:
    chunks: list[tuple[InstanceRow, ...]] = []
    current: list[InstanceRow] = []
    size = 0
    for instance in instances:
        if current and size + instance.size > max_bytes:
            chunks.append(tuple(current))
            current, size = [], 0
        current.append(instance)
        size += instance.size
    chunks.append(tuple(current))
    return chunks


class Uploader:
    """Uploads batches to their destinations, `concurrency` chunk requests at a time overall."""

    def __init__(
        self,
        state: AgentState,
        destination: Destination | Destinations,
        *,
        concurrency: int,
        counters: PipelineCounters,
        clock: Callable[[], float] = time.time,
        tracer: PipelineTracer | None = None,
        rng: random.Random | None = None,
        outgoing: Outgoing | None = None,
    ) -> None:
        self._state = state
        self._outgoing = outgoing
        self._destinations = (
            destination
            if isinstance(destination, Destinations)
            else Destinations.single(destination)
        )
        self._slots = Slots(concurrency)
        self._counters = counters
        self._clock = clock
        self._tracer = tracer or PipelineTracer()
        self._rng = rng

    @property
    def concurrency(self) -> int:
        """Chunk requests allowed in flight at once."""
        return self._slots.size

    async def set_concurrency(self, concurrency: int) -> None:
        """Allow `concurrency` chunk requests in flight from now on (requests already sent
        over a smaller limit finish)."""
        await self._slots.resize(concurrency)

    @property
    def destinations(self) -> Destinations:
        """The destinations batches are sent to now."""
        return self._destinations

    def replace_destinations(self, destinations: Destinations) -> Destinations:
        """Send the next batches to `destinations`; return the previous set (to retire it)."""
        previous, self._destinations = self._destinations, destinations
        return previous

    async def upload_batch(self, batch: UploadBatch, routing: RoutingConfig) -> BatchReport:
        """Upload every instance of `batch` and book each outcome in the state database.

        The series' destination is chosen once for the whole batch; the instances go in
        chunks that fit its `batch_limits`, at most `concurrency` chunk requests in flight
        across all batches.
        """
        started = self._clock()
        first_received = min(instance.received_at for instance in batch.instances)
        series_span = self._tracer.begin_series(batch.series_instance_uid, first_received)
        # Current while the chunks are sent: destinations put its traceparent on requests.
        with trace.use_span(series_span, end_on_exit=False):
            traceparent = current_traceparent()
            async with self._destinations.lease(batch.target, routing) as destination:
                chunks = split_into_chunks(batch.instances, destination.batch_limits)
                resolved: list[str] = []
                per_chunk = await asyncio.gather(
                    *(
                        self._upload_chunk(destination, chunk, batch, routing, resolved)
                        for chunk in chunks
                    )
                )
        timings = [timing for chunk_timings in per_chunk for timing in chunk_timings]
        self._tracer.finish_series(series_span, batch.series_instance_uid, timings)
        report = BatchReport(
            uploaded=sum(1 for timing in timings if timing.status == "uploaded"),
            retrying=sum(1 for timing in timings if timing.status == "retry"),
            failed=sum(1 for timing in timings if timing.status == "failed"),
            bytes_uploaded=sum(timing.size for timing in timings if timing.status == "uploaded"),
            routing_reason=resolved[0] if resolved else None,
            traceparent=traceparent,
        )
        log.info(
            "upload.batch_done",
            series_key=series_key(batch.series_instance_uid),
            instance_count=len(timings),
            count=report.uploaded,
            duration_ms=round((self._clock() - started) * 1000, 3),
        )
        return report

    async def _upload_chunk(
        self,
        destination: Destination,
        chunk: Sequence[InstanceRow],
        batch: UploadBatch,
        routing: RoutingConfig,
        resolved: list[str] | None = None,
    ) -> list[InstanceTiming]:
        """Send one chunk and book each instance; the store's routing reasons (where it
        filed them) are appended to `resolved`."""
        async with self._slots.slot():
            upload_started = self._clock()
            outcomes: Sequence[UploadResult | Exception]
            try:
                outcomes = await destination.upload_batch(chunk, batch.target, routing)
                if len(outcomes) != len(chunk):
                    raise ValueError(
                        f"the destination returned {len(outcomes)} outcomes for"
                        f" {len(chunk)} instances"
                    )
            # Every failure, expected or not, becomes a booked state of each instance.
            except Exception as exc:
                outcomes = [exc] * len(chunk)
        # Booking happens outside the slot: it is local disk work, and the next chunk's
        # request need not wait for it.
        timings: list[InstanceTiming] = []
        for instance, outcome in zip(chunk, outcomes, strict=True):
            if isinstance(outcome, UploadResult):
                if outcome.routing_reason is not None and resolved is not None:
                    resolved.append(outcome.routing_reason)
                await asyncio.to_thread(self._state.mark_uploaded, instance.id, outcome.file_id)
                self._counters.record_upload_success()
                status = "uploaded"
            else:
                status = await self._book_failure(instance, batch, outcome)
            if status != "retry" and self._outgoing is not None:
                await asyncio.to_thread(self._outgoing.discard, instance.id)
            timings.append(
                InstanceTiming(
                    size=instance.size,
                    attempt=instance.attempts + 1,
                    received_at=instance.received_at,
                    spooled_at=instance.spooled_at,
                    dispatched_at=batch.dispatched_at,
                    upload_started_at=upload_started,
                    upload_ended_at=self._clock(),
                    status=status,
                )
            )
        return timings

    async def _book_failure(self, instance: InstanceRow, batch: UploadBatch, exc: Exception) -> str:
        now = self._clock()
        if isinstance(exc, UploadError):
            message = exc.message
        else:
            # The Destination contract says UploadError only; anything else is a bug in a
            # destination, made visible as this instance's error instead of crashing intake.
            # Only the type is kept: a third-party message may quote a request value.
            message = f"unexpected {type(exc).__name__} in the destination while uploading"
            log.error("upload.unexpected_error", error=message)
        self._counters.record_error(message, now)
        self._counters.record_upload_failure(now)
        key = series_key(batch.series_instance_uid)
        if is_retryable(exc) and instance.attempts + 1 >= RETRY_BUDGET_ATTEMPTS:
            message = f"gave up after {instance.attempts + 1} attempts: {message}"
        elif is_retryable(exc):
            wait = backoff(instance.attempts, rng=self._rng)
            await asyncio.to_thread(self._state.schedule_retry, instance.id, message, now + wait)
            self._counters.retries_scheduled += 1
            log.warning(
                "upload.retry_scheduled",
                series_key=key,
                attempt=instance.attempts + 1,
                duration_ms=round(wait * 1000),
                error=message,
            )
            return "retry"
        await asyncio.to_thread(self._state.mark_failed, instance.id, message)
        self._counters.uploads_failed += 1
        log.error("upload.failed", series_key=key, attempt=instance.attempts + 1, error=message)
        return "failed"


class UploadLoop:
    """Reaps due series and runs their upload batches; owns every batch task it starts."""

    def __init__(
        self,
        state: AgentState,
        reaper: Reaper,
        uploader: Uploader,
        snapshot: SiteSnapshot,
        *,
        counters: PipelineCounters,
        interval: float,
        drain_timeout: float,
        clock: Callable[[], float] = time.time,
        outgoing: Outgoing | None = None,
        figures: FiguresBuffer | None = None,
    ) -> None:
        self.snapshot = snapshot
        self._outgoing = outgoing
        self._figures = figures
        # Since when each series has been held back by a closed upload window.
        self._deferred_since: dict[str, float] = {}
        self._profile_of: SiteSnapshot | None = None
        self._profile: DeidProfile | None = None
        self._profile_error: str | None = None
        self._state = state
        self._reaper = reaper
        self._uploader = uploader
        self._counters = counters
        self._interval = interval
        self._drain_timeout = drain_timeout
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._active: dict[str, asyncio.Task[BatchReport]] = {}
        self._reap_hold: dict[str, float] = {}
        self._window_open: bool | None = None
        self._due_timers: dict[str, asyncio.TimerHandle] = {}

    def wake(self) -> None:
        """Check for due series now instead of at the next interval (event-loop thread only)."""
        self._wake.set()

    def note_arrival(self, series_instance_uid: str) -> None:
        """An instance of this series was just spooled: wake when its quiet period can end.

        Without this, a complete series would wait up to one more `interval` after its
        `acquisition_delay`; each arrival pushes the series' wake-up back (event-loop thread).
        """
        delay = self.snapshot.config.timing.acquisition_delay.total_seconds()
        previous = self._due_timers.pop(series_instance_uid, None)
        if previous is not None:
            previous.cancel()
        self._due_timers[series_instance_uid] = asyncio.get_running_loop().call_later(
            delay + _DUE_TIMER_MARGIN_SECONDS, self._series_may_be_due, series_instance_uid
        )

    def _series_may_be_due(self, series_instance_uid: str) -> None:
        self._due_timers.pop(series_instance_uid, None)
        self._wake.set()

    def stop(self) -> None:
        """Ask `run` to stop dispatching, let in-flight batches finish briefly, and return."""
        self._stopping.set()
        self._wake.set()

    def uploads_open(self, now: float) -> bool:
        """Whether the working-hours window (in the site's timezone) allows uploads at `now`."""
        window = self.snapshot.config.timing.working_hours
        if window is None:
            return True
        local = dt.datetime.fromtimestamp(now, tz=self.snapshot.zone)
        return window.contains(local.time())

    async def run(self) -> None:
        """Tick every `interval` (or when woken) until `stop`; then drain in-flight batches."""
        async with asyncio.TaskGroup() as group:
            while not self._stopping.is_set():
                for batch in await self.tick():
                    task = group.create_task(self._run_batch(batch))
                    self._active[batch.series_instance_uid] = task
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
                self._wake.clear()
            await self._drain()

    async def tick(self) -> list[UploadBatch]:
        """Reap the due series and return the batches to upload now (none outside the window)."""
        now = self._clock()
        timing = self.snapshot.config.timing
        due = await asyncio.to_thread(
            self._state.due_series, now, timing.acquisition_delay.total_seconds()
        )
        window_open = self.uploads_open(now)
        batches: list[UploadBatch] = []
        deferred = 0
        if not self._deid_ready(now):
            return batches
        profile = self._profile
        for series in due:
            uid = series.series_instance_uid
            if uid in self._active or self._reap_hold.get(uid, 0.0) > now:
                continue
            if series.failed_at is not None:
                await self._fail_series(uid, f"its series failed earlier: {series.failure}")
                continue
            processing_started = self._clock()
            decision = await self._decision(series, profile)
            if decision is None or decision.target is None or not decision.upload:
                continue
            if not window_open:
                deferred += series.pending
                self._deferred_since.setdefault(uid, now)
                continue
            instances = await asyncio.to_thread(self._state.spooled_instances, uid, now)
            if instances and profile is not None:
                instances = await self._deidentified(uid, instances, profile)
            if instances:
                batches.append(
                    UploadBatch(
                        uid,
                        decision.target,
                        tuple(instances[:MAX_BATCH]),
                        self._clock(),
                        processing_started,
                        now - self._deferred_since.pop(uid, now),
                    )
                )
        self._counters.deferred_instances = deferred
        self._note_window(window_open, deferred)
        return batches

    def _deid_ready(self, now: float) -> bool:
        """Build the de-identification profile of the current snapshot once; False (and
        nothing may leave) while it cannot be built."""
        snapshot = self.snapshot
        if self._profile_of is not snapshot:
            self._profile_of = snapshot
            try:
                self._profile = DeidProfile.of(snapshot.config.deid, snapshot.deid_salt)
                self._profile_error = None
            except DeidError as exc:
                self._profile = None
                self._profile_error = (
                    f"nothing is uploaded: the de-identification profile of config revision "
                    f"{snapshot.revision} cannot be used: {exc}"
                )
                log.error("deid.profile_unusable", revision=snapshot.revision, error=str(exc))
        if self._profile_error is not None:
            self._counters.record_error(self._profile_error, now)
            return False
        return True

    async def _deidentified(
        self, uid: str, instances: list[InstanceRow], profile: DeidProfile
    ) -> list[InstanceRow]:
        """The de-identified copies of `instances`; none when one of them cannot be made,
        in which case the series has been failed."""
        if self._outgoing is None:
            raise RuntimeError("a de-identifying profile needs the outgoing copies directory")
        outgoing = self._outgoing
        try:
            return await asyncio.to_thread(outgoing.prepare, instances, profile)
        except OutgoingError as exc:
            for instance in instances:
                await asyncio.to_thread(outgoing.discard, instance.id)
            await self._fail_series(uid, exc.reason)
            return []

    async def _fail_series(self, uid: str, reason: str) -> None:
        failed = await asyncio.to_thread(self._state.fail_series, uid, reason)
        self._counters.record_error(
            f"series {series_key(uid)} failed and stays on the agent: {reason}", self._clock()
        )
        log.error("series.failed", series_key=series_key(uid), count=failed, error=reason)

    async def _decision(
        self, series: SeriesRow, profile: DeidProfile | None
    ) -> SeriesDecision | None:
        """The series' decision: reaped now if new; late instances of a skipped one skipped."""
        try:
            if series.target is not None:
                decision = stored_decision(series)
                if decision.upload:
                    return decision
            outcome = await self._reaper.reap(series, self.snapshot.config, profile)
        except ReapError as exc:
            now = self._clock()
            self._reap_hold[series.series_instance_uid] = now + REAP_ERROR_HOLD_OFF_SECONDS
            self._counters.record_error(str(exc), now)
            key = series_key(series.series_instance_uid)
            log.error("reap.failed", series_key=key, error=str(exc))
            return None
        self._reap_hold.pop(series.series_instance_uid, None)
        if not outcome.reused and (outcome.decision is None or not outcome.decision.upload):
            # An uploaded series' processing is recorded when its upload ends (`_run_batch`).
            self._counters.record_reap(outcome.duration, self._clock())
        if outcome.failure is not None:
            key = series_key(series.series_instance_uid)
            self._counters.record_error(
                f"series {key} failed and stays on the agent: {outcome.failure}", self._clock()
            )
        return outcome.decision

    async def _run_batch(self, batch: UploadBatch) -> BatchReport:
        try:
            # Read before the upload: a confirmed instance's spool file is deleted.
            calling_ae, announced = None, None
            if self._figures is not None:
                calling_ae = await asyncio.to_thread(calling_ae_of, batch.instances[0].path)
                announced = await asyncio.to_thread(
                    PullLedger(self._state).announced, batch.series_instance_uid
                )
            report = await self._uploader.upload_batch(batch, self.snapshot.config.routing)
            if self._figures is not None:
                self._figures.add(self._series_figures(batch, report, calling_ae, announced))
            return report
        finally:
            if batch.processing_started_at is not None:
                ended = self._clock()
                self._counters.record_reap(ended - batch.processing_started_at, ended)
            self._active.pop(batch.series_instance_uid, None)
            # The series may hold more than one batch, or retries may already be due.
            self._wake.set()

    def _series_figures(
        self,
        batch: UploadBatch,
        report: BatchReport,
        calling_ae: str | None,
        announced: int | None,
    ) -> SeriesFigures:
        last_received = max(instance.received_at for instance in batch.instances)
        return SeriesFigures(
            series_key=series_key(batch.series_instance_uid),
            calling_ae=calling_ae,
            routing_reason=report.routing_reason or str(batch.target.routing_reason),
            traceparent=report.traceparent,
            # Instances sent for the first time; a retried one was counted when it was new.
            instances_received=sum(1 for instance in batch.instances if instance.attempts == 0),
            instances_announced=announced,
            instances_stored=report.uploaded,
            instances_failed=report.failed,
            instances_retrying=report.retrying,
            bytes_uploaded=report.bytes_uploaded,
            last_received_at=dt.datetime.fromtimestamp(last_received, dt.UTC),
            stored_at=dt.datetime.fromtimestamp(self._clock(), dt.UTC),
            deferred_s=max(0.0, batch.deferred_s),
        )

    async def _drain(self) -> None:
        for timer in self._due_timers.values():
            timer.cancel()
        self._due_timers.clear()
        tasks = list(self._active.values())
        if not tasks:
            return
        log.info("upload.draining", count=len(tasks), duration_ms=self._drain_timeout * 1000)
        _, pending = await asyncio.wait(tasks, timeout=self._drain_timeout)
        # Cancelled uploads stay spooled; ingest is idempotent, so the next start resends them.
        for task in pending:
            task.cancel()

    def _note_window(self, window_open: bool, deferred: int) -> None:
        if window_open == self._window_open:
            return
        if self._window_open is not None or not window_open:
            event = "upload.window_opened" if window_open else "upload.window_closed"
            log.info(event, count=deferred)
        self._window_open = window_open
