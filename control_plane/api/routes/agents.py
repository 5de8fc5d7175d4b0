"""Agents: registration, status and health history, tokens, commands (a site's admin
manages its site's agents)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from common.messages import CLOSE_UNAUTHORIZED
from control_plane.deps import (
    AgentChangerDep,
    AgentReaderDep,
    FleetViewDep,
    HealthContextDep,
    HubDep,
    ReadSessionDep,
    SessionDep,
    SiteChangerDep,
    SiteReaderDep,
)
from control_plane.errors import AgentUnavailableError, NoAnswerError
from control_plane.fleet import agents, health, sites, tokens
from control_plane.fleet_schemas import (
    AgentToken,
    CommandAnswer,
    CommandRequest,
    HealthHistoryEntry,
)
from control_plane.hub import AgentNotConnectedError
from control_plane.schemas import AgentCreate, AgentCreated, AgentPublic, ItemList

router = APIRouter(tags=["fleet"])

COMMAND_TIMEOUT_S = 30.0
MAX_HISTORY = 1000
JSON = "application/json"


@router.post("/sites/{site}/agents", status_code=status.HTTP_201_CREATED)
async def create_agent(
    site: str,
    body: AgentCreate,
    principal: SiteChangerDep,
    session: SessionDep,
    view: FleetViewDep,
) -> AgentCreated:
    """Register an agent; the answer holds its token, shown this once only."""
    created = await agents.create_agent(
        session, await sites.site_by_name(session, site), body, principal
    )
    await view.reload_agents([created.id])
    return created


# The fleet views answer pre-serialized JSON (the models document the shape): building and
# serializing a thousand agents per request is what used to make these slow.
@router.get("/sites/{site}/agents", response_model=ItemList[AgentPublic])
async def list_agents(
    site: str, _: SiteReaderDep, view: FleetViewDep, context: HealthContextDep
) -> Response:
    """The agents of a site."""
    return Response(await view.site_agents_json(site, context), media_type=JSON)


@router.get("/agents/{agent_id}", response_model=AgentPublic)
async def get_agent(
    agent_id: uuid.UUID, _: AgentReaderDep, view: FleetViewDep, context: HealthContextDep
) -> Response:
    """One agent with its connection state, applied config revision and health."""
    return Response(await view.agent_json(agent_id, context), media_type=JSON)


@router.get("/agents/{agent_id}/health/history")
async def health_history(
    agent_id: uuid.UUID,
    _: AgentReaderDep,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY)] = 100,
) -> ItemList[HealthHistoryEntry]:
    """The agent's newest health reports, newest first, with the status each earned."""
    await agents.agent_row(session, agent_id)
    return ItemList(items=await health.health_history(session, agent_id, limit))


@router.post("/agents/{agent_id}/token")
async def rotate_token(
    agent_id: uuid.UUID, principal: AgentChangerDep, session: SessionDep, hub: HubDep
) -> AgentToken:
    """Issue a new token (shown this once); the old one stops working and its link closes."""
    answer = await tokens.rotate_token(session, agent_id, principal)
    await hub.view.reload_agents([agent_id])
    await hub.disconnect(agent_id, CLOSE_UNAUTHORIZED, "token rotated")
    return answer


@router.delete("/agents/{agent_id}/token", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_token(
    agent_id: uuid.UUID, principal: AgentChangerDep, session: SessionDep, hub: HubDep
) -> None:
    """Revoke the agent's token; its link closes and it is refused until a rotation."""
    await tokens.revoke_token(session, agent_id, principal)
    await hub.view.reload_agents([agent_id])
    await hub.disconnect(agent_id, CLOSE_UNAUTHORIZED, "token revoked")


@router.post("/agents/{agent_id}/commands")
async def send_command(
    agent_id: uuid.UUID,
    body: CommandRequest,
    principal: AgentChangerDep,
    session: SessionDep,
    hub: HubDep,
) -> CommandAnswer:
    """Send a command to a connected agent (audited) and wait (up to 30 s) for its answer."""
    await tokens.record_command(session, agent_id, body.name, principal)
    # The session is not needed while waiting for the agent.
    await session.close()
    try:
        result = await hub.command(agent_id, body.name, body.args, COMMAND_TIMEOUT_S)
    except AgentNotConnectedError:
        raise AgentUnavailableError(
            f"agent {agent_id} has no link to this control plane; it is offline (see its"
            " health) or connected to another replica"
        ) from None
    except TimeoutError:
        raise NoAnswerError(
            f"agent {agent_id} did not answer the command within {COMMAND_TIMEOUT_S:.0f} s"
        ) from None
    return CommandAnswer(
        id=result.id, ok=result.ok, detail=result.detail, diagnostics=result.diagnostics
    )
