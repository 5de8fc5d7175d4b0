"""The agent's link against the real control plane: `create_app` served by uvicorn on 127.0.0.1
(port 0), on SQLite and on PostgreSQL, and a real `AgentRuntime` dialling it.

Link state reaches the database in batches; the tests poll the public API until it shows what
they expect (with a generous deadline, never asserting how long it took).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from agent.config_client import ConfigClient
from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from agent.site import parse_snapshot
from tests.agent.test_reaper import series_datasets
from tests.agent.test_runtime import Running
from tests.agent.test_upload_store_double import UvicornThread
from tests.support.postgres import reset_schema, temporary_database
from tests.support.scu import send_datasets

ADMIN_TOKEN = "admin-token-for-link-tests-0123456789"
SITE = "default"
FAST_CONFIG: dict[str, Any] = {"timing": {"acquisition_delay": "0.2s"}}


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    with temporary_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'control-plane.db'}"
    url: str = request.getfixturevalue("postgres_database")
    reset_schema(url)
    return url


@pytest.fixture
def control_plane_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    from control_plane.main import create_app
    from control_plane.settings import ControlPlaneSettings

    settings = ControlPlaneSettings(
        database_url=database_url,
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
        heartbeat_interval_s=0.2,
        fleet_flush_interval_s=0.1,
        fleet_reconcile_interval_s=0.5,
    )
    server = UvicornThread(create_app(settings))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
async def admin(control_plane_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        base_url=control_plane_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def agent_settings(tmp_path: Path, control_plane_url: str) -> AgentSettings:
    return AgentSettings(
        control_plane_url=control_plane_url,
        token_file=tmp_path / "agent-token",
        data_dir=tmp_path / "agent",
        dicom_host="127.0.0.1",
        dicom_port_override=0,
        reap_interval=0.05,
        spool_reserve_bytes=0,
        association_drain_timeout=5,
        upload_drain_timeout=1,
        link_backoff_base=0.05,
        link_backoff_cap=0.5,
        link_unauthorized_retry_interval=0.2,
    )


@pytest.fixture
async def start(agent_settings: AgentSettings) -> AsyncIterator[Callable[[], Running]]:
    running: list[Running] = []

    def start_runtime() -> Running:
        started = Running(AgentRuntime(agent_settings))
        running.append(started)
        return started

    yield start_runtime
    for started in running:
        if not started.task.done():
            await started.stop()


async def _call(client: httpx2.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, (path, response.status_code, response.text)
    return response.json() if response.content else None


async def _register(admin: httpx2.AsyncClient, token_file: Path) -> str:
    """Create the site with `FAST_CONFIG` as revision 1 and one agent; return its id."""
    await _call(admin, "POST", "/api/v1/sites", json={"name": SITE, "timezone": "UTC"})
    await _call(admin, "PUT", f"/api/v1/sites/{SITE}/config", json=FAST_CONFIG)
    created = await _call(
        admin, "POST", f"/api/v1/sites/{SITE}/agents", json={"name": "edge", "deployment": "edge"}
    )
    await asyncio.to_thread(token_file.write_text, created["token"], encoding="utf-8")
    agent_id: str = created["id"]
    return agent_id


async def _eventually(
    admin: httpx2.AsyncClient, path: str, holds: Callable[[Any], bool], within: float = 30
) -> Any:
    """Poll GET `path` until `holds(answer)`; return that answer."""
    deadline = time.monotonic() + within
    while True:
        answer = await _call(admin, "GET", path)
        if holds(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"GET {path} still does not hold after {within} s: {answer}")
        await asyncio.sleep(0.05)


async def _until(condition: Callable[[], bool], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {within} s")
        await asyncio.sleep(0.02)


def _stored_revision(settings: AgentSettings) -> int:
    document = json.loads((settings.data_dir / "config.json").read_text(encoding="utf-8"))
    revision: int = document["revision"]
    return revision


async def test_a_connected_agent_is_shown_with_its_revision_version_and_healthy_heartbeats(
    admin: httpx2.AsyncClient, start: Callable[[], Running], agent_settings: AgentSettings
) -> None:
    agent_id = await _register(admin, agent_settings.token_file)
    agent = start()
    await agent.started()

    shown = await _eventually(
        admin,
        f"/api/v1/agents/{agent_id}",
        lambda a: a["connected"] and a["health"].get("report") is not None,
    )

    assert shown["config_revision"] == 1
    assert shown["health"]["agent_version"]
    assert shown["health"]["report"]["listener_ok"] is True
    assert agent.runtime.link.agent_id is not None
    assert str(agent.runtime.link.agent_id) == agent_id
    site = await _call(admin, "GET", f"/api/v1/sites/{SITE}/health")
    assert (site["status"], site["config_revision"]) == ("ok", 1)


async def test_a_config_put_while_connected_is_applied_and_restarts_the_listener(
    admin: httpx2.AsyncClient, start: Callable[[], Running], agent_settings: AgentSettings
) -> None:
    agent_id = await _register(admin, agent_settings.token_file)
    agent = start()
    await agent.started()
    await agent.runtime.link.wait_connected()

    renamed = FAST_CONFIG | {"dicom": {"ae_title": "RENAMED"}}
    assert (await _call(admin, "PUT", f"/api/v1/sites/{SITE}/config", json=renamed)) == {
        "revision": 2
    }

    await _eventually(admin, f"/api/v1/agents/{agent_id}", lambda a: a["config_revision"] == 2)
    listening = agent.runtime.listening_as
    assert listening is not None
    assert listening[0] == "RENAMED"
    assert _stored_revision(agent_settings) == 2
    statuses = await asyncio.to_thread(
        send_datasets, listening[1], series_datasets(1, comments=None), called_ae="RENAMED"
    )
    assert statuses == [0]


async def test_a_config_naming_no_dicom_keyword_is_refused_and_the_old_one_keeps_running(
    admin: httpx2.AsyncClient,
    start: Callable[[], Running],
    agent_settings: AgentSettings,
    database_url: str,
) -> None:
    agent_id = await _register(admin, agent_settings.token_file)
    agent = start()
    await agent.started()
    await agent.runtime.link.wait_connected()
    misspelt = FAST_CONFIG | {"routing": {"field": "PatientComentz"}}

    refused = await admin.put(f"/api/v1/sites/{SITE}/config", json=misspelt)
    assert refused.status_code == 422
    assert "PatientComentz" in refused.text
    # A revision stored behind the API's back (by a control plane from before the dictionary
    # check): the agent refuses it itself and keeps running its config.
    _store_revision_directly(database_url, SITE, 2, misspelt)

    shown = await _eventually(
        admin, f"/api/v1/agents/{agent_id}", lambda a: a["health"].get("config_failure")
    )
    failure = shown["health"]["config_failure"]
    assert failure["revision"] == 2
    assert "PatientComentz" in failure["reason"]
    assert shown["config_revision"] == 1
    assert agent.runtime.applied_revision == 1
    assert _stored_revision(agent_settings) == 1


def _store_revision_directly(
    database_url: str, site: str, revision: int, config: dict[str, Any]
) -> None:
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from control_plane.database_url import sync_database_url
    from control_plane.models import ConfigRevision, Site

    engine = create_engine(sync_database_url(database_url))
    try:
        with Session(engine) as session:
            site_id = session.scalar(select(Site.id).where(Site.name == site))
            session.add(
                ConfigRevision(
                    site_id=site_id, revision=revision, config=config, diff=[], created_by="old"
                )
            )
            session.commit()
    finally:
        engine.dispose()


async def test_a_slow_reap_reported_in_a_heartbeat_turns_the_site_degraded(
    admin: httpx2.AsyncClient, start: Callable[[], Running], agent_settings: AgentSettings
) -> None:
    await _register(admin, agent_settings.token_file)
    agent = start()
    await agent.started()
    await _eventually(admin, f"/api/v1/sites/{SITE}/health", lambda s: s["status"] == "ok")

    # Longer than the default reap_time_threshold of 1 h.
    agent.runtime.counters.record_reap(2 * 3600.0, time.time())

    site = await _eventually(
        admin, f"/api/v1/sites/{SITE}/health", lambda s: s["status"] == "degraded"
    )
    assert any("reap" in reason for reason in site["reasons"])


async def test_revocation_closes_the_link_and_the_agent_keeps_receiving_until_a_new_token(
    admin: httpx2.AsyncClient, start: Callable[[], Running], agent_settings: AgentSettings
) -> None:
    agent_id = await _register(admin, agent_settings.token_file)
    agent = start()
    port = await agent.started()
    link = agent.runtime.link
    await link.wait_connected()

    await _call(admin, "DELETE", f"/api/v1/agents/{agent_id}/token")

    await _until(lambda: link.token_refused and not link.connected, within=10)
    await _eventually(admin, f"/api/v1/agents/{agent_id}", lambda a: not a["connected"])
    statuses = await asyncio.to_thread(send_datasets, port, series_datasets(2, comments=None))
    assert statuses == [0, 0]
    health = await asyncio.to_thread(agent.runtime.health)
    assert health.config_revision == 1
    assert health.last_error is not None
    assert str(agent_settings.token_file) in health.last_error

    rotated = await _call(admin, "POST", f"/api/v1/agents/{agent_id}/token")
    await asyncio.to_thread(agent_settings.token_file.write_text, rotated["token"])
    await link.wait_connected()
    await _eventually(admin, f"/api/v1/agents/{agent_id}", lambda a: a["connected"])


async def test_an_unknown_token_is_refused_and_shown_in_health(
    admin: httpx2.AsyncClient, start: Callable[[], Running], agent_settings: AgentSettings
) -> None:
    await _register(admin, agent_settings.token_file)
    await asyncio.to_thread(agent_settings.token_file.write_text, "not-a-token-of-this-fleet")
    # A stored config lets the agent start without asking the control plane.
    stored = parse_snapshot({"site": SITE, "revision": 1, "timezone": "UTC", "config": {}})
    store = ConfigClient(
        agent_settings.control_plane_url, agent_settings.token_file, agent_settings.data_dir
    )
    await asyncio.to_thread(store.save, stored)
    await store.aclose()
    agent = start()
    await agent.started()

    await _until(lambda: agent.runtime.link.token_refused)

    assert not agent.runtime.link.connected
    last_error = agent.runtime.counters.last_error
    assert last_error is not None
    assert "HTTP 401" in last_error
    assert "not-a-token" not in last_error
