"""Request dependencies, declared once as `Annotated` aliases: database session, blob store,
hub of connected agents and its fleet view, the moment health is judged at, the calling
principal, and the authorization rules.

Authorization lives here, never pasted into routes: every `/api/v1` route takes exactly one
of the access aliases below (`SupportDep`, `SiteChangerDep`...), each standing for one
`control_plane.access.Access` level; the app refuses to start with a route that takes none
(`control_plane.api.access_doc`), and publishes each route's level in its OpenAPI document.
"""

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import api_tokens
from control_plane.access import Access, check, may_see_site
from control_plane.errors import NotFoundError
from control_plane.fleet.agents import authenticate_agent, site_id_of_agent
from control_plane.fleet.health import HealthContext
from control_plane.fleet.rollout_driver import RolloutDriver
from control_plane.fleet.view import FleetView
from control_plane.hierarchy.blobs import BlobStore
from control_plane.hierarchy.catalog import site_id_of_file, site_id_of_session
from control_plane.hub import Hub
from control_plane.resources import Resources
from control_plane.security import ADMIN, Principal, digests_match, token_digest

_bearer = HTTPBearer(
    auto_error=False,
    description="The admin token, an API token (support, site-admin, read-only) or an agent token.",
)
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


def get_rollout_driver(resources: ResourcesDep) -> RolloutDriver:
    """The rollout driver of this process."""
    if resources.rollouts is None:
        raise RuntimeError("the app was built without a rollout driver")
    return resources.rollouts


RolloutDriverDep = Annotated[RolloutDriver, Depends(get_rollout_driver)]


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
    """Who is calling; 401 with a `WWW-Authenticate: Bearer` challenge when nobody we know, or
    when the token expired or was revoked (the message says which)."""
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token; send the header `Authorization: Bearer TOKEN`",
            headers=_CHALLENGE,
        )
    token = credentials.credentials
    digest = token_digest(token)
    if digests_match(digest, resources.admin_token_digest):
        return ADMIN
    # A session of its own, closed before the route runs: an ingest must not hold a
    # database transaction open while its body streams in.
    async with resources.read_sessionmaker() as session:
        principal = await authenticate_agent(session, token)
        if principal is None:
            try:
                principal = await api_tokens.authenticate(session, digest, resources.clock())
            except api_tokens.TokenRefusedError as exc:
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED, exc.message, headers=_CHALLENGE
                ) from None
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown bearer token; use the admin token, an API token from POST /api/v1/tokens"
            " or a token from agent registration",
            headers=_CHALLENGE,
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


class AccessRule:
    """A route's access level as a dependency; one subclass per way the route names its site."""

    def __init__(self, access: Access) -> None:
        self.access = access


class Requires(AccessRule):
    """The dependency of a route that names no site in its path."""

    def __call__(self, principal: PrincipalDep) -> Principal:
        check(principal, self.access)
        return principal


class RequiresSite(AccessRule):
    """The dependency of a route under `/sites/{site}`: another site is a 404 for a principal
    bound to one site."""

    def __call__(self, principal: PrincipalDep, site: str) -> Principal:
        check(principal, self.access)
        if principal.site_name is not None and principal.site_name != site:
            raise NotFoundError(f"site {site!r} does not exist; create it with POST /api/v1/sites")
        return principal


class RequiresAgentSite(AccessRule):
    """The dependency of a route under `/agents/{agent_id}`: the agent's site decides."""

    async def __call__(
        self, principal: PrincipalDep, resources: ResourcesDep, agent_id: uuid.UUID
    ) -> Principal:
        check(principal, self.access)
        if principal.site_id is not None:
            async with resources.read_sessionmaker() as session:
                site_id = await site_id_of_agent(session, agent_id)
            if not may_see_site(principal, site_id):
                raise NotFoundError(f"agent {agent_id} does not exist")
        return principal


class RequiresFileSite(AccessRule):
    """The dependency of a route under `/files/{file_id}`: the site the file's session came
    from decides."""

    async def __call__(
        self, principal: PrincipalDep, resources: ResourcesDep, file_id: uuid.UUID
    ) -> Principal:
        check(principal, self.access)
        if principal.site_id is not None:
            async with resources.read_sessionmaker() as session:
                site_id = await site_id_of_file(session, file_id)
            if not may_see_site(principal, site_id):
                raise NotFoundError(f"file {file_id} does not exist")
        return principal


class RequiresSessionSite(AccessRule):
    """The dependency of a route under `/sessions/{session_id}`: the site the session came from
    decides."""

    async def __call__(
        self, principal: PrincipalDep, resources: ResourcesDep, session_id: uuid.UUID
    ) -> Principal:
        check(principal, self.access)
        if principal.site_id is not None:
            async with resources.read_sessionmaker() as session:
                site_id = await site_id_of_session(session, session_id)
            if not may_see_site(principal, site_id):
                raise NotFoundError(f"session {session_id} does not exist")
        return principal


AgentDep = Annotated[Principal, Depends(Requires(Access.agent))]
IngestDep = Annotated[Principal, Depends(Requires(Access.ingest))]
SupportDep = Annotated[Principal, Depends(Requires(Access.support))]
ReaderDep = Annotated[Principal, Depends(Requires(Access.read))]
FleetReaderDep = Annotated[Principal, Depends(Requires(Access.fleet_read))]
SiteReaderDep = Annotated[Principal, Depends(RequiresSite(Access.site_read))]
SiteChangerDep = Annotated[Principal, Depends(RequiresSite(Access.site_change))]
AgentReaderDep = Annotated[Principal, Depends(RequiresAgentSite(Access.site_read))]
AgentChangerDep = Annotated[Principal, Depends(RequiresAgentSite(Access.site_change))]
FileReaderDep = Annotated[Principal, Depends(RequiresFileSite(Access.site_read))]
SessionReaderDep = Annotated[Principal, Depends(RequiresSessionSite(Access.site_read))]
