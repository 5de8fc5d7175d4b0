"""`GET /api/v1/agent/config`: the calling agent's site config (agent tokens only)."""

from fastapi import APIRouter

from control_plane.deps import AgentDep, SessionDep
from control_plane.fleet import agents, config_revisions, sites
from control_plane.schemas import AgentConfigPublic

router = APIRouter(tags=["agent"])


@router.get("/agent/config")
async def agent_config(principal: AgentDep, session: SessionDep) -> AgentConfigPublic:
    """Site name, timezone, current revision and config of the calling agent's site."""
    site = await sites.site_of(session, principal)
    current = await config_revisions.current_config(session, site)
    assert principal.agent_id is not None, "AgentDep admits agents only"
    agent = await agents.agent_row(session, principal.agent_id)
    return AgentConfigPublic(
        site=site.name,
        timezone=site.timezone,
        revision=current.revision,
        config=current.config,
        deid_salt=site.deid_salt,
        deployment=agent.deployment,
    )
