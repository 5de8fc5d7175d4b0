"""Request dependencies, declared once as `Annotated` aliases: database session, blob store,
hub of connected agents and its fleet view, the moment health is judged at, the calling
principal, and the authorization rules (admin-only, agent-only).

Authorization lives here, never pasted into routes: a route (or a router) states what it needs
with `AdminDep`, `AgentDep` or `PrincipalDep`.
"""

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.fleet.agents import authenticate_agent
from control_plane.fleet.health import HealthContext
from control_plane.fleet.view import FleetView
from control_plane.hierarchy.blobs import BlobStore
from control_plane.hub import Hub
from control_plane.resources import Resources
from control_plane.security import ADMIN, Principal, PrincipalKind, digests_match, token_digest

_bearer = HTTPBearer(auto_error=False, description="An admin token or an agent token.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_resources(request: Request) -> Resources:
    """The running app's resources (set by the lifespan)."""
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """A database session for one request; closed (and rolled back if open) afterwards."""
    async with resources.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_read_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """A database session for a request that only reads (it must not write)."""
    async with resources.read_sessionmaker() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]


def get_blobs(resources: ResourcesDep) -> BlobStore:
    """The blob store holding file bytes."""
    return resources.blobs


BlobsDep = Annotated[BlobStore, Depends(get_blobs)]


def get_hub(resources: ResourcesDep) -> Hub:
    """The agents connected to this process."""
    return resources.hub


HubDep = Annotated[Hub, Depends(get_hub)]


def get_fleet_view(resources: ResourcesDep) -> FleetView:
    """Every agent's latest state and health, kept in memory by the hub."""
    return resources.hub.view


FleetViewDep = Annotated[FleetView, Depends(get_fleet_view)]


def get_health_context(resources: ResourcesDep) -> HealthContext:
    """Now (from the app's clock) and the heartbeat interval, to judge health against."""
    return HealthContext(
        now=resources.clock(),
        heartbeat_interval=timedelta(seconds=resources.settings.heartbeat_interval_s),
    )


HealthContextDep = Annotated[HealthContext, Depends(get_health_context)]


async def get_principal(
    resources: ResourcesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Who is calling; 401 with a `WWW-Authenticate: Bearer` challenge when nobody we know."""
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token; send the header `Authorization: Bearer TOKEN`",
            headers=_CHALLENGE,
        )
    token = credentials.credentials
    if digests_match(token_digest(token), resources.admin_token_digest):
        return ADMIN
    # A session of its own, closed before the route runs: an ingest must not hold a
    # database transaction open while its body streams in.
    async with resources.read_sessionmaker() as session:
        principal = await authenticate_agent(session, token)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown bearer token; use the admin token or a token from agent registration",
            headers=_CHALLENGE,
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: PrincipalDep) -> Principal:
    """Let only the admin through (403 for agents)."""
    if principal.kind is not PrincipalKind.admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "agent tokens may only call GET /api/v1/agent/config, GET /api/v1/agent/link"
            " (the websocket), POST /api/v1/ingest and POST /api/v1/ingest/batch;"
            " use the admin token for this route",
        )
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


def require_agent(principal: PrincipalDep) -> Principal:
    """Let only agents through (403 for the admin, who has no site of its own)."""
    if principal.kind is not PrincipalKind.agent:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "this route answers for the calling agent's site; with the admin token read"
            " GET /api/v1/sites/{site}/config instead",
        )
    return principal


AgentDep = Annotated[Principal, Depends(require_agent)]
