"""Groups and projects: the part of the hierarchy that administrators create.

Must not import FastAPI.
"""

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import audit
from control_plane.errors import ConflictError, NotFoundError
from control_plane.models import Group, Project
from control_plane.schemas import GroupCreate, GroupPublic, ProjectCreate, ProjectPublic
from control_plane.security import Principal


def _group_public(group: Group) -> GroupPublic:
    return GroupPublic(id=group.id, label=group.label)


def _project_public(project: Project) -> ProjectPublic:
    return ProjectPublic(id=project.id, group=project.group_id, label=project.label)


async def create_group(session: AsyncSession, body: GroupCreate, actor: Principal) -> GroupPublic:
    """Create a group (audited); `ConflictError` when the id is taken."""
    group = Group(id=body.id, label=body.label)
    session.add(group)
    audit.record(
        session,
        actor,
        audit.AuditAction.group_create,
        f"group {body.id}",
        changes={"label": body.label},
    )
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise ConflictError(
            f"group {body.id!r} already exists; pick another id or use the existing group"
        ) from exc
    return _group_public(group)


async def list_groups(session: AsyncSession) -> list[GroupPublic]:
    """All groups, ordered by id."""
    groups = await session.scalars(select(Group).order_by(Group.id))
    return [_group_public(group) for group in groups]


async def _existing_group(session: AsyncSession, group_id: str) -> Group:
    group = await session.get(Group, group_id)
    if group is None:
        raise NotFoundError(
            f"group {group_id!r} does not exist; create it with POST /api/v1/groups"
        )
    return group


async def create_project(
    session: AsyncSession, group_id: str, body: ProjectCreate, actor: Principal
) -> ProjectPublic:
    """Create a project in a group (audited); `NotFoundError` / `ConflictError` as appropriate."""
    await _existing_group(session, group_id)
    project = Project(group_id=group_id, label=body.label)
    session.add(project)
    audit.record(
        session,
        actor,
        audit.AuditAction.project_create,
        f"project {group_id}/{body.label}",
        changes={"group": group_id, "label": body.label},
    )
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise ConflictError(f"project {body.label!r} already exists in group {group_id!r}") from exc
    return _project_public(project)


async def list_projects(session: AsyncSession, group_id: str) -> list[ProjectPublic]:
    """The projects of a group, ordered by label; `NotFoundError` for an unknown group."""
    await _existing_group(session, group_id)
    projects = await session.scalars(
        select(Project).where(Project.group_id == group_id).order_by(Project.label)
    )
    return [_project_public(project) for project in projects]
