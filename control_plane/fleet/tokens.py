"""Agent tokens after registration: rotate (a new one, shown once) and revoke; and the audited
record of a command sent to an agent.

Either way the old token stops working for HTTP at once (the stored digest changes). Closing
the agent's live link is the hub's job, done by the route right after for a link to this
process, and by the other replicas' hubs when they hear the notice sent with the change
(`control_plane.fleet.notices`). Must not import FastAPI.
"""

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import audit
from control_plane.fleet.agents import agent_row
from control_plane.fleet.notices import FleetNotice, announce
from control_plane.fleet_schemas import AgentToken
from control_plane.models import Agent, Site
from control_plane.security import Principal, new_token, token_digest


async def rotate_token(session: AsyncSession, agent_id: uuid.UUID, actor: Principal) -> AgentToken:
    """Give the agent a new token (returned this once) in place of its current or revoked one."""
    agent = await agent_row(session, agent_id)
    token = new_token()
    agent.token_sha256 = token_digest(token)
    await _record(session, agent, actor, audit.AuditAction.agent_token_rotate)
    await announce(session, FleetNotice.token_changed(agent_id))
    await session.commit()
    return AgentToken(id=agent_id, token=token)


async def revoke_token(session: AsyncSession, agent_id: uuid.UUID, actor: Principal) -> None:
    """Take the agent's token away; it can do nothing until its token is rotated."""
    agent = await agent_row(session, agent_id)
    agent.token_sha256 = None
    await _record(session, agent, actor, audit.AuditAction.agent_token_revoke)
    await announce(session, FleetNotice.token_changed(agent_id))
    await session.commit()


async def record_command(
    session: AsyncSession, agent_id: uuid.UUID, name: str, actor: Principal
) -> None:
    """Audit a command about to be sent to an agent (its arguments are not kept)."""
    agent = await agent_row(session, agent_id)
    await _record(session, agent, actor, audit.AuditAction.agent_command, {"command": name})
    await session.commit()


async def _record(
    session: AsyncSession,
    agent: Agent,
    actor: Principal,
    action: audit.AuditAction,
    changes: dict[str, str] | None = None,
) -> None:
    site = await session.get(Site, agent.site_id)
    audit.record(
        session,
        actor,
        action,
        f"agent {agent.id}",
        site=None if site is None else site.name,
        changes={"agent": agent.name, **(changes or {})},
    )
