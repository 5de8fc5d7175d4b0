"""Answer models of `POST /api/v1/ingest/batch` (see docs/architecture.md); its query is
`control_plane.schemas.IngestTarget`. Must not import FastAPI or the database layer.
"""

import uuid

from pydantic import BaseModel

from common.routing import RoutingReason
from control_plane.schemas import IngestStatus


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
