"""One reap of a complete series: upload policy, routing string, hierarchy target.

The decision is taken once per series from the header of its first spooled instance and
stored in the state database (`set_series_target`) before any instance is skipped or
uploaded, so a crash never re-decides, and instances arriving after the reap (late
instances) follow the stored decision into the same acquisition.

Under a de-identifying profile the upload policy and the routing string are read from the
original header (they are what the operator typed), while the labels taken from the header
(subject, session, acquisition and the UIDs behind them) come from the de-identified header of
the same instance, so no identifying value names a place in the hierarchy. A series whose
first instance cannot be de-identified fails as a whole (`AgentState.fail_series`).

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from agent.headers import HeaderReadError, UnknownKeywordError, read_series_header
from agent.outgoing import DeidProfile
from agent.state import AgentState, InstanceRow, SeriesRow
from common.config import SiteConfig, dicom_keywords
from common.decision import plan_series
from common.deid.errors import DeidError
from common.hierarchy import HierarchyTarget, SeriesHeader
from common.logging import series_key
from common.routing import RoutingReason

DECISION_FORMAT = 1

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SeriesDecision:
    """What the reap decided for a series: skip it, or upload it to `target`."""

    upload: bool
    reason: str
    target: HierarchyTarget | None

    def to_json(self) -> dict[str, Any]:
        """The JSON stored as the series' target in the state database."""
        target = None
        if self.target is not None:
            target = dataclasses.asdict(self.target)
            target["routing_reason"] = str(self.target.routing_reason)
            target["metadata"] = dict(self.target.metadata)
            target["label_notes"] = list(self.target.label_notes)
        return {
            "format": DECISION_FORMAT,
            "upload": self.upload,
            "reason": self.reason,
            "target": target,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> SeriesDecision:
        """Read back a stored decision; raise ValueError for one this agent did not write."""
        if document.get("format") != DECISION_FORMAT:
            raise ValueError(
                f"stored series decision has format {document.get('format')!r}, "
                f"expected {DECISION_FORMAT}"
            )
        stored = document.get("target")
        target = None
        if stored is not None:
            target = HierarchyTarget(
                **{
                    **stored,
                    "routing_reason": RoutingReason(stored["routing_reason"]),
                    "label_notes": tuple(stored.get("label_notes", ())),
                }
            )
        return cls(upload=bool(document["upload"]), reason=str(document["reason"]), target=target)


@dataclass(frozen=True, slots=True)
class ReapOutcome:
    """The result of one reap: the decision (None if no header could be read) and its cost."""

    decision: SeriesDecision | None
    reused: bool
    skipped: int
    failed: int
    started_at: float
    ended_at: float
    failure: str | None = None  # why the series failed as a whole in this reap

    @property
    def duration(self) -> float:
        """Seconds the reap took."""
        return self.ended_at - self.started_at


class ReapError(Exception):
    """A series could not be reaped for a reason outside the series itself (config, state)."""


class Reaper:
    """Takes (or reuses) the upload decision of due series; blocking work runs in threads."""

    def __init__(self, state: AgentState, *, clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._clock = clock

    async def reap(
        self, series: SeriesRow, config: SiteConfig, profile: DeidProfile | None = None
    ) -> ReapOutcome:
        """Decide (or reuse the decision) for one due series and skip it if policy says so.

        With a de-identification `profile`, the hierarchy labels come from the de-identified
        header; a series whose header cannot be de-identified is failed as a whole (the
        outcome's `failure`). Raises `ReapError` when the stored decision is unreadable or the
        config names an unknown keyword; the series then stays spooled, untouched.
        """
        return await asyncio.to_thread(self._reap, series, config, profile)

    def _reap(
        self, series: SeriesRow, config: SiteConfig, profile: DeidProfile | None
    ) -> ReapOutcome:
        started = self._clock()
        uid = series.series_instance_uid
        failed = 0
        failure: str | None = None
        if series.target is not None:
            decision: SeriesDecision | None = stored_decision(series)
            reused = True
        else:
            reused = False
            try:
                decision, failed = self._decide(uid, config, profile, started)
            except DeidError as exc:
                decision, failure = None, f"de-identification failed: {exc}"
                failed = self._state.fail_series(uid, failure)
            if decision is not None:
                self._state.set_series_target(uid, decision.to_json())
        skipped = 0
        if decision is not None and not decision.upload:
            for instance in self._state.spooled_instances(uid):
                self._state.mark_skipped(instance.id, decision.reason)
                skipped += 1
        outcome = ReapOutcome(
            decision, reused, skipped, failed, started, self._clock(), failure=failure
        )
        _log_outcome(uid, outcome)
        return outcome

    def _decide(
        self, uid: str, config: SiteConfig, profile: DeidProfile | None, now: float
    ) -> tuple[SeriesDecision | None, int]:
        """Decide from the first readable instance; unreadable ones are marked failed.

        Raises `DeidError` when the profile cannot de-identify the deciding instance.
        """
        keywords = [keyword for _, keyword in dicom_keywords(config)]
        failed = 0
        for instance in self._state.spooled_instances(uid, now):
            try:
                header = read_series_header(instance.path, keywords)
                decision = decide(header, config)
                if profile is not None and decision.upload:
                    labels = _deidentified_header(instance, profile, keywords)
                    decision = decide(header, config, labels)
            except UnknownKeywordError as exc:
                raise ReapError(f"cannot reap series {series_key(uid)}: {exc}") from exc
            except HeaderReadError as exc:
                # A file the SCP accepted but pydicom cannot parse: keep it for support and
                # let the series be decided from the next instance.
                self._state.mark_failed(instance.id, str(exc))
                failed += 1
                continue
            return decision, failed
        return None, failed


def decide(
    header: SeriesHeader, config: SiteConfig, labels: SeriesHeader | None = None
) -> SeriesDecision:
    """The decision for one series header under one site config (`common.decision`)."""
    plan = plan_series(header, config, labels)
    return SeriesDecision(
        upload=plan.policy.upload, reason=str(plan.policy.reason), target=plan.target
    )


def _deidentified_header(
    instance: InstanceRow, profile: DeidProfile, keywords: Sequence[str]
) -> SeriesHeader:
    try:
        original = instance.path.read_bytes()
    except OSError as exc:
        raise HeaderReadError(
            f"cannot read spool file of instance {instance.id}: {exc.strerror}"
        ) from exc
    copy = profile.deidentifier.deidentify(original)
    try:
        return read_series_header(io.BytesIO(copy.data), keywords)
    except HeaderReadError as exc:
        # The original parsed a moment ago, so the profile broke it.
        raise DeidError(f"the de-identified header is not readable DICOM ({exc})") from exc


def stored_decision(series: SeriesRow) -> SeriesDecision:
    """The decision stored for an already reaped series; raise `ReapError` if unreadable."""
    if series.target is None:
        raise ReapError(f"series {series_key(series.series_instance_uid)} has not been reaped")
    try:
        return SeriesDecision.from_json(series.target)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReapError(
            f"the stored decision of series {series_key(series.series_instance_uid)} "
            f"is unreadable ({type(exc).__name__}: {exc}); it was written by another version"
        ) from exc


def _log_outcome(uid: str, outcome: ReapOutcome) -> None:
    decision = outcome.decision
    if outcome.failure is not None:
        log.error(
            "reap.series_failed",
            series_key=series_key(uid),
            count=outcome.failed,
            error=outcome.failure,
        )
        return
    if decision is None:
        log.error("reap.no_readable_instance", series_key=series_key(uid), count=outcome.failed)
        return
    log.info(
        "reap.done" if not outcome.reused else "reap.reused",
        series_key=series_key(uid),
        status="upload" if decision.upload else "skip",
        reason=decision.reason,
        routing_reason=str(decision.target.routing_reason) if decision.target else None,
        count=outcome.skipped,
        duration_ms=round(outcome.duration * 1000, 3),
    )
