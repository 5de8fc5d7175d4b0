"""Request and response bodies of the HTTP API (`XCreate` in, `XPublic` out).

Field names here are the public contract (see DESIGN.md "HTTP API"). Must not import the
database layer: routes and the store translate between rows and these models.
"""

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from common.config import AETitle, SiteConfig
from common.ingest import GroupId, ProjectLabel, StorableLabel
from common.routing import RoutingReason
from control_plane.fleet.labels import label_problems
from control_plane.fleet_schemas import AgentHealth, NoHealth

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def is_valid_name(value: str) -> bool:
    """Whether `value` could name a site (lowercase letters, digits, `_`, `-`; 1-64)."""
    return _NAME.fullmatch(value) is not None


def _check_name(value: str) -> str:
    if not is_valid_name(value):
        raise ValueError(
            "use 1-64 lowercase letters, digits, '_' or '-', starting with a letter or digit"
        )
    return value


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            "not a known IANA timezone; use a name such as 'Europe/Berlin' or 'UTC'"
        ) from exc
    return value


Name = Annotated[str, AfterValidator(_check_name)]
TimezoneName = Annotated[str, AfterValidator(_check_timezone)]


T = TypeVar("T")


class ItemList(BaseModel, Generic[T]):
    """A list answer: `{"items": [...]}` (room for paging fields later)."""

    items: list[T]


class HealthStatus(BaseModel):
    """Answer of `GET /healthz`."""

    status: str


class GroupCreate(BaseModel):
    """Body of `POST /api/v1/groups`."""

    model_config = ConfigDict(extra="forbid")

    id: GroupId
    label: StorableLabel


class GroupPublic(BaseModel):
    """A group as the API shows it."""

    id: str
    label: str


class ProjectCreate(BaseModel):
    """Body of `POST /api/v1/groups/{group}/projects`."""

    model_config = ConfigDict(extra="forbid")

    label: ProjectLabel


class ProjectPublic(BaseModel):
    """A project as the API shows it."""

    id: uuid.UUID
    group: str
    label: str


class FilePublic(BaseModel):
    """A current file of an acquisition."""

    id: uuid.UUID
    sop_instance_uid: str
    sha256: str
    size: int


class AcquisitionPublic(BaseModel):
    """An acquisition with where it sits in the hierarchy and why it landed there."""

    id: uuid.UUID
    group: str
    project: str
    subject: str
    session: str
    label: str
    series_instance_uid: str
    routing_reason: RoutingReason
    routing_string: str | None
    session_id: uuid.UUID
    session_metadata: dict[str, str] = Field(
        default_factory=dict,
        description="The session's metadata from the site's metadata patterns (name: value); "
        "conflicting values are listed by GET /api/v1/sessions/{id}.",
    )
    files: list[FilePublic]


class AcquisitionFilter(BaseModel):
    """Query of `GET /api/v1/acquisitions`; every filter is optional. A filter no label could
    equal (control characters, too long) is refused rather than sent to the database."""

    group: StorableLabel | None = None
    project: StorableLabel | None = None
    subject: StorableLabel | None = None
    session: StorableLabel | None = None


class SiteCreate(BaseModel):
    """Body of `POST /api/v1/sites`."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    timezone: TimezoneName
    labels: dict[str, str] = Field(
        default_factory=dict,
        description='Labels fleet views filter by and rollouts select with, e.g. {"region": "eu"}.',
    )

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        problems = label_problems(labels)
        if problems:
            raise ValueError("; ".join(problems))
        return labels


class SitePublic(BaseModel):
    """A site as the API shows it."""

    name: str
    timezone: str
    labels: dict[str, str] = Field(default_factory=dict)


class ConfigRevisionNumber(BaseModel):
    """Answer of `PUT /api/v1/sites/{site}/config`."""

    revision: int


class ConfigChange(BaseModel):
    """One changed key between two revisions, as a dotted path (e.g. `timing.sleep_time`)."""

    key: str
    old: Any
    new: Any


class SiteConfigPublic(BaseModel):
    """The current config of a site; revision 0 (defaults, no author) when none was set."""

    revision: int
    config: SiteConfig
    created_at: datetime | None
    created_by: str | None


class ConfigRevisionPublic(BaseModel):
    """One stored revision with what it changed against the previous one."""

    revision: int
    config: SiteConfig
    created_at: datetime
    created_by: str
    diff: list[ConfigChange]
    rollout_id: uuid.UUID | None = None
    """The rollout that wrote this revision (None: written by hand)."""
    rollout_action: str | None = None
    """`apply` (the rollout's config) or `rollback` (the revision before it, written back)."""


class ConfigProblems(BaseModel):
    """The `detail` of a 422 answer to an invalid site config."""

    message: str
    problems: list[str]


class InvalidConfigAnswer(BaseModel):
    """The body of a 422 answer to an invalid site config."""

    detail: ConfigProblems


class AgentConfigPublic(BaseModel):
    """Answer of `GET /api/v1/agent/config`: what the calling agent should run."""

    site: str
    timezone: str
    revision: int
    config: SiteConfig
    deid_salt: str = Field(description="The site's de-identification salt; a secret.")
    deployment: Literal["edge", "in-cluster"] = Field(
        default="edge",
        description="How the calling agent was registered; an in-cluster agent refuses a "
        "config without mutual TLS or with mode pull before it starts on it.",
    )


class Deployment(StrEnum):
    """Where an agent runs: a VM at the site, or a pod next to the control plane."""

    edge = "edge"
    in_cluster = "in-cluster"


class AgentCreate(BaseModel):
    """Body of `POST /api/v1/sites/{site}/agents`."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    deployment: Deployment


class AgentCreated(BaseModel):
    """Answer of agent creation: the only time the token is ever shown."""

    id: uuid.UUID
    token: str
    site: str
    name: str


class AgentPublic(BaseModel):
    """An agent as the API shows it.

    `connected`, `config_revision` and `health` are filled by the agent link (websocket);
    until an agent has connected they are false, null and `{}`. `connected` turns false when
    the link closes or stays silent for 3 heartbeat intervals.
    """

    id: uuid.UUID
    site: str
    name: str
    deployment: Deployment
    connected: bool = False
    config_revision: int | None = Field(
        default=None, description="The config revision the agent applied and runs on."
    )
    health: AgentHealth | NoHealth = Field(default_factory=NoHealth)


class RoutingCheckRequest(BaseModel):
    """Body of `POST /api/v1/routing/check`: a routing string, header values, or both.

    `headers` maps DICOM keywords to values as a scanner would send them; `routing_string`
    stands for the value of the first routing field. `calling_ae_title` is the scanner's AE
    title: a `dicom.peers` entry of that title with its own `routing` block is then used
    instead of the site's `routing`, as the agent does. `site` is needed when the control
    plane has more than one site.
    """

    model_config = ConfigDict(extra="forbid")

    site: str | None = Field(default=None, max_length=64)
    routing_string: str | None = Field(default=None, max_length=1024)
    headers: dict[str, str] = Field(default_factory=dict, max_length=64)
    calling_ae_title: AETitle | None = Field(
        default=None, description="The sending scanner's AE title (selects its routing block)."
    )

    @model_validator(mode="after")
    def _something_to_check(self) -> Self:
        if self.routing_string is None and not self.headers:
            raise ValueError("send a routing_string, headers ({KEYWORD: value}), or both")
        return self


class RoutingSuggestion(BaseModel):
    """An existing group (and its nearest project) close to a name that was not found."""

    group: str
    project: str | None


class RoutingCheckAnswer(BaseModel):
    """Where a series would land under the site's current config, and why.

    `upload` false (with `policy_reason`) means the upload policy would skip it; the labels
    are then null. `notes` say which configured label sources were passed over and why.
    """

    upload: bool
    policy_reason: str
    group: str | None
    project: str | None
    subject: str | None
    session: str | None
    acquisition: str | None
    reason: RoutingReason | None
    routing_string: str | None
    routing_from: str | None = Field(
        default=None,
        description="The config block whose fields were searched for the routing string: "
        "routing, or dicom.peers[N].routing for a scanner with its own; null when skipped.",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="Session metadata the metadata patterns would extract.",
    )
    suggestions: list[RoutingSuggestion]
    notes: list[str]


class SessionMove(BaseModel):
    """Body of `POST /api/v1/sessions/{id}/move`: the project the session belongs in."""

    model_config = ConfigDict(extra="forbid")

    group: GroupId
    project: ProjectLabel


class SessionEventPublic(BaseModel):
    """A move or purge of a session: from where, to where, how much, who and when."""

    kind: Literal["moved", "purged"]
    from_group: str
    from_project: str
    to_group: str | None
    to_project: str | None
    files: int
    bytes: int
    actor: str
    at: datetime


class SessionPublic(BaseModel):
    """A session, where it is now and how it got there."""

    id: uuid.UUID
    group: str
    project: str
    subject: str
    session: str
    routing_reason: RoutingReason
    routing_string: str | None
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="What the site's metadata patterns extracted beyond the labels: for each "
        "name, the first value recorded for the session.",
    )
    metadata_conflicts: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Other values later series of the session brought for a name, oldest "
        "first; they never replace the value in `metadata`.",
    )
    history: list[SessionEventPublic]


class PurgedSession(BaseModel):
    """Answer of `DELETE /api/v1/sessions/{id}`: what was deleted, by whom."""

    id: uuid.UUID
    group: str
    project: str
    files: int
    bytes: int
    blobs_removed: int
    purged_by: str
    purged_at: datetime
