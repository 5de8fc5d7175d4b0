"""Sites: create, list, look up by name. Must not import FastAPI."""

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import audit
from control_plane.errors import ConflictError, NotFoundError
from control_plane.models import Site
from control_plane.schemas import SiteCreate, SitePublic, is_valid_name
from control_plane.security import Principal


def site_public(site: Site) -> SitePublic:
    """A site row as the API shows it."""
    return SitePublic(name=site.name, timezone=site.timezone)


async def create_site(session: AsyncSession, body: SiteCreate, actor: Principal) -> SitePublic:
    """Create a site (audited); `ConflictError` when the name is taken."""
    site = Site(name=body.name, timezone=body.timezone)
    session.add(site)
    audit.record(
        session,
        actor,
        audit.AuditAction.site_create,
        f"site {body.name}",
        site=body.name,
        changes={"timezone": body.timezone},
    )
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise ConflictError(f"site {body.name!r} already exists") from exc
    return site_public(site)


async def list_sites(session: AsyncSession, only: uuid.UUID | None = None) -> list[SitePublic]:
    """All sites (or only the site `only`), ordered by name."""
    query = select(Site).order_by(Site.name)
    if only is not None:
        query = query.where(Site.id == only)
    sites = await session.scalars(query)
    return [site_public(site) for site in sites]


async def site_by_name(session: AsyncSession, name: str) -> Site:
    """The site called `name`; `NotFoundError` when there is none."""
    # A name no site can have is not sent to the database (PostgreSQL refuses NUL in text).
    site = None
    if is_valid_name(name):
        site = await session.scalar(select(Site).where(Site.name == name))
    if site is None:
        raise NotFoundError(f"site {name!r} does not exist; create it with POST /api/v1/sites")
    return site


async def site_of(session: AsyncSession, principal: Principal) -> Site:
    """The site an agent principal belongs to; `NotFoundError` for a principal without one."""
    site = None if principal.site_id is None else await session.get(Site, principal.site_id)
    if site is None:
        raise NotFoundError(f"{principal.name} belongs to no site")
    return site
