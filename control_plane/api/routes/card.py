"""The quick-reference card of a site for its scanner operators (`control_plane.card`)."""

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from control_plane.card import MAX_GROUPS, render_card
from control_plane.deps import ReadSessionDep, SiteReaderDep
from control_plane.fleet import config_revisions, sites
from control_plane.hierarchy import groups as hierarchy_groups

router = APIRouter(tags=["fleet"])


@router.get("/sites/{site}/card", response_class=HTMLResponse)
async def site_card(site: str, _: SiteReaderDep, session: ReadSessionDep) -> HTMLResponse:
    """One printable HTML page: where to type the routing string, real examples, the opt-in
    or opt-out strings, the upload window, what happens to a typo."""
    found = await sites.site_by_name(session, site)
    current = await config_revisions.current_config(session, found)
    listed: list[tuple[str, str, list[str]]] = []
    for group in await hierarchy_groups.list_groups(session):
        projects = await hierarchy_groups.list_projects(session, group.id)
        if projects:
            listed.append((group.id, group.label, [project.label for project in projects]))
        if len(listed) == MAX_GROUPS:
            break
    return HTMLResponse(
        render_card(found.name, found.timezone, current.revision, current.config, listed)
    )
