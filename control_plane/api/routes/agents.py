"""Agent registration and status (admin only)."""

import uuid

from fastapi import APIRouter, Depends, status

from control_plane.deps import SessionDep, require_admin
from control_plane.fleet import agents, sites
from control_plane.schemas import AgentCreate, AgentCreated, AgentPublic, ItemList

router = APIRouter(tags=["fleet"], dependencies=[Depends(require_admin)])


@router.post("/sites/{site}/agents", status_code=status.HTTP_201_CREATED)
async def create_agent(site: str, body: AgentCreate, session: SessionDep) -> AgentCreated:
    """Register an agent; the answer holds its token, shown this once only."""
    return await agents.create_agent(session, await sites.site_by_name(session, site), body)


@router.get("/sites/{site}/agents")
async def list_agents(site: str, session: SessionDep) -> ItemList[AgentPublic]:
    """The agents of a site."""
    return ItemList(
        items=await agents.list_agents(session, await sites.site_by_name(session, site))
    )


@router.get("/agents/{agent_id}")
async def get_agent(agent_id: uuid.UUID, session: SessionDep) -> AgentPublic:
    """One agent with its connection state and health."""
    return await agents.get_agent(session, agent_id)
