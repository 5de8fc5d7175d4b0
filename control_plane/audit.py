"""The audit log: every change made through the API, with its actor, time, target and changes.

`record` adds an entry to the caller's session without committing, so the entry is committed
in the same transaction as the change itself (or rolled back with it). The actor is named by
role, token id (or agent id, or `admin`) and name: never by the token. Must not import FastAPI.
"""

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.auth_schemas import AuditActor, AuditEntryPublic, AuditFilter, AuditPage
from control_plane.models import AuditEntry
from control_plane.security import Principal


class AuditAction(StrEnum):
    """What kind of change an entry records."""

    site_create = "site.create"
    config_update = "config.update"
    agent_create = "agent.create"
    agent_token_rotate = "agent.token_rotate"  # noqa: S105 - an action name
    agent_token_revoke = "agent.token_revoke"  # noqa: S105 - an action name
    agent_command = "agent.command"
    group_create = "group.create"
    project_create = "project.create"
    token_create = "token.create"  # noqa: S105 - an action name
    token_revoke = "token.revoke"  # noqa: S105 - an action name
    session_move = "session.move"
    session_purge = "session.purge"
    series_retry = "series.retry"
    series_discard = "series.discard"
    site_labels = "site.labels"
    rollout_create = "rollout.create"
    rollout_pause = "rollout.pause"
    rollout_resume = "rollout.resume"
    rollout_abort = "rollout.abort"
    rollout_complete = "rollout.complete"
    rollout_rollback = "rollout.rollback"


def record(
    session: AsyncSession,
    actor: Principal,
    action: AuditAction,
    target: str,
    *,
    site: str | None = None,
    changes: dict[str, Any] | None = None,
) -> None:
    """Add an audit entry to `session`; it is written when the caller commits its change."""
    session.add(
        AuditEntry(
            actor_role=actor.role.value,
            actor_id=actor.actor_id,
            actor_name=actor.name,
            action=action.value,
            target=target,
            site=site,
            changes=changes or {},
        )
    )


async def list_entries(
    session: AsyncSession, where: AuditFilter, only_site: str | None
) -> AuditPage:
    """A page of entries matching `where`, newest first; `only_site` limits it to one site."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(where.limit + 1)
    site = only_site if only_site is not None else where.site
    if site is not None:
        query = query.where(AuditEntry.site == site)
    if where.action is not None:
        query = query.where(AuditEntry.action == where.action)
    if where.since is not None:
        query = query.where(AuditEntry.at >= where.since.astimezone(dt.UTC))
    if where.before is not None:
        query = query.where(AuditEntry.id < where.before)
    rows = list(await session.scalars(query))
    page, more = rows[: where.limit], len(rows) > where.limit
    return AuditPage(items=[_public(row) for row in page], next=page[-1].id if more else None)


def _public(entry: AuditEntry) -> AuditEntryPublic:
    return AuditEntryPublic(
        id=entry.id,
        at=entry.at,
        actor=AuditActor(role=entry.actor_role, id=entry.actor_id, name=entry.actor_name),
        action=entry.action,
        target=entry.target,
        site=entry.site,
        changes=entry.changes,
    )
