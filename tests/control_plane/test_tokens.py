"""API tokens: shown once, stored hashed, scoped to a role and maybe a site, revocable, expiring."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from control_plane.models import ApiToken
from control_plane.security import token_digest
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.access_world import SITE_A, SITE_B, build_world, create_token
from tests.control_plane.harness import ControlPlane, ManualClock, started_control_plane

START = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def timed_control_plane(
    settings: ControlPlaneSettings, clock: ManualClock
) -> AsyncIterator[ControlPlane]:
    async with started_control_plane(settings, clock) as started:
        yield started


async def test_a_token_is_shown_once_and_stored_only_as_its_digest(
    control_plane: ControlPlane,
) -> None:
    created = await create_token(control_plane, name="alice", role="support")

    async with control_plane.session() as session:
        row = await session.scalar(select(ApiToken).where(ApiToken.id == uuid.UUID(created["id"])))
    listed = (await control_plane.admin.get("/api/v1/tokens")).json()["items"]

    assert row is not None
    assert row.token_sha256 == token_digest(created["token"])
    assert created["token"] not in str(vars(row))
    assert [(t["name"], t["role"], t["state"]) for t in listed] == [("alice", "support", "active")]
    assert created["token"] not in str(listed)
    assert "token" not in listed[0]


async def test_a_support_token_works_like_the_admin_token(control_plane: ControlPlane) -> None:
    created = await create_token(control_plane, name="alice", role="support")
    async with control_plane.client(created["token"]) as alice:
        response = await alice.post("/api/v1/sites", json={"name": "hospital-c", "timezone": "UTC"})

    assert response.status_code == 201


async def test_a_revoked_token_is_refused_with_a_message_saying_so(
    control_plane: ControlPlane,
) -> None:
    created = await create_token(control_plane, name="bob", role="read-only")

    revoked = await control_plane.admin.delete(f"/api/v1/tokens/{created['id']}")
    async with control_plane.client(created["token"]) as bob:
        response = await bob.get("/api/v1/sites")

    assert revoked.status_code == 204
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    listed = (await control_plane.admin.get("/api/v1/tokens")).json()["items"]
    assert listed[0]["state"] == "revoked"


async def test_revoking_an_unknown_token_is_404(control_plane: ControlPlane) -> None:
    response = await control_plane.admin.delete(
        "/api/v1/tokens/00000000-0000-0000-0000-000000000000"
    )

    assert response.status_code == 404


async def test_a_token_works_until_it_expires_then_answers_401_saying_it_expired(
    timed_control_plane: ControlPlane, clock: ManualClock
) -> None:
    created = await create_token(
        timed_control_plane, name="carol", role="read-only", expires_in="1h"
    )

    async with timed_control_plane.client(created["token"]) as carol:
        before = await carol.get("/api/v1/sites")
        clock.advance(dt.timedelta(hours=1))
        after = await carol.get("/api/v1/sites")

    assert before.status_code == 200
    assert after.status_code == 401
    assert "expired" in after.json()["detail"]
    assert dt.datetime.fromisoformat(created["expires_at"]) == START + dt.timedelta(hours=1)


async def test_a_token_without_an_expiry_lives_90_days(
    timed_control_plane: ControlPlane,
) -> None:
    created = await create_token(timed_control_plane, name="dave", role="support")

    assert dt.datetime.fromisoformat(created["expires_at"]) == START + dt.timedelta(days=90)


@pytest.mark.parametrize(
    ("expires_at", "problem"),
    [("2020-01-01T00:00:00Z", "in the past"), ("2035-01-01T00:00:00Z", "more than 1095 days")],
)
async def test_an_expiry_in_the_past_or_too_far_ahead_is_refused(
    timed_control_plane: ControlPlane, expires_at: str, problem: str
) -> None:
    response = await timed_control_plane.admin.post(
        "/api/v1/tokens", json={"name": "x", "role": "support", "expires_at": expires_at}
    )

    assert response.status_code == 400
    assert problem in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"name": "x", "role": "site-admin"}, "needs `site`"),
        ({"name": "x", "role": "support", "site": SITE_A}, "takes no `site`"),
        ({"name": "x", "role": "agent"}, "role"),
        (
            {"name": "x", "role": "support", "expires_in": "1h", "expires_at": "2030-01-01T00:00Z"},
            "not both",
        ),
    ],
)
async def test_inconsistent_token_requests_are_refused(
    control_plane: ControlPlane, body: dict[str, str], problem: str
) -> None:
    response = await control_plane.admin.post("/api/v1/tokens", json=body)

    assert response.status_code == 422
    assert problem in str(response.json()["detail"])


async def test_a_site_admin_token_for_an_unknown_site_is_404(control_plane: ControlPlane) -> None:
    response = await control_plane.admin.post(
        "/api/v1/tokens", json={"name": "x", "role": "site-admin", "site": "nowhere"}
    )

    assert response.status_code == 404


async def test_a_site_bound_token_lists_only_its_own_site_and_its_data(
    control_plane: ControlPlane,
) -> None:
    world = await build_world(control_plane)
    async with control_plane.client(world.callers["site-admin"].token) as site_admin:
        sites = (await site_admin.get("/api/v1/sites")).json()["items"]
        acquisitions = (await site_admin.get("/api/v1/acquisitions")).json()["items"]
        other_agents = await site_admin.get(f"/api/v1/sites/{SITE_B}/agents")
    everything = (await control_plane.admin.get("/api/v1/acquisitions")).json()["items"]

    assert [site["name"] for site in sites] == [SITE_A]
    assert {a["session_id"] for a in acquisitions} == {
        world.session_ids[SITE_A],
        world.spare_session_ids[SITE_A],
    }
    assert world.file_ids[SITE_A] in {file["id"] for a in acquisitions for file in a["files"]}
    assert len(everything) == 4
    assert other_agents.status_code == 404
    assert other_agents.json()["detail"].startswith(f"site {SITE_B!r} does not exist")


async def test_a_site_admin_changes_its_own_site(control_plane: ControlPlane) -> None:
    world = await build_world(control_plane)
    async with control_plane.client(world.callers["site-admin"].token) as site_admin:
        own = await site_admin.put(f"/api/v1/sites/{SITE_A}/config", json={"mode": "push"})
        other = await site_admin.put(f"/api/v1/sites/{SITE_B}/config", json={"mode": "push"})

    assert own.status_code == 200
    assert other.status_code == 404


async def test_read_only_changes_nothing(control_plane: ControlPlane) -> None:
    world = await build_world(control_plane)
    async with control_plane.client(world.callers["read-only"].token) as viewer:
        response = await viewer.put(f"/api/v1/sites/{SITE_A}/config", json={"mode": "push"})
        config = await viewer.get(f"/api/v1/sites/{SITE_A}/config")

    assert response.status_code == 403
    assert "read-only" in response.json()["detail"]
    assert config.json()["revision"] == 0
