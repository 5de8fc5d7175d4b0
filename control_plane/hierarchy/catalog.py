"""Read side of the hierarchy store: where acquisitions and their current files are.

Must not import FastAPI.
"""

import uuid
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common.routing import RoutingReason
from control_plane.errors import NotFoundError
from control_plane.hierarchy.session_metadata import metadata_of
from control_plane.models import Acquisition, File, Project, Session, Subject
from control_plane.schemas import AcquisitionFilter, AcquisitionPublic, FilePublic


async def list_acquisitions(
    session: AsyncSession, where: AcquisitionFilter, only_site: uuid.UUID | None = None
) -> list[AcquisitionPublic]:
    """Acquisitions matching every given filter, each with its current (not replaced) files;
    with `only_site`, only those whose session came from that site."""
    query = (
        select(Acquisition, Session, Subject.label, Project.group_id, Project.label)
        .join(Session, Acquisition.session_id == Session.id)
        .join(Subject, Session.subject_id == Subject.id)
        .join(Project, Subject.project_id == Project.id)
        .order_by(
            Project.group_id,
            Project.label,
            Subject.label,
            Session.label,
            Acquisition.label,
            Acquisition.id,
        )
    )
    if only_site is not None:
        query = query.where(Session.site_id == only_site)
    if where.group is not None:
        query = query.where(Project.group_id == where.group)
    if where.project is not None:
        query = query.where(Project.label == where.project)
    if where.subject is not None:
        query = query.where(Subject.label == where.subject)
    if where.session is not None:
        query = query.where(Session.label == where.session)
    rows = (await session.execute(query)).all()
    files = await _current_files(session, [row[0].id for row in rows])
    metadata = await metadata_of(session, [row[1].id for row in rows])
    return [
        AcquisitionPublic(
            id=acquisition.id,
            group=group_id,
            project=project_label,
            subject=subject_label,
            session=study.label,
            label=acquisition.label,
            series_instance_uid=acquisition.series_instance_uid,
            routing_reason=RoutingReason(study.routing_reason),
            routing_string=study.routing_string,
            session_id=study.id,
            session_metadata=metadata[study.id].values,
            files=files[acquisition.id],
        )
        for acquisition, study, subject_label, group_id, project_label in rows
    ]


async def _current_files(
    session: AsyncSession, acquisition_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[FilePublic]]:
    by_acquisition: dict[uuid.UUID, list[FilePublic]] = defaultdict(list)
    if not acquisition_ids:
        return by_acquisition
    files = await session.scalars(
        select(File)
        .where(File.acquisition_id.in_(acquisition_ids), File.replaced_at.is_(None))
        .order_by(File.sop_instance_uid)
    )
    for file in files:
        by_acquisition[file.acquisition_id].append(
            FilePublic(
                id=file.id,
                sop_instance_uid=file.sop_instance_uid,
                sha256=file.sha256,
                size=file.size,
            )
        )
    return by_acquisition


async def get_file(session: AsyncSession, file_id: uuid.UUID) -> File:
    """A stored file version (current or replaced); `NotFoundError` when unknown."""
    file = await session.get(File, file_id)
    if file is None:
        raise NotFoundError(f"file {file_id} does not exist")
    return file


async def site_id_of_session(session: AsyncSession, session_id: uuid.UUID) -> uuid.UUID | None:
    """The site whose agent uploaded a session (None: unknown session, or uploaded by hand)."""
    return await session.scalar(select(Session.site_id).where(Session.id == session_id))


async def site_id_of_file(session: AsyncSession, file_id: uuid.UUID) -> uuid.UUID | None:
    """The site whose agent uploaded a file version (None: unknown file, or uploaded by hand)."""
    return await session.scalar(
        select(Session.site_id)
        .join(Acquisition, Acquisition.session_id == Session.id)
        .join(File, File.acquisition_id == Acquisition.id)
        .where(File.id == file_id)
    )
