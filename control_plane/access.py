"""What each role may do: one access level per route, and the one check that enforces it.

Routes never test roles themselves: `control_plane.deps` turns each `Access` level into a
dependency, and the level is published in the OpenAPI document as `x-access` (see
`control_plane.api.access_doc`). A principal bound to one site is told that another site's
things do not exist (404, the same answer as for a name nobody created), so a site admin cannot
learn which other sites, agents or files exist. Must not import FastAPI.
"""

import uuid
from enum import StrEnum

from control_plane.errors import ControlPlaneError
from control_plane.security import Principal, Role


class Access(StrEnum):
    """Who may call a route (docs/security.md has the full table)."""

    agent = "agent"
    """Agent tokens only (the calling agent's own site)."""
    ingest = "ingest"
    """Agents, and support (uploads by hand)."""
    support = "support"
    """Support only: sites, groups, projects, API tokens."""
    read = "read"
    """Every person's token; answers hold only the caller's site when it is bound to one."""
    fleet_read = "fleet-read"
    """Every person's token that is not bound to one site."""
    site_read = "site-read"
    """Every person's token that may see the route's site."""
    site_change = "site-change"
    """Support, or the site-admin of the route's site."""


class ForbiddenError(ControlPlaneError):
    """A known principal asking for something its role does not allow."""

    http_status = 403


_AGENT_REFUSAL = (
    "agent tokens may only call GET /api/v1/agent/config, GET /api/v1/agent/link"
    " (the websocket), POST /api/v1/ingest and POST /api/v1/ingest/batch;"
    " use the admin token or a support, site-admin or read-only token for this route"
)
_READ_ONLY_REFUSAL = (
    "read-only tokens change nothing; ask a support engineer (or your site's site-admin)"
    " to make this change"
)


def check(principal: Principal, access: Access) -> None:
    """Raise `ForbiddenError` when the principal's role may not use a route of this level.

    Site membership is checked separately (`check_site`), once the route's site is known.
    """
    role = principal.role
    if access is Access.agent:
        if role is not Role.agent:
            raise ForbiddenError(
                "this route answers for the calling agent's site; with the admin token read"
                " GET /api/v1/sites/{site}/config instead"
            )
        return
    if access is Access.ingest:
        if role not in (Role.agent, Role.support):
            raise ForbiddenError(
                "only agent tokens and support tokens may upload; "
                + (_READ_ONLY_REFUSAL if role is Role.read_only else "use an agent token")
            )
        return
    if role is Role.agent:
        raise ForbiddenError(_AGENT_REFUSAL)
    if access is Access.support and role is not Role.support:
        raise ForbiddenError(
            f"only support tokens may call this route (this token is {role.value});"
            " ask a support engineer"
        )
    if access is Access.fleet_read and principal.site_id is not None:
        raise ForbiddenError(
            f"this route shows the whole fleet; a token bound to site {principal.site_name!r}"
            f" reads GET /api/v1/sites/{principal.site_name}/health instead"
        )
    if access is Access.site_change and role is Role.read_only:
        raise ForbiddenError(_READ_ONLY_REFUSAL)


def may_see_site(principal: Principal, site_id: uuid.UUID | None) -> bool:
    """Whether a principal may see things of the site `site_id` (None: of no site)."""
    return principal.site_id is None or principal.site_id == site_id


def site_filter(principal: Principal) -> uuid.UUID | None:
    """The one site a listing must be limited to, or None for the whole fleet."""
    return principal.site_id
