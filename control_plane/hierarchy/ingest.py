"""Ingest: one DICOM instance into the hierarchy store (`POST /api/v1/ingest`).

The body is streamed to the blob store while hashed; it is kept only when its digest matches
the one the agent announced and it looks like a Part-10 file. The database work then runs in
one transaction that resolves the destination (falling back to the site's unknown group or a
group's unsorted project), gets or creates subject, session and acquisition, and records the
file. Concurrent ingests meet on unique constraints: the loser rolls back and starts the
transaction again, then sees the winner's rows. Must not import FastAPI.
"""

import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Select, exists, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from common.routing import RoutingReason
from control_plane.errors import BusyError, RejectedUploadError
from control_plane.hierarchy.blobs import BlobStore, ReceivedBlob
from control_plane.models import (
    Acquisition,
    Base,
    File,
    Group,
    Project,
    Session,
    Subject,
    utc_now,
)
from control_plane.schemas import IngestParams, IngestResult, IngestStatus

# Enough for every realistic pile-up of agents on one new session; each attempt after the
# first sees the rows that made the previous one collide.
MAX_ATTEMPTS = 5
_PART10_MAGIC_OFFSET = 128
_PART10_MAGIC = b"DICM"

_RowT = TypeVar("_RowT", bound=Base)


class _LostRace(Exception):
    """Another transaction replaced the same SOP instance first; start over."""


@dataclass(frozen=True)
class _Destination:
    group_id: str
    project_label: str
    reason: RoutingReason
    project_id: uuid.UUID | None = None


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
    head = bytearray()
    received = await blobs.receive(_capture_head(body, head))
    try:
        _check_upload(received, bytes(head), params.sha256)
    except RejectedUploadError:
        await blobs.discard(received)
        raise
    # The blob is durable before any row points at it; a failed transaction leaves at most an
    # unreferenced blob, which the retried upload reuses.
    await blobs.keep(received)
    return await _record(session, params, received.size, site_id)


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


async def _record(
    session: AsyncSession, params: IngestParams, size: int, site_id: uuid.UUID | None
) -> IngestResult:
    for _attempt in range(MAX_ATTEMPTS):
        try:
            result = await _record_once(session, params, size, site_id)
            await session.commit()
        except (IntegrityError, _LostRace):
            await session.rollback()
            continue
        return result
    raise BusyError(
        f"the instance collided with concurrent uploads {MAX_ATTEMPTS} times; retry later"
    )


async def _record_once(
    session: AsyncSession, params: IngestParams, size: int, site_id: uuid.UUID | None
) -> IngestResult:
    versions = (
        await session.scalars(
            select(File).where(
                File.sop_instance_uid == params.sop_instance_uid,
                or_(File.sha256 == params.sha256, File.replaced_at.is_(None)),
            )
        )
    ).all()
    existing = next((f for f in versions if f.sha256 == params.sha256), None)
    if existing is not None:
        return await _existing_result(session, existing)
    current = next((f for f in versions if f.replaced_at is None), None)

    placed = await _find_placement(session, params)
    if placed is not None:
        acquisition_id, destination = placed
        file_id, status = await _add_file(session, params, size, acquisition_id, current)
        return IngestResult(
            file_id=file_id,
            status=status,
            group=destination.group_id,
            project=destination.project_label,
            routing_reason=destination.reason,
        )

    destination = await _resolve_destination(session, params)
    subject = await _get_or_create(
        session,
        select(Subject).where(
            Subject.project_id == destination.project_id, Subject.label == params.subject
        ),
        lambda: Subject(project_id=destination.project_id, label=params.subject),
    )
    study = await _get_or_create(
        session,
        select(Session).where(Session.subject_id == subject.id, Session.label == params.session),
        lambda: Session(
            subject_id=subject.id,
            label=params.session,
            study_instance_uid=params.study_instance_uid,
            site_id=site_id,
            routing_reason=destination.reason.value,
            routing_string=params.routing_string,
        ),
    )
    acquisition = await _get_or_create(
        session,
        select(Acquisition).where(
            Acquisition.session_id == study.id, Acquisition.key == params.grouping_key
        ),
        lambda: Acquisition(
            session_id=study.id,
            key=params.grouping_key,
            label=params.acquisition,
            series_instance_uid=params.series_instance_uid,
        ),
    )
    file_id, status = await _add_file(session, params, size, acquisition.id, current)
    return IngestResult(
        file_id=file_id,
        status=status,
        group=destination.group_id,
        project=destination.project_label,
        routing_reason=destination.reason,
    )


async def _find_placement(
    session: AsyncSession, params: IngestParams
) -> tuple[uuid.UUID, _Destination] | None:
    """The acquisition of an instance whose whole path already exists, in one statement.

    Every instance after the first of a series takes this path; the general one below costs
    about ten statements. The candidate rows are the routed project, the group's unsorted
    project and the unknown group's; which one applies depends on what exists, which the
    same statement answers. None when any level is still missing.
    """
    group, project = params.group, params.project
    candidates = [(params.unknown_group, params.unsorted_project)]
    if group is not None and project is not None:
        candidates += [(group, project), (group, params.unsorted_project)]
    rows = (
        await session.execute(
            select(
                Acquisition.id,
                Project.group_id,
                Project.label,
                exists().where(Group.id == group).label("group_known"),
                exists()
                .where(Project.group_id == group, Project.label == project)
                .label("project_known"),
            )
            .join(Session, Acquisition.session_id == Session.id)
            .join(Subject, Session.subject_id == Subject.id)
            .join(Project, Subject.project_id == Project.id)
            .where(
                tuple_(Project.group_id, Project.label).in_(candidates),
                Subject.label == params.subject,
                Session.label == params.session,
                Acquisition.key == params.grouping_key,
            )
        )
    ).all()
    if not rows:
        return None
    if group is None or project is None:
        wanted = _Destination(params.unknown_group, params.unsorted_project, params.reason)
    elif rows[0].project_known:
        wanted = _Destination(group, project, RoutingReason.routed)
    elif rows[0].group_known:
        wanted = _Destination(group, params.unsorted_project, RoutingReason.unknown_project)
    else:
        wanted = _Destination(
            params.unknown_group, params.unsorted_project, RoutingReason.unknown_group
        )
    for row in rows:
        if (row.group_id, row.label) == (wanted.group_id, wanted.project_label):
            return row.id, wanted
    return None


async def _existing_result(session: AsyncSession, file: File) -> IngestResult:
    row = (
        await session.execute(
            select(Project.group_id, Project.label, Session.routing_reason)
            .join(Subject, Subject.project_id == Project.id)
            .join(Session, Session.subject_id == Subject.id)
            .join(Acquisition, Acquisition.session_id == Session.id)
            .where(Acquisition.id == file.acquisition_id)
        )
    ).one()
    return IngestResult(
        file_id=file.id,
        status=IngestStatus.exists,
        group=row.group_id,
        project=row.label,
        routing_reason=RoutingReason(row.routing_reason),
    )


async def _resolve_destination(session: AsyncSession, params: IngestParams) -> _Destination:
    if params.group is not None and params.project is not None:
        group = await session.scalar(select(Group).where(Group.id == params.group))
        if group is not None:
            project = await session.scalar(
                select(Project).where(Project.group_id == group.id, Project.label == params.project)
            )
            if project is not None:
                return _Destination(group.id, project.label, RoutingReason.routed, project.id)
            unsorted = await _get_or_create_project(session, group.id, params.unsorted_project)
            return _Destination(
                group.id, unsorted.label, RoutingReason.unknown_project, unsorted.id
            )
        reason = RoutingReason.unknown_group
    else:
        reason = params.reason
    await _get_or_create(
        session,
        select(Group).where(Group.id == params.unknown_group),
        lambda: Group(id=params.unknown_group, label=params.unknown_group),
    )
    fallback = await _get_or_create_project(session, params.unknown_group, params.unsorted_project)
    return _Destination(params.unknown_group, fallback.label, reason, fallback.id)


async def _get_or_create_project(session: AsyncSession, group_id: str, label: str) -> Project:
    return await _get_or_create(
        session,
        select(Project).where(Project.group_id == group_id, Project.label == label),
        lambda: Project(group_id=group_id, label=label),
    )


async def _get_or_create(
    session: AsyncSession, query: Select[_RowT], create: Callable[[], _RowT]
) -> _RowT:
    found = await session.scalar(query)
    if found is not None:
        return found
    row = create()
    session.add(row)
    # When a concurrent ingest inserts the same row first, this flush raises IntegrityError;
    # `_record` then starts the transaction over and the query above finds that row.
    await session.flush()
    return row


async def _add_file(
    session: AsyncSession,
    params: IngestParams,
    size: int,
    acquisition_id: uuid.UUID,
    current: File | None,
) -> tuple[uuid.UUID, IngestStatus]:
    now = utc_now()
    new_file = File(
        id=uuid.uuid4(),
        acquisition_id=acquisition_id,
        sop_instance_uid=params.sop_instance_uid,
        sha256=params.sha256,
        size=size,
        created_at=now,
    )
    if current is None:
        session.add(new_file)
        await session.flush()
        return new_file.id, IngestStatus.created
    # Retire the current version first (the partial unique index allows one current file
    # per SOP instance); the conditional update is what makes a concurrent replacer lose.
    retired = await session.scalar(
        update(File)
        .where(File.id == current.id, File.replaced_at.is_(None))
        .values(replaced_at=now)
        .returning(File.id)
        .execution_options(synchronize_session=False)
    )
    if retired is None:
        raise _LostRace
    session.add(new_file)
    await session.flush()
    await session.execute(
        update(File)
        .where(File.id == current.id)
        .values(replaced_by_id=new_file.id)
        .execution_options(synchronize_session=False)
    )
    return new_file.id, IngestStatus.replaced
