"""Agents of a site: registration (with a one-time token) and token authentication (for HTTP
requests and for the agent link). Their link state and health are read from
`control_plane.fleet.view`.

Must not import FastAPI.
"""

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import audit
from control_plane.errors import ConflictError, NotFoundError
from control_plane.fleet.recorder import LinkState
from control_plane.models import Agent, Site
from control_plane.schemas import AgentCreate, AgentCreated
from control_plane.security import (
    Principal,
    Role,
    agent_principal_name,
    digests_match,
    new_token,
    token_digest,
)


async def create_agent(
    session: AsyncSession, site: Site, body: AgentCreate, actor: Principal
) -> AgentCreated:
    """Register an agent (audited) and return its token, which is not stored and never shown
    again."""
    token = new_token()
    agent = Agent(
        id=uuid.uuid4(),
        site_id=site.id,
        name=body.name,
        deployment=body.deployment.value,
        token_sha256=token_digest(token),
    )
    site_name = site.name
    session.add(agent)
    audit.record(
        session,
        actor,
        audit.AuditAction.agent_create,
        f"agent {agent.id}",
        site=site_name,
        changes={"name": body.name, "deployment": body.deployment.value},
    )
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise ConflictError(f"site {site_name!r} already has an agent named {body.name!r}") from exc
    return AgentCreated(id=agent.id, token=token, site=site_name, name=agent.name)


async def agent_row(session: AsyncSession, agent_id: uuid.UUID) -> Agent:
    """The agent's row; `NotFoundError` when unknown."""
    agent = await session.get(Agent, agent_id)
    if agent is None:
        raise NotFoundError(f"agent {agent_id} does not exist")
    return agent


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
    if agent.token_sha256 is None or not digests_match(digest, agent.token_sha256):
        return None
    return Principal(
        role=Role.agent,
        name=agent_principal_name(site_name, agent.name),
        agent_id=agent.id,
        site_id=agent.site_id,
        site_name=site_name,
    )


@dataclass(frozen=True)
class LinkAgent:
    """An agent that authenticated on the link: who it is, where, and its stored link state."""

    agent_id: uuid.UUID
    name: str
    site_id: uuid.UUID
    site: str
    timezone: str
    token_digest: str
    state: LinkState
    deid_salt: str = field(repr=False)
    deployment: str = "edge"  # edge | in-cluster: in-cluster agents refuse configs without TLS


async def authenticate_link(session: AsyncSession, token: str) -> LinkAgent | None:
    """The agent a link's bearer token belongs to, or None for an unknown or revoked token."""
    digest = token_digest(token)
    # Plain columns rather than ORM instances: this runs for every connect of a fleet
    # reconnecting at once.
    row = (
        await session.execute(
            select(
                Agent.token_sha256,
                Agent.id,
                Agent.name,
                Site.id,
                Site.name,
                Site.timezone,
                Site.deid_salt,
                Agent.deployment,
                *LinkState.columns_of_agent(),
            )
            .join(Site, Agent.site_id == Site.id)
            .where(Agent.token_sha256 == digest)
        )
    ).first()
    if row is None or row[0] is None or not digests_match(digest, row[0]):
        return None
    return LinkAgent(
        agent_id=row[1],
        name=row[2],
        site_id=row[3],
        site=row[4],
        timezone=row[5],
        token_digest=digest,
        state=LinkState.from_row(row[8:]),
        deid_salt=row[6],
        deployment=row[7],
    )


async def token_digests(
    session: AsyncSession, agent_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, str | None]:
    """The stored token digest of each agent (None when revoked; absent when unknown)."""
    rows = await session.execute(
        select(Agent.id, Agent.token_sha256).where(Agent.id.in_(agent_ids))
    )
    return {agent_id: digest for agent_id, digest in rows}


async def site_id_of_agent(session: AsyncSession, agent_id: uuid.UUID) -> uuid.UUID | None:
    """The site an agent belongs to (None for an unknown agent)."""
    return await session.scalar(select(Agent.site_id).where(Agent.id == agent_id))
