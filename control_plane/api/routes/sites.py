"""Sites and their config revisions (admin only)."""

from fastapi import APIRouter, Depends, Request, status

from control_plane.deps import (
    AdminDep,
    FleetViewDep,
    HubDep,
    ReadSessionDep,
    SessionDep,
    require_admin,
)
from control_plane.fleet import config_revisions, sites
from control_plane.link import ConfigOffer
from control_plane.schemas import (
    ConfigRevisionNumber,
    ConfigRevisionPublic,
    InvalidConfigAnswer,
    ItemList,
    SiteConfigPublic,
    SiteCreate,
    SitePublic,
)

router = APIRouter(tags=["fleet"], dependencies=[Depends(require_admin)])

_CONFIG_BODY = {
    "requestBody": {
        "required": True,
        "description": "The site config, as JSON or (Content-Type: application/yaml) YAML.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SiteConfig"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


@router.post("/sites", status_code=status.HTTP_201_CREATED)
async def create_site(body: SiteCreate, session: SessionDep, view: FleetViewDep) -> SitePublic:
    """Create a site (409 if the name exists; 422 for an unknown timezone)."""
    created = await sites.create_site(session, body)
    await view.reload_site(created.name)
    return created


@router.get("/sites")
async def list_sites(session: ReadSessionDep) -> ItemList[SitePublic]:
    """All sites."""
    return ItemList(items=await sites.list_sites(session))


@router.put(
    "/sites/{site}/config",
    openapi_extra=_CONFIG_BODY,
    responses={422: {"model": InvalidConfigAnswer, "description": "The config is invalid."}},
)
async def put_site_config(
    site: str, request: Request, principal: AdminDep, session: SessionDep, hub: HubDep
) -> ConfigRevisionNumber:
    """Store a new config revision (same number when nothing changed) and push it at once to
    the site's connected agents."""
    site_row = await sites.site_by_name(session, site)
    site_id, site_name, timezone = site_row.id, site_row.name, site_row.timezone
    config = config_revisions.parse_config(await request.body())
    await config_revisions.check_deployments(session, site_row, config)
    revision = await config_revisions.store_config(session, site_row, config, principal.name)
    await hub.push_config(site_id, ConfigOffer.of(revision, site_name, timezone, config))
    return ConfigRevisionNumber(revision=revision)


@router.get("/sites/{site}/config")
async def get_site_config(site: str, session: ReadSessionDep) -> SiteConfigPublic:
    """The current config (revision 0 with defaults when none was stored)."""
    return await config_revisions.current_config(session, await sites.site_by_name(session, site))


@router.get("/sites/{site}/config/revisions")
async def list_config_revisions(
    site: str, session: ReadSessionDep
) -> ItemList[ConfigRevisionPublic]:
    """Every revision, oldest first, each with its diff against the previous one."""
    site_row = await sites.site_by_name(session, site)
    return ItemList(items=await config_revisions.list_revisions(session, site_row))
