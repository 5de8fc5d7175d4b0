"""The rollout driver: the background task that pushes each stage, watches its agents through
their soak, and rolls back what a rollout changed when one of them fails or it is aborted.

All of a rollout's state is in the database, so any replica can drive it. The one driving it
holds its lease (`rollouts.driver_id` until `lease_expires_at`): every tick takes or renews the
leases of every rollout that needs driving in one conditional UPDATE (free, already ours, or
expired), so two replicas never drive one rollout at once and a replica that died is replaced
once its lease runs out. A stopping replica gives its leases back, so a restart resumes at once.
Stage moves and state changes are written before the next step; the rows recording each site's
revisions are written with the driver's next commit, and a revision stored before its row said
so (a crash in between) is recognised by its `rollout_id` and taken up, never pushed twice.

What the driver reads of agents is what their links recorded in the database (by whichever
replica holds each link): the applied revision, a rejected one with its reason, connection and
health. A disconnect counts only when it lasts longer than "missing" does (3 heartbeats), and a
restart or a takeover, which reconnects every agent, does not fail a rollout: a driver that
takes a rollout over gives its agents `reconnect_grace` first. A stage soaks and completes only
while every agent is connected.
Must not import FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.config import SiteConfig
from control_plane import audit
from control_plane.clock import Clock
from control_plane.errors import InvalidConfigError
from control_plane.fleet.config_push import push_site_config
from control_plane.fleet.config_revisions import (
    RevisionOrigin,
    latest_revision,
    validate_document,
)
from control_plane.fleet.health import (
    AgentRecord,
    HealthContext,
    is_connected,
    record_of,
    select_records,
    verdict,
)
from control_plane.fleet.health_rules import AgentStatus, missing_after
from control_plane.fleet.rollout_plan import RolloutState
from control_plane.fleet.rollout_schemas import ConfigMode, RolloutReason
from control_plane.fleet.rollouts import deployed_agents, new_config, principal_of
from control_plane.hub import Hub
from control_plane.models import (
    Agent,
    AgentHealthReport,
    ConfigRevision,
    Rollout,
    RolloutSite,
    RolloutStage,
    Site,
)

logger = structlog.get_logger(__name__)

_AGENTS = Agent.__table__
# While a stage waits for its agents to apply, the driver looks again this soon rather than
# a whole tick later: applying takes a round trip, and every stage waits for it.
APPLYING_POLL_S = 0.1
# Sites of a stage pushed at once: each push is several database round trips.
PUSH_CONCURRENCY = 8
APPLY = "apply"
ROLLBACK = "rollback"


class LeaseLostError(RuntimeError):
    """Another replica holds the rollout now; this one must stop driving it."""


@dataclass(frozen=True)
class Failure:
    """What stopped a rollout: what happened, at which site and agent."""

    what: str
    site: str | None
    detail: str
    agent: AgentRecord | None = None

    def reason(self, at: dt.datetime) -> RolloutReason:
        """As the API shows it."""
        return RolloutReason(
            what=self.what,
            site=self.site,
            agent=None if self.agent is None else self.agent.name,
            agent_id=None if self.agent is None else self.agent.id,
            detail=self.detail,
            at=at,
        )


def new_driver_id() -> str:
    """A name for this process's driver, unique across replicas and restarts."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RolloutDriver:
    """Drives every running rollout whose lease this process holds (see the module doc)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        hub: Hub,
        clock: Clock,
        *,
        lease: dt.timedelta,
        tick_interval_s: float,
        heartbeat_interval: dt.timedelta,
        reconnect_grace: dt.timedelta = dt.timedelta(seconds=90),
    ) -> None:
        self.driver_id = new_driver_id()
        self.lease = lease
        self._sessionmaker = sessionmaker
        self._hub = hub
        self._clock = clock
        self._tick_interval_s = tick_interval_s
        self._heartbeat_interval = heartbeat_interval
        self._reconnect_grace = reconnect_grace
        self._wake = asyncio.Event()
        self._due_in = tick_interval_s
        # When this driver took each rollout it holds: disconnects are counted from then.
        self._held_since: dict[uuid.UUID, dt.datetime] = {}
        self._renewed_at: dict[uuid.UUID, dt.datetime] = {}

    def wake(self) -> None:
        """Drive at once rather than at the next tick (a rollout was created or resumed)."""
        self._wake.set()

    async def run(self) -> None:
        """Tick until cancelled; a database error is logged and the next tick tries again."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._due_in):
                    await self._wake.wait()
            self._wake.clear()
            self._due_in = self._tick_interval_s
            try:
                await self.tick()
            except (SQLAlchemyError, OSError) as exc:
                logger.error("rollout driver tick failed; retrying", error=type(exc).__name__)

    async def release(self) -> None:
        """Give back every lease this process holds (at shutdown), so that another replica,
        or this one restarted, takes its rollouts over at once."""
        try:
            async with self._sessionmaker() as session:
                await session.execute(
                    update(Rollout)
                    .where(Rollout.driver_id == self.driver_id)
                    .values(driver_id=None, lease_expires_at=None)
                    .execution_options(synchronize_session=False)
                )
                await session.commit()
        except (SQLAlchemyError, OSError) as exc:
            logger.error("could not release rollout leases", error=type(exc).__name__)

    async def tick(self) -> None:
        """Take or renew the leases of the rollouts that need driving, and drive those held."""
        now = self._clock()
        held = await self.acquire(now)
        for gone in set(self._held_since) - set(held):
            del self._held_since[gone]
        self._renewed_at = dict.fromkeys(held, now)
        for rollout_id in held:
            self._held_since.setdefault(rollout_id, self._clock())
            try:
                await self._drive(rollout_id)
            except LeaseLostError:
                logger.warning("rollout taken over by another replica", rollout=str(rollout_id))
                self._held_since.pop(rollout_id, None)

    def _due(self, seconds: float) -> None:
        """Tick again within `seconds` (but never later than the next regular tick)."""
        self._due_in = max(0.0, min(self._due_in, seconds))

    async def acquire(self, now: dt.datetime) -> list[uuid.UUID]:
        """Take the leases of rollouts that need driving and are free or expired, renew this
        driver's own; the ids of the rollouts it holds now."""
        needs_driving = (Rollout.state == RolloutState.running.value) | Rollout.rollback_pending
        async with self._sessionmaker() as session:
            # One statement takes free and expired leases and renews our own; on PostgreSQL a
            # concurrent replica's UPDATE re-checks the WHERE on the row we wrote, so only one
            # of them wins.
            await session.execute(
                update(Rollout)
                .where(
                    needs_driving,
                    or_(
                        Rollout.driver_id.is_(None),
                        Rollout.driver_id == self.driver_id,
                        Rollout.lease_expires_at < now,
                    ),
                )
                .values(driver_id=self.driver_id, lease_expires_at=now + self.lease)
                .execution_options(synchronize_session=False)
            )
            held = list(
                await session.scalars(
                    select(Rollout.id)
                    .where(needs_driving, Rollout.driver_id == self.driver_id)
                    .order_by(Rollout.created_at)
                )
            )
            await session.commit()
        return held

    async def _renew(self, session: AsyncSession, rollout_id: uuid.UUID) -> None:
        """Make sure the lease holds before a step that writes; `LeaseLostError` when it is not
        ours. Renewed at most every third of the lease: one renewed less than that ago still
        holds for two thirds of it, and nobody else can take it meanwhile.

        Either way `session`'s transaction ends here, so the push sessions that follow can have
        the connection (on SQLite the writer engine has one)."""
        now = self._clock()
        renewed = self._renewed_at.get(rollout_id)
        if renewed is not None and now - renewed < self.lease / 3:
            if session.in_transaction():
                await session.commit()
            return
        result = await session.execute(
            update(Rollout)
            .where(Rollout.id == rollout_id, Rollout.driver_id == self.driver_id)
            .values(lease_expires_at=now + self.lease)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
        if result.rowcount != 1:  # type: ignore[attr-defined]
            self._renewed_at.pop(rollout_id, None)
            raise LeaseLostError(rollout_id)
        self._renewed_at[rollout_id] = now

    async def _drive(self, rollout_id: uuid.UUID) -> None:
        async with self._sessionmaker() as session:
            rollout = await session.get(Rollout, rollout_id)
            if rollout is None:
                return
            if rollout.rollback_pending:
                await self._roll_back(session, rollout)
                return
            if rollout.state != RolloutState.running.value:
                return
            stages = list(
                await session.scalars(
                    select(RolloutStage)
                    .where(RolloutStage.rollout_id == rollout.id)
                    .order_by(RolloutStage.stage)
                )
            )
            rows = list(
                await session.scalars(
                    select(RolloutSite).where(RolloutSite.rollout_id == rollout.id)
                )
            )
            while rollout.current_stage < len(stages):
                stage = stages[rollout.current_stage]
                members = [row for row in rows if row.stage == stage.stage]
                failure = await self._step(session, rollout, stage, members)
                if failure is not None:
                    await self._fail(session, rollout, failure)
                    return
                if stage.completed_at is None:
                    break
            # What the pushes recorded in the rows, if nothing has committed it yet.
            await session.commit()

    async def _step(
        self,
        session: AsyncSession,
        rollout: Rollout,
        stage: RolloutStage,
        members: Sequence[RolloutSite],
    ) -> Failure | None:
        """Move one stage on as far as it can go now; a failure stops the rollout."""
        if stage.started_at is None:
            await self._renew(session, rollout.id)
            stage.started_at = self._clock()
            await session.commit()
            logger.info("rollout stage started", rollout=str(rollout.id), stage=stage.stage + 1)
        pending = [row for row in members if row.status == "pending"]
        began = time.perf_counter()
        for start in range(0, len(pending), PUSH_CONCURRENCY):
            await self._renew(session, rollout.id)
            # Every push runs to its end (a revision stored is recorded in its row), then the
            # first error or failure counts.
            outcomes = await asyncio.gather(
                *(self._push(rollout, row) for row in pending[start : start + PUSH_CONCURRENCY]),
                return_exceptions=True,
            )
            failures: list[Failure] = []
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
                if outcome is not None:
                    failures.append(outcome)
            if failures:
                return failures[0]
        if pending:
            logger.info(
                "rollout stage pushed",
                rollout=str(rollout.id),
                stage=stage.stage + 1,
                sites=len(pending),
                seconds=round(time.perf_counter() - began, 3),
            )
        failure, applied, watched = await self._check(session, rollout, stage, members)
        if failure is not None:
            return failure
        if not applied:
            self._due(APPLYING_POLL_S)
            return None
        now = self._clock()
        if stage.soak_started_at is None:
            await self._renew(session, rollout.id)
            stage.soak_started_at = now
            await session.commit()
        # A stage without agents has nothing to soak: nothing could fail during it.
        soak = dt.timedelta(seconds=rollout.soak_s if watched else 0)
        if now - stage.soak_started_at < soak:
            self._due((stage.soak_started_at + soak - now).total_seconds())
            return None
        await self._renew(session, rollout.id)
        # Only a rollout still running moves on: a pause or abort through the API meanwhile
        # wins over this tick's view of it.
        last = rollout.current_stage + 1 == len(rollout.stages)
        values: dict[str, object] = {"current_stage": rollout.current_stage + 1, "updated_at": now}
        if last:
            values |= {"state": RolloutState.completed.value, "finished_at": now}
        moved = await session.execute(
            update(Rollout)
            .where(Rollout.id == rollout.id, Rollout.state == RolloutState.running.value)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            # Paused or aborted meanwhile. Committed, not rolled back: a rollback would expire
            # the loaded rows, which cannot reload lazily under asyncio.
            await session.commit()
            return None
        stage.completed_at = now
        if last:
            audit.record(
                session,
                principal_of(rollout),
                audit.AuditAction.rollout_complete,
                f"rollout {rollout.id}",
                changes={"state": RolloutState.completed.value},
            )
        await session.commit()
        await session.refresh(rollout)
        logger.info("rollout stage completed", rollout=str(rollout.id), stage=stage.stage + 1)
        return None

    async def _push(self, rollout: Rollout, row: RolloutSite) -> Failure | None:
        """Store and offer the rollout's config for one site, or take up a push cut short.

        The row is written with the next commit of `session` (a lease renewal, the stage's next
        step), not once per site: a crash before that leaves a stored revision its row does not
        name yet, which the next driver recognises by the revision's `rollout_id`; the revision
        it replaced is the one before it (a site's revisions are numbered without gaps). The
        push uses a session of its own, while the driver's session holds no transaction: on
        SQLite the writer engine has one connection. Several pushes run at once (on PostgreSQL
        their round trips overlap; on SQLite they queue for the writer).
        """
        failure = None
        async with self._sessionmaker() as push_session:
            site = await push_session.get(Site, row.site_id)
            assert site is not None, "sites are never deleted"
            site_name = site.name
            latest = await latest_revision(push_session, row.site_id)
            if latest is not None and (latest.rollout_id, latest.rollout_action) == (
                rollout.id,
                APPLY,
            ):
                row.previous_revision, row.revision = latest.revision - 1, latest.revision
                row.status = "pushed"
                return None
            current = SiteConfig() if latest is None else SiteConfig.model_validate(latest.config)
            previous = 0 if latest is None else latest.revision
            try:
                config = validate_document(
                    new_config(current, rollout.config, ConfigMode(rollout.config_mode))
                )
                revision = await push_site_config(
                    push_session,
                    self._hub,
                    site,
                    config,
                    principal_of(rollout),
                    origin=RevisionOrigin(rollout.id, APPLY),
                )
            except InvalidConfigError as exc:
                row.detail = "; ".join(exc.problems)[:2000]
                failure = Failure(
                    "invalid_config",
                    site_name,
                    "the site's config changed since the rollout was created and the rollout"
                    f" would make it invalid: {'; '.join(exc.problems)}",
                )
        if failure is not None:
            return failure
        if revision == previous:
            row.previous_revision, row.revision, row.status = previous, revision, "unchanged"
        else:
            # Someone may have stored a revision between the read above and this one: what
            # this revision replaced is the one just before it.
            row.previous_revision, row.revision, row.status = revision - 1, revision, "pushed"
        return None

    async def _check(
        self,
        session: AsyncSession,
        rollout: Rollout,
        stage: RolloutStage,
        members: Sequence[RolloutSite],
    ) -> tuple[Failure | None, bool, int]:
        """Judge the stage's agents now: the first failure, whether all have applied, and how
        many agents it watched."""
        now = self._clock()
        assert stage.started_at is not None
        wanted = {row.site_id: row.revision for row in members}
        site_rows = await session.execute(select(Site.id, Site.name).where(Site.id.in_(wanted)))
        names: dict[uuid.UUID, str] = {row[0]: row[1] for row in site_rows.all()}
        records = [
            record_of(row)
            for row in (
                await session.execute(
                    select_records()
                    .where(_AGENTS.c.site_id.in_(wanted), deployed_agents())
                    .order_by(_AGENTS.c.name)
                )
            ).all()
        ]
        context = HealthContext(now=now, heartbeat_interval=self._heartbeat_interval)
        grace = missing_after(self._heartbeat_interval)
        held_since = self._held_since.get(rollout.id, now)
        apply_timeout = dt.timedelta(seconds=rollout.apply_timeout_s)
        all_applied = True
        for record in records:
            revision = wanted[record.site_id]
            assert revision is not None, "every site of a started stage was pushed"
            site = names[record.site_id]
            failed = record.config_failed_revision
            if failed is not None and failed >= revision:
                return (
                    Failure(
                        "rejected",
                        site,
                        f"agent {record.name} rejected revision {failed}:"
                        f" {record.config_failure_reason or 'no reason given'}",
                        record,
                    ),
                    False,
                    len(records),
                )
            if is_connected(record, context):
                # Health is judged from the soak on: while an agent applies a revision, its
                # listener may restart, and a report from that moment is no verdict on it.
                judged = verdict(record, context)
                soaking = stage.soak_started_at is not None and (
                    record.health_reported_at is not None
                    and record.health_reported_at >= stage.soak_started_at
                )
                if soaking and judged.status is AgentStatus.unhealthy:
                    return (
                        Failure(
                            "unhealthy",
                            site,
                            f"agent {record.name} is unhealthy: {'; '.join(judged.reasons)}",
                            record,
                        ),
                        False,
                        len(records),
                    )
            else:
                # Gone since the disconnect (or the last word of an agent whose replica died),
                # or since the stage started; a driver that took over later (a restart, which
                # closed every link) gives the fleet time to reconnect first.
                gone = max(
                    moment
                    for moment in (record.disconnected_at, record.last_seen_at, stage.started_at)
                    if moment is not None
                )
                deadline = gone + grace
                if held_since > gone:
                    deadline = max(deadline, held_since + self._reconnect_grace)
                if now > deadline:
                    return (
                        Failure(
                            "disconnected",
                            site,
                            f"agent {record.name} has not been connected since"
                            f" {gone.isoformat(timespec='seconds')}",
                            record,
                        ),
                        False,
                        len(records),
                    )
                # A stage soaks, and completes, only with every agent connected.
                all_applied = False
            if record.config_revision is None or record.config_revision < revision:
                all_applied = False
                if now - stage.started_at > apply_timeout:
                    return (
                        Failure(
                            "apply_timeout",
                            site,
                            f"agent {record.name} did not apply revision {revision} within"
                            f" {apply_timeout.total_seconds():g} s (it runs"
                            f" {record.config_revision})",
                            record,
                        ),
                        False,
                        len(records),
                    )
        if stage.soak_started_at is not None and records:
            report = (
                await session.execute(
                    select(AgentHealthReport.agent_id, AgentHealthReport.reasons)
                    .where(
                        AgentHealthReport.agent_id.in_([record.id for record in records]),
                        AgentHealthReport.received_at >= stage.soak_started_at,
                        AgentHealthReport.status == AgentStatus.unhealthy.value,
                    )
                    .limit(1)
                )
            ).first()
            if report is not None:
                record = next(record for record in records if record.id == report[0])
                return (
                    Failure(
                        "unhealthy",
                        names[record.site_id],
                        f"agent {record.name} reported unhealthy during the soak:"
                        f" {'; '.join(report[1])}",
                        record,
                    ),
                    False,
                    len(records),
                )
        return None, all_applied, len(records)

    async def _fail(self, session: AsyncSession, rollout: Rollout, failure: Failure) -> None:
        now = self._clock()
        reason = failure.reason(now)
        stopped = await session.execute(
            update(Rollout)
            .where(Rollout.id == rollout.id, Rollout.state == RolloutState.running.value)
            .values(
                state=RolloutState.rolled_back.value,
                rollback_pending=True,
                reason=reason.model_dump(mode="json"),
                updated_at=now,
                finished_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if stopped.rowcount != 1:  # type: ignore[attr-defined]
            await session.commit()  # paused or aborted meanwhile: nothing to stop
            return
        audit.record(
            session,
            principal_of(rollout),
            audit.AuditAction.rollout_rollback,
            f"rollout {rollout.id}",
            changes={
                "state": RolloutState.rolled_back.value,
                "reason": reason.model_dump(mode="json"),
            },
        )
        await session.commit()
        logger.warning(
            "rollout stopped; rolling back",
            rollout=str(rollout.id),
            what=failure.what,
            site=failure.site,
        )
        await session.refresh(rollout)
        await self._roll_back(session, rollout)

    async def _roll_back(self, session: AsyncSession, rollout: Rollout) -> None:
        """Give every site the rollout changed its previous revision back, as a new revision
        marked as this rollout's rollback; a site changed by someone else since is left alone."""
        # Pending rows of started stages too: a crash may have stored a revision before its
        # row said so.
        rows = list(
            await session.scalars(
                select(RolloutSite).where(
                    RolloutSite.rollout_id == rollout.id,
                    (RolloutSite.status == "pushed")
                    | (
                        (RolloutSite.status == "pending")
                        & (RolloutSite.stage <= rollout.current_stage)
                    ),
                )
            )
        )
        for row in rows:
            await self._renew(session, rollout.id)
            await self._roll_back_site(session, rollout, row)
        await session.execute(
            update(Rollout)
            .where(Rollout.id == rollout.id)
            .values(rollback_pending=False, updated_at=self._clock())
            .execution_options(synchronize_session=False)
        )
        await session.commit()
        logger.info("rollout rolled back", rollout=str(rollout.id), sites=len(rows))

    async def _roll_back_site(
        self, session: AsyncSession, rollout: Rollout, row: RolloutSite
    ) -> None:
        async with self._sessionmaker() as push_session:
            latest = await latest_revision(push_session, row.site_id)
        mark = None if latest is None else (latest.rollout_id, latest.rollout_action)
        if row.status == "pending":
            # A crash may have stored this rollout's revision (or even its rollback) before
            # the row said so; otherwise the site was never pushed.
            if latest is None or mark not in ((rollout.id, APPLY), (rollout.id, ROLLBACK)):
                return
            applied = latest.revision - (0 if mark == (rollout.id, APPLY) else 1)
            row.previous_revision, row.revision = applied - 1, applied
        assert latest is not None, "a pushed site has a revision"
        if mark == (rollout.id, ROLLBACK):
            row.rollback_revision, row.status = latest.revision, "rolled_back"
        elif latest.revision != row.revision:
            row.status = "kept"
            row.detail = (
                f"revision {latest.revision} by {latest.created_by} came after this"
                f" rollout's revision {row.revision}; left as it is"
            )
        else:
            async with self._sessionmaker() as push_session:
                previous = await push_session.scalar(
                    select(ConfigRevision.config).where(
                        ConfigRevision.site_id == row.site_id,
                        ConfigRevision.revision == row.previous_revision,
                    )
                )
                config = SiteConfig() if previous is None else SiteConfig.model_validate(previous)
                site = await push_session.get(Site, row.site_id)
                assert site is not None, "sites are never deleted"
                row.rollback_revision = await push_site_config(
                    push_session,
                    self._hub,
                    site,
                    config,
                    principal_of(rollout),
                    origin=RevisionOrigin(rollout.id, ROLLBACK),
                    check=False,
                )
            row.status = "rolled_back"
        await session.commit()
