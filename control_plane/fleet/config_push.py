"""A site's new config: checked, stored as a revision and pushed to its agents, in one call.

`push_site_config` is the one path every config change takes (the config route; rollouts push
their stages and their rollbacks through it too), so every revision reaches every agent the
same way: the links to this process at once, the links to other replicas through the notice
stored with the revision (`control_plane.fleet.notices`), and any link missed by both through
the hubs' periodic reconcile. Must not import FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from common.config import SiteConfig
from control_plane.fleet import config_revisions
from control_plane.fleet.config_revisions import RevisionOrigin
from control_plane.link import ConfigOffer
from control_plane.models import Site
from control_plane.security import Principal

if TYPE_CHECKING:
    from control_plane.hub import Hub


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
    """Store `config` as the site's next revision and offer it to every agent of the site;
    the revision number (the current one when nothing changed).

    `origin` names the rollout writing it. `check` refuses (`InvalidConfigError`) a config the
    site's agents could not run (in-cluster rules); a rollback writes back a revision they ran
    before and skips it. Raises `BusyError` when concurrent updates kept colliding.
    """
    # Read before storing: a retried commit expires `site`, which cannot reload lazily here.
    site_id, site_name, timezone, salt = site.id, site.name, site.timezone, site.deid_salt
    if check:
        await config_revisions.check_deployments(session, site, config)
    revision = await config_revisions.store_config(session, site, config, actor, origin)
    await hub.push_config(site_id, ConfigOffer.of(revision, site_name, timezone, config, salt))
    return revision
