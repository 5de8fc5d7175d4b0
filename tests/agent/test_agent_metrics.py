"""The agent's own `/metrics` and `/healthz` (`--metrics-port`), read with prometheus-client's
parser while a real agent uploads PHI canaries to the real control plane."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.agent.test_runtime import Running
from tests.support.phi_canaries import canary_series, canary_uid
from tests.support.scu import send_datasets
from tests.support.served import served

ADMIN_TOKEN = "admin-token-for-agent-metrics-0123456789"
WAIT_S = 60.0  # bounds a hang; not a performance assertion


@pytest.fixture
def control_plane_url(tmp_path: Path) -> Iterator[str]:
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
    )
    with served(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_agent_serves_its_health_as_metrics_without_phi(
    control_plane_url: str, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx2.AsyncClient(base_url=control_plane_url, headers=headers) as admin:
        await admin.post("/api/v1/sites", json={"name": "north", "timezone": "UTC"})
        await admin.put(
            "/api/v1/sites/north/config", json={"timing": {"acquisition_delay": "0.2s"}}
        )
        created = (
            await admin.post(
                "/api/v1/sites/north/agents", json={"name": "edge", "deployment": "edge"}
            )
        ).json()
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
                metrics_port=0,
            )
        )
    )
    canaries = canary_series(3, study_uid=canary_uid(1), series_uid=canary_uid(2))
    try:
        port = await agent.started()
        metrics_port = agent.runtime.metrics_port
        assert metrics_port is not None
        base = f"http://127.0.0.1:{metrics_port}"
        await asyncio.to_thread(send_datasets, port, [c.dataset for c in canaries])
        async with httpx2.AsyncClient(base_url=base) as client:
            deadline = time.monotonic() + WAIT_S
            while True:
                text = (await client.get("/metrics")).text
                samples = _samples(text)
                if samples[("dicom_connector_agent_uploads_succeeded_total", ())] == 3:
                    break
                assert time.monotonic() < deadline, text
                await asyncio.sleep(0.05)
            probe = await client.get("/healthz")
            alive = await client.get("/livez")
            missing = await client.get("/nothing")
    finally:
        await agent.stop()

    planted = {c.value for canary in canaries for c in canary.canaries if len(c.value) >= 6}
    assert [value for value in planted if value in text] == []
    value: Any = samples
    assert value[("dicom_connector_agent_spool_instances", ())] == 0
    assert value[("dicom_connector_agent_listener_up", ())] == 1
    assert value[("dicom_connector_agent_uploads_failing_seconds", ())] == 0
    assert value[("dicom_connector_agent_longest_reap_seconds", ())] > 0
    assert (probe.status_code, probe.json()) == (200, {"status": "ok"})
    assert (alive.status_code, alive.json()) == (200, {"status": "alive"})
    assert missing.status_code == 404
    # Stopped with the agent.
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"{base}/healthz", timeout=2)
