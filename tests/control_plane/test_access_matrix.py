"""Every route of `/openapi.json`, for every kind of caller and both sites: who gets in.

The routes come from the running app's OpenAPI document, with the access level each one
publishes (`x-access`); `ROUTE_ACCESS` pins those levels, so a route added without a level,
or with a weaker one than intended, fails here until it is reviewed and listed.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from control_plane.api.access_doc import RouteWithoutAccessError, publish_access
from control_plane.deps import SupportDep
from tests.control_plane.access_world import SITE_A, SITE_B, Caller, World, build_world
from tests.control_plane.harness import ControlPlane

ROUTE_ACCESS = {
    ("GET", "/api/v1/groups"): "read",
    ("POST", "/api/v1/groups"): "support",
    ("GET", "/api/v1/groups/{group}/projects"): "read",
    ("POST", "/api/v1/groups/{group}/projects"): "support",
    ("GET", "/api/v1/acquisitions"): "read",
    ("GET", "/api/v1/files/{file_id}"): "site-read",
    ("GET", "/api/v1/sites"): "read",
    ("POST", "/api/v1/sites"): "support",
    ("PUT", "/api/v1/sites/{site}/config"): "site-change",
    ("GET", "/api/v1/sites/{site}/config"): "site-read",
    ("GET", "/api/v1/sites/{site}/config/revisions"): "site-read",
    ("POST", "/api/v1/sites/{site}/agents"): "site-change",
    ("GET", "/api/v1/sites/{site}/agents"): "site-read",
    ("GET", "/api/v1/agents/{agent_id}"): "site-read",
    ("GET", "/api/v1/agents/{agent_id}/health/history"): "site-read",
    ("POST", "/api/v1/agents/{agent_id}/token"): "site-change",
    ("DELETE", "/api/v1/agents/{agent_id}/token"): "site-change",
    ("POST", "/api/v1/agents/{agent_id}/commands"): "site-change",
    ("GET", "/api/v1/sites/{site}/health"): "site-read",
    ("GET", "/api/v1/sites/{site}/metrics"): "site-read",
    ("GET", "/api/v1/sites/{site}/card"): "site-read",
    ("GET", "/api/v1/fleet/health"): "fleet-read",
    ("GET", "/api/v1/agent/config"): "agent",
    ("POST", "/api/v1/ingest"): "ingest",
    ("POST", "/api/v1/ingest/batch"): "ingest",
    ("POST", "/api/v1/tokens"): "support",
    ("GET", "/api/v1/tokens"): "support",
    ("DELETE", "/api/v1/tokens/{token_id}"): "support",
    ("GET", "/api/v1/audit"): "read",
    ("POST", "/api/v1/routing/check"): "read",
    ("GET", "/api/v1/sessions/{session_id}"): "site-read",
    ("POST", "/api/v1/sessions/{session_id}/move"): "support",
    ("DELETE", "/api/v1/sessions/{session_id}"): "support",
    ("GET", "/api/v1/sites/{site}/series"): "site-read",
    ("POST", "/api/v1/sites/{site}/series/{series_key}/retry"): "site-change",
    ("POST", "/api/v1/sites/{site}/series/{series_key}/discard"): "site-change",
    ("POST", "/api/v1/sites/{site}/deid/preview"): "site-change",
    ("PUT", "/api/v1/sites/{site}/labels"): "support",
    ("PUT", "/api/v1/sites/{site}/labels/{key}"): "support",
    ("DELETE", "/api/v1/sites/{site}/labels/{key}"): "support",
    ("POST", "/api/v1/rollouts"): "support",
    ("GET", "/api/v1/rollouts"): "fleet-read",
    ("GET", "/api/v1/rollouts/{rollout_id}"): "fleet-read",
    ("POST", "/api/v1/rollouts/{rollout_id}/pause"): "support",
    ("POST", "/api/v1/rollouts/{rollout_id}/resume"): "support",
    ("POST", "/api/v1/rollouts/{rollout_id}/abort"): "support",
}
# An absent failed series is a 404 for whoever may act on the site's series: that is the
# answer of a route the caller may use, not a site hidden from it.
# The same holds for a rollout id nobody created.
ANSWERS_OF_AN_ALLOWED_CALL = ("reports a failed series", "no rollout has the id")
UNKNOWN_ROLLOUT = "00000000-0000-4000-8000-000000000000"
HUMANS = {"admin", "support", "site-admin", "read-only", "read-only-site"}
ALLOWED = {
    "agent": {"agent"},
    "ingest": {"agent", "admin", "support"},
    "support": {"admin", "support"},
    "read": HUMANS,
    "fleet-read": {"admin", "support", "read-only"},
    "site-read": HUMANS,
    "site-change": {"admin", "support", "site-admin"},
}
CALLERS = ["admin", "support", "site-admin", "read-only", "read-only-site", "agent"]
SITE_PARAMETERS = ("{site}", "{agent_id}", "{file_id}", "{session_id}")
SERIES_KEY = "0123456789abcdef"


def _operations(openapi: dict[str, Any]) -> dict[tuple[str, str], str | None]:
    return {
        (method.upper(), path): operation.get("x-access")
        for path, item in openapi["paths"].items()
        if path.startswith("/api/")
        for method, operation in item.items()
    }


def _url(method: str, path: str, world: World, site: str) -> str:
    # A purge deletes the session (and its file): it gets a session no other route uses.
    sessions = world.spare_session_ids if method == "DELETE" else world.session_ids
    return (
        path.replace("{site}", site)
        .replace("{session_id}", sessions[site])
        .replace("{series_key}", SERIES_KEY)
        .replace("{agent_id}", world.agent_ids[site])
        .replace("{file_id}", world.file_ids[site])
        .replace("{group}", "neuro")
        .replace("{token_id}", world.spare_token_id)
        .replace("{rollout_id}", UNKNOWN_ROLLOUT)
        .replace("{key}", "region")
    )


def _expected(access: str, caller: Caller, own_site: bool) -> str:
    if caller.name not in ALLOWED[access]:
        return "forbidden"
    if caller.site is not None and not own_site and access.startswith("site-"):
        return "hidden"
    return "allowed"


async def test_every_api_route_publishes_the_access_level_pinned_here(
    control_plane: ControlPlane,
) -> None:
    openapi = (await control_plane.anonymous.get("/openapi.json")).json()

    assert _operations(openapi) == ROUTE_ACCESS


async def test_every_api_route_answers_401_without_a_token_and_with_an_unknown_one(
    control_plane: ControlPlane,
) -> None:
    openapi = (await control_plane.anonymous.get("/openapi.json")).json()
    failures = []
    for method, path in _operations(openapi):
        url = path.replace("{", "").replace("}", "")
        for headers in ({}, {"Authorization": "Bearer not-a-token-anyone-issued"}):
            response = await control_plane.anonymous.request(method, url, headers=headers)
            if response.status_code != 401 or response.headers.get("WWW-Authenticate") != "Bearer":
                failures.append((method, path, bool(headers), response.status_code))

    assert failures == []


@pytest.mark.parametrize("caller_name", CALLERS)
async def test_each_caller_reaches_exactly_the_routes_its_role_allows_on_each_site(
    control_plane: ControlPlane, caller_name: str
) -> None:
    world = await build_world(control_plane)
    caller = world.callers[caller_name]
    openapi = (await control_plane.anonymous.get("/openapi.json")).json()
    outcomes = []
    async with control_plane.client(caller.token) as client:
        for (method, path), access in sorted(_operations(openapi).items()):
            assert access is not None
            per_site = any(parameter in path for parameter in SITE_PARAMETERS)
            for site in (SITE_A, SITE_B) if per_site else (SITE_A,):
                response = await client.request(method, _url(method, path, world, site))
                expected = _expected(access, caller, own_site=site == SITE_A)
                observed = _observed(response.status_code)
                if response.status_code == 404 and any(
                    answer in response.text for answer in ANSWERS_OF_AN_ALLOWED_CALL
                ):
                    observed = "allowed"
                outcomes.append((method, path, site, expected, observed))

    assert [outcome for outcome in outcomes if outcome[3] != outcome[4]] == []


def _observed(status: int) -> str:
    if status == 403:
        return "forbidden"
    if status == 404:
        return "hidden"
    if status in (401, 500) or status > 500:
        return f"broken ({status})"
    return "allowed"


def test_an_app_with_a_route_that_states_no_access_level_refuses_to_start() -> None:
    app = FastAPI()

    @app.get("/api/v1/unguarded")
    async def unguarded() -> dict[str, str]:
        return {}

    with pytest.raises(RouteWithoutAccessError, match="/api/v1/unguarded"):
        publish_access(app)


def test_a_route_with_one_access_level_is_published_with_it() -> None:
    app = FastAPI()

    @app.get("/api/v1/guarded")
    async def guarded(_: SupportDep) -> dict[str, str]:
        return {}

    publish_access(app)

    assert app.openapi()["paths"]["/api/v1/guarded"]["get"]["x-access"] == "support"
