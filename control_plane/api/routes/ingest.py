"""`POST /api/v1/ingest` (one instance) and `POST /api/v1/ingest/batch` (many instances of one
acquisition target) into the hierarchy store, for agents and support."""

from typing import Annotated

from fastapi import APIRouter, Query, Request

from control_plane.deps import BlobsDep, IngestDep, SessionDep
from control_plane.hierarchy.ingest import ingest
from control_plane.hierarchy.ingest_batch import (
    SHA256_HEADER,
    SOP_INSTANCE_UID_HEADER,
    BatchLimits,
    ingest_batch,
)
from control_plane.hierarchy.ingest_schemas import BatchResult
from control_plane.schemas import IngestParams, IngestResult, IngestTarget

router = APIRouter(tags=["agent"])

BATCH_LIMITS = BatchLimits()


@router.post(
    "/ingest",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def ingest_instance(
    params: Annotated[IngestParams, Query()],
    request: Request,
    principal: IngestDep,
    session: SessionDep,
    blobs: BlobsDep,
) -> IngestResult:
    """Store the Part-10 body (400 on digest mismatch; idempotent on SOP UID + sha256)."""
    return await ingest(session, blobs, params, request.stream(), principal.site_id)


@router.post(
    "/ingest/batch",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": (
                'multipart/related; type="application/dicom"; one Part-10 instance per part,'
                f" with the part headers {SOP_INSTANCE_UID_HEADER} and {SHA256_HEADER};"
                f" at most {BATCH_LIMITS.max_instances} parts and"
                f" {BATCH_LIMITS.max_bytes} bytes of instances"
            ),
            "content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def ingest_instances(
    target: Annotated[IngestTarget, Query()],
    request: Request,
    principal: IngestDep,
    session: SessionDep,
    blobs: BlobsDep,
) -> BatchResult:
    """Store each part of a multipart/related body; per-part results in request order (a bad
    part is refused alone; 413 over the caps, 415 for another media type)."""
    return await ingest_batch(
        session,
        blobs,
        target,
        request.headers.get("content-type"),
        request.stream(),
        principal.site_id,
        BATCH_LIMITS,
    )
