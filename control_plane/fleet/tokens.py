"""Agent tokens after registration: rotate (a new one, shown once) and revoke.

Either way the old token stops working for HTTP at once (the stored digest changes). Closing
the agent's live link is the hub's job, done by the route right after. Must not import FastAPI.
"""

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.fleet.agents import agent_row
from control_plane.fleet_schemas import AgentToken
from control_plane.security import new_token, token_digest


async def rotate_token(session: AsyncSession, agent_id: uuid.UUID) -> AgentToken:
    """Give the agent a new token (returned this once) in place of its current or revoked one."""
    agent = await agent_row(session, agent_id)
    token = new_token()
    agent.token_sha256 = token_digest(token)
    await session.commit()
    return AgentToken(id=agent_id, token=token)


async def revoke_token(session: AsyncSession, agent_id: uuid.UUID) -> None:
    """Take the agent's token away; it can do nothing until its token is rotated."""
    agent = await agent_row(session, agent_id)
    agent.token_sha256 = None
    await session.commit()
