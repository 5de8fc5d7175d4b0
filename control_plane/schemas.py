"""Request and response bodies of the HTTP API (`XCreate` in, `XPublic` out).

Field names here are the public contract (see DESIGN.md "HTTP API"). Must not import the
database layer: routes and the store translate between rows and these models.
"""

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from common.config import SiteConfig
from common.ingest import GroupId, ProjectLabel, StorableLabel
from common.routing import RoutingReason
from control_plane.fleet_schemas import AgentHealth, NoHealth

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
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
    files: list[FilePublic]


class AcquisitionFilter(BaseModel):
    """Query of `GET /api/v1/acquisitions`; every filter is optional."""

    group: str | None = None
    project: str | None = None
    subject: str | None = None
    session: str | None = None


class SiteCreate(BaseModel):
    """Body of `POST /api/v1/sites`."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    timezone: TimezoneName


class SitePublic(BaseModel):
    """A site as the API shows it."""

    name: str
    timezone: str


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
