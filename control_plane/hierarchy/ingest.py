"""Ingest: DICOM instances into the hierarchy store (`POST /api/v1/ingest`, and the record step
that `control_plane.hierarchy.ingest_batch` shares for `POST /api/v1/ingest/batch`).

Each body is streamed to the blob store while hashed and kept only when its digest matches the
one the agent announced and it looks like a Part-10 file. The instances of one request, which
share one target, are then recorded in one transaction with set-based statements: one lookup
of their existing and current versions, one placement of the target (found in one statement
once the acquisition exists, created level by level before), one bulk insert and the
replacements; the target's session metadata is merged into its session in the same
transaction (`session_metadata.merge_metadata`). A single-instance ingest is a batch of one.
Concurrent ingests meet on unique constraints: the loser rolls back and starts the
transaction again, then sees the winner's rows. Must not import FastAPI.
"""

import uuid
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from common.ingest import IngestParams, IngestResult, IngestStatus, IngestTarget
from control_plane.errors import BusyError, RejectedUploadError
from control_plane.hierarchy.blobs import BlobStore, ReceivedBlob
from control_plane.hierarchy.placement import Destination, Placement, destination_of, place
from control_plane.hierarchy.session_metadata import merge_metadata
from control_plane.models import File, utc_now

# Enough for every realistic pile-up of agents on one new session; each attempt after the
# first sees the rows that made the previous one collide.
MAX_ATTEMPTS = 5
_PART10_MAGIC_OFFSET = 128
_PART10_MAGIC = b"DICM"


class _LostRace(Exception):
    """Another transaction replaced the same SOP instance first; start over."""


@dataclass(frozen=True)
class ReceivedInstance:
    """An instance whose bytes are durable in the blob store, waiting to be recorded."""

    sop_instance_uid: str
    sha256: str
    size: int


@dataclass(frozen=True)
class RecordedFile:
    """What recording did with one instance."""

    file_id: uuid.UUID
    status: IngestStatus


@dataclass(frozen=True)
class Recorded:
    """The outcome of recording a request's instances: one file per instance, in order.

    `destination` is where the new files were filed; when every instance already existed,
    where the first of them lives.
    """

    files: list[RecordedFile]
    destination: Destination


@dataclass(frozen=True)
class _Version:
    id: uuid.UUID
    sop_instance_uid: str
    sha256: str
    acquisition_id: uuid.UUID
    current: bool


async def ingest(
    session: AsyncSession,
    blobs: BlobStore,
    params: IngestParams,
    body: AsyncIterable[bytes],
    site_id: uuid.UUID | None,
) -> IngestResult:
    """Store one instance; idempotent on (sop_instance_uid, sha256).

    An instance already stored with these bytes is answered `exists` with where it lives, even
    when a later version replaced it: a late retry of an old upload must not undo the newer
    one.

    Raises `RejectedUploadError` (digest mismatch, not Part-10) and `BusyError` (concurrent
    writers kept colliding).
    """
    size = await receive_instance(blobs, body, params.sha256)
    instance = ReceivedInstance(params.sop_instance_uid, params.sha256, size)
    recorded = await record(session, params, [instance], site_id)
    [file] = recorded.files
    return IngestResult(
        file_id=file.file_id,
        status=file.status,
        group=recorded.destination.group_id,
        project=recorded.destination.project_label,
        routing_reason=recorded.destination.reason,
    )


async def receive_instance(
    blobs: BlobStore, body: AsyncIterable[bytes], announced_sha256: str
) -> int:
    """Stream one instance's bytes into the blob store and keep them; return their size.

    Raises `RejectedUploadError` (and keeps nothing) when the bytes do not hash to
    `announced_sha256` or are not a Part-10 file.
    """
    head = bytearray()
    received = await blobs.receive(_capture_head(body, head))
    try:
        _check_upload(received, bytes(head), announced_sha256)
    except RejectedUploadError:
        await blobs.discard(received)
        raise
    # The blob is durable before any row points at it; a failed transaction leaves at most an
    # unreferenced blob, which the retried upload reuses.
    await blobs.keep(received)
    return received.size


async def record(
    session: AsyncSession,
    target: IngestTarget,
    instances: Sequence[ReceivedInstance],
    site_id: uuid.UUID | None,
) -> Recorded:
    """Record received instances of one target in one transaction, committed on return.

    Per instance the outcome is what single ingests in the same order would give: `exists`
    for bytes already stored under that SOP Instance UID (wherever they were filed),
    `replaced` when other bytes were current, `created` otherwise. Raises `BusyError` when
    concurrent writers kept colliding.
    """
    if not instances:
        raise ValueError("record() needs at least one instance")
    layers = _layers(instances)
    for _attempt in range(MAX_ATTEMPTS):
        try:
            recorded = await _record_once(session, target, instances, layers, site_id)
            await session.commit()
        except (IntegrityError, _LostRace):
            await session.rollback()
            continue
        return recorded
    raise BusyError(
        f"the upload collided with concurrent uploads {MAX_ATTEMPTS} times; retry later"
    )


def _layers(instances: Sequence[ReceivedInstance]) -> list[list[int]]:
    """Indexes of `instances` split so that no SOP Instance UID occurs twice in one layer.

    The set-based statements assume distinct SOP instances; a request that carries two
    versions of one instance records them one layer after the other, as sequential single
    ingests would. Almost every request is one layer.
    """
    layers: list[list[int]] = []
    seen: dict[str, int] = {}
    for index, instance in enumerate(instances):
        depth = seen.get(instance.sop_instance_uid, 0)
        seen[instance.sop_instance_uid] = depth + 1
        if depth == len(layers):
            layers.append([])
        layers[depth].append(index)
    return layers


async def _record_once(
    session: AsyncSession,
    target: IngestTarget,
    instances: Sequence[ReceivedInstance],
    layers: list[list[int]],
    site_id: uuid.UUID | None,
) -> Recorded:
    files: dict[int, RecordedFile] = {}
    existing_in: dict[int, uuid.UUID] = {}
    placement: Placement | None = None
    for layer in layers:
        members = [instances[index] for index in layer]
        versions = await _versions(session, members)
        stored = {(v.sop_instance_uid, v.sha256): v for v in versions}
        current = {v.sop_instance_uid: v for v in versions if v.current}
        fresh: list[int] = []
        for index in layer:
            instance = instances[index]
            existing = stored.get((instance.sop_instance_uid, instance.sha256))
            if existing is None:
                fresh.append(index)
                continue
            files[index] = RecordedFile(existing.id, IngestStatus.exists)
            existing_in[index] = existing.acquisition_id
        if not fresh:
            continue
        if placement is None:
            placement = await place(session, target, site_id)
            # In the transaction that files the instances, so metadata and files go together.
            await merge_metadata(session, placement.session_id, target.metadata)
        added = await _add_files(
            session, [instances[index] for index in fresh], placement.acquisition_id, current
        )
        files.update(zip(fresh, added, strict=True))
    if placement is not None:
        destination = placement.destination
    else:
        # Nothing new, so every instance exists: answer where the first one lives, as a
        # single ingest does.
        destination = await destination_of(session, existing_in[0])
    return Recorded([files[index] for index in range(len(instances))], destination)


async def _versions(session: AsyncSession, instances: Sequence[ReceivedInstance]) -> list[_Version]:
    """Stored versions of these SOP instances that are current or hold one of these digests."""
    rows = await session.execute(
        select(
            File.id, File.sop_instance_uid, File.sha256, File.acquisition_id, File.replaced_at
        ).where(
            File.sop_instance_uid.in_(sorted({i.sop_instance_uid for i in instances})),
            or_(File.replaced_at.is_(None), File.sha256.in_(sorted({i.sha256 for i in instances}))),
        )
    )
    return [
        _Version(
            row.id, row.sop_instance_uid, row.sha256, row.acquisition_id, row.replaced_at is None
        )
        for row in rows
    ]


async def _add_files(
    session: AsyncSession,
    instances: Sequence[ReceivedInstance],
    acquisition_id: uuid.UUID,
    current: dict[str, _Version],
) -> list[RecordedFile]:
    now = utc_now()
    new_ids = [uuid.uuid4() for _ in instances]
    successor = {
        current[instance.sop_instance_uid].id: new_id
        for instance, new_id in zip(instances, new_ids, strict=True)
        if instance.sop_instance_uid in current
    }
    if successor:
        # Retire the current versions first (the partial unique index allows one current file
        # per SOP instance); the conditional update is what makes a concurrent replacer lose.
        retired = (
            await session.scalars(
                update(File)
                .where(File.id.in_(list(successor)), File.replaced_at.is_(None))
                .values(replaced_at=now)
                .returning(File.id)
                .execution_options(synchronize_session=False)
            )
        ).all()
        if len(retired) != len(successor):
            raise _LostRace
    await session.execute(
        insert(File),
        [
            {
                "id": new_id,
                "acquisition_id": acquisition_id,
                "sop_instance_uid": instance.sop_instance_uid,
                "sha256": instance.sha256,
                "size": instance.size,
                "created_at": now,
            }
            for instance, new_id in zip(instances, new_ids, strict=True)
        ],
    )
    if successor:
        await session.execute(
            update(File),
            [{"id": old, "replaced_by_id": new} for old, new in successor.items()],
        )
    return [
        RecordedFile(
            new_id,
            IngestStatus.replaced if instance.sop_instance_uid in current else IngestStatus.created,
        )
        for instance, new_id in zip(instances, new_ids, strict=True)
    ]


async def _capture_head(body: AsyncIterable[bytes], head: bytearray) -> AsyncIterator[bytes]:
    wanted = _PART10_MAGIC_OFFSET + len(_PART10_MAGIC)
    async for chunk in body:
        if len(head) < wanted:
            head += chunk[: wanted - len(head)]
        yield chunk


def _check_upload(received: ReceivedBlob, head: bytes, announced_sha256: str) -> None:
    if received.sha256 != announced_sha256:
        raise RejectedUploadError(
            f"sha256 mismatch: the body ({received.size} bytes) hashes to {received.sha256}"
            f" but the request announced {announced_sha256}; the instance was corrupted in"
            " transit or on disk: recompute the digest from the file and resend"
        )
    end = _PART10_MAGIC_OFFSET + len(_PART10_MAGIC)
    if head[_PART10_MAGIC_OFFSET:end] != _PART10_MAGIC:
        raise RejectedUploadError(
            "the body is not a DICOM Part-10 file (no 'DICM' after the 128-byte preamble);"
            " send the file as written with its preamble and file meta information"
        )
