"""Every change made through the API leaves an audit entry: actor (never the token), time,
action, target and what changed; `GET /api/v1/audit` filters and pages them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.control_plane.access_world import SITE_A, SITE_B, build_world, create_token
from tests.control_plane.harness import ADMIN_TOKEN, ControlPlane


async def _entries(cp: ControlPlane, **params: Any) -> list[dict[str, Any]]:
    response = await cp.admin.get("/api/v1/audit", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_each_kind_of_change_is_audited_with_its_actor_target_and_changes(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    await cp.admin.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
    await cp.admin.post("/api/v1/groups/neuro/projects", json={"label": "study-a"})
    await cp.admin.post("/api/v1/sites", json={"name": SITE_A, "timezone": "UTC"})
    await cp.admin.put(f"/api/v1/sites/{SITE_A}/config", json={"dicom": {"ae_title": "SCP1"}})
    agent = (
        await cp.admin.post(
            f"/api/v1/sites/{SITE_A}/agents", json={"name": "a1", "deployment": "edge"}
        )
    ).json()
    await cp.admin.post(f"/api/v1/agents/{agent['id']}/token")
    await cp.admin.delete(f"/api/v1/agents/{agent['id']}/token")
    await cp.admin.post(f"/api/v1/agents/{agent['id']}/commands", json={"name": "ping"})
    token = await create_token(cp, name="alice", role="site-admin", site=SITE_A)
    await cp.admin.delete(f"/api/v1/tokens/{token['id']}")

    entries = list(reversed(await _entries(cp)))

    assert [(e["action"], e["target"], e["site"]) for e in entries] == [
        ("group.create", "group neuro", None),
        ("project.create", "project neuro/study-a", None),
        ("site.create", f"site {SITE_A}", SITE_A),
        ("config.update", f"site {SITE_A} config", SITE_A),
        ("agent.create", f"agent {agent['id']}", SITE_A),
        ("agent.token_rotate", f"agent {agent['id']}", SITE_A),
        ("agent.token_revoke", f"agent {agent['id']}", SITE_A),
        ("agent.command", f"agent {agent['id']}", SITE_A),
        ("token.create", f"token {token['id']}", SITE_A),
        ("token.revoke", f"token {token['id']}", SITE_A),
    ]
    assert {e["actor"]["name"] for e in entries} == {"admin"}
    assert {e["actor"]["role"] for e in entries} == {"support"}
    config_change = entries[3]["changes"]
    assert config_change["revision"] == 1
    assert {"key": "dicom.ae_title", "old": "CONNECTOR", "new": "SCP1"} in config_change["diff"]
    assert entries[4]["changes"] == {"name": "a1", "deployment": "edge"}
    text = str(entries)
    assert token["token"] not in text
    assert ADMIN_TOKEN not in text


async def test_an_entry_names_the_api_token_that_made_the_change(
    control_plane: ControlPlane,
) -> None:
    world = await build_world(control_plane)
    site_admin = world.callers["site-admin"]
    async with control_plane.client(site_admin.token) as client:
        await client.put(f"/api/v1/sites/{SITE_A}/config", json={"mode": "push"})

    [entry] = await _entries(control_plane, action="config.update")

    assert entry["actor"]["role"] == "site-admin"
    assert entry["actor"]["name"] == "test site-admin"
    assert entry["actor"]["id"] != site_admin.token
    assert len(entry["actor"]["id"]) == 36


async def test_unchanged_config_and_refused_changes_leave_no_entry(
    control_plane: ControlPlane,
) -> None:
    await control_plane.admin.post("/api/v1/sites", json={"name": SITE_A, "timezone": "UTC"})
    await control_plane.admin.post("/api/v1/sites", json={"name": SITE_A, "timezone": "UTC"})
    await control_plane.admin.put(f"/api/v1/sites/{SITE_A}/config", json={"mode": "push"})
    await control_plane.admin.put(f"/api/v1/sites/{SITE_A}/config", json={"mode": "push"})

    actions = [e["action"] for e in await _entries(control_plane)]

    assert actions == ["config.update", "site.create"]


async def test_audit_filters_by_site_action_and_time_and_pages(
    control_plane: ControlPlane,
) -> None:
    for site in (SITE_A, SITE_B):
        await control_plane.admin.post("/api/v1/sites", json={"name": site, "timezone": "UTC"})
    for title in ("A1", "A2", "A3"):
        await control_plane.admin.put(
            f"/api/v1/sites/{SITE_A}/config", json={"dicom": {"ae_title": title}}
        )

    site_b = await _entries(control_plane, site=SITE_B)
    configs = await _entries(control_plane, action="config.update")
    future = await _entries(
        control_plane, since=(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    )
    first = (await control_plane.admin.get("/api/v1/audit", params={"limit": 2})).json()
    second = (
        await control_plane.admin.get("/api/v1/audit", params={"limit": 2, "before": first["next"]})
    ).json()
    third = (
        await control_plane.admin.get(
            "/api/v1/audit", params={"limit": 2, "before": second["next"]}
        )
    ).json()

    assert [e["action"] for e in site_b] == ["site.create"]
    assert [e["changes"]["revision"] for e in configs] == [3, 2, 1]
    assert future == []
    past = await _entries(
        control_plane, since=(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    )
    assert len(past) == 5
    assert len(first["items"]) == len(second["items"]) == 2
    assert len(third["items"]) == 1
    assert third["next"] is None
    ids = [e["id"] for page in (first, second, third) for e in page["items"]]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 5


async def test_a_site_bound_token_reads_only_its_sites_entries(
    control_plane: ControlPlane,
) -> None:
    world = await build_world(control_plane)
    async with control_plane.client(world.callers["read-only-site"].token) as viewer:
        own = (await viewer.get("/api/v1/audit")).json()["items"]
        other = (await viewer.get("/api/v1/audit", params={"site": SITE_B})).json()["items"]

    assert own
    assert {e["site"] for e in own} == {SITE_A}
    assert other == []
