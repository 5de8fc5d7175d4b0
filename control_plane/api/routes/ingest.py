"""`POST /api/v1/ingest`: one instance into the hierarchy store (agents and admin)."""

from typing import Annotated

from fastapi import APIRouter, Query, Request

from control_plane.deps import BlobsDep, PrincipalDep, SessionDep
from control_plane.hierarchy.ingest import ingest
from control_plane.schemas import IngestParams, IngestResult

router = APIRouter(tags=["agent"])


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
    principal: PrincipalDep,
    session: SessionDep,
    blobs: BlobsDep,
) -> IngestResult:
    """Store the Part-10 body (400 on digest mismatch; idempotent on SOP UID + sha256)."""
    return await ingest(session, blobs, params, request.stream(), principal.site_id)
