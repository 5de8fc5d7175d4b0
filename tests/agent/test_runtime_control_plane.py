"""The agent against the real control plane (`control_plane.main.create_app` on SQLite).

Scanner (pynetdicom SCU) → agent SCP → spool → reaper → `POST /api/v1/ingest` → hierarchy,
checked through `GET /api/v1/acquisitions`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from tests.agent.test_reaper import series_datasets
from tests.agent.test_runtime import Running
from tests.agent.test_upload_store_double import UvicornThread
from tests.support.scu import send_datasets

ADMIN_TOKEN = "admin-token-for-agent-tests-0123456789"


@pytest.fixture
def control_plane_url(tmp_path: Path) -> Iterator[str]:
    from control_plane.main import create_app
    from control_plane.settings import ControlPlaneSettings

    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'control-plane.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
    )
    server = UvicornThread(create_app(settings))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
async def admin(control_plane_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        base_url=control_plane_url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    ) as client:
        yield client


async def _call(client: httpx2.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, (path, response.status_code, response.text)
    return response.json()


async def _register_agent(admin: httpx2.AsyncClient, token_file: Path) -> None:
    await _call(admin, "POST", "/api/v1/groups", json={"id": "neuro", "label": "Neuroscience"})
    await _call(admin, "POST", "/api/v1/groups/neuro/projects", json={"label": "study-a"})
    await _call(admin, "POST", "/api/v1/sites", json={"name": "default", "timezone": "UTC"})
    config = {"timing": {"acquisition_delay": "0.2s"}}
    await _call(admin, "PUT", "/api/v1/sites/default/config", json=config)
    created = await _call(
        admin, "POST", "/api/v1/sites/default/agents", json={"name": "edge", "deployment": "edge"}
    )
    await asyncio.to_thread(token_file.write_text, created["token"], encoding="utf-8")


async def test_series_sent_to_the_agent_are_filed_in_the_control_planes_hierarchy(
    admin: httpx2.AsyncClient, control_plane_url: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "agent-token"
    await _register_agent(admin, token_file)
    settings = AgentSettings(
        control_plane_url=control_plane_url,
        token_file=token_file,
        data_dir=tmp_path / "agent",
        dicom_host="127.0.0.1",
        dicom_port_override=0,
        reap_interval=0.05,
        spool_reserve_bytes=0,
    )
    agent = Running(AgentRuntime(settings))
    try:
        port = await agent.started()
        routed = series_datasets(3, comments="fw://neuro/study-a/SUBJ7")
        unrouted = series_datasets(2, comments=None)
        statuses = await asyncio.to_thread(send_datasets, port, routed + unrouted)
        assert statuses == [0] * 5
        items = await _acquisitions_once_filed(admin, expected_files=5)
    finally:
        await agent.stop()

    by_series = {item["series_instance_uid"]: item for item in items}
    routed_item = by_series[routed[0].SeriesInstanceUID]
    assert (routed_item["group"], routed_item["project"], routed_item["subject"]) == (
        "neuro",
        "study-a",
        "SUBJ7",
    )
    unrouted_item = by_series[unrouted[0].SeriesInstanceUID]
    assert (unrouted_item["group"], unrouted_item["project"]) == ("unknown", "Unsorted")
    assert unrouted_item["subject"] == "SYNTH001"


async def _acquisitions_once_filed(
    admin: httpx2.AsyncClient, expected_files: int, within: float = 30
) -> list[dict[str, Any]]:
    """Poll `GET /api/v1/acquisitions` until it lists `expected_files` files; return its items."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        items: list[dict[str, Any]] = (await _call(admin, "GET", "/api/v1/acquisitions"))["items"]
        if sum(len(item["files"]) for item in items) >= expected_files:
            return items
        if loop.time() > deadline:
            raise AssertionError(f"{expected_files} files not filed after {within} s: {items}")
        await asyncio.sleep(0.05)
