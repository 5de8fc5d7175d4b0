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

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from common.config import RoutingConfig, SiteConfig
from common.routing import (
    RoutingReason,
    contains_control_characters,
    group_id_problem,
    label_problem,
)
from control_plane.fleet_schemas import AgentHealth, NoHealth
from control_plane.models import LABEL_LENGTH, ROUTING_STRING_LENGTH, UID_LENGTH

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_ROUTING_DEFAULTS = RoutingConfig()


def _check_group_id(value: str) -> str:
    problem = group_id_problem(value)
    if problem is not None:
        raise ValueError(f"the group id {problem}")
    return value


def _check_project_label(value: str) -> str:
    # Project labels are what a routing string names, so they follow the routing grammar.
    problem = label_problem(value)
    if problem is not None:
        raise ValueError(f"the project label {problem}")
    return value


def _check_storable_label(value: str) -> str:
    # Subject, session and acquisition labels come from DICOM headers the agent already
    # vetted; the store only refuses what it cannot keep or show faithfully.
    if not value:
        raise ValueError("the label is empty")
    if len(value) > LABEL_LENGTH:
        raise ValueError(f"the label is longer than {LABEL_LENGTH} characters")
    if contains_control_characters(value):
        raise ValueError("the label contains a control or invisible formatting character")
    return value


def _check_uid(value: str) -> str:
    if len(value) > UID_LENGTH or not _UID.fullmatch(value):
        raise ValueError(f"not a DICOM UID (digits and dots, at most {UID_LENGTH} characters)")
    return value


def _check_sha256(value: str) -> str:
    if not _SHA256_HEX.fullmatch(value):
        raise ValueError("not a sha256 digest; send 64 lowercase hexadecimal characters")
    return value


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


GroupId = Annotated[str, AfterValidator(_check_group_id)]
ProjectLabel = Annotated[str, AfterValidator(_check_project_label)]
StorableLabel = Annotated[str, AfterValidator(_check_storable_label)]
Uid = Annotated[str, AfterValidator(_check_uid)]
Sha256Hex = Annotated[str, AfterValidator(_check_sha256)]
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
    files: list[FilePublic]


class AcquisitionFilter(BaseModel):
    """Query of `GET /api/v1/acquisitions`; every filter is optional. A filter no label could
    equal (control characters, too long) is refused rather than sent to the database."""

    group: StorableLabel | None = None
    project: StorableLabel | None = None
    subject: StorableLabel | None = None
    session: StorableLabel | None = None


class IngestStatus(StrEnum):
    """What ingest did with the instance."""

    created = "created"
    exists = "exists"
    replaced = "replaced"


class IngestTarget(BaseModel):
    """Where instances go: the query of `POST /api/v1/ingest/batch`, which every instance of
    the batch shares (see docs/architecture.md)."""

    group: GroupId | None = None
    project: ProjectLabel | None = None
    subject: StorableLabel
    session: StorableLabel
    acquisition: StorableLabel
    acquisition_key: StorableLabel | None = None
    series_instance_uid: Uid
    study_instance_uid: Uid | None = None
    routing_reason: RoutingReason | None = None
    routing_string: str | None = Field(default=None, max_length=ROUTING_STRING_LENGTH)
    unknown_group: GroupId = _ROUTING_DEFAULTS.unknown_group
    unsorted_project: ProjectLabel = _ROUTING_DEFAULTS.unsorted_project

    @model_validator(mode="after")
    def _routing_is_consistent(self) -> "IngestTarget":
        if (self.group is None) != (self.project is None):
            raise ValueError("group and project go together: send both or neither")
        routed = self.group is not None
        if self.routing_reason is None:
            self.routing_reason = (
                RoutingReason.routed if routed else RoutingReason.no_routing_string
            )
        elif routed != (self.routing_reason is RoutingReason.routed):
            raise ValueError(
                "routing_reason must be 'routed' exactly when group and project are sent"
            )
        return self

    @property
    def reason(self) -> RoutingReason:
        """The agent's routing outcome (defaulted by the validator, so never None here)."""
        return self.routing_reason or RoutingReason.no_routing_string

    @property
    def grouping_key(self) -> str:
        """What groups instances into one acquisition (the series UID unless told otherwise)."""
        return self.acquisition_key or self.series_instance_uid


class IngestParams(IngestTarget):
    """Query of `POST /api/v1/ingest` (see docs/architecture.md); the body is the Part-10 file.

    The target of one instance plus what a batch part carries in its headers instead.
    """

    sop_instance_uid: Uid
    sha256: Sha256Hex


class IngestResult(BaseModel):
    """Answer of `POST /api/v1/ingest`."""

    file_id: uuid.UUID
    status: IngestStatus
    group: str
    project: str
    routing_reason: RoutingReason


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
    deid_salt: str = Field(description="The site's de-identification salt; a secret.")


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
    stands for the value of the site's first routing field. `site` is needed when the control
    plane has more than one site.
    """

    model_config = ConfigDict(extra="forbid")

    site: str | None = Field(default=None, max_length=64)
    routing_string: str | None = Field(default=None, max_length=1024)
    headers: dict[str, str] = Field(default_factory=dict, max_length=64)

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
