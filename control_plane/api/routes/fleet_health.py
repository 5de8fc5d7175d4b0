"""Site and fleet health: which agents and sites need attention, and why."""

from fastapi import APIRouter, Response

from control_plane.deps import FleetReaderDep, FleetViewDep, HealthContextDep, SiteReaderDep
from control_plane.fleet_schemas import FleetHealth, SiteHealth

router = APIRouter(tags=["fleet"])

JSON = "application/json"


# Answered from the hub's in-memory view as pre-serialized JSON; the models document it.
@router.get("/sites/{site}/health", response_model=SiteHealth)
async def site_health(
    site: str, _: SiteReaderDep, view: FleetViewDep, context: HealthContextDep
) -> Response:
    """Each agent of the site with its status and reasons; the worst one is the site's."""
    return Response(await view.site_health_json(site, context), media_type=JSON)


@router.get("/fleet/health", response_model=FleetHealth)
async def fleet_health(
    _: FleetReaderDep, view: FleetViewDep, context: HealthContextDep
) -> Response:
    """Sites and agents per status, and the sites that are not ok with their reasons."""
    return Response(view.fleet_health_json(context), media_type=JSON)
