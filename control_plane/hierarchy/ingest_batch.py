"""Batch ingest: many instances of one acquisition target in one request
(`POST /api/v1/ingest/batch`).

The body is `multipart/related; type="application/dicom"` (the STOW-RS shape, DICOM PS3.18);
each part is one Part-10 instance whose headers `X-Sop-Instance-Uid` and `X-Sha256` say what it
is. Parts are streamed one after the other into the blob store (never the whole body in
memory); a part with bad headers, a digest mismatch or no Part-10 preamble is refused on its
own while the others go on. The accepted instances are then recorded together in one
transaction (`control_plane.hierarchy.ingest.record`), so a batch costs the database about what
one instance did. Must not import FastAPI.
"""

import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from common.ingest import (
    MAX_BATCH_BYTES,
    MAX_BATCH_INSTANCES,
    SHA256_HEADER,
    SOP_INSTANCE_UID_HEADER,
    BatchItemRefused,
    BatchItemStored,
    BatchResult,
    IngestTarget,
    Sha256Hex,
    Uid,
)
from control_plane.errors import BatchTooLargeError, RejectedUploadError
from control_plane.hierarchy.blobs import BlobStore
from control_plane.hierarchy.ingest import ReceivedInstance, receive_instance, record
from control_plane.hierarchy.multipart import DICOM_TYPE, Part, read_parts, related_boundary

_UID = TypeAdapter(Uid)
_SHA256 = TypeAdapter(Sha256Hex)


@dataclass(frozen=True)
class BatchLimits:
    """The caps of one batch request: parts, and bytes of all parts' instances together.

    They bound the work a failed request throws away and the time one request takes; the
    agent splits series to fit (an instance larger than `max_bytes` goes through
    `POST /api/v1/ingest` alone).
    """

    max_instances: int = MAX_BATCH_INSTANCES
    max_bytes: int = MAX_BATCH_BYTES


class _ByteBudget:
    """Counts the instances' bytes of one batch and stops it at the cap."""

    def __init__(self, max_bytes: int) -> None:
        self._left = max_bytes
        self._max_bytes = max_bytes

    async def count(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self._left -= len(chunk)
            if self._left < 0:
                raise BatchTooLargeError(
                    f"the batch's instances exceed {self._max_bytes} bytes together; send"
                    " fewer per request, and an instance larger than that through"
                    " POST /api/v1/ingest on its own"
                )
            yield chunk


async def ingest_batch(
    session: AsyncSession,
    blobs: BlobStore,
    target: IngestTarget,
    content_type: str | None,
    body: AsyncIterable[bytes],
    site_id: uuid.UUID | None,
    limits: BatchLimits,
) -> BatchResult:
    """Store every acceptable part of a multipart batch; one result per part, in order.

    Raises `UnsupportedMediaTypeError` (not multipart/related of application/dicom),
    `RejectedUploadError` (broken framing, no part), `BatchTooLargeError` (over `limits`) and
    `BusyError` (concurrent writers kept colliding); parts kept before such a failure stay as
    unreferenced blobs that a retried upload reuses.
    """
    boundary = related_boundary(content_type)
    budget = _ByteBudget(limits.max_bytes)
    outcomes: list[ReceivedInstance | BatchItemRefused] = []
    async for part in read_parts(body, boundary):
        if len(outcomes) == limits.max_instances:
            raise BatchTooLargeError(
                f"the batch holds more than {limits.max_instances} instances; send at most"
                f" {limits.max_instances} per request"
            )
        outcomes.append(await _receive_part(blobs, part, budget))
    if not outcomes:
        raise RejectedUploadError("the multipart body holds no part; send one part per instance")
    received = [outcome for outcome in outcomes if isinstance(outcome, ReceivedInstance)]
    if not received:
        return BatchResult(
            items=[outcome for outcome in outcomes if isinstance(outcome, BatchItemRefused)],
            group=None,
            project=None,
            routing_reason=None,
        )
    recorded = await record(session, target, received, site_id)
    files = iter(recorded.files)
    items: list[BatchItemStored | BatchItemRefused] = []
    for outcome in outcomes:
        if isinstance(outcome, BatchItemRefused):
            items.append(outcome)
            continue
        file = next(files)
        items.append(
            BatchItemStored(
                sop_instance_uid=outcome.sop_instance_uid, file_id=file.file_id, status=file.status
            )
        )
    return BatchResult(
        items=items,
        group=recorded.destination.group_id,
        project=recorded.destination.project_label,
        routing_reason=recorded.destination.reason,
    )


async def _receive_part(
    blobs: BlobStore, part: Part, budget: _ByteBudget
) -> ReceivedInstance | BatchItemRefused:
    sop_instance_uid = _valid(_UID, part.headers.get(SOP_INSTANCE_UID_HEADER.lower()))
    try:
        sop_instance_uid, sha256 = _identity(part, sop_instance_uid)
        size = await receive_instance(blobs, budget.count(part.body), sha256)
    except RejectedUploadError as exc:
        # Whatever is left unread is drained here, not by the reader, so it counts too.
        async for _ in budget.count(part.body):
            pass
        return BatchItemRefused(sop_instance_uid=sop_instance_uid, error=exc.message)
    return ReceivedInstance(sop_instance_uid, sha256, size)


def _identity(part: Part, sop_instance_uid: str | None) -> tuple[str, str]:
    """The part's SOP Instance UID and announced sha256; `RejectedUploadError` if unusable."""
    media_type = part.headers.get("content-type", DICOM_TYPE).split(";")[0].strip().lower()
    if media_type != DICOM_TYPE:
        raise RejectedUploadError(
            f"the part is not {DICOM_TYPE}; send each instance as a Part-10 file"
        )
    if sop_instance_uid is None:
        raise RejectedUploadError(
            f"the part has no valid {SOP_INSTANCE_UID_HEADER} header; send the instance's SOP"
            " Instance UID (digits and dots, at most 64 characters)"
        )
    sha256 = _valid(_SHA256, part.headers.get(SHA256_HEADER.lower()))
    if sha256 is None:
        raise RejectedUploadError(
            f"the part has no valid {SHA256_HEADER} header; send the sha256 of the part's"
            " bytes as 64 lowercase hexadecimal characters"
        )
    return sop_instance_uid, sha256


def _valid(adapter: TypeAdapter[str], value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None
