"""Bodies of the fleet-control API: agent, site and fleet health, tokens, commands.

Kept apart from `control_plane.schemas` (sites, config, hierarchy) so that each module stays
readable; the same rules hold: field names are public contract, no database imports.
"""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.messages import DiagnosticsBundle, HealthReport
from control_plane.fleet.health_rules import AgentStatus


class ConfigFailure(BaseModel):
    """The newest config revision an agent rejected, and why (it runs on its previous one)."""

    revision: int
    reason: str


class AgentHealth(BaseModel):
    """What an agent's link says: its status now with reasons, version and latest report."""

    status: AgentStatus
    reasons: list[str] = Field(description="Why the status is not ok; empty when it is.")
    agent_version: str | None
    last_seen_at: datetime | None = Field(description="When the agent last sent anything.")
    connected_at: datetime | None
    disconnected_at: datetime | None
    reported_at: datetime | None = Field(description="When `report` arrived.")
    report: HealthReport | None
    config_failure: ConfigFailure | None


class NoHealth(BaseModel):
    """The `health` of an agent that never connected: `{}`."""

    model_config = ConfigDict(extra="forbid")


class AgentHealthSummary(BaseModel):
    """One agent in a site's health."""

    id: uuid.UUID
    name: str
    status: AgentStatus
    reasons: list[str]
    connected: bool
    agent_version: str | None
    config_revision: int | None
    last_seen_at: datetime | None


class SiteHealth(BaseModel):
    """Answer of `GET /api/v1/sites/{site}/health`: the worst agent's status decides."""

    site: str
    status: AgentStatus
    reasons: list[str] = Field(description="Each not-ok agent's reasons, prefixed by its name.")
    config_revision: int = Field(description="The site's current config revision.")
    agents: list[AgentHealthSummary]


class SiteAttention(BaseModel):
    """A site that is not ok, and why."""

    site: str
    status: AgentStatus
    reasons: list[str]


class FleetHealth(BaseModel):
    """Answer of `GET /api/v1/fleet/health`: counts, and the sites that need attention."""

    status: AgentStatus
    sites: dict[AgentStatus, int] = Field(description="Number of sites in each status.")
    agents: dict[AgentStatus, int] = Field(description="Number of agents in each status.")
    attention: list[SiteAttention] = Field(description="Sites not ok, worst first.")


class HealthHistoryEntry(BaseModel):
    """One stored health report with the status it earned when it arrived."""

    received_at: datetime
    status: AgentStatus
    reasons: list[str]
    report: HealthReport


class AgentToken(BaseModel):
    """Answer of `POST /api/v1/agents/{id}/token`: the new token, shown this once only."""

    id: uuid.UUID
    token: str


class CommandRequest(BaseModel):
    """Body of `POST /api/v1/agents/{id}/commands`: what the agent should do now."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    args: dict[str, Any] = Field(default_factory=dict)


class CommandAnswer(BaseModel):
    """The agent's answer to a command."""

    id: uuid.UUID
    ok: bool
    detail: str | None
    diagnostics: DiagnosticsBundle | None = Field(
        default=None, description="What a `diagnostics` command collected."
    )


class FailedSeriesPublic(BaseModel):
    """A series an agent could not deliver and keeps, with its files, for support."""

    agent_id: uuid.UUID
    agent: str
    series_key: str = Field(description="The series' PHI-free key, as in the agent's logs.")
    reason: str
    failed_at: datetime
    instances: int


class SeriesActionResult(BaseModel):
    """What one agent did with a retry or discard of a failed series."""

    agent_id: uuid.UUID
    ok: bool
    detail: str | None


class SeriesActionAnswer(BaseModel):
    """Answer of `POST /api/v1/sites/{site}/series/{series_key}/{retry|discard}`."""

    series_key: str
    results: list[SeriesActionResult]
