"""Where data landed: acquisitions with their current files (admin only)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from control_plane.deps import SessionDep, require_admin
from control_plane.hierarchy.catalog import list_acquisitions
from control_plane.schemas import AcquisitionFilter, AcquisitionPublic, ItemList

router = APIRouter(tags=["hierarchy"], dependencies=[Depends(require_admin)])


@router.get("/acquisitions")
async def acquisitions(
    where: Annotated[AcquisitionFilter, Query()], session: SessionDep
) -> ItemList[AcquisitionPublic]:
    """Acquisitions matching all given filters (group id, project/subject/session labels)."""
    return ItemList(items=await list_acquisitions(session, where))
