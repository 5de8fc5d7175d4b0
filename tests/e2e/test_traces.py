"""Traces exported over OTLP/HTTP to a collector stand-in: the trace of a series crosses from
the agent to the control plane, and no span carries a patient's value.

Both sides are configured the way an operator does it, by OTEL_EXPORTER_OTLP_ENDPOINT (batched
export): the control plane by `create_app`'s default, the agent by
`common.telemetry.configure_tracing`, as `agent.runtime.main` does.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx2
import pytest

from agent.runtime import SERVICE_NAME as AGENT_SERVICE
from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from common.telemetry import configure_tracing
from control_plane.main import SERVICE_NAME as CONTROL_PLANE_SERVICE
from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.agent.test_runtime import Running
from tests.support.otlp_collector import ReceivedSpan, otlp_collector
from tests.support.phi_canaries import canary_series, canary_uid
from tests.support.scu import send_datasets
from tests.support.served import served

ADMIN_TOKEN = "admin-token-for-trace-tests-0123456789"
WAIT_S = 60.0  # bounds a hang; not a performance assertion


async def test_a_series_trace_crosses_from_agent_to_control_plane_without_phi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canaries = canary_series(3, study_uid=canary_uid(1), series_uid=canary_uid(2))
    with otlp_collector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
        settings = ControlPlaneSettings(
            database_url=f"sqlite:///{tmp_path / 'cp.db'}",
            blob_dir=tmp_path / "blobs",
            admin_token=ADMIN_TOKEN,
            heartbeat_interval_s=0.3,
            fleet_flush_interval_s=0.1,
        )
        agent_provider = configure_tracing(AGENT_SERVICE)
        with served(create_app(settings)) as port:
            url = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx2.AsyncClient(base_url=url, headers=headers, timeout=30) as admin:
                await admin.post("/api/v1/sites", json={"name": "north", "timezone": "UTC"})
                await admin.put(
                    "/api/v1/sites/north/config", json={"timing": {"acquisition_delay": "0.2s"}}
                )
                created = await admin.post(
                    "/api/v1/sites/north/agents", json={"name": "edge", "deployment": "edge"}
                )
                token_file = tmp_path / "agent-token"
                await asyncio.to_thread(
                    token_file.write_text, created.json()["token"], encoding="utf-8"
                )
                agent = Running(
                    AgentRuntime(
                        AgentSettings(
                            control_plane_url=url,
                            token_file=token_file,
                            data_dir=tmp_path / "agent",
                            dicom_host="127.0.0.1",
                            dicom_port_override=0,
                            reap_interval=0.05,
                            spool_reserve_bytes=0,
                            intake_processes=1,
                        ),
                        tracer_provider=agent_provider,
                    )
                )
                try:
                    dicom_port = await agent.started()
                    await agent.runtime.link.wait_connected()
                    await asyncio.to_thread(
                        send_datasets, dicom_port, [c.dataset for c in canaries]
                    )
                    deadline = time.monotonic() + WAIT_S
                    while True:
                        metrics = (await admin.get("/api/v1/sites/north/metrics")).json()
                        # Stored, and its figures (sent with a heartbeat) recorded.
                        if metrics["figures"]["instances_stored"] == 3:
                            break
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)
                finally:
                    await agent.stop()
                    agent_provider.shutdown()
        # The control plane's lifespan flushed its spans when it stopped.
        spans = collector.snapshot()

    (series,) = [s for s in spans if s.service == AGENT_SERVICE and s.name == "series"]
    in_trace = [s for s in spans if s.trace_id == series.trace_id]
    control_plane = [s for s in in_trace if s.service == CONTROL_PLANE_SERVICE]
    # The upload request's server span is a child of the agent's series span...
    uploads = [
        s
        for s in control_plane
        if s.attributes.get("http.route") in ("/api/v1/ingest/batch", "/api/v1/ingest")
    ]
    assert uploads
    assert {s.parent_span_id for s in uploads} == {series.span_id}
    # ... and so is the record of the series' figures, which came over the link.
    (figures,) = [s for s in control_plane if s.name == "series.figures"]
    assert figures.parent_span_id == series.span_id
    assert figures.attributes["series_key"] == series.attributes["series_key"]
    # Database statements are traced, by operation only.
    statements = [s for s in spans if s.attributes.get("db.operation.name")]
    assert {s.attributes["db.operation.name"] for s in statements} >= {"SELECT", "INSERT"}
    _assert_no_phi(spans, canaries)


def _assert_no_phi(spans: list[ReceivedSpan], canaries: list) -> None:  # type: ignore[type-arg]
    planted = {c.value for canary in canaries for c in canary.canaries if len(c.value) >= 6}
    texts = [f"{s.name} {s.attributes}" for s in spans]
    leaked = sorted({value for value in planted for text in texts if value in text})
    assert leaked == []
    assert not [s for s in spans if {"url.path", "url.query", "url.full"} & set(s.attributes)]
