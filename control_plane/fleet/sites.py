"""Sites: create, list (by label too), look up by name, label. Must not import FastAPI."""

import uuid
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import audit
from control_plane.errors import ConflictError, NotFoundError
from control_plane.fleet.labels import LabelError, checked_labels, key_problem, matches
from control_plane.models import Site
from control_plane.schemas import SiteCreate, SitePublic, is_valid_name
from control_plane.security import Principal


def site_public(site: Site) -> SitePublic:
    """A site row as the API shows it."""
    return SitePublic(name=site.name, timezone=site.timezone, labels=dict(site.labels or {}))


async def create_site(session: AsyncSession, body: SiteCreate, actor: Principal) -> SitePublic:
    """Create a site (audited); `ConflictError` when the name is taken, `LabelError` for an
    invalid label."""
    labels = checked_labels(body.labels)
    site = Site(name=body.name, timezone=body.timezone, labels=labels)
    session.add(site)
    changes: dict[str, object] = {"timezone": body.timezone}
    if labels:
        changes["labels"] = labels
    audit.record(
        session,
        actor,
        audit.AuditAction.site_create,
        f"site {body.name}",
        site=body.name,
        changes=changes,
    )
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise ConflictError(f"site {body.name!r} already exists") from exc
    return site_public(site)


async def list_sites(
    session: AsyncSession,
    only: uuid.UUID | None = None,
    selector: Mapping[str, str] | None = None,
) -> list[SitePublic]:
    """All sites (or only the site `only`) carrying every label of `selector`, by name."""
    query = select(Site).order_by(Site.name)
    if only is not None:
        query = query.where(Site.id == only)
    # Filtered here rather than in SQL: JSON containment is spelled differently on SQLite and
    # PostgreSQL, and a fleet has thousands of sites at most.
    return [
        site_public(site)
        for site in await session.scalars(query)
        if matches(site.labels or {}, selector or {})
    ]


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


async def set_labels(
    session: AsyncSession, name: str, labels: Mapping[str, str], actor: Principal
) -> SitePublic:
    """Replace the site's labels with `labels` (audited with the old and new sets)."""
    site = await site_by_name(session, name)
    return await _relabel(session, site, checked_labels(labels), actor)


async def set_label(
    session: AsyncSession, name: str, key: str, value: str, actor: Principal
) -> SitePublic:
    """Set one label of the site (audited)."""
    site = await site_by_name(session, name)
    return await _relabel(session, site, checked_labels({**(site.labels or {}), key: value}), actor)


async def remove_label(session: AsyncSession, name: str, key: str, actor: Principal) -> SitePublic:
    """Remove one label of the site; removing a label it does not carry changes nothing."""
    problem = key_problem(key)
    if problem is not None:
        raise LabelError(problem)
    site = await site_by_name(session, name)
    labels = dict(site.labels or {})
    if key not in labels:
        return site_public(site)
    del labels[key]
    return await _relabel(session, site, labels, actor)


async def _relabel(
    session: AsyncSession, site: Site, labels: dict[str, str], actor: Principal
) -> SitePublic:
    before = dict(site.labels or {})
    if labels == before:
        return site_public(site)
    site.labels = labels
    audit.record(
        session,
        actor,
        audit.AuditAction.site_labels,
        f"site {site.name} labels",
        site=site.name,
        changes={"before": before, "after": labels},
    )
    await session.commit()
    return site_public(site)
