"""Every `/api/v1` route states its access level once; this module proves it and publishes it.

`publish_access` walks each route's dependency tree for the `control_plane.deps.AccessRule`
dependency it takes, refuses to build an app with a route that takes none (or several), and
writes the level into the route's OpenAPI operation as `x-access`. Tests walk `/openapi.json`
and check each route against that level, so a new route cannot go unprotected or untested.
A level must be taken by the route itself (a parameter), not by its router's `dependencies`.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from control_plane.access import Access
from control_plane.deps import AccessRule

PROTECTED_PREFIX = "/api/"
ACCESS_EXTENSION = "x-access"


class RouteWithoutAccessError(RuntimeError):
    """A protected route that states no access level, or more than one."""


def publish_access(app: FastAPI) -> None:
    """Check every protected route's level now; add `x-access` to the OpenAPI document."""
    levels = route_access(app)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            for (method, path), level in levels.items():
                operation = document.get("paths", {}).get(path, {}).get(method.lower())
                if operation is not None:
                    operation[ACCESS_EXTENSION] = level.value
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def route_access(app: FastAPI) -> dict[tuple[str, str], Access]:
    """The access level of every protected HTTP route, by (method, path)."""
    found: dict[tuple[str, str], Access] = {}
    for context in iter_route_contexts(app.routes):
        route, path = context.route, context.path
        if not isinstance(route, APIRoute) or path is None or not path.startswith(PROTECTED_PREFIX):
            continue
        levels = set(_levels(route.dependant))
        if len(levels) != 1:
            raise RouteWithoutAccessError(
                f"{sorted(route.methods or ())} {path} must take exactly one access dependency from"
                f" control_plane.deps (SupportDep, SiteChangerDep...) as a parameter; it takes"
                f" {sorted(levels) or 'none'}"
            )
        level = levels.pop()
        for method in route.methods or ():
            found[(method, path)] = level
    return found


def _levels(dependant: Dependant) -> list[Access]:
    found = [dependant.call.access] if isinstance(dependant.call, AccessRule) else []
    for sub in dependant.dependencies:
        found.extend(_levels(sub))
    return found
