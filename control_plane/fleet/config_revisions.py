"""Site config as immutable numbered revisions: store, read the current one, list history.

Revision numbers start at 1 per site; "revision 0" is the implicit default config of a site
nobody configured yet. Storing a config identical to the current revision is a no-op that
answers the current number, so re-applying the same file is safe. Must not import FastAPI.
"""

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from common.config import (
    ConfigError,
    SiteConfig,
    dictionary_problems,
    load_site_config,
    validate_site_config,
)
from common.deployment import IN_CLUSTER, in_cluster_problems
from control_plane import audit
from control_plane.dicom_dictionary import keyword_vr
from control_plane.errors import BusyError, InvalidConfigError
from control_plane.fleet.config_diff import config_diff
from control_plane.fleet.notices import FleetNotice, announce
from control_plane.models import Agent, ConfigRevision, Site
from control_plane.schemas import ConfigRevisionPublic, SiteConfigPublic
from control_plane.security import Principal

MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class RevisionOrigin:
    """The rollout that writes a revision, and whether it applies its config or rolls back."""

    rollout_id: uuid.UUID
    action: str  # apply | rollback


@dataclass(frozen=True)
class CurrentConfig:
    """A site's current revision number and config (revision 0: the defaults)."""

    revision: int
    config: SiteConfig


DEFAULT_CONFIG = CurrentConfig(revision=0, config=SiteConfig())


def parse_config(document: bytes) -> SiteConfig:
    """Validate a site-config document (YAML or JSON); `InvalidConfigError` lists the problems."""
    try:
        text = document.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidConfigError(
            "the site config is not UTF-8 text", [f"byte {exc.start} is not valid UTF-8"]
        ) from exc
    try:
        config = load_site_config(text)
        problems = dictionary_problems(config, keyword_vr)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        raise InvalidConfigError(
            "the site config is invalid; fix the keys listed in `problems` and send it again",
            list(exc.problems),
        ) from exc
    return config


async def check_deployments(session: AsyncSession, site: Site, config: SiteConfig) -> None:
    """Refuse (`InvalidConfigError`) a config that the site's agents, all of them in-cluster,
    would refuse: in-cluster connectors use mutual TLS and push only."""
    kinds = set(
        (await session.scalars(select(Agent.deployment).where(Agent.site_id == site.id))).all()
    )
    problems = in_cluster_problems(config) if kinds == {IN_CLUSTER} else []
    if problems:
        raise InvalidConfigError(
            f"every agent of site {site.name} runs in-cluster, and in-cluster connectors use "
            "mutual TLS and push only; fix the keys listed in `problems`",
            problems,
        )


def _canonical(config: SiteConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def validate_document(document: dict[str, Any]) -> SiteConfig:
    """Validate an already-parsed config document; `InvalidConfigError` lists the problems."""
    try:
        config = validate_site_config(document)
        problems = dictionary_problems(config, keyword_vr)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        raise InvalidConfigError(
            "the site config is invalid; fix the keys listed in `problems` and send it again",
            list(exc.problems),
        ) from exc
    return config


async def latest_revision(session: AsyncSession, site_id: uuid.UUID) -> ConfigRevision | None:
    """The site's newest stored revision (None: never configured)."""
    return await _latest(session, site_id)


async def _latest(session: AsyncSession, site_id: uuid.UUID) -> ConfigRevision | None:
    return await session.scalar(
        select(ConfigRevision)
        .where(ConfigRevision.site_id == site_id)
        .order_by(ConfigRevision.revision.desc())
        .limit(1)
    )


async def store_config(
    session: AsyncSession,
    site: Site,
    config: SiteConfig,
    actor: Principal,
    origin: RevisionOrigin | None = None,
) -> int:
    """Store `config` as the site's next revision and return its number (or the current one
    when nothing changed); a new revision is audited with its diff, and with the rollout that
    wrote it (`origin`) if any."""
    document = _canonical(config)
    # Read once: a rollback below expires `site`, and reloading it lazily is not possible
    # under asyncio.
    site_id, site_name = site.id, site.name
    for _attempt in range(MAX_ATTEMPTS):
        latest = await _latest(session, site_id)
        if latest is not None:
            previous = _canonical(SiteConfig.model_validate(latest.config))
            if previous == document:
                return latest.revision
        else:
            previous = _canonical(SiteConfig())
        number = 1 if latest is None else latest.revision + 1
        diff = [change.model_dump(mode="json") for change in config_diff(previous, document)]
        revision = ConfigRevision(
            site_id=site_id,
            revision=number,
            config=document,
            diff=diff,
            created_by=actor.name,
            rollout_id=None if origin is None else origin.rollout_id,
            rollout_action=None if origin is None else origin.action,
        )
        session.add(revision)
        changes: dict[str, Any] = {"revision": number, "diff": diff}
        if origin is not None:
            changes |= {"rollout": str(origin.rollout_id), "rollout_action": origin.action}
        audit.record(
            session,
            actor,
            audit.AuditAction.config_update,
            f"site {site_name} config",
            site=site_name,
            changes=changes,
        )
        try:
            # In the same transaction: other replicas hear of the revision once it commits.
            await announce(session, FleetNotice.config_revision(site_id, number))
            await session.commit()
        except IntegrityError:
            # Another writer took this number; read the new latest and try again.
            await session.rollback()
            continue
        return revision.revision
    raise BusyError(f"concurrent config updates kept colliding {MAX_ATTEMPTS} times; retry")


async def current_config(session: AsyncSession, site: Site) -> SiteConfigPublic:
    """The site's current revision, or revision 0 with the defaults when none was stored."""
    latest = await _latest(session, site.id)
    if latest is None:
        return SiteConfigPublic(revision=0, config=SiteConfig(), created_at=None, created_by=None)
    return SiteConfigPublic(
        revision=latest.revision,
        config=SiteConfig.model_validate(latest.config),
        created_at=latest.created_at,
        created_by=latest.created_by,
    )


async def list_revisions(session: AsyncSession, site: Site) -> list[ConfigRevisionPublic]:
    """Every stored revision of the site, oldest first."""
    revisions = await session.scalars(
        select(ConfigRevision)
        .where(ConfigRevision.site_id == site.id)
        .order_by(ConfigRevision.revision)
    )
    return [
        ConfigRevisionPublic.model_validate(
            {
                "revision": revision.revision,
                "config": revision.config,
                "created_at": revision.created_at,
                "created_by": revision.created_by,
                "diff": revision.diff,
                "rollout_id": revision.rollout_id,
                "rollout_action": revision.rollout_action,
            }
        )
        for revision in revisions
    ]


async def latest_revision_numbers(
    session: AsyncSession, site_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """The current revision number of each of `site_ids` (0 for a site never configured)."""
    rows = await session.execute(
        select(ConfigRevision.site_id, func.max(ConfigRevision.revision))
        .where(ConfigRevision.site_id.in_(site_ids))
        .group_by(ConfigRevision.site_id)
    )
    numbers = {site_id: 0 for site_id in site_ids}
    numbers.update({site_id: revision for site_id, revision in rows})
    return numbers


async def latest_configs(
    session: AsyncSession, site_ids: Collection[uuid.UUID] | None = None
) -> dict[uuid.UUID, CurrentConfig]:
    """The current config of each of `site_ids` (of every configured site when None); a site
    never configured is absent, meaning `DEFAULT_CONFIG`."""
    newest = select(
        ConfigRevision.site_id, func.max(ConfigRevision.revision).label("revision")
    ).group_by(ConfigRevision.site_id)
    if site_ids is not None:
        newest = newest.where(ConfigRevision.site_id.in_(site_ids))
    latest = newest.subquery()
    revisions = await session.scalars(
        select(ConfigRevision).join(
            latest,
            (ConfigRevision.site_id == latest.c.site_id)
            & (ConfigRevision.revision == latest.c.revision),
        )
    )
    return {
        revision.site_id: CurrentConfig(
            revision=revision.revision, config=SiteConfig.model_validate(revision.config)
        )
        for revision in revisions
    }
