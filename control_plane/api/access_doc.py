"""Every `/api/v1` route states its access level once; this module proves it and publishes it.

`publish_access` walks each route's dependency tree for the `control_plane.deps.Requires`
dependency it takes, refuses to build an app with a route that takes none (or several), and
writes the level into the route's OpenAPI operation as `x-access`. Tests walk `/openapi.json`
and check each route against that level, so a new route cannot go unprotected or untested.
"""

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from control_plane.access import Access
from control_plane.deps import Requires

PROTECTED_PREFIX = "/api/"
ACCESS_EXTENSION = "x-access"


class RouteWithoutAccessError(RuntimeError):
    """A protected route that states no access level, or more than one."""


def publish_access(app: FastAPI) -> None:
    """Set `x-access` on every protected route; raise for a route without exactly one level."""
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.path.startswith(PROTECTED_PREFIX):
            continue
        levels = set(_levels(route.dependant))
        if len(levels) != 1:
            raise RouteWithoutAccessError(
                f"{sorted(route.methods or ())} {route.path} must take exactly one access"
                f" dependency from control_plane.deps (SupportDep, SiteChangerDep...); it takes"
                f" {sorted(levels) or 'none'}"
            )
        route.openapi_extra = {**(route.openapi_extra or {}), ACCESS_EXTENSION: levels.pop().value}


def _levels(dependant: Dependant) -> list[Access]:
    found = [dependant.call.access] if isinstance(dependant.call, Requires) else []
    for sub in dependant.dependencies:
        found.extend(_levels(sub))
    return found
