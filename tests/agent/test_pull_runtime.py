"""The whole agent in pull mode: Orthanc as the PACS, the real control plane as the store.

PACS (Orthanc) ← C-FIND/C-MOVE ← agent → its own SCP → spool → reaper → `POST /api/v1/ingest`
→ hierarchy, checked through `GET /api/v1/acquisitions`; nobody pushes anything. The agent
runs on the wall clock with a short `sleep_time` and `acquisition_delay`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from agent.health import HealthSnapshot, PullSourceHealth
from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from tests.agent.test_pull_orthanc import AGENT_AE, Clock, study_today
from tests.agent.test_runtime import Running
from tests.agent.test_upload_store_double import UvicornThread
from tests.support.environment import free_port
from tests.support.orthanc import Orthanc, running_orthanc

pytestmark = pytest.mark.orthanc

ADMIN_TOKEN = "admin-token-for-pull-tests-0123456789"
WAIT_S = 60.0  # bounds a hang; not a performance assertion


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path / "orthanc") as server:
        yield server


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
        base_url=control_plane_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


async def _call(client: httpx2.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, (path, response.status_code, response.text)
    return response.json()


class PullSite:
    """A site in pull mode whose one source is `pacs`, and a factory of its agent."""

    def __init__(self, admin: httpx2.AsyncClient, url: str, pacs: Orthanc, tmp_path: Path):
        self.admin = admin
        self.url = url
        self.pacs = pacs
        self.tmp_path = tmp_path
        self.token_file = tmp_path / "agent-token"
        self.dicom_port = free_port()
        self.running: list[Running] = []

    async def register(self, **timing: str) -> None:
        await _call(self.admin, "POST", "/api/v1/groups", json={"id": "neuro", "label": "N"})
        await _call(self.admin, "POST", "/api/v1/groups/neuro/projects", json={"label": "study-a"})
        await _call(
            self.admin, "POST", "/api/v1/sites", json={"name": "default", "timezone": "UTC"}
        )
        source = {"ae_title": self.pacs.ae_title, "host": "127.0.0.1", "port": self.pacs.dicom_port}
        config = {
            "mode": "pull",
            "dicom": {"ae_title": AGENT_AE},
            "pull": {"sources": [{**source, "timeout": "5s"}]},
            "timing": {"acquisition_delay": "0.5s", "sleep_time": "0.2s", **timing},
        }
        await _call(self.admin, "PUT", "/api/v1/sites/default/config", json=config)
        created = await _call(
            self.admin,
            "POST",
            "/api/v1/sites/default/agents",
            json={"name": "edge", "deployment": "edge"},
        )
        self.token_file.write_text(created["token"], encoding="utf-8")
        # The PACS sends C-MOVE results to the agent's AE title at this address.
        self.pacs.register_modality("agent", AGENT_AE, "127.0.0.1", self.dicom_port)

    def agent(self) -> Running:
        settings = AgentSettings(
            control_plane_url=self.url,
            token_file=self.token_file,
            data_dir=self.tmp_path / "agent",
            dicom_host="127.0.0.1",
            dicom_port_override=self.dicom_port,
            reap_interval=0.05,
            spool_reserve_bytes=0,
            association_drain_timeout=5,
        )
        running = Running(AgentRuntime(settings))
        self.running.append(running)
        return running

    async def files(self) -> int:
        items = (await _call(self.admin, "GET", "/api/v1/acquisitions"))["items"]
        return sum(len(item["files"]) for item in items)

    async def wait_for_files(self, count: int) -> None:
        """Wait until the store holds `count` files (bounded by WAIT_S)."""
        deadline = time.monotonic() + WAIT_S
        while await self.files() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the store did not get {count} files in {WAIT_S} s")
            await asyncio.sleep(0.05)

    async def stop_all(self) -> None:
        for running in self.running:
            if not running.task.done():
                await running.stop()


@pytest.fixture
async def new_site(
    admin: httpx2.AsyncClient, control_plane_url: str, pacs: Orthanc, tmp_path: Path
) -> AsyncIterator[PullSite]:
    created = PullSite(admin, control_plane_url, pacs, tmp_path)
    yield created
    await created.stop_all()


@pytest.fixture
async def site(new_site: PullSite) -> PullSite:
    await new_site.register()
    return new_site


async def source_health(agent: Running) -> PullSourceHealth | None:
    """The health of the agent's one source; None until its poller started."""
    health: HealthSnapshot = await asyncio.to_thread(agent.runtime.health)
    if not health.pull_sources:
        return None
    (source,) = health.pull_sources
    return source


async def until(agent: Running, check: Callable[[PullSourceHealth], bool], what: str) -> None:
    """Poll the agent's pull health until `check` holds (bounded by WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        health = await source_health(agent)
        if health is not None and check(health):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last health: {health}")
        await asyncio.sleep(0.05)


async def rounds_after(agent: Running, rounds: int) -> None:
    """Wait until `rounds` more query rounds have completed (retrievals included)."""
    seen: set[float | None] = set()

    # A round's start time changes when the next one starts, so seeing `rounds + 2` start
    # times means at least `rounds` whole rounds ended since this was called.
    def count(health: PullSourceHealth) -> bool:
        seen.add(health.last_round_at)
        return len(seen) >= rounds + 2

    await until(agent, count, f"{rounds} query rounds")


async def test_a_study_stored_in_the_pacs_lands_in_the_store_without_anyone_pushing(
    site: PullSite, pacs: Orthanc, admin: httpx2.AsyncClient
) -> None:
    first, second = study_today(Clock(time.time()), 2, 2)
    pacs.upload(first + second)
    agent = site.agent()
    await agent.started()

    await until(agent, lambda health: health.series_retrieved == 2, "both series retrieved")
    await site.wait_for_files(4)
    # The figures arrive with the next heartbeat: PULL series, announced by the source.
    deadline = time.monotonic() + WAIT_S
    while (metrics := await _call(admin, "GET", "/api/v1/sites/default/metrics"))["figures"][
        "instances_stored"
    ] < 4:
        assert time.monotonic() < deadline, metrics
        await asyncio.sleep(0.1)
    figures = metrics["figures"]
    assert (figures["instances_announced"], figures["pull_completeness"]) == (4, 1.0)
    # C-MOVE stores come from the PACS' own AE title: the "scanner" of a PULL series.
    assert [scanner["calling_ae"] for scanner in metrics["scanners"]] == [pacs.ae_title]
    source = await source_health(agent)
    await agent.stop()

    assert source is not None
    items = (await _call(admin, "GET", "/api/v1/acquisitions"))["items"]
    assert sorted(len(item["files"]) for item in items) == [2, 2]
    assert {(item["group"], item["project"]) for item in items} == {("neuro", "study-a")}
    assert {item["series_instance_uid"] for item in items} == {
        first[0].SeriesInstanceUID,
        second[0].SeriesInstanceUID,
    }
    assert (source.echo_ok, source.last_round_ok, source.series_waiting) == (True, True, 0)
    assert pacs.move_requests() == 2


async def test_a_restart_of_the_agent_between_polls_retrieves_and_uploads_nothing_again(
    site: PullSite, pacs: Orthanc
) -> None:
    (series,) = study_today(Clock(time.time()), 1, 3)
    pacs.upload(series)
    first = site.agent()
    await first.started()
    await until(first, lambda health: health.series_retrieved == 1, "the series retrieved")
    await site.wait_for_files(3)
    await first.stop()
    moves = pacs.move_requests()

    second = site.agent()
    await second.started()
    await rounds_after(second, 3)
    source = await source_health(second)
    health = await asyncio.to_thread(second.runtime.health)
    await second.stop()

    assert source is not None
    assert pacs.move_requests() == moves == 1
    assert (source.series_tracked, source.series_retrieved, source.series_waiting) == (1, 1, 0)
    assert source.retrievals_succeeded == 0
    assert (health.uploads_succeeded, health.uploads_failed, health.spool_depth) == (0, 0, 0)
    assert await site.files() == 3


async def test_a_pacs_that_goes_away_shows_in_health_and_pulling_resumes_when_it_returns(
    site: PullSite, pacs: Orthanc
) -> None:
    agent = site.agent()
    await agent.started()
    await until(agent, lambda health: health.last_round_ok is True, "a first good round")

    pacs.stop()
    await until(agent, lambda health: health.last_round_ok is False, "a failed round")
    health = await asyncio.to_thread(agent.runtime.health)
    (down,) = health.pull_sources
    assert down.last_query_error is not None
    assert pacs.ae_title in down.last_query_error
    assert health.last_error is not None
    assert health.last_query_duration is not None
    assert health.query_time_threshold == 600.0

    (series,) = study_today(Clock(time.time()), 1, 2)
    pacs.start()
    pacs.upload(series)
    await until(agent, lambda health: health.series_retrieved == 1, "the series retrieved")
    back = await source_health(agent)
    await agent.stop()

    assert back is not None
    assert (back.last_round_ok, back.last_query_error) == (True, None)
    assert back.consecutive_failed_rounds == 0


async def test_outside_working_hours_series_are_retrieved_but_not_uploaded(
    new_site: PullSite, pacs: Orthanc
) -> None:
    hour = time.gmtime().tm_hour
    closed = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"  # a window that is not now
    await new_site.register(working_hours=closed)
    (series,) = study_today(Clock(time.time()), 1, 3)
    pacs.upload(series)
    agent = new_site.agent()
    await agent.started()

    await until(agent, lambda health: health.series_retrieved == 1, "the series retrieved")
    deadline = time.monotonic() + WAIT_S
    health = await asyncio.to_thread(agent.runtime.health)
    while health.deferred_instances < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        health = await asyncio.to_thread(agent.runtime.health)
    await agent.stop()

    assert (health.uploads_open, health.deferred_instances, health.spool_depth) == (False, 3, 3)
    assert await new_site.files() == 0
