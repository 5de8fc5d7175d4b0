"""Putting a site config into force: store it as the site's next revision and offer it at
once to the site's agents connected here. The one path every config change takes (the
`PUT /api/v1/sites/{site}/config` route and rollouts alike), so whatever a new revision must
set off happens for all of them. Must not import FastAPI.
"""

from sqlalchemy.ext.asyncio import AsyncSession

from common.config import SiteConfig
from control_plane.fleet.config_revisions import RevisionOrigin, check_deployments, store_config
from control_plane.hub import Hub
from control_plane.link import ConfigOffer
from control_plane.models import Site
from control_plane.security import Principal


async def push_site_config(
    session: AsyncSession,
    hub: Hub,
    site: Site,
    config: SiteConfig,
    actor: Principal,
    *,
    origin: RevisionOrigin | None = None,
    check: bool = True,
) -> int:
    """Store `config` as the site's next revision (the current number when nothing changed)
    and offer it to the site's agents; the revision number.

    `check` refuses (`InvalidConfigError`) a config the site's in-cluster agents would refuse;
    a rollback writes back a revision they ran before and skips it.
    """
    # Read before storing: a retried commit expires `site`, which cannot reload under asyncio.
    site_id, site_name, timezone, salt = site.id, site.name, site.timezone, site.deid_salt
    if check:
        await check_deployments(session, site, config)
    revision = await store_config(session, site, config, actor, origin)
    await hub.push_config(site_id, ConfigOffer.of(revision, site_name, timezone, config, salt))
    return revision
