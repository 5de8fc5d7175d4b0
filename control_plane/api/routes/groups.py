"""Groups and their projects: every person reads them, support creates them."""

from fastapi import APIRouter, status

from common.ingest import GroupId
from control_plane.deps import ReaderDep, SessionDep, SupportDep
from control_plane.hierarchy import groups
from control_plane.schemas import (
    GroupCreate,
    GroupPublic,
    ItemList,
    ProjectCreate,
    ProjectPublic,
)

router = APIRouter(tags=["hierarchy"])


@router.post("/groups", status_code=status.HTTP_201_CREATED)
async def create_group(
    body: GroupCreate, principal: SupportDep, session: SessionDep
) -> GroupPublic:
    """Create a group (409 if the id exists)."""
    return await groups.create_group(session, body, principal)


@router.get("/groups")
async def list_groups(_: ReaderDep, session: SessionDep) -> ItemList[GroupPublic]:
    """All groups."""
    return ItemList(items=await groups.list_groups(session))


@router.post("/groups/{group}/projects", status_code=status.HTTP_201_CREATED)
async def create_project(
    group: GroupId, body: ProjectCreate, principal: SupportDep, session: SessionDep
) -> ProjectPublic:
    """Create a project in a group (404 unknown group, 409 duplicate label)."""
    return await groups.create_project(session, group, body, principal)


@router.get("/groups/{group}/projects")
async def list_projects(
    group: GroupId, _: ReaderDep, session: SessionDep
) -> ItemList[ProjectPublic]:
    """The projects of a group."""
    return ItemList(items=await groups.list_projects(session, group))
