"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a real
all-in-one: log in with a token, the fleet, a site (plots drawn, a failed series retried with
its button), where-is-my-data, the quick-reference card. A screenshot of each page is kept in
`test-artifacts/dashboard/` (or `$TEST_ARTIFACTS/dashboard/`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from tests.support.all_in_one import ADMIN_TOKEN, AllInOne, running_all_in_one
from tests.support.dicom_factory import make_instance
from tests.support.environment import require_executable
from tests.support.scu import send_datasets

playwright = pytest.importorskip("playwright.sync_api")

# The series below writes a date that is not a date on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR DA")

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts")) / "dashboard"
SHIFT_DATES: dict[str, Any] = {
    "version": 1,
    "name": "shift dates",
    "dicom": {"date-increment": -10, "fields": [{"name": "StudyDate", "increment-date": True}]},
}
NAME_ONLY: dict[str, Any] = {
    "version": 1,
    "name": "names only",
    "dicom": {"fields": [{"name": "PatientName", "replace-with": "REDACTED"}]},
}
CONFIG: dict[str, Any] = {"timing": {"acquisition_delay": "1s"}, "deid": {"profile": SHIFT_DATES}}


def _series(n: int, *, bad_date_at: int | None) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    datasets = [
        make_instance(
            patient_id="PAT-UI",
            study_uid=study,
            series_uid=series,
            series_description="T1",
            study_description="Brain",
            patient_comments="fw://neuro/study-a",
            instance_number=number,
            rows=32,
            cols=32,
        )
        for number in range(1, n + 1)
    ]
    if bad_date_at is not None:
        datasets[bad_date_at].StudyDate = "NOTADATE"
    return datasets


@pytest.fixture
def connector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AllInOne]:
    # Frequent heartbeats: the health history has points to plot within seconds.
    monkeypatch.setenv("DICOM_CONNECTOR_HEARTBEAT_INTERVAL_S", "0.3")
    monkeypatch.setenv("DICOM_CONNECTOR_FLEET_FLUSH_INTERVAL_S", "0.1")
    with running_all_in_one(tmp_path / "data", CONFIG) as server:
        server.client.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
        server.client.post("/api/v1/groups/neuro/projects", json={"label": "study-a"})
        yield server


def _agent_history(server: AllInOne) -> int:
    agents = server.client.get("/api/v1/sites/default/agents").json()["items"]
    history = server.client.get(f"/api/v1/agents/{agents[0]['id']}/health/history")
    return len(history.json()["items"])


def _failed(server: AllInOne) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = server.client.get(
        "/api/v1/sites/default/series", params={"state": "failed"}
    ).json()["items"]
    return items


def test_the_dashboard_pages_render_plot_and_retry_a_failed_series(connector: AllInOne) -> None:
    chromium = require_executable("chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert send_datasets(connector.dicom_port, _series(3, bad_date_at=2)) == [0] * 3
    connector.wait_until(lambda: len(_failed(connector)) == 1, what="a failed series")
    connector.wait_until(lambda: _agent_history(connector) >= 5, what="health reports")
    base = f"http://127.0.0.1:{connector.http_port}"

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        try:
            # Not logged in: the login form, which refuses a wrong token with the API's words.
            page.goto(f"{base}/ui/sites/default")
            assert page.url.startswith(f"{base}/ui/login")
            page.fill("#token", "not-a-token-anyone-issued")
            page.click("#login")
            assert "unknown bearer token" in page.inner_text("#login-error")
            page.screenshot(path=ARTIFACTS / "login.png", full_page=True)
            page.fill("#token", ADMIN_TOKEN)
            page.click("#login")
            # Back where it was going.
            page.wait_for_url(f"{base}/ui/sites/default")

            page.goto(f"{base}/ui/")
            row = page.locator("#sites tr", has_text="default")
            assert row.locator(".status").inner_text() == "degraded"
            assert "series failed as a whole" in row.inner_text()
            page.screenshot(path=ARTIFACTS / "fleet.png", full_page=True)

            page.goto(f"{base}/ui/sites/default")
            assert page.locator("#agents tr").count() == 2  # header + the agent
            for plot in ("health", "throughput", "deferred"):
                line = page.locator(f"svg[data-plot={plot}] polyline")
                assert len(line.get_attribute("points").split()) >= 4  # type: ignore[union-attr]
                box = line.bounding_box()
                assert box is not None
                assert box["width"] > 100
            assert "deid.profile.name" in page.inner_text("#revisions")
            page.screenshot(path=ARTIFACTS / "site.png", full_page=True)

            # Support fixes the profile, then presses Retry.
            connector.client.put(
                "/api/v1/sites/default/config",
                content=json.dumps({**CONFIG, "deid": {"profile": NAME_ONLY}}),
            ).raise_for_status()
            page.click("#failed button.retry")
            result = page.locator("#failed .retry-result")
            result.wait_for()
            assert "3 instance(s)" in result.inner_text()
            assert "✓" in result.inner_text()
            page.screenshot(path=ARTIFACTS / "site-retried.png", full_page=True)
            connector.wait_until(
                lambda: len(connector.acquisitions(group="neuro")) == 1, what="the series stored"
            )

            page.goto(f"{base}/ui/search?group=neuro")
            results = page.locator("#results tr")
            assert results.count() == 2
            assert "study-a" in results.nth(1).inner_text()
            page.screenshot(path=ARTIFACTS / "search.png", full_page=True)

            page.goto(f"{base}/ui/sites/default/card")
            assert "fw://neuro/study-a" in page.inner_text("body")
            page.screenshot(path=ARTIFACTS / "card.png", full_page=True)

            # The retry endpoint refuses a request that is not htmx's (a cross-site form).
            refused = page.request.post(f"{base}/ui/sites/default/series/0123456789abcdef/retry")
            assert refused.status == 403
        finally:
            browser.close()
    for name in ("login", "fleet", "site", "site-retried", "search", "card"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 1000
