"""`GET /metrics` of the control plane: its own token when set, and labels that never carry a
request's path values."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.support.served import served

ADMIN_TOKEN = "admin-token-for-metrics-tests-0123456789"
METRICS_TOKEN = "metrics-token-0123456789abcdef"


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
        metrics_token=METRICS_TOKEN,
    )
    with served(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


def test_metrics_need_the_metrics_token_when_one_is_set(base_url: str) -> None:
    with httpx2.Client(base_url=base_url) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert wrong.status_code == 401
        right = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert right.status_code == 200
        assert right.headers["content-type"].startswith("text/plain")


def test_requests_are_labelled_by_route_template_never_by_path_values(base_url: str) -> None:
    file_id = uuid.uuid4()
    with httpx2.Client(base_url=base_url) as client:
        client.post("/api/v1/sites", json={"name": "north", "timezone": "UTC"},
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
        client.get(f"/api/v1/files/{file_id}")
        client.get("/no-such-page/CANARY-PATIENT-NAME")
        text = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text

    assert str(file_id) not in text
    assert "CANARY-PATIENT-NAME" not in text
    routes = {
        (sample.labels["route"], sample.labels["status"])
        for family in text_string_to_metric_families(text)
        if family.name == "dicom_connector_http_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert ("/api/v1/files/{file_id}", "401") in routes
    assert ("unmatched", "404") in routes
    assert ("/api/v1/sites", "201") in routes
    statuses = {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "dicom_connector_site_status"
        for sample in family.samples
    }
    # A site without agents is missing.
    assert statuses == {"ok": 0, "degraded": 0, "unhealthy": 0, "missing": 1}


def test_a_single_process_on_sqlite_shows_no_replica_bus(base_url: str) -> None:
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    exposition = httpx2.get(f"{base_url}/metrics", headers=headers, timeout=30).text

    assert "dicom_connector_alerts_delivered_total 0.0" in exposition  # the scrape ran
    assert "replica_bus" not in exposition
