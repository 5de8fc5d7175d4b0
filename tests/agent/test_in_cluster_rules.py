"""The in-cluster rules (mutual TLS, push only) held by an in-cluster agent on every way a
config reaches it, against the real control plane (`create_app` on SQLite, under uvicorn).

A site with an edge agent too may store a plain config (its edge agent runs it); the
in-cluster agent of that site must refuse it: at its first start (`GET /api/v1/agent/config`)
by not starting on it and saying why, and when a revision arrives over the link by answering
it failed with the reason (shown in the site's health) and going on with its last good config.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE

from agent.config_client import ConfigClient
from agent.dicom.tls import TlsFiles, client_context
from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from agent.site import ConfigRefused
from tests.agent.test_runtime import Running
from tests.agent.test_upload_loop import wait_until
from tests.support.certificates import CertificateAuthority
from tests.support.served import served

ADMIN_TOKEN = "admin-token-for-in-cluster-tests-0123"


@pytest.fixture
def control_plane_url(tmp_path: Path) -> Iterator[str]:
    from control_plane.main import create_app
    from control_plane.settings import ControlPlaneSettings

    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'control-plane.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
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


async def _mixed_site(admin: httpx2.AsyncClient, tmp_path: Path) -> Path:
    """A site with an edge VM and an in-cluster pod; the pod's token file."""
    await _call(admin, "POST", "/api/v1/sites", json={"name": "default", "timezone": "UTC"})
    await _call(
        admin, "POST", "/api/v1/sites/default/agents", json={"name": "vm", "deployment": "edge"}
    )
    pod = await _call(
        admin,
        "POST",
        "/api/v1/sites/default/agents",
        json={"name": "pod", "deployment": "in-cluster"},
    )
    token_file = tmp_path / "pod-token"
    token_file.write_text(pod["token"], encoding="utf-8")
    return token_file


class _OneWait:
    """Lets `ConfigClient.initial` wait once, then stops it (the test has seen enough)."""

    async def __call__(self, seconds: float) -> None:
        raise asyncio.CancelledError


async def test_a_fresh_in_cluster_agent_does_not_start_on_a_plain_config_and_says_why(
    admin: httpx2.AsyncClient, control_plane_url: str, tmp_path: Path
) -> None:
    token_file = await _mixed_site(admin, tmp_path)
    plain = {"dicom": {"ae_title": "CONNECTOR"}}
    assert (await _call(admin, "PUT", "/api/v1/sites/default/config", json=plain))["revision"]

    client = ConfigClient(
        control_plane_url, token_file, tmp_path / "pod", timeout=10, sleep=_OneWait()
    )
    try:
        with pytest.raises(ConfigRefused, match=r"in-cluster.*dicom\.tls: in-cluster connectors"):
            await client.fetch()
        with pytest.raises(asyncio.CancelledError):
            await client.initial()
    finally:
        await client.aclose()
    assert client.last_error is not None
    assert "in-cluster" in client.last_error
    assert not client.path.exists()  # nothing stored to start on later


async def test_an_in_cluster_agent_refuses_a_plain_or_pull_revision_over_the_link_and_keeps_mtls(
    admin: httpx2.AsyncClient, control_plane_url: str, tmp_path: Path
) -> None:
    token_file = await _mixed_site(admin, tmp_path)
    ca = CertificateAuthority(tmp_path, "site")
    served_cert = ca.issue("agent")
    tls = {"cert": str(served_cert.cert), "key": str(served_cert.key), "ca": str(ca.cert)}
    await _call(admin, "PUT", "/api/v1/sites/default/config", json={"dicom": {"tls": tls}})
    settings = AgentSettings(
        control_plane_url=control_plane_url,
        token_file=token_file,
        data_dir=tmp_path / "pod",
        dicom_host="127.0.0.1",
        dicom_port_override=0,
        reap_interval=0.05,
        spool_reserve_bytes=0,
        intake_processes=1,
        association_drain_timeout=5,
        upload_drain_timeout=5,
    )
    running = Running(AgentRuntime(settings))
    try:
        port = await running.started()
        runtime = running.runtime
        await wait_until(lambda: runtime.link.connected and runtime.link.deployment == "in-cluster")
        first = runtime.applied_revision

        pull = {
            "mode": "pull",
            "pull": {"sources": [{"ae_title": "PACS", "host": "127.0.0.1", "port": 104}]},
        }
        for refused, reason in (
            ({"dicom": {}}, "dicom.tls: in-cluster connectors"),
            ({"dicom": {"tls": tls}, **pull}, "mode: in-cluster connectors receive"),
        ):
            await _call(admin, "PUT", "/api/v1/sites/default/config", json=refused)

            async def reported(reason: str = reason) -> bool:
                health = await _call(admin, "GET", "/api/v1/sites/default/health")
                return reason in str(health)

            await _eventually(reported)
            assert runtime.applied_revision == first

        scanner = ca.issue("scanner")
        context = client_context(TlsFiles(scanner.cert, scanner.key, ca.cert))
        assert await asyncio.to_thread(_associates, port, context)
        assert not await asyncio.to_thread(_associates, port, None)
    finally:
        await running.stop()


async def _eventually(check: Any, within: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not reported within {within} s")
        await asyncio.sleep(0.1)


def _associates(port: int, context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 10
    tls_args = None if context is None else (context, "localhost")
    assoc = ae.associate("127.0.0.1", port, ae_title="CONNECTOR", tls_args=tls_args)
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    return established
