"""Rollouts as the API sees them: create (target, validate, plan), list, show, pause, resume,
abort. The driver (`control_plane.fleet.rollout_driver`) does the pushing, watching and rolling
back; everything both need to agree on lives in the database. Must not import FastAPI.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.config import SiteConfig
from control_plane import audit
from control_plane.errors import ConflictError, InvalidConfigError, NotFoundError
from control_plane.fleet.config_revisions import (
    DEFAULT_CONFIG,
    check_deployments,
    latest_configs,
    validate_document,
)
from control_plane.fleet.health import HealthContext, is_connected, record_of, select_records
from control_plane.fleet.health import verdict as judge
from control_plane.fleet.labels import matches
from control_plane.fleet.rollout_plan import (
    RolloutAction,
    RolloutState,
    merge_patch,
    next_state,
    plan_stages,
)
from control_plane.fleet.rollout_schemas import (
    AgentResult,
    ConfigMode,
    RolloutCreate,
    RolloutCreated,
    RolloutDriver,
    RolloutPublic,
    RolloutReason,
    RolloutSitePublic,
    RolloutStagePublic,
    RolloutSummary,
    StageStatus,
    duration_text,
)
from control_plane.models import Agent, Rollout, RolloutSite, RolloutStage, Site
from control_plane.security import Principal, Role

ACTIVE_STATES = (RolloutState.running.value, RolloutState.paused.value)
_ACTIONS = {
    RolloutAction.pause: audit.AuditAction.rollout_pause,
    RolloutAction.resume: audit.AuditAction.rollout_resume,
    RolloutAction.abort: audit.AuditAction.rollout_abort,
}


def new_config(current: SiteConfig, config: dict[str, Any], mode: ConfigMode) -> dict[str, Any]:
    """The document a rollout gives a site whose config is `current`."""
    if mode is ConfigMode.whole:
        return dict(config)
    merged: dict[str, Any] = merge_patch(current.model_dump(mode="json"), config)
    return merged


def principal_of(rollout: Rollout) -> Principal:
    """Who created the rollout: the actor of every revision and audit entry it writes."""
    token_id = None
    try:
        token_id = uuid.UUID(rollout.actor_id)
    except ValueError:
        token_id = None  # the bootstrap admin
    return Principal(role=Role(rollout.actor_role), name=rollout.actor_name, token_id=token_id)


def deployed_agents() -> Any:
    """The condition of the agents a rollout counts and waits for: with a token, and connected
    at least once (an agent registered but never started runs no config)."""
    return Agent.token_sha256.is_not(None) & Agent.connected_at.is_not(None)


async def _target(session: AsyncSession, body: RolloutCreate) -> list[Site]:
    sites = list(await session.scalars(select(Site).order_by(Site.name)))
    if isinstance(body.sites, list):
        by_name = {site.name: site for site in sites}
        unknown = [name for name in body.sites if name not in by_name]
        if unknown:
            raise InvalidConfigError(
                "the rollout names sites that do not exist; list them with GET /api/v1/sites",
                [f"sites: site {name!r} does not exist" for name in unknown],
            )
        sites = [by_name[name] for name in dict.fromkeys(body.sites)]
    selected = [site for site in sites if matches(site.labels or {}, body.labels or {})]
    if not selected:
        raise InvalidConfigError(
            "the rollout selects no site; check `sites` and `labels` (GET /api/v1/sites?label=)",
            ["sites: no site matches"],
        )
    return sorted(selected, key=lambda site: site.name)


async def _refuse_overlap(session: AsyncSession, site_ids: Sequence[uuid.UUID]) -> None:
    busy = (
        await session.execute(
            select(Site.name, Rollout.id)
            .join(RolloutSite, RolloutSite.site_id == Site.id)
            .join(Rollout, Rollout.id == RolloutSite.rollout_id)
            .where(
                RolloutSite.site_id.in_(site_ids),
                Rollout.state.in_(ACTIVE_STATES) | Rollout.rollback_pending,
            )
            .order_by(Site.name)
        )
    ).all()
    if busy:
        names = ", ".join(f"{name} (rollout {rollout_id})" for name, rollout_id in busy)
        raise ConflictError(
            f"these sites are in a rollout that has not ended: {names}; wait for it or abort it"
        )


async def _check_configs(session: AsyncSession, sites: Sequence[Site], body: RolloutCreate) -> None:
    current = await latest_configs(session, [site.id for site in sites])
    for site in sites:
        config = current.get(site.id, DEFAULT_CONFIG).config
        try:
            checked = validate_document(new_config(config, body.config, body.config_mode))
            await check_deployments(session, site, checked)
        except InvalidConfigError as exc:
            raise InvalidConfigError(
                f"the rollout would make the config of site {site.name} invalid; fix the keys"
                " listed in `problems` (each names the site) and send it again",
                [f"site {site.name}: {problem}" for problem in exc.problems],
            ) from exc


async def _agent_counts(
    session: AsyncSession, site_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    rows = await session.execute(
        select(Agent.site_id, func.count())
        .where(Agent.site_id.in_(site_ids), deployed_agents())
        .group_by(Agent.site_id)
    )
    counts = dict.fromkeys(site_ids, 0)
    counts.update({row[0]: row[1] for row in rows.all()})
    return counts


async def create_rollout(
    session: AsyncSession,
    body: RolloutCreate,
    actor: Principal,
    *,
    driver_id: str,
    now: dt.datetime,
    lease: dt.timedelta,
) -> RolloutCreated:
    """Validate and plan a rollout and store it `running`, its lease held by `driver_id` (the
    replica that created it starts driving it at once).

    Raises:
        InvalidConfigError: no site selected, an unknown site, or a config that would be
            invalid on a site (422, naming the site and key).
        ConflictError: a target site is in another rollout that has not ended (409).
    """
    sites = await _target(session, body)
    site_ids = [site.id for site in sites]
    await _refuse_overlap(session, site_ids)
    await _check_configs(session, sites, body)
    counts = await _agent_counts(session, site_ids)
    planned = plan_stages([(site.name, counts[site.id]) for site in sites], body.stages)
    target: dict[str, Any] = {"sites": body.sites, "labels": body.labels}
    rollout = Rollout(
        id=uuid.uuid4(),
        state=RolloutState.running.value,
        rollback_pending=False,
        config=body.config,
        config_mode=body.config_mode.value,
        target=target,
        stages=list(body.stages),
        soak_s=body.soak.total_seconds(),
        apply_timeout_s=body.apply_timeout.total_seconds(),
        current_stage=0,
        created_at=now,
        updated_at=now,
        actor_role=actor.role.value,
        actor_id=actor.actor_id,
        actor_name=actor.name,
        driver_id=driver_id,
        lease_expires_at=now + lease,
    )
    session.add(rollout)
    await session.flush()
    for index, percent in enumerate(body.stages):
        session.add(RolloutStage(rollout_id=rollout.id, stage=index, percent=percent))
    for site, stage in zip(sites, planned, strict=True):
        session.add(
            RolloutSite(
                rollout_id=rollout.id,
                site_id=site.id,
                stage=stage,
                agents=counts[site.id],
                status="pending",
            )
        )
    audit.record(
        session,
        actor,
        audit.AuditAction.rollout_create,
        f"rollout {rollout.id}",
        changes={
            "sites": [site.name for site in sites],
            "config_mode": body.config_mode.value,
            "config": body.config,
            "stages": list(body.stages),
            "soak": duration_text(rollout.soak_s),
        },
    )
    await session.commit()
    return RolloutCreated(id=rollout.id, state=RolloutState.running)


async def rollout_row(session: AsyncSession, rollout_id: uuid.UUID) -> Rollout:
    """The rollout's row; `NotFoundError` when there is none."""
    rollout = await session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(
            f"no rollout has the id {rollout_id}; list them with GET /api/v1/rollouts"
        )
    return rollout


async def act(
    session: AsyncSession,
    rollout_id: uuid.UUID,
    action: RolloutAction,
    actor: Principal,
    now: dt.datetime,
) -> RolloutState:
    """Pause, resume or abort (audited); the new state. `RolloutStateError` (409) when the
    state does not allow it.

    Resuming restarts the soak of a stage that was soaking: it must prove itself for a whole
    soak after the pause. Aborting leaves the rollback to the driver (`rollback_pending`).
    """
    rollout = await rollout_row(session, rollout_id)
    await session.refresh(rollout, with_for_update=True)
    target = next_state(RolloutState(rollout.state), action)
    rollout.state = target.value
    rollout.updated_at = now
    if action is RolloutAction.abort:
        rollout.rollback_pending = True
        rollout.reason = RolloutReason(
            what="aborted", detail=f"aborted by {actor.name}", at=now
        ).model_dump(mode="json")
        rollout.finished_at = now
    if action is RolloutAction.resume:
        stage = await session.scalar(
            select(RolloutStage).where(
                RolloutStage.rollout_id == rollout.id,
                RolloutStage.stage == rollout.current_stage,
            )
        )
        if stage is not None and stage.soak_started_at is not None:
            stage.soak_started_at = now
    audit.record(
        session,
        actor,
        _ACTIONS[action],
        f"rollout {rollout.id}",
        changes={"state": target.value, "stage": rollout.current_stage + 1},
    )
    await session.commit()
    return target


async def list_rollouts(
    session: AsyncSession, state: RolloutState | None = None
) -> list[RolloutSummary]:
    """Every rollout (of one state), newest first."""
    query = select(Rollout).order_by(Rollout.created_at.desc())
    if state is not None:
        query = query.where(Rollout.state == state.value)
    rollouts = list(await session.scalars(query))
    count_rows = await session.execute(
        select(RolloutSite.rollout_id, func.count())
        .where(RolloutSite.rollout_id.in_([rollout.id for rollout in rollouts]))
        .group_by(RolloutSite.rollout_id)
    )
    counts: dict[uuid.UUID, int] = {row[0]: row[1] for row in count_rows.all()}
    return [
        RolloutSummary(
            id=rollout.id,
            state=RolloutState(rollout.state),
            rollback_pending=rollout.rollback_pending,
            stages=list(rollout.stages),
            current_stage=rollout.current_stage + 1,
            sites=counts.get(rollout.id, 0),
            created_at=rollout.created_at,
            created_by=rollout.actor_name,
            finished_at=rollout.finished_at,
            reason=None if rollout.reason is None else RolloutReason(**rollout.reason),
        )
        for rollout in rollouts
    ]


async def show_rollout(
    session: AsyncSession, rollout_id: uuid.UUID, context: HealthContext
) -> RolloutPublic:
    """The rollout with its stages and, per site, its revisions and its agents judged now."""
    rollout = await rollout_row(session, rollout_id)
    stages = list(
        await session.scalars(
            select(RolloutStage)
            .where(RolloutStage.rollout_id == rollout.id)
            .order_by(RolloutStage.stage)
        )
    )
    rows = (
        await session.execute(
            select(RolloutSite, Site.name)
            .join(Site, Site.id == RolloutSite.site_id)
            .where(RolloutSite.rollout_id == rollout.id)
            .order_by(RolloutSite.stage, Site.name)
        )
    ).all()
    site_ids = [row[0].site_id for row in rows]
    records = [
        record_of(row)
        for row in (
            await session.execute(
                select_records()
                .where(Agent.__table__.c.site_id.in_(site_ids), deployed_agents())
                .order_by(Agent.__table__.c.name)
            )
        ).all()
    ]
    agents_by_site: defaultdict[uuid.UUID, list[AgentResult]] = defaultdict(list)
    wanted_by_site = {row[0].site_id: row[0].revision for row in rows}
    for record in records:
        wanted = wanted_by_site[record.site_id]
        judged = judge(record, context)
        applied = (
            wanted is not None
            and record.config_revision is not None
            and record.config_revision >= wanted
        )
        failure = None
        if wanted is not None and (record.config_failed_revision or -1) >= wanted:
            failure = record.config_failure_reason
        agents_by_site[record.site_id].append(
            AgentResult(
                id=record.id,
                name=record.name,
                config_revision=record.config_revision,
                applied=applied,
                connected=is_connected(record, context),
                status=judged.status.value,
                failure=failure,
            )
        )
    state = RolloutState(rollout.state)
    driver = None
    if rollout.driver_id is not None and rollout.lease_expires_at is not None:
        driver = RolloutDriver(id=rollout.driver_id, lease_expires_at=rollout.lease_expires_at)
    return RolloutPublic(
        id=rollout.id,
        state=state,
        rollback_pending=rollout.rollback_pending,
        config_mode=ConfigMode(rollout.config_mode),
        config=rollout.config,
        target=rollout.target,
        soak=duration_text(rollout.soak_s),
        apply_timeout=duration_text(rollout.apply_timeout_s),
        current_stage=rollout.current_stage + 1,
        stages=[
            RolloutStagePublic(
                stage=stage.stage + 1,
                percent=stage.percent,
                status=_stage_status(stage, state),
                sites=[name for row, name in rows if row.stage == stage.stage],
                agents=sum(row.agents for row, _ in rows if row.stage == stage.stage),
                started_at=stage.started_at,
                soak_started_at=stage.soak_started_at,
                completed_at=stage.completed_at,
            )
            for stage in stages
        ],
        sites=[
            RolloutSitePublic(
                site=name,
                stage=row.stage + 1,
                status=row.status,
                previous_revision=row.previous_revision,
                revision=row.revision,
                rollback_revision=row.rollback_revision,
                detail=row.detail,
                agents=agents_by_site.get(row.site_id, []),
            )
            for row, name in rows
        ],
        reason=None if rollout.reason is None else RolloutReason(**rollout.reason),
        created_at=rollout.created_at,
        created_by=rollout.actor_name,
        updated_at=rollout.updated_at,
        finished_at=rollout.finished_at,
        driver=driver,
    )


def _stage_status(stage: RolloutStage, state: RolloutState) -> StageStatus:
    if stage.completed_at is not None:
        return StageStatus.completed
    if stage.started_at is None:
        return StageStatus.stopped if state.ended else StageStatus.pending
    if state.ended:
        return StageStatus.stopped
    return StageStatus.soaking if stage.soak_started_at is not None else StageStatus.applying
