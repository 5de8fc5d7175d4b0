"""Rollouts through the API against the real control plane (SQLite and PostgreSQL): creation
and its refusals, sites without agents, pause/resume/abort, revisions marked with the rollout,
labels, the audit trail. Rollouts over real agents are in tests/e2e/test_rollouts.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from control_plane.models import Agent, RolloutSite
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.harness import ADMIN_TOKEN, ControlPlane, started_control_plane

SITES = ("site-a", "site-b", "site-c")


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> ControlPlaneSettings:
    """A driver that ticks often, so that tests wait little."""
    return ControlPlaneSettings(
        database_url=database_url,
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
        rollout_tick_interval_s=0.05,
    )


@pytest.fixture
async def control_plane(settings: ControlPlaneSettings) -> AsyncIterator[ControlPlane]:
    async with started_control_plane(settings) as started:
        for name, region in zip(SITES, ("eu", "eu", "us"), strict=True):
            created = await started.admin.post(
                "/api/v1/sites",
                json={"name": name, "timezone": "UTC", "labels": {"region": region}},
            )
            assert created.status_code == 201, created.text
        yield started


async def _rollout(cp: ControlPlane, **body: Any) -> dict[str, Any]:
    response = await cp.admin.post("/api/v1/rollouts", json={"soak": "0s", **body})
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _until(cp: ControlPlane, rollout_id: str, *states: str) -> dict[str, Any]:
    for _ in range(400):
        answer: dict[str, Any] = (await cp.admin.get(f"/api/v1/rollouts/{rollout_id}")).json()
        if answer["state"] in states and not answer["rollback_pending"]:
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"rollout never reached {states}: {answer}")


async def _revisions(cp: ControlPlane, site: str) -> list[dict[str, Any]]:
    answer = await cp.admin.get(f"/api/v1/sites/{site}/config/revisions")
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_a_rollout_to_sites_without_agents_completes_and_marks_their_revisions(
    control_plane: ControlPlane,
) -> None:
    created = await _rollout(
        control_plane, sites="all", config={"timing": {"sleep_time": "2m"}}, stages=[50, 100]
    )

    assert created["state"] == "running"
    done = await _until(control_plane, created["id"], "completed")
    assert [site["status"] for site in done["sites"]] == ["pushed"] * 3
    # Sites without agents wait for the last stage.
    assert [stage["sites"] for stage in done["stages"]] == [[], list(SITES)]
    for site in SITES:
        (revision,) = await _revisions(control_plane, site)
        assert revision["rollout_id"] == created["id"]
        assert revision["rollout_action"] == "apply"
        assert revision["config"]["timing"]["sleep_time"] == "2m"


async def test_a_patch_keeps_what_it_does_not_name_and_null_removes_a_key(
    control_plane: ControlPlane,
) -> None:
    put = await control_plane.admin.put(
        "/api/v1/sites/site-a/config",
        json={"dicom": {"ae_title": "KEEPME"}, "timing": {"working_hours": "18:00-06:00"}},
    )
    assert put.status_code == 200, put.text

    created = await _rollout(
        control_plane,
        sites=["site-a"],
        config={"timing": {"working_hours": None, "sleep_time": "5m"}},
        stages=[100],
    )
    await _until(control_plane, created["id"], "completed")

    config = (await control_plane.admin.get("/api/v1/sites/site-a/config")).json()["config"]
    assert config["dicom"]["ae_title"] == "KEEPME"
    assert config["timing"]["working_hours"] is None
    assert config["timing"]["sleep_time"] == "5m"


async def test_a_label_selector_picks_the_sites_and_leaves_the_others_untouched(
    control_plane: ControlPlane,
) -> None:
    created = await _rollout(
        control_plane, labels={"region": "eu"}, config={"timing": {"sleep_time": "3m"}}
    )
    done = await _until(control_plane, created["id"], "completed")

    assert sorted(site["site"] for site in done["sites"]) == ["site-a", "site-b"]
    assert await _revisions(control_plane, "site-c") == []


async def test_a_patch_that_makes_a_site_config_invalid_is_refused_naming_site_and_key(
    control_plane: ControlPlane,
) -> None:
    response = await control_plane.admin.post(
        "/api/v1/rollouts",
        json={"sites": ["site-b"], "config": {"timing": {"sleep_time": "soon"}}},
    )

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "site-b" in detail["message"]
    assert any(
        "site site-b" in problem and "timing.sleep_time" in problem
        for problem in detail["problems"]
    )
    assert (await control_plane.admin.get("/api/v1/rollouts")).json()["items"] == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"sites": "all", "config": {}, "stages": [50, 20, 100]}, "does not grow"),
        ({"sites": "all", "config": {}, "stages": [10, 50]}, "last stage must be 100"),
        ({"sites": "all", "config": {}, "stages": [0, 100]}, "from 1 to 100"),
        ({"config": {}}, "name the sites"),
        ({"sites": "all", "config": {}, "soak": "a while"}, "not a duration"),
        ({"labels": {"Region!": "eu"}, "config": {}}, "label key"),
    ],
)
async def test_an_invalid_rollout_request_is_a_422_saying_what_is_wrong(
    control_plane: ControlPlane, body: dict[str, Any], fragment: str
) -> None:
    response = await control_plane.admin.post("/api/v1/rollouts", json=body)

    assert response.status_code == 422
    assert fragment in response.text


async def test_unknown_sites_and_an_empty_selection_are_refused(
    control_plane: ControlPlane,
) -> None:
    unknown = await control_plane.admin.post(
        "/api/v1/rollouts", json={"sites": ["site-a", "nowhere"], "config": {}}
    )
    empty = await control_plane.admin.post(
        "/api/v1/rollouts", json={"labels": {"region": "mars"}, "config": {}}
    )

    assert unknown.status_code == 422
    assert "nowhere" in unknown.text
    assert empty.status_code == 422
    assert "no site" in empty.text


async def test_a_site_in_a_running_rollout_cannot_join_another(
    control_plane: ControlPlane,
) -> None:
    await _silent_agent(control_plane, "site-a")
    first = await _rollout(
        control_plane, sites=["site-a"], config={"timing": {"sleep_time": "2m"}}, soak="1h"
    )
    await control_plane.admin.post(f"/api/v1/rollouts/{first['id']}/pause")

    second = await control_plane.admin.post("/api/v1/rollouts", json={"sites": "all", "config": {}})

    assert second.status_code == 409
    assert "site-a" in second.text
    assert first["id"] in second.text


async def _silent_agent(cp: ControlPlane, site: str) -> str:
    """Register an agent of `site` whose link is up but has applied nothing yet (its row as a
    link that just connected leaves it): a rollout waits for it."""
    await cp.register_agent(site=site, name="silent")
    listed = (await cp.admin.get(f"/api/v1/sites/{site}/agents")).json()["items"]
    agent_id = listed[0]["id"]
    now = dt.datetime.now(dt.UTC)
    async with cp.session() as session:
        await session.execute(
            update(Agent)
            .where(Agent.id == uuid.UUID(agent_id))
            .values(connected=True, connected_at=now, last_seen_at=now, config_revision=0)
        )
        await session.commit()
    return str(agent_id)


async def _until_site(cp: ControlPlane, rollout_id: str, status: str) -> dict[str, Any]:
    for _ in range(400):
        answer: dict[str, Any] = (await cp.admin.get(f"/api/v1/rollouts/{rollout_id}")).json()
        if any(site["status"] == status for site in answer["sites"]):
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"no site of the rollout became {status}: {answer}")


async def test_pause_resume_and_abort_move_the_state_and_abort_rolls_back(
    control_plane: ControlPlane,
) -> None:
    await _silent_agent(control_plane, "site-a")
    created = await _rollout(
        control_plane,
        sites=["site-a", "site-b"],
        config={"timing": {"sleep_time": "7m"}},
        stages=[100],
        soak="1h",
    )
    rollout_id = created["id"]
    await _until_site(control_plane, rollout_id, "pushed")

    paused = await control_plane.admin.post(f"/api/v1/rollouts/{rollout_id}/pause")
    again = await control_plane.admin.post(f"/api/v1/rollouts/{rollout_id}/pause")
    resumed = await control_plane.admin.post(f"/api/v1/rollouts/{rollout_id}/resume")
    aborted = await control_plane.admin.post(f"/api/v1/rollouts/{rollout_id}/abort")
    late = await control_plane.admin.post(f"/api/v1/rollouts/{rollout_id}/resume")

    assert paused.json()["state"] == "paused"
    assert again.status_code == 409
    assert resumed.json()["state"] == "running"
    assert aborted.json()["state"] == "aborted"
    assert late.status_code == 409
    done = await _until(control_plane, rollout_id, "aborted")
    assert done["reason"]["what"] == "aborted"
    for site in ("site-a", "site-b"):
        applied, rolled_back = await _revisions(control_plane, site)
        assert (applied["rollout_action"], rolled_back["rollout_action"]) == ("apply", "rollback")
        assert rolled_back["rollout_id"] == rollout_id
        assert rolled_back["config"]["timing"]["sleep_time"] == "1m"
    assert {site["status"] for site in done["sites"]} == {"rolled_back"}
    actions = [
        entry["action"]
        for entry in (await control_plane.admin.get("/api/v1/audit")).json()["items"]
    ]
    for action in ("rollout.create", "rollout.pause", "rollout.resume", "rollout.abort"):
        assert action in actions


async def test_an_agent_that_does_not_apply_in_time_rolls_the_rollout_back(
    control_plane: ControlPlane,
) -> None:
    agent_id = await _silent_agent(control_plane, "site-a")
    created = await _rollout(
        control_plane,
        sites=["site-a", "site-c"],
        config={"timing": {"sleep_time": "7m"}},
        stages=[50, 100],
        apply_timeout="0.3s",
    )

    done = await _until(control_plane, created["id"], "rolled_back")

    assert done["reason"]["what"] == "apply_timeout"
    assert (done["reason"]["site"], done["reason"]["agent_id"]) == ("site-a", agent_id)
    by_site = {site["site"]: site for site in done["sites"]}
    assert by_site["site-a"]["status"] == "rolled_back"
    # site-c (no agents) waits for the last stage: the rollout never touched it.
    assert by_site["site-c"]["status"] == "pending"
    assert await _revisions(control_plane, "site-c") == []


async def test_an_abort_leaves_a_site_changed_by_hand_since_as_it_is(
    control_plane: ControlPlane,
) -> None:
    await _silent_agent(control_plane, "site-a")
    created = await _rollout(
        control_plane, sites=["site-a"], config={"timing": {"sleep_time": "7m"}}, soak="1h"
    )
    await _until_site(control_plane, created["id"], "pushed")
    by_hand = {"timing": {"sleep_time": "9m"}}
    assert (await control_plane.admin.put("/api/v1/sites/site-a/config", json=by_hand)).is_success

    await control_plane.admin.post(f"/api/v1/rollouts/{created['id']}/abort")
    done = await _until(control_plane, created["id"], "aborted")

    assert done["sites"][0]["status"] == "kept"
    revisions = await _revisions(control_plane, "site-a")
    assert [revision["config"]["timing"]["sleep_time"] for revision in revisions] == ["7m", "9m"]


async def test_a_rollout_running_when_the_control_plane_stops_is_driven_again_after_restart(
    settings: ControlPlaneSettings,
) -> None:
    async with started_control_plane(settings) as first:
        created = await first.admin.post("/api/v1/sites", json={"name": "x", "timezone": "UTC"})
        assert created.status_code == 201
        await _silent_agent(first, "x")
        rollout = await _rollout(
            first, sites=["x"], config={"timing": {"sleep_time": "4m"}}, soak="1h"
        )
        before = await _until_site(first, rollout["id"], "pushed")

    async with started_control_plane(settings) as restarted:
        # Taken up by the new process at once: the stopping one gave its lease back.
        await _silent_agent_seen_again(restarted)
        await restarted.admin.post(f"/api/v1/rollouts/{rollout['id']}/abort")
        done = await _until(restarted, rollout["id"], "aborted")

    assert done["sites"][0]["status"] == "rolled_back"
    assert before["driver"]["id"] != done["driver"]["id"]


async def _silent_agent_seen_again(cp: ControlPlane) -> None:
    # The stopping control plane recorded the agent's link as closed; it "reconnects".
    now = dt.datetime.now(dt.UTC)
    async with cp.session() as session:
        await session.execute(update(Agent).values(connected=True, last_seen_at=now))
        await session.commit()


async def _forget_the_push(cp: ControlPlane, rollout_id: str) -> None:
    """Put the rollout's site rows back as a driver that crashed right after storing the
    revisions (before its rows said so) leaves them."""
    async with cp.session() as session:
        await session.execute(
            update(RolloutSite)
            .where(RolloutSite.rollout_id == uuid.UUID(rollout_id))
            .values(status="pending", previous_revision=None, revision=None)
        )
        await session.commit()


async def test_a_revision_stored_before_its_row_was_written_is_taken_up_not_pushed_again(
    control_plane: ControlPlane,
) -> None:
    await _silent_agent(control_plane, "site-a")
    created = await _rollout(
        control_plane, sites=["site-a"], config={"timing": {"sleep_time": "7m"}}, soak="1h"
    )
    await _until_site(control_plane, created["id"], "pushed")
    await control_plane.admin.post(f"/api/v1/rollouts/{created['id']}/pause")
    await _forget_the_push(control_plane, created["id"])

    await control_plane.admin.post(f"/api/v1/rollouts/{created['id']}/resume")
    answer = await _until_site(control_plane, created["id"], "pushed")

    assert (answer["sites"][0]["previous_revision"], answer["sites"][0]["revision"]) == (0, 1)
    assert len(await _revisions(control_plane, "site-a")) == 1


async def test_a_rollback_finds_a_revision_its_row_does_not_name(
    control_plane: ControlPlane,
) -> None:
    await control_plane.admin.put("/api/v1/sites/site-a/config", json={"dicom": {"port": 1104}})
    await _silent_agent(control_plane, "site-a")
    created = await _rollout(
        control_plane, sites=["site-a"], config={"timing": {"sleep_time": "7m"}}, soak="1h"
    )
    await _until_site(control_plane, created["id"], "pushed")
    await control_plane.admin.post(f"/api/v1/rollouts/{created['id']}/pause")
    await _forget_the_push(control_plane, created["id"])

    await control_plane.admin.post(f"/api/v1/rollouts/{created['id']}/abort")
    done = await _until(control_plane, created["id"], "aborted")

    site = done["sites"][0]
    assert (site["status"], site["previous_revision"], site["revision"]) == ("rolled_back", 1, 2)
    first, _, rolled_back = await _revisions(control_plane, "site-a")
    assert rolled_back["rollout_action"] == "rollback"
    assert rolled_back["config"] == first["config"]
