"""The ingest contract between an agent and the built-in hierarchy store, defined once.

`POST /api/v1/ingest` (one instance) and `POST /api/v1/ingest/batch` (many instances of one
acquisition target, a `multipart/related; type="application/dicom"` body) are specified in
docs/architecture.md. Their paths, query models, part header names, caps and answers live
here; the control plane's routes validate with these models, the agent builds its requests
and reads its answers with them, and the test doubles speak the same.

Imports pydantic, stdlib and `common` only.
"""

from __future__ import annotations

import json
import re
import uuid
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, model_validator

from common.config import RoutingConfig
from common.patterns import metadata_value_problem
from common.routing import (
    RoutingReason,
    contains_control_characters,
    group_id_problem,
    label_problem,
)

INGEST_PATH = "/api/v1/ingest"
INGEST_BATCH_PATH = "/api/v1/ingest/batch"
DICOM_MEDIA_TYPE = "application/dicom"
SOP_INSTANCE_UID_HEADER = "X-Sop-Instance-Uid"
SHA256_HEADER = "X-Sha256"

MIB = 1024 * 1024
# The caps of one batch request: they bound the work a failed request throws away and the
# time one request takes. An instance larger than MAX_BATCH_BYTES goes through INGEST_PATH alone.
MAX_BATCH_INSTANCES = 64
MAX_BATCH_BYTES = 64 * MIB

# Column sizes of the store; a value longer than these cannot be kept faithfully.
LABEL_LENGTH = 255
UID_LENGTH = 64
ROUTING_STRING_LENGTH = 1024

# Session metadata (named groups of metadata patterns beyond the labels): at most this many
# names per request; names are regex group names, values what `metadata_value_problem` allows.
MAX_METADATA_ENTRIES = 64
METADATA_NAME_LENGTH = 64

_METADATA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
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


def _metadata_from_json(value: Any) -> Any:
    # In a query string the metadata travels as one JSON object (`IngestTarget.query_params`).
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError("metadata is not JSON; send a JSON object of name: text") from None
    return value


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    # Messages name the entry's position, never a name or a value (they come from headers).
    for position, (name, text) in enumerate(value.items()):
        if len(name) > METADATA_NAME_LENGTH or not _METADATA_NAME.fullmatch(name):
            raise ValueError(
                f"metadata entry {position + 1}: the name is not a pattern group name "
                f"(letters, digits, underscore, at most {METADATA_NAME_LENGTH} characters)"
            )
        problem = metadata_value_problem(text) if text else "is empty"
        if problem is not None:
            raise ValueError(f"metadata entry {position + 1}: the value {problem}")
    return value


SessionMetadata = Annotated[
    dict[str, str],
    BeforeValidator(_metadata_from_json),
    Field(max_length=MAX_METADATA_ENTRIES),
    AfterValidator(_check_metadata),
]
"""Extra session metadata: name → text, JSON in a query string."""

GroupId = Annotated[str, AfterValidator(_check_group_id)]
ProjectLabel = Annotated[str, AfterValidator(_check_project_label)]
StorableLabel = Annotated[str, AfterValidator(_check_storable_label)]
Uid = Annotated[str, AfterValidator(_check_uid)]
Sha256Hex = Annotated[str, AfterValidator(_check_sha256)]


class IngestStatus(StrEnum):
    """What ingest did with the instance; each of them confirms it is stored."""

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
    metadata: SessionMetadata | None = Field(
        default=None,
        description="Session metadata the site's metadata patterns extracted (name: text), "
        "as one JSON object; merged into the session's (docs/routing.md).",
    )

    @model_validator(mode="after")
    def _routing_is_consistent(self) -> Self:
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

    def query_params(self) -> dict[str, str]:
        """The request's query string: every field that has a value, as text (the metadata
        as one JSON object)."""
        return {
            name: json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
            for name, value in self.model_dump(mode="json").items()
            if value is not None
        }


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


class BatchItemStored(BaseModel):
    """A part of the batch that is now stored (or was already)."""

    sop_instance_uid: str
    file_id: uuid.UUID
    status: IngestStatus


class BatchItemRefused(BaseModel):
    """A part of the batch that was refused; resending the same bytes will not help.

    `sop_instance_uid` is null when the part did not carry a valid one.
    """

    sop_instance_uid: str | None
    error: str


class BatchResult(BaseModel):
    """Answer of `POST /api/v1/ingest/batch`: one item per part, in request order.

    `group`, `project` and `routing_reason` say where the batch's new files were filed; when
    every stored part already existed, where the first of them lives; null when no part
    was stored.
    """

    items: list[BatchItemStored | BatchItemRefused]
    group: str | None
    project: str | None
    routing_reason: RoutingReason | None
