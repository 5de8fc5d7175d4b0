"""Agents of a site: registration (with a one-time token), lookup, and token authentication.

Must not import FastAPI.
"""

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.errors import ConflictError, NotFoundError
from control_plane.models import Agent, Site
from control_plane.schemas import AgentCreate, AgentCreated, AgentPublic, Deployment
from control_plane.security import (
    Principal,
    PrincipalKind,
    agent_principal_name,
    digests_match,
    new_token,
    token_digest,
)


def _agent_public(agent: Agent, site_name: str) -> AgentPublic:
    return AgentPublic(
        id=agent.id,
        site=site_name,
        name=agent.name,
        deployment=Deployment(agent.deployment),
    )


async def create_agent(session: AsyncSession, site: Site, body: AgentCreate) -> AgentCreated:
    """Register an agent and return its token, which is not stored and never shown again."""
    token = new_token()
    agent = Agent(
        site_id=site.id,
        name=body.name,
        deployment=body.deployment.value,
        token_sha256=token_digest(token),
    )
    site_name = site.name
    session.add(agent)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise ConflictError(f"site {site_name!r} already has an agent named {body.name!r}") from exc
    return AgentCreated(id=agent.id, token=token, site=site_name, name=agent.name)


async def get_agent(session: AsyncSession, agent_id: uuid.UUID) -> AgentPublic:
    """One agent; `NotFoundError` when unknown."""
    row = (
        await session.execute(
            select(Agent, Site.name)
            .join(Site, Agent.site_id == Site.id)
            .where(Agent.id == agent_id)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"agent {agent_id} does not exist")
    return _agent_public(row[0], row[1])


async def list_agents(session: AsyncSession, site: Site) -> list[AgentPublic]:
    """The agents of a site, ordered by name."""
    agents = await session.scalars(
        select(Agent).where(Agent.site_id == site.id).order_by(Agent.name)
    )
    return [_agent_public(agent, site.name) for agent in agents]


async def authenticate_agent(session: AsyncSession, token: str) -> Principal | None:
    """The agent principal a bearer token belongs to, or None for an unknown token."""
    digest = token_digest(token)
    row = (
        await session.execute(
            select(Agent, Site.name)
            .join(Site, Agent.site_id == Site.id)
            .where(Agent.token_sha256 == digest)
        )
    ).first()
    if row is None:
        return None
    agent, site_name = row[0], row[1]
    if not digests_match(digest, agent.token_sha256):
        return None
    return Principal(
        kind=PrincipalKind.agent,
        name=agent_principal_name(site_name, agent.name),
        agent_id=agent.id,
        site_id=agent.site_id,
    )
