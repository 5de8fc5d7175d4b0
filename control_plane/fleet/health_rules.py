"""How an agent's health becomes a status — ok, degraded, unhealthy, missing — with reasons.

Pure functions. A report is judged once, when it arrives, against the thresholds of the
site's config at that time (`verdict_of_report`; kept with the report and in the history).
Whenever health is read, that verdict is combined with what only the moment can tell
(`judge_agent`): silence, a revoked token, a rejected config — so "missing" follows the clock.
Reasons are sentences for support staff; they hold counts, durations and sizes, never a DICOM
value. Must not import FastAPI or the database layer.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from common.config import SiteConfig
from common.durations import format_duration
from common.messages import TLS_EXPIRY_WARNING_DAYS, HealthReport

MISSED_HEARTBEATS = 3
# Below this share of its filesystem free, an agent is about to refuse images.
DISK_UNHEALTHY_FRACTION = 0.05
DISK_DEGRADED_FRACTION = 0.10
_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB")


class AgentStatus(StrEnum):
    """An agent's (or site's) health, from best to worst."""

    ok = "ok"
    degraded = "degraded"
    """Working, but something needs a look (slow queries or reaps, a rejected config...)."""
    unhealthy = "unhealthy"
    """Not receiving data: listener down or disk full."""
    missing = "missing"
    """Not heard from: nothing is known about what happens at the site."""

    @property
    def severity(self) -> int:
        """0 for ok up to 3 for missing."""
        return _SEVERITY[self]


_SEVERITY = {
    AgentStatus.ok: 0,
    AgentStatus.degraded: 1,
    AgentStatus.unhealthy: 2,
    AgentStatus.missing: 3,
}


def worst(statuses: Iterable[AgentStatus]) -> AgentStatus:
    """The most severe of `statuses`; ok when there are none."""
    return max(statuses, key=lambda status: status.severity, default=AgentStatus.ok)


@dataclass(frozen=True)
class Thresholds:
    """The site-config values health is judged against."""

    query_time: dt.timedelta
    reap_time: dt.timedelta
    upload_failure: dt.timedelta = dt.timedelta(minutes=15)
    spool_age: dt.timedelta = dt.timedelta(hours=2)

    @classmethod
    def of(cls, config: SiteConfig) -> Thresholds:
        """The thresholds of a site config (`timing.*_threshold`)."""
        timing = config.timing
        return cls(
            query_time=timing.query_time_threshold,
            reap_time=timing.reap_time_threshold,
            upload_failure=timing.upload_failure_threshold,
            spool_age=timing.spool_age_threshold,
        )


@dataclass(frozen=True)
class AgentFacts:
    """What the control plane knows about one agent."""

    report_verdict: Verdict | None
    """What its latest report earned when it arrived (`verdict_of_report`)."""
    last_seen_at: dt.datetime | None
    token_active: bool
    config_failed_revision: int | None
    config_failure_reason: str | None


@dataclass(frozen=True)
class Verdict:
    """A status and every reason that contributed to it (empty when ok)."""

    status: AgentStatus
    reasons: tuple[str, ...]


def missing_after(heartbeat_interval: dt.timedelta) -> dt.timedelta:
    """How long an agent may stay silent before it is missing."""
    return MISSED_HEARTBEATS * heartbeat_interval


def judge_agent(
    facts: AgentFacts, *, now: dt.datetime, heartbeat_interval: dt.timedelta
) -> Verdict:
    """The agent's status now: silence and token first, then its config, then what its
    latest report earned."""
    findings: list[tuple[AgentStatus, str]] = []
    if facts.last_seen_at is None:
        findings.append((AgentStatus.missing, "has never connected"))
    elif now - facts.last_seen_at > missing_after(heartbeat_interval):
        findings.append(
            (
                AgentStatus.missing,
                f"no heartbeat for {_duration(now - facts.last_seen_at)}"
                f" (expected every {_duration(heartbeat_interval)})",
            )
        )
    if not facts.token_active:
        findings.append(
            (
                AgentStatus.missing,
                "its token is revoked; issue a new one (POST /api/v1/agents/{id}/token) and"
                " install it on the agent",
            )
        )
    if facts.config_failed_revision is not None:
        findings.append(
            (
                AgentStatus.degraded,
                f"config revision {facts.config_failed_revision} was rejected:"
                f" {facts.config_failure_reason or 'no reason given'}",
            )
        )
    verdict = _verdict(findings)
    if facts.report_verdict is None:
        return verdict
    return Verdict(
        status=worst([verdict.status, facts.report_verdict.status]),
        reasons=verdict.reasons + facts.report_verdict.reasons,
    )


def judge_report(report: HealthReport, thresholds: Thresholds) -> list[tuple[AgentStatus, str]]:
    """What a single report says, as (status, reason) findings; empty when all is well."""
    findings: list[tuple[AgentStatus, str]] = []
    if not report.listener_ok:
        findings.append(
            (AgentStatus.unhealthy, "the DICOM listener is down: no images can be received")
        )
    findings.extend(_disk_findings(report))
    if report.last_query_duration_s is not None:
        took = _seconds(report.last_query_duration_s)
        if took > thresholds.query_time:
            findings.append(
                (
                    AgentStatus.degraded,
                    f"the last query took {_duration(took)}, over the query_time_threshold"
                    f" of {_duration(thresholds.query_time)}",
                )
            )
    findings.extend(_pull_source_findings(report))
    if report.longest_reap_s is not None:
        took = _seconds(report.longest_reap_s)
        if took > thresholds.reap_time:
            window = report.reap_window_s
            within = "" if window is None else f" (within the last {_duration(_seconds(window))})"
            findings.append(
                (
                    AgentStatus.degraded,
                    f"the longest reap took {_duration(took)}, over the reap_time_threshold"
                    f" of {_duration(thresholds.reap_time)}" + within,
                )
            )
    findings.extend(_upload_findings(report, thresholds))
    if report.failed_series:
        latest = report.failed_series_recent[0].reason if report.failed_series_recent else None
        findings.append(
            (
                AgentStatus.degraded,
                f"{report.failed_series} series failed as a whole and did not leave the site"
                + (f" (latest: {latest})" if latest else ""),
            )
        )
    findings.extend(_tls_findings(report))
    if report.failed_instances:
        findings.append(
            (
                AgentStatus.degraded,
                f"{report.failed_instances} instance(s) failed for good and are kept in the"
                " spool for support",
            )
        )
    return findings


def _pull_source_findings(report: HealthReport) -> list[tuple[AgentStatus, str]]:
    """A source that cannot be queried (its last C-FIND round failed, or it never answered a
    C-ECHO before a first round) degrades the agent, naming the source and the error."""
    findings: list[tuple[AgentStatus, str]] = []
    for source in report.pull_sources:
        if source.query_ok is False:
            rounds = source.consecutive_failed_queries
            findings.append(
                (
                    AgentStatus.degraded,
                    f"PULL source {source.source} cannot be queried"
                    f" ({rounds} failed C-FIND round(s) in a row): "
                    f"{source.query_error or 'no reason given'}",
                )
            )
        elif source.query_ok is None and source.echo_ok is False:
            findings.append(
                (
                    AgentStatus.degraded,
                    f"PULL source {source.source} does not answer C-ECHO: "
                    f"{source.echo_error or 'no reason given'}",
                )
            )
        if source.series_short:
            findings.append(
                (
                    AgentStatus.degraded,
                    f"PULL source {source.source}: {source.series_short} series retrieved short"
                    f" ({source.instances_missing} instance(s) missing), retried with a backoff",
                )
            )
    return findings


def _upload_findings(report: HealthReport, thresholds: Thresholds) -> list[tuple[AgentStatus, str]]:
    findings: list[tuple[AgentStatus, str]] = []
    failing = report.uploads_failing_for_s
    if failing is not None and _seconds(failing) > thresholds.upload_failure:
        findings.append(
            (
                AgentStatus.degraded,
                f"uploads have been failing for {_duration(_seconds(failing))}"
                f" ({report.consecutive_upload_failures} failed attempt(s), no success since),"
                f" over the upload_failure_threshold of {_duration(thresholds.upload_failure)}"
                + (f"; latest error: {report.last_error}" if report.last_error else ""),
            )
        )
    age = report.oldest_unuploaded_age_s
    # Outside the upload window the spool is meant to grow old: judged only while it is open.
    if age is not None and report.uploads_open and _seconds(age) > thresholds.spool_age:
        findings.append(
            (
                AgentStatus.degraded,
                f"the oldest instance not yet uploaded is {_duration(_seconds(age))} old, over"
                f" the spool_age_threshold of {_duration(thresholds.spool_age)}"
                f" ({report.spool_depth} instance(s) waiting)",
            )
        )
    return findings


def _tls_findings(report: HealthReport) -> list[tuple[AgentStatus, str]]:
    findings: list[tuple[AgentStatus, str]] = []
    days = report.tls_certificate_days_left
    if days is not None and days <= 0:
        findings.append(
            (
                AgentStatus.unhealthy,
                "the agent's DICOM TLS certificate has expired: peers refuse it; install a "
                "renewed certificate at the dicom.tls.cert path",
            )
        )
    elif days is not None and days <= TLS_EXPIRY_WARNING_DAYS:
        findings.append(
            (
                AgentStatus.degraded,
                f"the agent's DICOM TLS certificate expires in {math.floor(days)} day(s); "
                "renew it (write it over the dicom.tls.cert file or name new files in a config "
                "revision)",
            )
        )
    if report.tls_problem:
        findings.append((AgentStatus.degraded, report.tls_problem))
    return findings


def verdict_of_report(report: HealthReport, thresholds: Thresholds) -> Verdict:
    """The status a report earns on its own (what the history keeps)."""
    return _verdict(judge_report(report, thresholds))


def _disk_findings(report: HealthReport) -> list[tuple[AgentStatus, str]]:
    free = report.disk_free_bytes
    if free <= report.disk_reserve_bytes:
        return [
            (
                AgentStatus.unhealthy,
                f"the spool disk is full: {_size(free)} free, at or below the"
                f" {_size(report.disk_reserve_bytes)} reserve, so images are refused",
            )
        ]
    total = report.disk_total_bytes
    if not total:
        return []
    share = free / total
    if share < DISK_UNHEALTHY_FRACTION:
        status = AgentStatus.unhealthy
    elif share < DISK_DEGRADED_FRACTION:
        status = AgentStatus.degraded
    else:
        return []
    return [(status, f"the spool disk is nearly full: {_size(free)} free of {_size(total)}")]


def _verdict(findings: list[tuple[AgentStatus, str]]) -> Verdict:
    return Verdict(
        status=worst(status for status, _ in findings),
        reasons=tuple(reason for _, reason in findings),
    )


def _seconds(value: float) -> dt.timedelta:
    return dt.timedelta(milliseconds=round(value * 1000))


def _duration(value: dt.timedelta) -> str:
    # Whole seconds read better once there are any; sub-second values keep their milliseconds.
    if value >= dt.timedelta(seconds=1):
        value = dt.timedelta(seconds=round(value.total_seconds()))
    return format_duration(max(value, dt.timedelta(0)))


def _size(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    exponent = min(int(math.log10(count)) // 3, len(_SIZE_UNITS) - 1)
    return f"{count / 1000**exponent:.1f} {_SIZE_UNITS[exponent]}"
