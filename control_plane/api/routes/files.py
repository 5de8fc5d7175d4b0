"""File download: the stored bytes of one file version."""

import uuid

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from control_plane.deps import BlobsDep, FileReaderDep, SessionDep
from control_plane.hierarchy.catalog import get_file

router = APIRouter(tags=["hierarchy"])
DICOM_MEDIA_TYPE = "application/dicom"


@router.get(
    "/files/{file_id}",
    response_class=StreamingResponse,
    responses={200: {"content": {DICOM_MEDIA_TYPE: {}}, "description": "The Part-10 bytes."}},
)
async def download_file(
    file_id: uuid.UUID, _: FileReaderDep, session: SessionDep, blobs: BlobsDep
) -> StreamingResponse:
    """Stream the stored bytes (404 for an unknown id)."""
    file = await get_file(session, file_id)
    # End the read transaction now: on SQLite it holds the write lock, and the download may
    # stream for a long time.
    await session.close()
    blob = await blobs.open(file.sha256)
    return StreamingResponse(
        blob.chunks,
        media_type=DICOM_MEDIA_TYPE,
        headers={
            "Content-Length": str(blob.size),
            "Content-Disposition": f'attachment; filename="{file.sop_instance_uid}.dcm"',
        },
    )
