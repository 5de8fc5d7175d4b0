"""Groups and their projects (admin only)."""

from fastapi import APIRouter, Depends, status

from control_plane.deps import SessionDep, require_admin
from control_plane.hierarchy import groups
from control_plane.schemas import GroupCreate, GroupPublic, ItemList, ProjectCreate, ProjectPublic

router = APIRouter(tags=["hierarchy"], dependencies=[Depends(require_admin)])


@router.post("/groups", status_code=status.HTTP_201_CREATED)
async def create_group(body: GroupCreate, session: SessionDep) -> GroupPublic:
    """Create a group (409 if the id exists)."""
    return await groups.create_group(session, body)


@router.get("/groups")
async def list_groups(session: SessionDep) -> ItemList[GroupPublic]:
    """All groups."""
    return ItemList(items=await groups.list_groups(session))


@router.post("/groups/{group}/projects", status_code=status.HTTP_201_CREATED)
async def create_project(group: str, body: ProjectCreate, session: SessionDep) -> ProjectPublic:
    """Create a project in a group (404 unknown group, 409 duplicate label)."""
    return await groups.create_project(session, group, body)


@router.get("/groups/{group}/projects")
async def list_projects(group: str, session: SessionDep) -> ItemList[ProjectPublic]:
    """The projects of a group."""
    return ItemList(items=await groups.list_projects(session, group))
