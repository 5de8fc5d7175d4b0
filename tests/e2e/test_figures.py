"""The operational figures from a scripted run: two scanners push series to a real agent, the
real control plane stores them, and `GET /api/v1/sites/{site}/metrics` (and `admin metrics`)
report exactly what happened: series, instances, bytes (as the store holds them), routing
shares per scanner, success and completeness, and latencies inside the run's own bounds.
`GET /metrics` says the same in Prometheus' format, read with prometheus-client's own parser,
and none of the PHI canaries one scanner sent shows up in it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from cli.main import app
from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.agent.test_runtime import Running
from tests.support.dicom_factory import make_series
from tests.support.phi_canaries import canary_series, canary_uid
from tests.support.scu import send_datasets
from tests.support.served import served

ADMIN_TOKEN = "admin-token-for-figures-tests-0123456789"
SITE = "north"
WAIT_S = 60.0  # bounds a hang; not a performance assertion


@pytest.fixture
def control_plane_url(tmp_path: Path) -> Iterator[str]:
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'control-plane.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
        # The figures ride on the upload reports, not on heartbeats; a slow heartbeat keeps the
        # stopped agent from turning missing while the test reads /metrics on a loaded machine.
        heartbeat_interval_s=5.0,
        fleet_flush_interval_s=0.1,
    )
    with served(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def admin(control_plane_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        base_url=control_plane_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


async def _call(client: httpx2.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, (path, response.status_code, response.text)
    return response.json()


def _series(count: int, comments: str | None) -> list[Any]:
    extra = {} if comments is None else {"patient_comments": comments}
    return make_series(
        count,
        patient_id="FIG01",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="figures",
        study_description="figures study",
        rows=8,
        cols=8,
        **extra,
    )


async def test_the_metrics_of_a_scripted_run_are_its_true_values(
    admin: httpx2.AsyncClient, control_plane_url: str, tmp_path: Path
) -> None:
    await _call(admin, "POST", "/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
    await _call(admin, "POST", "/api/v1/groups/neuro/projects", json={"label": "study-a"})
    await _call(admin, "POST", "/api/v1/sites", json={"name": SITE, "timezone": "UTC"})
    await _call(
        admin, "PUT", f"/api/v1/sites/{SITE}/config", json={"timing": {"acquisition_delay": "0.3s"}}
    )
    created = await _call(
        admin, "POST", f"/api/v1/sites/{SITE}/agents", json={"name": "edge", "deployment": "edge"}
    )
    token_file = tmp_path / "agent-token"
    await asyncio.to_thread(token_file.write_text, created["token"], encoding="utf-8")
    agent = Running(
        AgentRuntime(
            AgentSettings(
                control_plane_url=control_plane_url,
                token_file=token_file,
                data_dir=tmp_path / "agent",
                dicom_host="127.0.0.1",
                dicom_port_override=0,
                reap_interval=0.05,
                spool_reserve_bytes=0,
                intake_processes=1,
            )
        )
    )
    # The script: MRI_A sends two routed series (3 + 2 instances) and one to a project that
    # does not exist (2); CT_B sends one series without a routing string, full of PHI
    # canaries (4).
    canaries = canary_series(4, study_uid=canary_uid(1), series_uid=canary_uid(2))
    script = [
        ("MRI_A", _series(3, "fw://neuro/study-a")),
        ("MRI_A", _series(2, "fw://neuro/study-a")),
        ("MRI_A", _series(2, "fw://neuro/no-such-project")),
        ("CT_B", [canary.dataset for canary in canaries]),
    ]
    started = time.time()
    try:
        port = await agent.started()
        await agent.runtime.link.wait_connected()
        for calling_ae, series in script:
            statuses = await asyncio.to_thread(send_datasets, port, series, calling_ae=calling_ae)
            assert set(statuses) == {0}
        deadline = time.monotonic() + WAIT_S
        while True:
            metrics = await _call(admin, "GET", f"/api/v1/sites/{SITE}/metrics")
            if metrics["figures"]["instances_stored"] == 11:
                break
            assert time.monotonic() < deadline, metrics
            await asyncio.sleep(0.1)
    finally:
        await agent.stop()
    ended = time.time()

    files = (await _call(admin, "GET", "/api/v1/acquisitions"))["items"]
    stored_bytes = sum(file["size"] for item in files for file in item["files"])
    site = metrics["figures"]
    assert site["series"] == 4
    assert (site["instances_received"], site["instances_stored"]) == (11, 11)
    assert (site["instances_failed"], site["upload_attempts_failed"]) == (0, 0)
    assert (site["upload_success_rate"], site["completeness"]) == (1.0, 1.0)
    assert site["bytes_uploaded"] == stored_bytes
    assert site["routing"] == {"no_routing_string": 0.25, "routed": 0.5, "unknown_project": 0.25}
    assert site["series_deferred"] == 0
    # Latency: from a series' last instance to its stored upload, inside this run.
    assert 0 < site["upload_latency_p50_s"] <= site["upload_latency_p95_s"] < ended - started

    scanners = {scanner["calling_ae"]: scanner["figures"] for scanner in metrics["scanners"]}
    assert set(scanners) == {"CT_B", "MRI_A"}
    assert (scanners["MRI_A"]["series"], scanners["MRI_A"]["instances_stored"]) == (3, 7)
    assert scanners["MRI_A"]["routing"] == {"routed": 2 / 3, "unknown_project": 1 / 3}
    assert (scanners["CT_B"]["series"], scanners["CT_B"]["instances_stored"]) == (1, 4)
    assert scanners["CT_B"]["routing"] == {"no_routing_string": 1.0}

    cli = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["admin", "--url", control_plane_url, "--token", ADMIN_TOKEN, "metrics", SITE, "--json"],
    )
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output)["figures"] == site
    table = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["admin", "--url", control_plane_url, "--token", ADMIN_TOKEN, "metrics", SITE],
        env={"COLUMNS": "200"},
    )
    assert table.exit_code == 0, table.output
    assert "MRI_A" in table.output
    assert "CT_B" in table.output
    assert "100.0%" in table.output

    exposition = (await admin.get("/metrics")).text
    planted = {c.value for canary in canaries for c in canary.canaries if len(c.value) >= 6}
    assert [value for value in planted if value in exposition] == []
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    prefix = "dicom_connector"
    assert value(f"{prefix}_instances_stored_total", site=SITE, scanner="MRI_A") == 7
    assert value(f"{prefix}_instances_stored_total", site=SITE, scanner="CT_B") == 4
    uploaded = sum(
        value(f"{prefix}_uploaded_bytes_total", site=SITE, scanner=ae) for ae in scanners
    )
    assert uploaded == stored_bytes
    assert value(f"{prefix}_routed_batches_total", site=SITE, reason="unknown_project") == 1
    assert value(f"{prefix}_upload_attempts_failed_total", site=SITE, scanner="CT_B") == 0
    assert (
        value(f"{prefix}_upload_latency_seconds", site=SITE, quantile="0.5")
        == (site["upload_latency_p50_s"])
    )
    # The agent stopped a moment ago: not yet missing, and its link is closed.
    health = await _call(admin, "GET", f"/api/v1/sites/{SITE}/health")
    assert value(f"{prefix}_site_status", site=SITE, status="ok") == 1, health
    assert value(f"{prefix}_agents_connected", site=SITE) == 0
    requests = value(
        f"{prefix}_http_requests_total",
        method="GET",
        route="/api/v1/sites/{site}/metrics",
        status="200",
    )
    assert requests >= 1
    assert value(f"{prefix}_alerts_failed_total") == 0
