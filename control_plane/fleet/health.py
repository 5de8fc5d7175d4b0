"""Agent, site and fleet health as the API shows it: the pieces, judged at a given moment.

An agent's record (what its link last said, as the `agents` row holds it) is combined with
the clock (`health_rules.judge_agent`), so that an agent that went silent turns missing without
anyone writing anything; each latest report's own verdict was judged when it arrived, so no
report is parsed to judge it. `control_plane.fleet.view` keeps these answers in memory; this
module builds them. Must not import FastAPI.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Row, Select, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from common.messages import HealthReport
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
    HealthHistoryEntry,
    NoHealth,
)
from control_plane.models import Agent, AgentHealthReport
from control_plane.schemas import AgentPublic, Deployment

NO_AGENT_REASON = "no agent is registered for this site"


@dataclass(frozen=True, slots=True)
class HealthContext:
    """The moment health is judged at, and how often agents are expected to report."""

    now: dt.datetime
    heartbeat_interval: dt.timedelta


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent's row as the views read it: plain values, no ORM state (a fleet view reads
    thousands of them, and ORM instances cost several times more to build)."""

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
    deployment: str
    connected_at: dt.datetime | None
    disconnected_at: dt.datetime | None
    health_reported_at: dt.datetime | None
    health_report: dict[str, Any] | None


_AGENTS = Agent.__table__


def token_active_column() -> Any:
    """Whether the agent has a token (a revoked one is NULL), as a boolean column."""
    return type_coerce(_AGENTS.c.token_sha256.is_not(None), Boolean).label("token_active")


def select_records() -> Select[*tuple[Any, ...]]:
    """A SELECT of `AgentRecord` columns from `agents` (add joins and filters to it).

    On table columns, not ORM attributes: the rows skip the ORM's loading machinery.
    """
    columns = _AGENTS.c
    return select(
        columns.id,
        columns.site_id,
        columns.name,
        token_active_column(),
        columns.agent_version,
        columns.config_revision,
        columns.config_failed_revision,
        columns.config_failure_reason,
        columns.connected,
        columns.last_seen_at,
        columns.health_status,
        columns.health_reasons,
        columns.deployment,
        columns.connected_at,
        columns.disconnected_at,
        columns.health_reported_at,
        columns.health_report,
    )


def record_of(row: Row[*tuple[Any, ...]]) -> AgentRecord:
    """The record of a row of `select_records()` (extra columns after them are ignored)."""
    return AgentRecord(*row[:_RECORD_WIDTH])


_RECORD_WIDTH = len(AgentRecord.__slots__)


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


def agent_health(agent: AgentRecord, judged: Verdict) -> AgentHealth | NoHealth:
    """The `health` object of an agent (`{}` until it first connected), with its verdict."""
    if agent.connected_at is None:
        return NoHealth()
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


def agent_public(
    agent: AgentRecord, site_name: str, judged: Verdict, *, connected: bool
) -> AgentPublic:
    """An agent as `GET /api/v1/agents/{id}` shows it."""
    return AgentPublic(
        id=agent.id,
        site=site_name,
        name=agent.name,
        deployment=Deployment(agent.deployment),
        connected=connected,
        config_revision=agent.config_revision,
        health=agent_health(agent, judged),
    )


def agent_summary(agent: AgentRecord, judged: Verdict, *, connected: bool) -> AgentHealthSummary:
    """One agent as a site's health lists it."""
    return AgentHealthSummary(
        id=agent.id,
        name=agent.name,
        status=judged.status,
        reasons=list(judged.reasons),
        connected=connected,
        agent_version=agent.agent_version,
        config_revision=agent.config_revision,
        last_seen_at=agent.last_seen_at,
    )


def site_verdict(agents: Iterable[tuple[str, Verdict]]) -> Verdict:
    """A site's status from its agents' (name, verdict), in the order they are listed: the
    worst agent's status, and every agent's reasons prefixed by its name."""
    named = list(agents)
    if not named:
        return Verdict(status=AgentStatus.missing, reasons=(NO_AGENT_REASON,))
    return Verdict(
        status=worst(judged.status for _, judged in named),
        reasons=tuple(f"{name}: {reason}" for name, judged in named for reason in judged.reasons),
    )


def status_counts(statuses: Iterable[AgentStatus]) -> dict[AgentStatus, int]:
    """How many of `statuses` are of each status (every status present, maybe with 0)."""
    counted = Counter(statuses)
    return {status: counted[status] for status in AgentStatus}


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
