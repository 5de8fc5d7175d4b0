"""Request and answer models of the rollout routes (`/api/v1/rollouts`) and of site labels.

The field names of `RolloutCreate` and `RolloutPublic` marked contract in DESIGN.md (`sites`,
`config`, `stages`, `soak`, `id`, `state`) stay as they are. Must not import FastAPI.
"""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.durations import Duration, format_duration
from control_plane.fleet.labels import label_problems
from control_plane.fleet.rollout_plan import RolloutState, stage_problems
from control_plane.schemas import Name

DEFAULT_STAGES = (10, 50, 100)


class ConfigMode(StrEnum):
    """How a rollout's `config` changes each site's config."""

    patch = "patch"
    """An RFC 7396 JSON merge patch of each site's current config (`null` removes a key)."""
    whole = "replace"
    """A whole site config that replaces each site's config."""


class SiteLabels(BaseModel):
    """Body of `PUT /api/v1/sites/{site}/labels`: the site's whole label set."""

    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str]

    @field_validator("labels")
    @classmethod
    def _valid(cls, labels: dict[str, str]) -> dict[str, str]:
        problems = label_problems(labels)
        if problems:
            raise ValueError("; ".join(problems))
        return labels


class LabelValue(BaseModel):
    """Body of `PUT /api/v1/sites/{site}/labels/{key}`."""

    model_config = ConfigDict(extra="forbid")

    value: str


class RolloutCreate(BaseModel):
    """Body of `POST /api/v1/rollouts`."""

    model_config = ConfigDict(extra="forbid")

    sites: list[Name] | Literal["all"] | None = Field(
        default=None,
        description='The sites to change: a list of names, or "all". With `labels`, only the'
        " sites that also carry those labels.",
    )
    labels: dict[str, str] | None = Field(
        default=None,
        description='Select the sites carrying every one of these labels (e.g. {"region": "eu"}).',
    )
    config: dict[str, Any] = Field(description="The patch (or, with config_mode replace, config).")
    config_mode: ConfigMode = ConfigMode.patch
    stages: list[int] = Field(
        default=list(DEFAULT_STAGES),
        description="Cumulative percentages of the target's agents, increasing, ending at 100.",
    )
    soak: Duration = Field(
        default=dt.timedelta(minutes=10),
        description="How long every agent of a stage must stay connected and healthy on the"
        " new revision before the next stage starts.",
    )
    apply_timeout: Duration = Field(
        default=dt.timedelta(minutes=10),
        description="How long an agent of a started stage may take to apply the new revision.",
    )

    @model_validator(mode="after")
    def _valid(self) -> Self:
        problems = stage_problems(self.stages)
        if self.sites is None and self.labels is None:
            problems.append('name the sites: "sites": [..] or "all", and/or "labels": {..}')
        if self.sites is not None and self.sites != "all" and not self.sites:
            problems.append('sites: the list is empty; name at least one site, or "all"')
        if self.labels is not None:
            problems += label_problems(self.labels)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RolloutCreated(BaseModel):
    """Answer of `POST /api/v1/rollouts`."""

    id: uuid.UUID
    state: RolloutState


class StageStatus(StrEnum):
    """Where a stage is."""

    pending = "pending"
    applying = "applying"
    """Its sites have the new revision; waiting for every agent to apply it."""
    soaking = "soaking"
    completed = "completed"
    stopped = "stopped"
    """The rollout ended before this stage completed."""


class RolloutStagePublic(BaseModel):
    """One stage of a rollout."""

    stage: int = Field(description="1-based.")
    percent: int
    status: StageStatus
    sites: list[str]
    agents: int = Field(description="Agents of its sites when the rollout was planned.")
    started_at: dt.datetime | None
    soak_started_at: dt.datetime | None
    completed_at: dt.datetime | None


class AgentResult(BaseModel):
    """One agent of a site in a rollout, as judged now."""

    id: uuid.UUID
    name: str
    config_revision: int | None
    applied: bool
    connected: bool
    status: str
    failure: str | None = None


class RolloutSitePublic(BaseModel):
    """One site of a rollout: its stage, the revisions involved, and its agents."""

    site: str
    stage: int = Field(description="1-based.")
    status: str = Field(
        description="pending | pushed (new revision stored and offered) | rolled_back |"
        " kept (changed by someone else since; the rollback left it alone) | unchanged"
        " (the config already said this: nothing stored)"
    )
    previous_revision: int | None
    revision: int | None
    rollback_revision: int | None
    detail: str | None
    agents: list[AgentResult]


class RolloutReason(BaseModel):
    """Why a rollout stopped: what happened, where."""

    what: str = Field(
        description="rejected | unhealthy | disconnected | apply_timeout | invalid_config | aborted"
    )
    site: str | None = None
    agent: str | None = None
    agent_id: uuid.UUID | None = None
    detail: str
    at: dt.datetime


class RolloutDriver(BaseModel):
    """The control plane driving the rollout, and until when its lease holds."""

    id: str
    lease_expires_at: dt.datetime


class RolloutPublic(BaseModel):
    """Answer of `GET /api/v1/rollouts/{id}`."""

    id: uuid.UUID
    state: RolloutState
    rollback_pending: bool = Field(
        description="The sites it changed are still being given their previous revision back."
    )
    config_mode: ConfigMode
    config: dict[str, Any]
    target: dict[str, Any]
    soak: str
    apply_timeout: str
    current_stage: int = Field(description="1-based; len(stages) + 1 once all completed.")
    stages: list[RolloutStagePublic]
    sites: list[RolloutSitePublic]
    reason: RolloutReason | None
    created_at: dt.datetime
    created_by: str
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    driver: RolloutDriver | None


class RolloutSummary(BaseModel):
    """One rollout as `GET /api/v1/rollouts` lists it."""

    id: uuid.UUID
    state: RolloutState
    rollback_pending: bool
    stages: list[int]
    current_stage: int
    sites: int
    created_at: dt.datetime
    created_by: str
    finished_at: dt.datetime | None
    reason: RolloutReason | None


def duration_text(seconds: float) -> str:
    """A duration in seconds as the config writes durations (`10m`, `1s`)."""
    return format_duration(dt.timedelta(seconds=seconds))
