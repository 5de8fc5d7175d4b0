"""Sites and their config revisions: support creates sites, a site's admin configures it."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.exceptions import RequestValidationError

from control_plane.access import site_filter
from control_plane.deps import (
    FleetViewDep,
    HubDep,
    ReaderDep,
    ReadSessionDep,
    SessionDep,
    SiteChangerDep,
    SiteReaderDep,
    SupportDep,
)
from control_plane.fleet import config_revisions, sites
from control_plane.fleet.config_push import push_site_config
from control_plane.fleet.labels import LabelError, parse_selector
from control_plane.fleet.rollout_schemas import LabelValue, SiteLabels
from control_plane.schemas import (
    ConfigRevisionNumber,
    ConfigRevisionPublic,
    InvalidConfigAnswer,
    ItemList,
    SiteConfigPublic,
    SiteCreate,
    SitePublic,
)

router = APIRouter(tags=["fleet"])

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
async def create_site(
    body: SiteCreate, principal: SupportDep, session: SessionDep, view: FleetViewDep
) -> SitePublic:
    """Create a site (409 if the name exists; 422 for an unknown timezone)."""
    created = await sites.create_site(session, body, principal)
    await view.reload_site(created.name)
    return created


@router.get("/sites")
async def list_sites(
    principal: ReaderDep,
    session: ReadSessionDep,
    label: Annotated[
        list[str] | None,
        Query(description="KEY=VALUE; repeat to require several (e.g. label=region=eu)."),
    ] = None,
) -> ItemList[SitePublic]:
    """All sites carrying every `label` given (a site-bound token sees its own only)."""
    with _as_validation_error(("query", "label"), label):
        selector = parse_selector(label or [])
    return ItemList(items=await sites.list_sites(session, site_filter(principal), selector))


@router.put("/sites/{site}/labels")
async def put_site_labels(
    site: str, body: SiteLabels, principal: SupportDep, session: SessionDep
) -> SitePublic:
    """Replace the site's labels (support only: labels decide which rollouts reach a site)."""
    return await sites.set_labels(session, site, body.labels, principal)


@router.put("/sites/{site}/labels/{key}")
async def put_site_label(
    site: str, key: str, body: LabelValue, principal: SupportDep, session: SessionDep
) -> SitePublic:
    """Set one label of the site."""
    with _as_validation_error(("path", "key"), key):
        return await sites.set_label(session, site, key, body.value, principal)


@router.delete("/sites/{site}/labels/{key}")
async def delete_site_label(
    site: str, key: str, principal: SupportDep, session: SessionDep
) -> SitePublic:
    """Remove one label of the site (nothing to do when it carries none of that key)."""
    with _as_validation_error(("path", "key"), key):
        return await sites.remove_label(session, site, key, principal)


@contextmanager
def _as_validation_error(loc: tuple[str, str], value: object) -> Iterator[None]:
    # Label problems answer like every other invalid parameter: FastAPI's documented 422.
    try:
        yield
    except LabelError as exc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": loc, "msg": exc.message, "input": value}]
        ) from exc


@router.put(
    "/sites/{site}/config",
    openapi_extra=_CONFIG_BODY,
    responses={422: {"model": InvalidConfigAnswer, "description": "The config is invalid."}},
)
async def put_site_config(
    site: str, request: Request, principal: SiteChangerDep, session: SessionDep, hub: HubDep
) -> ConfigRevisionNumber:
    """Store a new config revision (same number when nothing changed) and push it at once to
    the site's connected agents, on this replica and the others."""
    site_row = await sites.site_by_name(session, site)
    config = config_revisions.parse_config(await request.body())
    revision = await push_site_config(session, hub, site_row, config, principal)
    return ConfigRevisionNumber(revision=revision)


@router.get("/sites/{site}/config")
async def get_site_config(site: str, _: SiteReaderDep, session: ReadSessionDep) -> SiteConfigPublic:
    """The current config (revision 0 with defaults when none was stored)."""
    return await config_revisions.current_config(session, await sites.site_by_name(session, site))


@router.get("/sites/{site}/config/revisions")
async def list_config_revisions(
    site: str, _: SiteReaderDep, session: ReadSessionDep
) -> ItemList[ConfigRevisionPublic]:
    """Every revision, oldest first, each with its diff against the previous one."""
    site_row = await sites.site_by_name(session, site)
    return ItemList(items=await config_revisions.list_revisions(session, site_row))
