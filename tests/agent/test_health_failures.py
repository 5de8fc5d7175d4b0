"""Health that sees every failure: a real agent, the real control plane, real peers.

A PULL source (Orthanc) that stops answering, and a store (Orthanc's DICOMweb) that refuses
every upload, each turn the site `degraded` with a reason naming what failed, and back to `ok`
once the peer returns. The control plane's heartbeat interval is short (0.5 s); heartbeats are
counted on the agent (every report the link sends is built by `health_report`), so "within two
heartbeats" is a count, not a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydicom.uid import generate_uid

from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from common.messages import HealthReport
from control_plane.main import create_app
from control_plane.settings import AlertSettings, ControlPlaneSettings
from tests.agent.test_pull_orthanc import AGENT_AE
from tests.agent.test_runtime import Running
from tests.support.dicom_factory import make_series
from tests.support.environment import free_port
from tests.support.orthanc import Orthanc
from tests.support.scu import send_datasets
from tests.support.served import served
from tests.support.webhook_receiver import WebhookReceiver, webhook_receiver

pytestmark = pytest.mark.orthanc

ADMIN_TOKEN = "admin-token-for-health-tests-0123456789"
SITE = "default"
HEARTBEAT_S = 0.5
WAIT_S = 60.0  # bounds a hang; not a performance assertion


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as running:
        yield running


@pytest.fixture
def control_plane_url(tmp_path: Path, receiver: WebhookReceiver) -> Iterator[str]:
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'control-plane.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
        heartbeat_interval_s=HEARTBEAT_S,
        fleet_flush_interval_s=0.1,
        alerts=AlertSettings(
            webhooks=[receiver.url],  # type: ignore[list-item]
            hold_s=0.2,
            min_interval_s=0,
            check_interval_s=0.05,
        ),
    )
    with served(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def admin(control_plane_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        base_url=control_plane_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", dicomweb=True)
    try:
        server.start()
        yield server
    finally:
        server.close()


async def _call(client: httpx2.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, (path, response.status_code, response.text)
    return response.json()


class CountedAgent:
    """An agent whose heartbeats (health reports built for the link) are counted."""

    def __init__(self, settings: AgentSettings) -> None:
        self.runtime = AgentRuntime(settings)
        self.heartbeats = 0
        build = self.runtime.health_report

        def counted() -> HealthReport:
            self.heartbeats += 1
            return build()

        # The link reads `owner.health_report` when it connects: the instance attribute wins.
        self.runtime.health_report = counted  # type: ignore[method-assign]
        self.running = Running(self.runtime)


async def _register(admin: httpx2.AsyncClient, config: dict[str, Any], token_file: Path) -> None:
    await _call(admin, "POST", "/api/v1/sites", json={"name": SITE, "timezone": "UTC"})
    await _call(admin, "PUT", f"/api/v1/sites/{SITE}/config", json=config)
    created = await _call(
        admin, "POST", f"/api/v1/sites/{SITE}/agents", json={"name": "edge", "deployment": "edge"}
    )
    await asyncio.to_thread(token_file.write_text, created["token"], encoding="utf-8")


def _settings(url: str, tmp_path: Path, dicom_port: int) -> AgentSettings:
    return AgentSettings(
        control_plane_url=url,
        token_file=tmp_path / "agent-token",
        data_dir=tmp_path / "agent",
        dicom_host="127.0.0.1",
        dicom_port_override=dicom_port,
        reap_interval=0.05,
        spool_reserve_bytes=0,
        association_drain_timeout=5,
        intake_processes=1,
    )


async def _site_until(
    admin: httpx2.AsyncClient, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        health: dict[str, Any] = await _call(admin, "GET", f"/api/v1/sites/{SITE}/health")
        if check(health):
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last site health: {health}")
        await asyncio.sleep(0.05)


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _ok(health: dict[str, Any]) -> bool:
    return bool(health["status"] == "ok")


async def test_a_pull_source_that_stops_answering_degrades_the_site_within_two_heartbeats(
    admin: httpx2.AsyncClient,
    control_plane_url: str,
    orthanc: Orthanc,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    dicom_port = free_port()
    source = {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    config = {
        "mode": "pull",
        "dicom": {"ae_title": AGENT_AE},
        "pull": {"sources": [{**source, "timeout": "5s"}]},
        "timing": {"acquisition_delay": "0.5s", "sleep_time": "0.2s"},
    }
    await _register(admin, config, tmp_path / "agent-token")
    orthanc.register_modality("agent", AGENT_AE, "127.0.0.1", dicom_port)
    agent = CountedAgent(_settings(control_plane_url, tmp_path, dicom_port))
    try:
        await agent.running.started()
        await _site_until(admin, _ok, "the site to be ok")

        orthanc.stop()
        stopped_at = agent.heartbeats
        degraded = await _site_until(
            admin, lambda health: health["status"] == "degraded", "the site to turn degraded"
        )
        assert agent.heartbeats - stopped_at <= 2
        address = f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"
        (reason,) = [r for r in degraded["reasons"] if "PULL source" in r]
        assert f"PULL source {address} cannot be queried" in reason

        orthanc.start()
        back_at = agent.heartbeats
        await _site_until(admin, _ok, "the site to be ok again")
        # The next round (every 0.2 s) succeeds, and the heartbeat after it says so.
        assert agent.heartbeats - back_at <= 2
        await _until(lambda: len(receiver.events()) >= 2, "the recovered alert")
    finally:
        await agent.running.stop()

    # One alert per transition, the first with the reason.
    assert receiver.events() == [(SITE, "degraded"), (SITE, "recovered")]
    assert any("cannot be queried" in reason for reason in receiver.accepted[0]["reasons"])


async def test_a_store_refusing_uploads_degrades_the_site_and_recovers(
    admin: httpx2.AsyncClient,
    control_plane_url: str,
    orthanc: Orthanc,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    config = {
        "dicom": {"ae_title": AGENT_AE},
        "destination": {"kind": "dicomweb", "url": orthanc.dicomweb_url},
        "timing": {"acquisition_delay": "0.2s", "upload_failure_threshold": "0.5s"},
    }
    await _register(admin, config, tmp_path / "agent-token")
    agent = CountedAgent(_settings(control_plane_url, tmp_path, 0))
    try:
        port = await agent.running.started()
        await _site_until(admin, _ok, "the site to be ok")

        orthanc.stop()
        series = make_series(
            3,
            patient_id="HEALTH01",
            study_uid=generate_uid(),
            series_uid=generate_uid(),
            series_description="health",
            study_description="health test",
            rows=8,
            cols=8,
        )
        await asyncio.to_thread(send_datasets, port, series)
        degraded = await _site_until(
            admin, lambda health: health["status"] == "degraded", "the site to turn degraded"
        )
        (reason,) = [r for r in degraded["reasons"] if "uploads have been failing" in r]
        assert "over the upload_failure_threshold of 500ms" in reason

        orthanc.start()
        await _site_until(admin, _ok, "the site to be ok again")
        # The site is ok again with the first batch that lands; the rest may still be on the way.
        await _until(lambda: orthanc.instance_count() == 3, "every instance in Orthanc")
        await _until(lambda: len(receiver.events()) >= 2, "the recovered alert")
    finally:
        await agent.running.stop()

    assert receiver.events() == [(SITE, "degraded"), (SITE, "recovered")]
