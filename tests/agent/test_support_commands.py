"""Support commands over the link, from the CLI through the real control plane to a real agent
polling a real Orthanc: C-ECHO a source now, query it now, collect a diagnostics bundle."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import structlog
from typer.testing import CliRunner, Result

from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from cli.main import app
from common.logging import REDACTED, configure_logging
from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.agent.test_pull_orthanc import AGENT_AE
from tests.agent.test_runtime import Running
from tests.support.environment import free_port
from tests.support.orthanc import Orthanc
from tests.support.served import served

pytestmark = pytest.mark.orthanc

ADMIN_TOKEN = "admin-token-for-support-tests-0123456789"


@pytest.fixture
def logs() -> Iterator[None]:
    """The agent's logging as in production (through the PHI filter); restored afterwards."""
    root = logging.getLogger()
    previous_handlers, previous_level = list(root.handlers), root.level
    configure_logging(stream=io.StringIO())
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in previous_handlers]:
            root.removeHandler(handler)
        root.setLevel(previous_level)
        structlog.reset_defaults()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc")
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def control_plane_url(tmp_path: Path) -> Iterator[str]:
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
    )
    with served(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def agent(
    control_plane_url: str, orthanc: Orthanc, tmp_path: Path, logs: None
) -> AsyncIterator[Running]:
    dicom_port = free_port()
    source = {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    config = {
        "mode": "pull",
        "dicom": {"ae_title": AGENT_AE},
        "pull": {"sources": [{**source, "timeout": "5s"}]},
        # Rounds far apart: the rounds this test sees are the ones it asks for.
        "timing": {"sleep_time": "1h"},
    }
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx2.AsyncClient(base_url=control_plane_url, headers=headers) as admin:
        await admin.post("/api/v1/sites", json={"name": "north", "timezone": "UTC"})
        await admin.put("/api/v1/sites/north/config", json=config)
        created = (
            await admin.post(
                "/api/v1/sites/north/agents", json={"name": "edge", "deployment": "edge"}
            )
        ).json()
    token_file = tmp_path / "agent-token"
    await asyncio.to_thread(token_file.write_text, created["token"], encoding="utf-8")
    orthanc.register_modality("agent", AGENT_AE, "127.0.0.1", dicom_port)
    running = Running(
        AgentRuntime(
            AgentSettings(
                control_plane_url=control_plane_url,
                token_file=token_file,
                data_dir=tmp_path / "agent",
                dicom_host="127.0.0.1",
                dicom_port_override=dicom_port,
                spool_reserve_bytes=0,
                intake_processes=1,
                association_drain_timeout=5,
            )
        )
    )
    await running.started()
    await running.runtime.link.wait_connected()
    yield running
    await running.stop()


async def _cli(url: str, *args: str) -> Result:
    return await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["admin", "--url", url, "--token", ADMIN_TOKEN, *args],
        env={"COLUMNS": "200"},
    )


async def test_support_echoes_and_queries_a_source_now_and_sees_why_it_fails(
    agent: Running, control_plane_url: str, orthanc: Orthanc
) -> None:
    agent_id = str(agent.runtime.link.agent_id)
    source = f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"

    echoed = await _cli(control_plane_url, "agents", "echo", agent_id, source)
    assert echoed.exit_code == 0, echoed.output
    assert f"{source} answered C-ECHO" in echoed.output
    queried = await _cli(control_plane_url, "agents", "query", agent_id, source)
    assert queried.exit_code == 0, queried.output
    assert "0 series listed" in queried.output

    orthanc.stop()
    echoed = await _cli(control_plane_url, "agents", "echo", agent_id, source)
    assert echoed.exit_code == 1
    assert f"{source} did not answer C-ECHO" in echoed.output
    queried = await _cli(control_plane_url, "agents", "query", agent_id, source)
    assert queried.exit_code == 1
    assert f"{source} could not be queried" in queried.output

    unknown = await _cli(control_plane_url, "agents", "echo", agent_id, "OTHER@10.0.0.1:104")
    assert unknown.exit_code == 1
    assert f"its sources: {source}" in unknown.output


async def test_a_diagnostics_bundle_holds_revision_health_and_filtered_log_lines(
    agent: Running, control_plane_url: str, orthanc: Orthanc, tmp_path: Path
) -> None:
    structlog.get_logger("support-test").warning(
        "a line with a patient value", patient_name="CANARY^PATIENT", count=7
    )
    agent_id = str(agent.runtime.link.agent_id)
    output = tmp_path / "bundle.json"

    result = await _cli(control_plane_url, "agents", "diagnostics", agent_id, "-o", str(output))

    assert result.exit_code == 0, result.output
    text = await asyncio.to_thread(output.read_text, encoding="utf-8")
    bundle: dict[str, Any] = json.loads(text)
    assert bundle["config_revision"] == 1
    assert bundle["health"]["listener_ok"] is True
    (source,) = bundle["health"]["pull_sources"]
    assert source["source"] == f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"
    lines = [json.loads(line) for line in bundle["log_lines"]]
    (ours,) = [line for line in lines if line["event"] == "a line with a patient value"]
    assert (ours["patient_name"], ours["count"]) == (REDACTED, 7)
    assert any(line["event"] == "link.up" for line in lines)
    assert "CANARY^PATIENT" not in text
