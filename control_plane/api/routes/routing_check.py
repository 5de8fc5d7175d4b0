"""`POST /api/v1/routing/check`: where a routing string or a header would land, and why."""

from fastapi import APIRouter
from sqlalchemy import select

from control_plane.deps import ReaderDep, ReadSessionDep
from control_plane.errors import InvalidRequestError, NotFoundError
from control_plane.fleet import config_revisions, sites
from control_plane.hierarchy.routing_check import check_routing
from control_plane.models import Site
from control_plane.schemas import RoutingCheckAnswer, RoutingCheckRequest

router = APIRouter(tags=["hierarchy"])


@router.post("/routing/check")
async def routing_check(
    body: RoutingCheckRequest, principal: ReaderDep, session: ReadSessionDep
) -> RoutingCheckAnswer:
    """Apply the site's current config and the store's placement rules, creating nothing;
    suggest the nearest existing group and project names for a typo. A token bound to one
    site checks against that site."""
    name = body.site or principal.site_name
    if principal.site_name is not None and name != principal.site_name:
        raise NotFoundError(f"site {name!r} does not exist; create it with POST /api/v1/sites")
    if name is None:
        names = list(await session.scalars(select(Site.name).order_by(Site.name).limit(2)))
        if len(names) != 1:
            raise InvalidRequestError(
                'name the site whose config to check with ("site": NAME); this control'
                f" plane has {'several sites' if names else 'no site'}"
            )
        name = names[0]
    site = await sites.site_by_name(session, name)
    current = await config_revisions.current_config(session, site)
    return await check_routing(
        session, current.config, body.routing_string, body.headers, body.calling_ae_title
    )
