"""The dashboard's rollout pages against a real control plane (uvicorn, SQLite): the list, a
rollout's page with the buttons its state allows, pausing and aborting through them, the same
refusals as the API for a read-only token; and in a real headless Chromium against an
all-in-one with its real agent, a page that follows a rollout to its end by itself."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.support.all_in_one import ADMIN_TOKEN as ADMIN_TOKEN_ALL_IN_ONE
from tests.support.all_in_one import running_all_in_one
from tests.support.environment import require_executable
from tests.support.served import served

ADMIN_TOKEN = "admin-token-for-dashboard-rollouts-0123456789"
HTMX = {"HX-Request": "true"}
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts")) / "dashboard"


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "cp.db"


@pytest.fixture
def base_url(database: Path, tmp_path: Path) -> Iterator[str]:
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{database}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
        rollout_tick_interval_s=0.05,
    )
    with served(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


def _api(base_url: str, method: str, path: str, **kwargs: Any) -> Any:
    with httpx2.Client(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        answer = c.request(method, path, **kwargs)
    assert answer.is_success, answer.text
    return answer.json()


def _connected_agent(base_url: str, database: Path, site: str) -> None:
    """An agent of `site` whose link is up but has applied nothing yet: a rollout waits."""
    _api(
        base_url,
        "POST",
        f"/api/v1/sites/{site}/agents",
        json={"name": "edge", "deployment": "edge"},
    )
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(database) as connection:
        connection.execute(
            "UPDATE agents SET connected = 1, connected_at = ?, last_seen_at = ?,"
            " config_revision = 0",
            (now, now),
        )


@contextmanager
def _logged_in(base_url: str, token: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=base_url, follow_redirects=False) as client:
        answer = client.post("/ui/login", data={"token": token, "next": "/ui/"})
        assert answer.status_code == 303, answer.text
        yield client


def _until(base_url: str, rollout_id: str, state: str) -> None:
    for _ in range(200):
        answer = _api(base_url, "GET", f"/api/v1/rollouts/{rollout_id}")
        if answer["state"] == state and not answer["rollback_pending"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"rollout never {state}")


def test_a_running_rollout_is_paused_and_aborted_with_the_pages_buttons(
    base_url: str, database: Path
) -> None:
    _api(base_url, "POST", "/api/v1/sites", json={"name": "north", "timezone": "UTC"})
    _connected_agent(base_url, database, "north")
    created = _api(
        base_url,
        "POST",
        "/api/v1/rollouts",
        json={"sites": "all", "config": {"timing": {"sleep_time": "2m"}}, "stages": [100]},
    )
    rollout_id = created["id"]

    with _logged_in(base_url, ADMIN_TOKEN) as ui:
        listed = ui.get("/ui/rollouts")
        page = ui.get(f"/ui/rollouts/{rollout_id}")
        forged = ui.post(f"/ui/rollouts/{rollout_id}/pause")
        paused = ui.post(f"/ui/rollouts/{rollout_id}/pause", headers=HTMX)
        again = ui.post(f"/ui/rollouts/{rollout_id}/pause", headers=HTMX)
        aborted = ui.post(f"/ui/rollouts/{rollout_id}/abort", headers=HTMX)
        _until(base_url, rollout_id, "aborted")
        ended = ui.get(f"/ui/rollouts/{rollout_id}/part")

    assert listed.status_code == 200
    assert rollout_id[:8] in listed.text
    assert 'hx-post="/ui/rollouts/' + rollout_id + '/pause"' in page.text
    assert "every 2s" in page.text
    assert forged.status_code == 403
    assert ">paused<" in paused.text
    assert "/resume" in paused.text
    assert "cannot pause" in again.text
    assert ">aborted<" in aborted.text
    assert "every 2s" not in ended.text
    assert "hx-post" not in ended.text
    assert "aborted by admin" in ended.text


def test_a_read_only_token_sees_rollouts_but_its_buttons_change_nothing(base_url: str) -> None:
    _api(base_url, "POST", "/api/v1/sites", json={"name": "north", "timezone": "UTC"})
    created = _api(
        base_url, "POST", "/api/v1/rollouts", json={"sites": "all", "config": {}, "stages": [100]}
    )
    token = _api(base_url, "POST", "/api/v1/tokens", json={"role": "read-only", "name": "ro"})

    with _logged_in(base_url, token["token"]) as ui:
        page = ui.get(f"/ui/rollouts/{created['id']}")
        refused = ui.post(f"/ui/rollouts/{created['id']}/abort", headers=HTMX)

    assert page.status_code == 200
    assert "only support tokens may call this route" in refused.text


def test_a_rollout_page_follows_a_real_agent_to_completion_in_chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = require_executable("chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("DICOM_CONNECTOR_HEARTBEAT_INTERVAL_S", "1")
    monkeypatch.setenv("DICOM_CONNECTOR_FLEET_FLUSH_INTERVAL_S", "0.1")
    monkeypatch.setenv("DICOM_CONNECTOR_ROLLOUT_TICK_INTERVAL_S", "0.2")
    with running_all_in_one(tmp_path / "data", {"timing": {"acquisition_delay": "1s"}}) as server:
        server.wait_until(
            lambda: server.client.get("/api/v1/sites/default/agents").json()["items"][0][
                "connected"
            ],
            what="the agent connected",
        )
        created = server.client.post(
            "/api/v1/rollouts",
            json={"sites": "all", "config": {"timing": {"sleep_time": "2m"}}, "soak": "4s"},
        )
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        base = f"http://127.0.0.1:{server.http_port}"
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            try:
                page.goto(f"{base}/ui/login?next=/ui/rollouts/{rollout_id}")
                page.fill("#token", ADMIN_TOKEN_ALL_IN_ONE)
                page.click("#login")
                page.wait_for_url(f"{base}/ui/rollouts/{rollout_id}")
                assert page.inner_text("#rollout-state") == "running"
                page.screenshot(path=ARTIFACTS / "rollout-running.png", full_page=True)
                page.click("button:has-text('Pause')")
                page.wait_for_function(
                    "document.querySelector('#rollout-state').textContent === 'paused'"
                )
                page.click("button:has-text('Resume')")
                # No reload: the page's part refreshes itself until the rollout has ended.
                page.wait_for_function(
                    "document.querySelector('#rollout-state').textContent === 'completed'",
                    timeout=60_000,
                )
                assert "✓" in page.inner_text("#rollout-sites")
                page.screenshot(path=ARTIFACTS / "rollout-completed.png", full_page=True)
                page.goto(f"{base}/ui/rollouts")
                assert "completed" in page.inner_text("#rollouts")
            finally:
                browser.close()
    assert (ARTIFACTS / "rollout-completed.png").stat().st_size > 1000
