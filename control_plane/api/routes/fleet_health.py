"""Site and fleet health: which agents and sites need attention, and why."""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.exceptions import RequestValidationError

from control_plane.deps import (
    FleetReaderDep,
    FleetViewDep,
    HealthContextDep,
    ReadSessionDep,
    SiteReaderDep,
)
from control_plane.fleet import sites
from control_plane.fleet.labels import LabelError, parse_selector
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
    _: FleetReaderDep,
    view: FleetViewDep,
    context: HealthContextDep,
    session: ReadSessionDep,
    label: Annotated[
        list[str] | None,
        Query(description="KEY=VALUE; only the sites carrying all of them (label=region=eu)."),
    ] = None,
) -> Response:
    """Sites and agents per status, and the sites that are not ok with their reasons."""
    if not label:
        return Response(view.fleet_health_json(context), media_type=JSON)
    try:
        selector = parse_selector(label)
    except LabelError as exc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "label"), "msg": exc.message, "input": label}]
        ) from exc
    chosen = {site.name for site in await sites.list_sites(session, selector=selector)}
    return Response(view.fleet_health_json(context, chosen), media_type=JSON)
