"""The rounds of one pull source: C-ECHO at start, then query, record, retrieve, sleep.

`SourcePoller.poll_once` is one round: a complete C-FIND round (`QueryRounds`), recorded in
the ledger at once, then every series that became due is retrieved (at most
`max_concurrent_retrievals` at a time over all sources, through the shared `slots`), and the
round ends when those retrievals ended. So a source never has two rounds, or a round and the
retrieval of the same series, at the same time. A failed query is recorded as the source's
error state (health), and the ledger is left as it was; a failed or short retrieval is booked
in the ledger with a backoff and shows in health too.

Time stamps (stability, grace period, backoff) come from the injected `clock`; durations are
measured on the monotonic clock. Blocking DICOM and database work runs in `asyncio.to_thread`.

Must not import pynetdicom (only through `agent.dicom.scu`), HTTP libraries or control_plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent.dicom.scu import RequestorEngine, Scu, SourceAddress, SourceError, SpoolSink
from agent.dicom.tls import TlsFiles
from agent.health import PipelineCounters, PullSourceHealth
from agent.pull.ledger import PullLedger, RoundChanges, TrackedSeries
from agent.pull.query import QueryRounds
from agent.pull.retrieval import RetrievalResult, Retriever
from agent.retry import backoff
from agent.site import SiteSnapshot
from agent.state import AgentState
from common.config import PullSource
from common.logging import series_key

__all__ = ["RETRY_BASE_SECONDS", "RETRY_CAP_SECONDS", "RoundReport", "SourcePoller", "source_key"]

# A failed or short retrieval is tried again after a jittered, growing wait: a PACS that
# refuses a series keeps being asked, but not on every poll.
RETRY_BASE_SECONDS = 30.0
RETRY_CAP_SECONDS = 3600.0

log = structlog.get_logger(__name__)


def source_key(source: PullSource) -> str:
    """How the ledger and health name a source: AE_TITLE@host:port."""
    return str(SourceAddress(source.ae_title, source.host, source.port))


@dataclass(frozen=True, slots=True)
class RoundReport:
    """What one round did: `changes` is None when the query failed (then `error` says why)."""

    ok: bool
    duration: float
    changes: RoundChanges | None
    retrievals: tuple[RetrievalResult, ...] = ()
    failed_retrievals: int = 0
    error: str | None = None


@dataclass
class _Status:
    """The live part of the source's health (reset by a restart; the ledger is durable)."""

    echo_ok: bool | None = None
    echo_error: str | None = None
    echo_at: float | None = None
    last_round_at: float | None = None
    last_round_duration: float | None = None
    last_round_ok: bool | None = None
    last_query_error: str | None = None
    consecutive_failed_rounds: int = 0
    series_seen: int = 0
    in_flight: int = 0
    retrievals_succeeded: int = 0
    retrievals_failed: int = 0
    instances_retrieved: int = 0
    last_retrieve_error: str | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


class SourcePoller:
    """Polls one source; `configure` it with each new site config (event-loop thread only)."""

    def __init__(
        self,
        source: PullSource,
        snapshot: SiteSnapshot,
        *,
        state: AgentState,
        ledger: PullLedger,
        sink: SpoolSink,
        slots: asyncio.Semaphore,
        counters: PipelineCounters,
        clock: Callable[[], float] = time.time,
        round_lock: asyncio.Lock | None = None,
        requestor_engine: RequestorEngine = "lean",
    ) -> None:
        """`round_lock` is held for each round; pass the same lock to a poller that replaces
        this one, so two rounds of one source never overlap. `requestor_engine` talks to the
        source (agent setting `requestor_engine`)."""
        self.key = source_key(source)
        self._state = state
        self._ledger = ledger
        self._sink = sink
        self._counters = counters
        self._clock = clock
        self._round_lock = round_lock or asyncio.Lock()
        self._status = _Status()
        self._source = source
        self._snapshot = snapshot
        self._slots = slots
        self._requestor_engine = requestor_engine
        # Every SCU this poller made: a config change may replace one while a round still
        # uses it, and stop() must abort that one too.
        self._scus: list[Scu] = []
        self._scu, self._queries, self._retriever = self._connect(source, snapshot)

    def configure(
        self, source: PullSource, snapshot: SiteSnapshot, slots: asyncio.Semaphore
    ) -> None:
        """Use a new config from the next round on (timeouts, retrieve method, timing)."""
        if source_key(source) != self.key:
            raise ValueError(f"poller of {self.key} cannot take the source {source_key(source)}")
        own_ae_changed = snapshot.config.dicom.ae_title != self._snapshot.config.dicom.ae_title
        if source != self._source or own_ae_changed:
            self._scu, self._queries, self._retriever = self._connect(source, snapshot)
        self._source, self._snapshot, self._slots = source, snapshot, slots

    def stop(self) -> None:
        """End `run` after the current step; abort the source's open associations."""
        self._status.stopped.set()
        for scu in self._scus:
            scu.abort()

    async def run(self) -> None:
        """C-ECHO once, then a round every `sleep_time` until `stop`."""
        await self.echo()
        while not self._status.stopped.is_set():
            await self.poll_once()
            sleep = self._snapshot.config.timing.sleep_time.total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status.stopped.wait(), sleep)

    async def echo(self) -> bool:
        """C-ECHO the source and record the answer in health; True when it answered."""
        try:
            await asyncio.to_thread(self._scu.echo)
        except SourceError as exc:
            self._status.echo_at = self._clock()
            self._status.echo_ok, self._status.echo_error = False, str(exc)
            self._counters.record_error(str(exc), self._clock())
            log.warning("pull.echo_failed", **self._log_fields(), error=str(exc))
            return False
        self._status.echo_at = self._clock()
        self._status.echo_ok, self._status.echo_error = True, None
        log.info("pull.echo_ok", **self._log_fields())
        return True

    async def poll_once(self) -> RoundReport:
        """One round: query, record, retrieve what became due; see the module docstring."""
        async with self._round_lock:
            return await self._round()

    def health(self) -> PullSourceHealth:
        """The source's health (blocking: reads the ledger)."""
        summary = self._ledger.summary(self.key)
        status = self._status
        return PullSourceHealth(
            source=self.key,
            retrieve=self._source.retrieve,
            echo_ok=status.echo_ok,
            echo_error=status.echo_error,
            echo_at=status.echo_at,
            last_round_at=status.last_round_at,
            last_round_duration=status.last_round_duration,
            last_round_ok=status.last_round_ok,
            last_query_error=status.last_query_error,
            consecutive_failed_rounds=status.consecutive_failed_rounds,
            series_seen=status.series_seen,
            series_tracked=summary.tracked,
            series_waiting=summary.waiting,
            series_retrieved=summary.retrieved,
            series_short=summary.short,
            instances_missing=summary.missing_instances,
            series_vanished=summary.vanished,
            retrievals_in_flight=status.in_flight,
            retrievals_succeeded=status.retrievals_succeeded,
            retrievals_failed=status.retrievals_failed,
            instances_retrieved=status.instances_retrieved,
            last_retrieve_error=status.last_retrieve_error,
        )

    async def _round(self) -> RoundReport:
        config = self._snapshot.config
        started_at, started = self._clock(), time.monotonic()
        since = (
            dt.datetime.fromtimestamp(started_at, tz=self._snapshot.zone) - config.pull.lookback
        ).date()
        try:
            found = await asyncio.to_thread(self._queries.run, since)
        except SourceError as exc:
            return self._round_failed(str(exc), started_at, time.monotonic() - started)
        duration = time.monotonic() - started
        observed_at = self._clock()
        changes = await asyncio.to_thread(
            self._ledger.record_round,
            self.key,
            found,
            observed_at,
            config.timing.grace_period.total_seconds(),
        )
        status = self._status
        status.last_round_at, status.last_round_duration = started_at, duration
        status.last_round_ok, status.last_query_error = True, None
        status.consecutive_failed_rounds, status.series_seen = 0, changes.seen
        due = await asyncio.to_thread(
            self._ledger.due, self.key, observed_at, config.timing.acquisition_delay.total_seconds()
        )
        log.info(
            "pull.round",
            **self._log_fields(),
            count=changes.seen,
            duration_ms=round(duration * 1000, 1),
        )
        outcomes = await asyncio.gather(*(self._retrieve(series) for series in due))
        results = tuple(outcome for outcome in outcomes if outcome is not None)
        failed = sum(1 for outcome in outcomes if outcome is None or not outcome.complete)
        return RoundReport(True, duration, changes, results, failed)

    def _round_failed(self, message: str, started_at: float, duration: float) -> RoundReport:
        status = self._status
        status.last_round_at, status.last_round_duration = started_at, duration
        status.last_round_ok, status.last_query_error = False, message
        status.consecutive_failed_rounds += 1
        self._counters.record_error(message, self._clock())
        log.warning(
            "pull.round_failed",
            **self._log_fields(),
            count=status.consecutive_failed_rounds,
            duration_ms=round(duration * 1000, 1),
            error=message,
        )
        return RoundReport(False, duration, None, error=message)

    async def _retrieve(self, series: TrackedSeries) -> RetrievalResult | None:
        uid = series.series_instance_uid
        retriever = self._retriever
        async with self._slots:
            self._status.in_flight += 1
            started = time.monotonic()
            try:
                result = await asyncio.to_thread(retriever.retrieve, series)
            except SourceError as exc:
                await self._book_failure(series, str(exc))
                return None
            finally:
                self._status.in_flight -= 1
        now = self._clock()
        self._status.instances_retrieved += result.received
        fields = {
            **self._log_fields(),
            "series_key": series_key(uid),
            "count": result.received,
            "instance_count": result.expected,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }
        if result.complete:
            await asyncio.to_thread(
                self._ledger.mark_retrieved, self.key, uid, result.expected, now
            )
            self._status.retrievals_succeeded += 1
            log.info("pull.retrieved", **fields)
            return result
        message = (
            f"series {series_key(uid)} from {self.key}: {result.missing} of {result.expected} "
            f"instances did not arrive after {result.requests} retrieval requests"
            + (f"; {result.problem}" if result.problem else "")
        )
        wait = backoff(series.retrievals, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
        await asyncio.to_thread(
            self._ledger.mark_short, self.key, uid, result.missing, message, now + wait
        )
        self._status.retrievals_failed += 1
        self._status.last_retrieve_error = message
        self._counters.record_error(message, now)
        log.warning("pull.retrieval_short", **fields, error=message)
        return result

    async def _book_failure(self, series: TrackedSeries, message: str) -> None:
        now = self._clock()
        wait = backoff(series.retrievals, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
        await asyncio.to_thread(
            self._ledger.mark_failed, self.key, series.series_instance_uid, message, now + wait
        )
        self._status.retrievals_failed += 1
        self._status.last_retrieve_error = message
        self._counters.record_error(message, now)
        log.warning(
            "pull.retrieval_failed",
            **self._log_fields(),
            series_key=series_key(series.series_instance_uid),
            error=message,
        )

    def _connect(
        self, source: PullSource, snapshot: SiteSnapshot
    ) -> tuple[Scu, QueryRounds, Retriever]:
        own_ae_title = snapshot.config.dicom.ae_title
        scu = Scu(
            SourceAddress(source.ae_title, source.host, source.port),
            calling_ae_title=own_ae_title,
            timeout=source.timeout.total_seconds(),
            engine=self._requestor_engine,
            tls=TlsFiles.of(snapshot.config.dicom.tls),
        )
        self._scus.append(scu)
        retriever = Retriever(
            scu,
            self._state,
            method=source.retrieve,
            destination_ae_title=own_ae_title,
            sink=self._sink,
        )
        return scu, QueryRounds(scu), retriever

    def _log_fields(self) -> dict[str, object]:
        source = self._source
        return {"peer_ae": source.ae_title, "peer_host": source.host, "port": source.port}
