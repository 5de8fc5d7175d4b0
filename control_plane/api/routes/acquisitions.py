"""Where data landed: acquisitions with their current files (a site-bound token sees its site's)."""

from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.access import site_filter
from control_plane.deps import ReaderDep, SessionDep
from control_plane.hierarchy.catalog import list_acquisitions
from control_plane.schemas import AcquisitionFilter, AcquisitionPublic, ItemList

router = APIRouter(tags=["hierarchy"])


@router.get("/acquisitions")
async def acquisitions(
    where: Annotated[AcquisitionFilter, Query()], principal: ReaderDep, session: SessionDep
) -> ItemList[AcquisitionPublic]:
    """Acquisitions matching all given filters (group id, project/subject/session labels)."""
    return ItemList(items=await list_acquisitions(session, where, site_filter(principal)))
