"""Where ingested instances go: the acquisition of an `IngestTarget`, found or created.

The destination follows the routing rules of DESIGN.md: the routed project when it exists, a
known group's unsorted project when only the project is unknown, the site's unknown group and
its unsorted project otherwise (both created on first use). Subject, session and acquisition
are created on first use too. Creations meet concurrent ones on unique constraints: the flush
raises `IntegrityError` and the caller starts its transaction over.
Must not import FastAPI.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Select, exists, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from common.ingest import IngestTarget
from common.routing import RoutingReason
from control_plane.models import Acquisition, Base, Group, Project, Session, Subject

_RowT = TypeVar("_RowT", bound=Base)


@dataclass(frozen=True)
class Destination:
    """The project instances are filed under, and why."""

    group_id: str
    project_label: str
    reason: RoutingReason


@dataclass(frozen=True)
class Placement:
    """The acquisition that receives a target's instances (and its session), with its
    destination."""

    acquisition_id: uuid.UUID
    session_id: uuid.UUID
    destination: Destination


async def place(
    session: AsyncSession, target: IngestTarget, site_id: uuid.UUID | None
) -> Placement:
    """The target's acquisition, creating whatever level of the hierarchy is missing."""
    return await find_placement(session, target) or await _create_placement(
        session, target, site_id
    )


async def find_placement(session: AsyncSession, target: IngestTarget) -> Placement | None:
    """The acquisition of a target whose whole path already exists, in one statement.

    Every request after the first of a series takes this path; creating costs about ten
    statements. The candidate rows are the routed project, the group's unsorted project and
    the unknown group's; which one applies depends on what exists, which the same statement
    answers. None when any level is still missing.
    """
    group, project = target.group, target.project
    candidates = [(target.unknown_group, target.unsorted_project)]
    if group is not None and project is not None:
        candidates += [(group, project), (group, target.unsorted_project)]
    rows = (
        await session.execute(
            select(
                Acquisition.id,
                Acquisition.session_id,
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
                Subject.label == target.subject,
                Session.label == target.session,
                Acquisition.key == target.grouping_key,
            )
        )
    ).all()
    if not rows:
        return None
    if group is None or project is None:
        wanted = Destination(target.unknown_group, target.unsorted_project, target.reason)
    elif rows[0].project_known:
        wanted = Destination(group, project, RoutingReason.routed)
    elif rows[0].group_known:
        wanted = Destination(group, target.unsorted_project, RoutingReason.unknown_project)
    else:
        wanted = Destination(
            target.unknown_group, target.unsorted_project, RoutingReason.unknown_group
        )
    for row in rows:
        if (row.group_id, row.label) == (wanted.group_id, wanted.project_label):
            return Placement(row.id, row.session_id, wanted)
    return None


async def destination_of(session: AsyncSession, acquisition_id: uuid.UUID) -> Destination:
    """Where an existing acquisition lives, and the routing reason its session recorded."""
    row = (
        await session.execute(
            select(Project.group_id, Project.label, Session.routing_reason)
            .join(Subject, Subject.project_id == Project.id)
            .join(Session, Session.subject_id == Subject.id)
            .join(Acquisition, Acquisition.session_id == Session.id)
            .where(Acquisition.id == acquisition_id)
        )
    ).one()
    return Destination(row.group_id, row.label, RoutingReason(row.routing_reason))


async def _create_placement(
    session: AsyncSession, target: IngestTarget, site_id: uuid.UUID | None
) -> Placement:
    destination, project_id = await _resolve_destination(session, target)
    subject = await _get_or_create(
        session,
        select(Subject).where(Subject.project_id == project_id, Subject.label == target.subject),
        lambda: Subject(project_id=project_id, label=target.subject),
    )
    study = await _get_or_create(
        session,
        select(Session).where(Session.subject_id == subject.id, Session.label == target.session),
        lambda: Session(
            subject_id=subject.id,
            label=target.session,
            study_instance_uid=target.study_instance_uid,
            site_id=site_id,
            routing_reason=destination.reason.value,
            routing_string=target.routing_string,
        ),
    )
    acquisition = await _get_or_create(
        session,
        select(Acquisition).where(
            Acquisition.session_id == study.id, Acquisition.key == target.grouping_key
        ),
        lambda: Acquisition(
            session_id=study.id,
            key=target.grouping_key,
            label=target.acquisition,
            series_instance_uid=target.series_instance_uid,
        ),
    )
    return Placement(acquisition.id, study.id, destination)


async def _resolve_destination(
    session: AsyncSession, target: IngestTarget
) -> tuple[Destination, uuid.UUID]:
    if target.group is not None and target.project is not None:
        group = await session.scalar(select(Group).where(Group.id == target.group))
        if group is not None:
            project = await session.scalar(
                select(Project).where(Project.group_id == group.id, Project.label == target.project)
            )
            if project is not None:
                return Destination(group.id, project.label, RoutingReason.routed), project.id
            unsorted = await _get_or_create_project(session, group.id, target.unsorted_project)
            return (
                Destination(group.id, unsorted.label, RoutingReason.unknown_project),
                unsorted.id,
            )
        reason = RoutingReason.unknown_group
    else:
        reason = target.reason
    await _get_or_create(
        session,
        select(Group).where(Group.id == target.unknown_group),
        lambda: Group(id=target.unknown_group, label=target.unknown_group),
    )
    fallback = await _get_or_create_project(session, target.unknown_group, target.unsorted_project)
    return Destination(target.unknown_group, fallback.label, reason), fallback.id


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
    # the caller then starts the transaction over and the query above finds that row.
    await session.flush()
    return row
