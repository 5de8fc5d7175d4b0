"""Agent, site and fleet health as the API shows it, judged at read time.

Reads what the links recorded (`agents` rows, `agent_health_reports`) and combines each
latest report's verdict with the clock (`health_rules.judge_agent`), so that an agent that
went silent turns missing without anyone writing anything. A whole-fleet answer costs two
queries and no report parsing, whatever the number of agents. Must not import FastAPI.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Row, Select, null, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from common.messages import HealthReport
from control_plane.fleet.config_revisions import latest_revision_numbers
from control_plane.fleet.health_rules import (
    AgentFacts,
    AgentStatus,
    Verdict,
    judge_agent,
    missing_after,
    worst,
)
from control_plane.fleet_schemas import (
    AgentHealth,
    AgentHealthSummary,
    ConfigFailure,
    FleetHealth,
    HealthHistoryEntry,
    NoHealth,
    SiteAttention,
    SiteHealth,
)
from control_plane.models import Agent, AgentHealthReport, Site

NO_AGENT_REASON = "no agent is registered for this site"
# Rows handled between two yields to the event loop (a few milliseconds of work).
RECORD_CHUNK = 100


@dataclass(frozen=True, slots=True)
class HealthContext:
    """The moment health is judged at, and how often agents are expected to report."""

    now: dt.datetime
    heartbeat_interval: dt.timedelta


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent's row as the views read it: plain values, no ORM state (a fleet view reads
    thousands of them, and ORM instances cost several times more to build).

    The fields after `health_reasons` are read only for the detailed views (`detail=True`);
    summaries leave them None.
    """

    id: uuid.UUID
    site_id: uuid.UUID
    name: str
    token_active: bool
    agent_version: str | None
    config_revision: int | None
    config_failed_revision: int | None
    config_failure_reason: str | None
    connected: bool
    last_seen_at: dt.datetime | None
    health_status: str | None
    health_reasons: list[str] | None
    deployment: str | None
    connected_at: dt.datetime | None
    disconnected_at: dt.datetime | None
    health_reported_at: dt.datetime | None
    health_report: dict[str, Any] | None


_AGENTS = Agent.__table__
_DETAIL_COLUMNS = (
    "deployment",
    "connected_at",
    "disconnected_at",
    "health_reported_at",
    "health_report",
)


def select_records(*, detail: bool) -> Select[*tuple[Any, ...]]:
    """A SELECT of `AgentRecord` columns from `agents` (add joins and filters to it).

    On table columns, not ORM attributes: the rows skip the ORM's loading machinery.
    """
    columns = _AGENTS.c
    return select(
        columns.id,
        columns.site_id,
        columns.name,
        type_coerce(columns.token_sha256.is_not(None), Boolean).label("token_active"),
        columns.agent_version,
        columns.config_revision,
        columns.config_failed_revision,
        columns.config_failure_reason,
        columns.connected,
        columns.last_seen_at,
        columns.health_status,
        columns.health_reasons,
        *(columns[name] if detail else null().label(name) for name in _DETAIL_COLUMNS),
    )


def record_of(row: Row[*tuple[Any, ...]]) -> AgentRecord:
    """The record of a row of `select_records()` (extra columns after them are ignored)."""
    return AgentRecord(*row[:_RECORD_WIDTH])


_RECORD_WIDTH = len(AgentRecord.__slots__)


async def stream_records(
    session: AsyncSession, statement: Select[*tuple[Any, ...]]
) -> AsyncIterator[list[AgentRecord]]:
    """The records `statement` selects, a chunk at a time.

    Between chunks the event loop serves other requests: a thousand-agent view would
    otherwise hold it for tens of milliseconds, and every small request behind it waits.
    """
    result = await session.stream(statement)
    async for rows in result.partitions(RECORD_CHUNK):
        yield [record_of(row) for row in rows]
        await asyncio.sleep(0)


def is_connected(agent: AgentRecord, context: HealthContext) -> bool:
    """Whether the agent's link is open and was heard from recently.

    The recency check covers a control-plane replica that died holding the link: its rows
    still say connected, but nobody updates `last_seen_at` any more.
    """
    return (
        agent.connected
        and agent.last_seen_at is not None
        and context.now - agent.last_seen_at <= missing_after(context.heartbeat_interval)
    )


def verdict(agent: AgentRecord, context: HealthContext) -> Verdict:
    """The agent's status and reasons now."""
    report_verdict = None
    if agent.health_status is not None:
        report_verdict = Verdict(
            status=AgentStatus(agent.health_status), reasons=tuple(agent.health_reasons or ())
        )
    return judge_agent(
        AgentFacts(
            report_verdict=report_verdict,
            last_seen_at=agent.last_seen_at,
            token_active=agent.token_active,
            config_failed_revision=agent.config_failed_revision,
            config_failure_reason=agent.config_failure_reason,
        ),
        now=context.now,
        heartbeat_interval=context.heartbeat_interval,
    )


def agent_health(agent: AgentRecord, context: HealthContext) -> AgentHealth | NoHealth:
    """The `health` object of an agent (`{}` until it first connected); needs the record
    selected `with_report`."""
    if agent.connected_at is None:
        return NoHealth()
    judged = verdict(agent, context)
    failure = None
    if agent.config_failed_revision is not None:
        failure = ConfigFailure(
            revision=agent.config_failed_revision, reason=agent.config_failure_reason or ""
        )
    report = None
    if agent.health_report is not None:
        report = HealthReport.model_validate(agent.health_report)
    return AgentHealth(
        status=judged.status,
        reasons=list(judged.reasons),
        agent_version=agent.agent_version,
        last_seen_at=agent.last_seen_at,
        connected_at=agent.connected_at,
        disconnected_at=agent.disconnected_at,
        reported_at=agent.health_reported_at,
        report=report,
        config_failure=failure,
    )


async def site_health(session: AsyncSession, site: Site, context: HealthContext) -> SiteHealth:
    """Every agent of the site with its status; the site takes its worst agent's status."""
    revisions = await latest_revision_numbers(session, [site.id])
    summaries: list[AgentHealthSummary] = []
    statement = select_records(detail=False).where(_AGENTS.c.site_id == site.id)
    async for chunk in stream_records(session, statement.order_by(_AGENTS.c.name)):
        summaries.extend(_summary(agent, context) for agent in chunk)
    status, reasons = _site_verdict(summaries)
    return SiteHealth(
        site=site.name,
        status=status,
        reasons=reasons,
        config_revision=revisions[site.id],
        agents=summaries,
    )


async def fleet_health(session: AsyncSession, context: HealthContext) -> FleetHealth:
    """How many sites and agents are in each status, and which sites need attention."""
    sites = (await session.execute(select(Site.id, Site.name).order_by(Site.name))).all()
    by_site: dict[uuid.UUID, list[AgentHealthSummary]] = {site_id: [] for site_id, _ in sites}
    statement = select_records(detail=False).order_by(_AGENTS.c.name)
    async for chunk in stream_records(session, statement):
        for agent in chunk:
            by_site[agent.site_id].append(_summary(agent, context))
    site_statuses: list[AgentStatus] = []
    attention: list[SiteAttention] = []
    for site_id, site_name in sites:
        status, reasons = _site_verdict(by_site[site_id])
        site_statuses.append(status)
        if status is not AgentStatus.ok:
            attention.append(SiteAttention(site=site_name, status=status, reasons=reasons))
    attention.sort(key=lambda entry: (-entry.status.severity, entry.site))
    return FleetHealth(
        status=worst(site_statuses),
        sites=_counts(site_statuses),
        agents=_counts(summary.status for summaries in by_site.values() for summary in summaries),
        attention=attention,
    )


async def health_history(
    session: AsyncSession, agent_id: uuid.UUID, limit: int
) -> list[HealthHistoryEntry]:
    """The agent's newest `limit` stored reports, newest first."""
    reports = await session.scalars(
        select(AgentHealthReport)
        .where(AgentHealthReport.agent_id == agent_id)
        .order_by(AgentHealthReport.received_at.desc())
        .limit(limit)
    )
    return [
        HealthHistoryEntry(
            received_at=entry.received_at,
            status=AgentStatus(entry.status),
            reasons=entry.reasons,
            report=HealthReport.model_validate(entry.report),
        )
        for entry in reports
    ]


def _summary(agent: AgentRecord, context: HealthContext) -> AgentHealthSummary:
    judged = verdict(agent, context)
    return AgentHealthSummary(
        id=agent.id,
        name=agent.name,
        status=judged.status,
        reasons=list(judged.reasons),
        connected=is_connected(agent, context),
        agent_version=agent.agent_version,
        config_revision=agent.config_revision,
        last_seen_at=agent.last_seen_at,
    )


def _site_verdict(summaries: list[AgentHealthSummary]) -> tuple[AgentStatus, list[str]]:
    if not summaries:
        return AgentStatus.missing, [NO_AGENT_REASON]
    return (
        worst(summary.status for summary in summaries),
        [f"{summary.name}: {reason}" for summary in summaries for reason in summary.reasons],
    )


def _counts(statuses: Iterable[AgentStatus]) -> dict[AgentStatus, int]:
    counted = Counter(statuses)
    return {status: counted[status] for status in AgentStatus}
