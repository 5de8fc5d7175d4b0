"""Request and answer models of `POST /api/v1/ingest/batch` (see docs/architecture.md).

`IngestTarget` is what every instance of a batch shares: the query of `POST /api/v1/ingest`
without the per-instance `sop_instance_uid` and `sha256`, which each part carries in its
headers instead. Must not import FastAPI or the database layer.
"""

import uuid

from pydantic import BaseModel, Field, model_validator

from common.config import RoutingConfig
from common.routing import RoutingReason
from control_plane.models import ROUTING_STRING_LENGTH
from control_plane.schemas import (
    GroupId,
    IngestParams,
    IngestStatus,
    ProjectLabel,
    StorableLabel,
    Uid,
)

_ROUTING_DEFAULTS = RoutingConfig()


class IngestTarget(BaseModel):
    """Where instances go: query of `POST /api/v1/ingest/batch` (fields as in `IngestParams`)."""

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

    @classmethod
    def of_instance(cls, params: IngestParams) -> "IngestTarget":
        """The target part of a single-instance ingest query (already validated there)."""
        return cls.model_construct(**params.model_dump(exclude={"sop_instance_uid", "sha256"}))

    @property
    def reason(self) -> RoutingReason:
        """The agent's routing outcome (defaulted by the validator, so never None here)."""
        return self.routing_reason or RoutingReason.no_routing_string

    @property
    def grouping_key(self) -> str:
        """What groups instances into one acquisition (the series UID unless told otherwise)."""
        return self.acquisition_key or self.series_instance_uid


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
