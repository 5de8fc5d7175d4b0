"""Moving a misrouted session to its project, and purging a session uploaded by mistake.

A move re-parents the session (and so its acquisitions and files) under a subject of the same
label in the target project; its blobs stay where they are (they are addressed by content).
A purge deletes the session, its acquisitions, every file version and the blobs no other file
names. Both are recorded as `SessionEvent`s (who, when, from where, to where, how much) that
the session's history shows and that outlive a purge. Must not import FastAPI.
"""

from __future__ import annotations

import uuid

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common.routing import RoutingReason
from control_plane import audit
from control_plane.errors import ConflictError, NotFoundError
from control_plane.hierarchy.blobs import BlobStore
from control_plane.hierarchy.session_metadata import metadata_of
from control_plane.models import (
    Acquisition,
    File,
    Group,
    Project,
    Session,
    SessionEvent,
    SessionMetadataValue,
    Site,
    Subject,
    utc_now,
)
from control_plane.schemas import PurgedSession, SessionEventPublic, SessionPublic
from control_plane.security import Principal


async def get_session(session: AsyncSession, session_id: uuid.UUID) -> SessionPublic:
    """A session, where it is and its history; `NotFoundError` when unknown."""
    study, subject, project = await _located(session, session_id)
    events = await session.scalars(
        select(SessionEvent).where(SessionEvent.session_id == session_id).order_by(SessionEvent.at)
    )
    metadata = (await metadata_of(session, [session_id]))[session_id]
    return SessionPublic(
        id=study.id,
        group=project.group_id,
        project=project.label,
        subject=subject.label,
        session=study.label,
        routing_reason=RoutingReason(study.routing_reason),
        routing_string=study.routing_string,
        metadata=metadata.values,
        metadata_conflicts=metadata.conflicts,
        history=[_event_public(event) for event in events],
    )


async def move_session(
    session: AsyncSession,
    session_id: uuid.UUID,
    group: str,
    project_label: str,
    actor: Principal,
) -> SessionPublic:
    """Move a session (with its acquisitions and files) to `group`/`project_label`.

    The subject of the same label in the target project is used, or created. Raises
    `NotFoundError` for an unknown session, group or project and `ConflictError` when the
    target subject already has a session of that label (merging two sessions is not done
    silently: move or purge the other one first).
    """
    study, subject, source = await _located(session, session_id)
    target = await session.scalar(
        select(Project).where(Project.group_id == group, Project.label == project_label)
    )
    if target is None:
        known = await session.get(Group, group)
        what = f"project {project_label!r} of group {group!r}" if known else f"group {group!r}"
        raise NotFoundError(f"{what} does not exist; create it first, then move the session")
    if target.id == source.id:
        raise ConflictError(f"session {session_id} is already in {group}/{project_label}")
    moved_to = await session.scalar(
        select(Subject).where(Subject.project_id == target.id, Subject.label == subject.label)
    )
    if moved_to is None:
        moved_to = Subject(project_id=target.id, label=subject.label)
        session.add(moved_to)
        await session.flush()
    clash = await session.scalar(
        select(Session.id).where(Session.subject_id == moved_to.id, Session.label == study.label)
    )
    if clash is not None:
        raise ConflictError(
            f"{group}/{project_label} already has a session of this subject with the same"
            f" label ({clash}); move or purge that one first"
        )
    files, size = await _files_and_bytes(session, session_id)
    old_subject = subject.id
    study.subject_id = moved_to.id
    study.routing_reason = RoutingReason.routed.value
    session.add(
        SessionEvent(
            session_id=session_id,
            kind="moved",
            from_group=source.group_id,
            from_project=source.label,
            to_group=group,
            to_project=project_label,
            files=files,
            bytes=size,
            actor=actor.name,
            at=utc_now(),
        )
    )
    audit.record(
        session,
        actor,
        audit.AuditAction.session_move,
        str(session_id),
        site=await _site_name(session, study.site_id),
        changes={
            "from": f"{source.group_id}/{source.label}",
            "to": f"{group}/{project_label}",
            "files": files,
        },
    )
    await session.flush()
    await _drop_subject_if_empty(session, old_subject)
    await session.commit()
    return await get_session(session, session_id)


async def purge_session(
    session: AsyncSession, blobs: BlobStore, session_id: uuid.UUID, actor: Principal
) -> PurgedSession:
    """Delete a session, its acquisitions and every file version, then the unshared blobs."""
    study, subject, project = await _located(session, session_id)
    acquisitions = select(Acquisition.id).where(Acquisition.session_id == session_id)
    rows = (
        await session.execute(
            select(File.id, File.sha256, File.size).where(File.acquisition_id.in_(acquisitions))
        )
    ).all()
    digests = {row.sha256 for row in rows}
    event = SessionEvent(
        session_id=session_id,
        kind="purged",
        from_group=project.group_id,
        from_project=project.label,
        to_group=None,
        to_project=None,
        files=len(rows),
        bytes=sum(row.size for row in rows),
        actor=actor.name,
        at=utc_now(),
    )
    session.add(event)
    audit.record(
        session,
        actor,
        audit.AuditAction.session_purge,
        str(session_id),
        site=await _site_name(session, study.site_id),
        changes={
            "from": f"{project.group_id}/{project.label}",
            "files": event.files,
            "bytes": event.bytes,
        },
    )
    file_ids = [row.id for row in rows]
    # Replacement links point between versions of the same instance; cut them before deleting.
    await session.execute(update(File).where(File.id.in_(file_ids)).values(replaced_by_id=None))
    await session.execute(delete(File).where(File.id.in_(file_ids)))
    await session.execute(delete(Acquisition).where(Acquisition.session_id == session_id))
    # Metadata values may identify the patient: they go with the session.
    await session.execute(
        delete(SessionMetadataValue).where(SessionMetadataValue.session_id == session_id)
    )
    await session.execute(delete(Session).where(Session.id == session_id))
    await _drop_subject_if_empty(session, subject.id)
    shared = set(await session.scalars(select(File.sha256).where(File.sha256.in_(digests))))
    await session.commit()
    removed = await blobs.remove([digest for digest in digests if digest not in shared])
    return PurgedSession(
        id=session_id,
        group=event.from_group,
        project=event.from_project,
        files=event.files,
        bytes=event.bytes,
        blobs_removed=removed,
        purged_by=actor.name,
        purged_at=event.at,
    )


async def _located(
    session: AsyncSession, session_id: uuid.UUID
) -> tuple[Session, Subject, Project]:
    row = (
        await session.execute(
            select(Session, Subject, Project)
            .join(Subject, Session.subject_id == Subject.id)
            .join(Project, Subject.project_id == Project.id)
            .where(Session.id == session_id)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"session {session_id} does not exist")
    return row[0], row[1], row[2]


async def _files_and_bytes(session: AsyncSession, session_id: uuid.UUID) -> tuple[int, int]:
    count, size = (
        await session.execute(
            select(func.count(File.id), func.coalesce(func.sum(File.size), 0))
            .join(Acquisition, File.acquisition_id == Acquisition.id)
            .where(Acquisition.session_id == session_id)
        )
    ).one()
    return int(count), int(size)


async def _site_name(session: AsyncSession, site_id: uuid.UUID | None) -> str | None:
    if site_id is None:
        return None
    site = await session.get(Site, site_id)
    return None if site is None else site.name


async def _drop_subject_if_empty(session: AsyncSession, subject_id: uuid.UUID) -> None:
    left = await session.scalar(select(Session.id).where(Session.subject_id == subject_id))
    if left is None:
        await session.execute(delete(Subject).where(Subject.id == subject_id))


def _event_public(event: SessionEvent) -> SessionEventPublic:
    return SessionEventPublic(
        kind=event.kind,
        from_group=event.from_group,
        from_project=event.from_project,
        to_group=event.to_group,
        to_project=event.to_project,
        files=event.files,
        bytes=event.bytes,
        actor=event.actor,
        at=event.at,
    )
