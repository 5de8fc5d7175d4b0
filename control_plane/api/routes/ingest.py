"""`POST /api/v1/ingest` (one instance) and `POST /api/v1/ingest/batch` (many instances of one
acquisition target) into the hierarchy store, for agents and support."""

from typing import Annotated

from fastapi import APIRouter, Query, Request

from common.ingest import (
    INGEST_BATCH_PATH,
    INGEST_PATH,
    SHA256_HEADER,
    SOP_INSTANCE_UID_HEADER,
    BatchResult,
    IngestParams,
    IngestResult,
    IngestTarget,
)
from control_plane.deps import BlobsDep, IngestDep, SessionDep
from control_plane.hierarchy.ingest import ingest
from control_plane.hierarchy.ingest_batch import BatchLimits, ingest_batch

router = APIRouter(tags=["agent"])

# The contract names full paths; this router is mounted under /api/v1.
_API_PREFIX = "/api/v1"

BATCH_LIMITS = BatchLimits()


@router.post(
    INGEST_PATH.removeprefix(_API_PREFIX),
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
    INGEST_BATCH_PATH.removeprefix(_API_PREFIX),
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
