"""The whole agent with two intake processes: mutual TLS rotated by a config revision, the
association cap over both processes, rejections counted from both into health, and the
in-cluster rules. Real processes, real associations on 127.0.0.1; the control plane is
`StoreDouble`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.association import Association

from agent.config_client import parse_snapshot
from agent.dicom.tls import TlsFiles, client_context
from agent.link import ConfigNotApplied
from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from tests.agent.test_runtime import Running
from tests.agent.test_upload_loop import wait_until
from tests.agent.test_upload_store_double import AGENT_TOKEN, StoreDouble
from tests.support.certificates import CertificateAuthority, Issued
from tests.support.raw_dicom import rejection as raw_rejection

# Associations per check: the kernel spreads them over both intake processes.
_TRIES = 8


def answer(revision: int, dicom: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "site": "default",
        "revision": revision,
        "timezone": "UTC",
        "config": {"dicom": {"ae_title": "CONNECTOR", **dicom}, **extra},
    }


def tls_section(cert: Issued, ca: CertificateAuthority) -> dict[str, Any]:
    return {"cert": str(cert.cert), "key": str(cert.key), "ca": str(ca.cert)}


@pytest.fixture
def site_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path, "site")


@pytest.fixture
def agent_cert(site_ca: CertificateAuthority) -> Issued:
    return site_ca.issue("agent")


@pytest.fixture
def store(site_ca: CertificateAuthority, agent_cert: Issued) -> Iterator[StoreDouble]:
    first = answer(1, {"tls": tls_section(agent_cert, site_ca), "max_associations": 2})
    double = StoreDouble(config_answer=first)
    double.start()
    yield double
    double.stop()


@pytest.fixture
def settings(tmp_path: Path, store: StoreDouble) -> AgentSettings:
    token_file = tmp_path / "agent-token"
    token_file.write_text(AGENT_TOKEN, encoding="utf-8")
    return AgentSettings(
        control_plane_url=store.base_url,
        token_file=token_file,
        data_dir=tmp_path / "agent",
        dicom_host="127.0.0.1",
        dicom_port_override=0,
        reap_interval=0.05,
        spool_reserve_bytes=0,
        association_drain_timeout=5,
        upload_drain_timeout=5,
        intake_processes=2,
    )


@pytest.fixture
async def agent(settings: AgentSettings) -> AsyncIterator[tuple[Running, int]]:
    running = Running(AgentRuntime(settings))
    port = await running.started()
    yield running, port
    await running.stop()


def associate(port: int, context: ssl.SSLContext | None, called: str = "CONNECTOR") -> Association:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 10
    tls_args = None if context is None else (context, "localhost")
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)


def established(port: int, context: ssl.SSLContext | None) -> list[bool]:
    """Open and release `_TRIES` associations one after the other; which were established."""
    results = []
    for _ in range(_TRIES):
        assoc = associate(port, context)
        results.append(assoc.is_established)
        if assoc.is_established:
            assoc.release()
    return results


def client(ca: CertificateAuthority, name: str = "scanner") -> ssl.SSLContext:
    issued = ca.issue(name)
    return client_context(TlsFiles(issued.cert, issued.key, ca.cert))


async def test_a_config_revision_with_new_tls_files_is_used_by_every_intake_process(
    tmp_path: Path, agent: tuple[Running, int], site_ca: CertificateAuthority
) -> None:
    running, port = agent
    old_client = client(site_ca)
    assert await asyncio.to_thread(established, port, old_client) == [True] * _TRIES

    new_ca = CertificateAuthority(tmp_path, "renewed")
    new_cert = new_ca.issue("agent")
    revision = answer(2, {"tls": tls_section(new_cert, new_ca), "max_associations": 2})
    await running.runtime.apply_config(parse_snapshot(revision))
    await asyncio.sleep(0.5)  # the workers read their stdin line

    assert await asyncio.to_thread(established, port, old_client) == [False] * _TRIES
    new_client = client(new_ca)
    assert await asyncio.to_thread(established, port, new_client) == [True] * _TRIES
    assert running.runtime.listening_as == ("CONNECTOR", port)  # no listener restart

    def counted() -> bool:
        health = running.runtime.health()
        refused = sum(n for reason, _, n in health.dicom_rejections if reason.startswith("tls"))
        return refused == _TRIES

    await wait_until(counted)
    health = await asyncio.to_thread(running.runtime.health)
    assert health.tls_certificate_not_after == pytest.approx(new_cert.not_after.timestamp(), abs=1)
    assert health.tls_certificate_days_left is not None
    assert health.tls_certificate_days_left > 300


async def test_a_revision_naming_unreadable_tls_files_is_refused_and_the_old_ones_stay(
    tmp_path: Path,
    agent: tuple[Running, int],
    site_ca: CertificateAuthority,
    agent_cert: Issued,
) -> None:
    running, port = agent
    broken = {"cert": str(agent_cert.cert), "key": str(agent_cert.key), "ca": "/nonexistent"}

    revision = parse_snapshot(answer(2, {"tls": broken, "max_associations": 2}))
    with pytest.raises(ConfigNotApplied, match=r"dicom\.tls\.ca"):
        await running.runtime.apply_config(revision)

    assert running.runtime.applied_revision == 1
    assert await asyncio.to_thread(established, port, client(site_ca)) == [True] * _TRIES


async def test_the_association_cap_holds_over_both_intake_processes(
    agent: tuple[Running, int], site_ca: CertificateAuthority
) -> None:
    running, port = agent
    context = client(site_ca)
    held = [await asyncio.to_thread(associate, port, context) for _ in range(2)]
    try:
        assert all(assoc.is_established for assoc in held)
        for _ in range(_TRIES):
            answer = await asyncio.to_thread(raw_rejection, port, context=context)
            assert answer == (2, 3, 2)
    finally:
        for assoc in held:
            assoc.release()

    def counted() -> bool:
        rows = running.runtime.health().dicom_rejections
        return rows == ((("association_limit", "127.0.0.1", _TRIES)),)

    await wait_until(counted)
    report = await asyncio.to_thread(running.runtime.health_report)
    assert [row.model_dump() for row in report.dicom_rejections] == [
        {"reason": "association_limit", "source": "127.0.0.1", "count": _TRIES}
    ]


async def test_an_in_cluster_agent_refuses_a_config_without_tls_or_in_pull_mode(
    agent: tuple[Running, int], site_ca: CertificateAuthority, agent_cert: Issued
) -> None:
    running, _ = agent
    running.runtime.link.deployment = "in-cluster"  # as the welcome says for such an agent
    pull = {
        "mode": "pull",
        "pull": {"sources": [{"ae_title": "PACS", "host": "127.0.0.1", "port": 104}]},
    }

    with pytest.raises(ConfigNotApplied, match=r"dicom\.tls: in-cluster connectors"):
        await running.runtime.apply_config(parse_snapshot(answer(2, {})))
    pulling = parse_snapshot(answer(3, {"tls": tls_section(agent_cert, site_ca)}, **pull))
    with pytest.raises(ConfigNotApplied, match=r"mode: in-cluster connectors receive"):
        await running.runtime.apply_config(pulling)

    assert running.runtime.applied_revision == 1
