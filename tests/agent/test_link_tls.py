"""The agent reaches an https:// control plane over wss:// and HTTPS with certificate checks.

A real control plane under uvicorn with TLS on 127.0.0.1 (port 0), its certificate signed by a
CA generated in the test: an agent given that CA (`control_plane_ca`, `--ca-file`) links,
fetches its config and uploads; one trusting only the system's CAs is refused with a message
saying what to do, on the link and on the HTTP requests alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import ValidationError

from agent.config_client import ConfigClient, ConfigUnavailable
from agent.link import ControlPlaneLink
from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from agent.site import SiteSnapshot
from agent.tls import control_plane_ssl_context
from common.messages import HealthReport
from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.agent.test_reaper import series_datasets
from tests.agent.test_runtime import Running
from tests.support.certificates import ServerFiles, issue_server_certificate
from tests.support.scu import send_datasets
from tests.support.served import served

ADMIN_TOKEN = "admin-token-for-tls-tests-0123456789"
SITE = "default"


@pytest.fixture
def pki(tmp_path: Path) -> ServerFiles:
    return issue_server_certificate(tmp_path / "pki")


@pytest.fixture
def https_url(pki: ServerFiles, tmp_path: Path) -> Iterator[str]:
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'control-plane.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
        heartbeat_interval_s=0.2,
        fleet_flush_interval_s=0.1,
    )
    with served(create_app(settings), ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.key)) as port:
        yield f"https://127.0.0.1:{port}"


@pytest.fixture
async def token_file(https_url: str, pki: ServerFiles, tmp_path: Path) -> Path:
    """Register the site (quick completion) and an agent over HTTPS; its token file."""
    async with httpx2.AsyncClient(
        base_url=https_url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        verify=control_plane_ssl_context(pki.ca),
        timeout=30,
    ) as admin:
        await admin.post("/api/v1/sites", json={"name": SITE, "timezone": "UTC"})
        await admin.put(
            f"/api/v1/sites/{SITE}/config", json={"timing": {"acquisition_delay": "0.2s"}}
        )
        created = await admin.post(
            f"/api/v1/sites/{SITE}/agents", json={"name": "edge", "deployment": "edge"}
        )
    path = tmp_path / "agent-token"
    path.write_text(created.json()["token"], encoding="utf-8")
    return path


class _Owner:
    """The little of a runtime a link needs before it is welcomed."""

    applied_revision = None

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def apply_config(self, snapshot: SiteSnapshot) -> None:
        raise AssertionError("no config can arrive over a refused link")

    def health_report(self) -> HealthReport:
        raise AssertionError("no health is asked over a refused link")

    def record_error(self, message: str) -> None:
        self.errors.append(message)


class _NoStore:
    def save(self, snapshot: SiteSnapshot) -> None:
        raise AssertionError("no config can arrive over a refused link")


async def _until(condition: Any, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {within} s")
        await asyncio.sleep(0.02)


async def test_an_agent_given_the_private_ca_links_fetches_config_and_uploads_over_tls(
    https_url: str, pki: ServerFiles, token_file: Path, tmp_path: Path
) -> None:
    settings = AgentSettings(
        control_plane_url=https_url,
        control_plane_ca=pki.ca,
        token_file=token_file,
        data_dir=tmp_path / "agent",
        dicom_host="127.0.0.1",
        dicom_port_override=0,
        reap_interval=0.05,
        spool_reserve_bytes=0,
        association_drain_timeout=5,
        upload_drain_timeout=1,
        link_backoff_base=0.05,
        link_backoff_cap=0.5,
    )
    running = Running(AgentRuntime(settings))
    try:
        port = await running.started()
        await asyncio.wait_for(running.runtime.link.wait_connected(), 30)
        statuses = await asyncio.to_thread(send_datasets, port, series_datasets(2, comments=None))
        async with httpx2.AsyncClient(
            base_url=https_url,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            verify=control_plane_ssl_context(pki.ca),
        ) as admin:
            files: list[Any] = []

            async def landed() -> bool:
                items = (await admin.get("/api/v1/acquisitions")).json()["items"]
                files[:] = [file for item in items for file in item["files"]]
                return len(files) == 2

            deadline = time.monotonic() + 30
            while not await landed():
                assert time.monotonic() < deadline, "the series did not land over HTTPS"
                await asyncio.sleep(0.05)
    finally:
        await running.stop()

    assert running.runtime.link.url.startswith("wss://127.0.0.1:")
    assert statuses == [0, 0]
    assert len(files) == 2


async def test_without_the_private_ca_the_link_is_refused_with_a_clear_error(
    https_url: str, token_file: Path
) -> None:
    owner = _Owner()
    link = ControlPlaneLink(
        https_url,
        token_file,
        owner,
        _NoStore(),
        backoff_base=0.05,
        backoff_cap=0.2,
        ssl_context=control_plane_ssl_context(None),
    )
    running = asyncio.create_task(link.run())
    try:
        await _until(lambda: owner.errors)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    assert not link.connected
    assert "TLS certificate" in owner.errors[0]
    assert "--ca-file" in owner.errors[0]


async def test_without_the_private_ca_the_config_fetch_is_refused_with_a_clear_error(
    https_url: str, token_file: Path, tmp_path: Path
) -> None:
    client = ConfigClient(
        https_url, token_file, tmp_path / "agent", verify=control_plane_ssl_context(None)
    )
    try:
        with pytest.raises(ConfigUnavailable, match="--ca-file") as refused:
            await client.fetch()
    finally:
        await client.aclose()

    assert "TLS certificate" in str(refused.value)


async def test_the_private_ca_is_used_for_the_config_fetch(
    https_url: str, pki: ServerFiles, token_file: Path, tmp_path: Path
) -> None:
    client = ConfigClient(
        https_url, token_file, tmp_path / "agent", verify=control_plane_ssl_context(pki.ca)
    )
    try:
        snapshot = await client.fetch()
    finally:
        await client.aclose()

    assert (snapshot.site, snapshot.revision) == (SITE, 1)


def test_a_ca_file_that_is_not_a_certificate_is_refused_at_start(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate", encoding="utf-8")

    with pytest.raises(ValidationError, match="control_plane_ca: cannot load"):
        AgentSettings(
            control_plane_url="https://cp.example:8443",
            control_plane_ca=bogus,
            token_file=tmp_path / "token",
            data_dir=tmp_path / "agent",
        )
