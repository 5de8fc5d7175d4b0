"""Site and fleet health (admin only): which agents and sites need attention, and why."""

from fastapi import APIRouter, Depends

from control_plane.deps import HealthContextDep, ReadSessionDep, require_admin
from control_plane.fleet import health, sites
from control_plane.fleet_schemas import FleetHealth, SiteHealth

router = APIRouter(tags=["fleet"], dependencies=[Depends(require_admin)])


@router.get("/sites/{site}/health")
async def site_health(site: str, session: ReadSessionDep, context: HealthContextDep) -> SiteHealth:
    """Each agent of the site with its status and reasons; the worst one is the site's."""
    return await health.site_health(session, await sites.site_by_name(session, site), context)


@router.get("/fleet/health")
async def fleet_health(session: ReadSessionDep, context: HealthContextDep) -> FleetHealth:
    """Sites and agents per status, and the sites that are not ok with their reasons."""
    return await health.fleet_health(session, context)
