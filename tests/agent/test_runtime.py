"""The whole agent: DICOM in over a real association, out to a real HTTP store, start and stop.

The control plane is `StoreDouble` (test double of its agent-facing contract, on uvicorn).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.data_dir_lock import DataDirLocked
from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from tests.agent.test_reaper import series_datasets
from tests.agent.test_upload_loop import wait_until
from tests.agent.test_upload_store_double import AGENT_TOKEN, StoreDouble
from tests.support.environment import free_port
from tests.support.scu import send_datasets
from tests.support.spool_files import filled_slots


def config_answer(revision: int = 1, ae_title: str = "CONNECTOR") -> dict[str, Any]:
    return {
        "site": "default",
        "revision": revision,
        "timezone": "UTC",
        "config": {"dicom": {"ae_title": ae_title}, "timing": {"acquisition_delay": "0.2s"}},
    }


@pytest.fixture
def store() -> Iterator[StoreDouble]:
    double = StoreDouble(config_answer=config_answer())
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
    )


class Running:
    """A runtime running in a task of the test's loop, with the port it announced."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.ready = asyncio.Event()
        self.ports: list[int] = []
        self.task = asyncio.create_task(runtime.run(ready=self._ready))

    def _ready(self, port: int) -> None:
        self.ports.append(port)
        self.ready.set()

    async def started(self) -> int:
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait([ready, self.task], return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            ready.cancel()
            self.task.result()
            raise AssertionError("the runtime returned before it was ready")
        return self.ports[-1]

    async def stop(self) -> None:
        self.runtime.stop()
        await self.task


@pytest.fixture
async def start(settings: AgentSettings) -> AsyncIterator[Any]:
    running: list[Running] = []

    def start_runtime(custom: AgentSettings | None = None) -> Running:
        started = Running(AgentRuntime(custom or settings))
        running.append(started)
        return started

    yield start_runtime
    for started in running:
        if not started.task.done():
            await started.stop()


async def test_a_series_received_over_dicom_ends_up_in_the_store(
    start: Any, store: StoreDouble, settings: AgentSettings
) -> None:
    agent = start()
    port = await agent.started()
    datasets = series_datasets(5, comments="fw://neuro/study-a")

    statuses = await asyncio.to_thread(send_datasets, port, datasets)
    assert statuses == [0] * 5
    # The agent's own count, not the store's: the store files an instance before its answer
    # reaches the agent.
    await wait_until(lambda: agent.runtime.counters.uploads_succeeded == 5)
    health = await asyncio.to_thread(agent.runtime.health)
    await agent.stop()

    assert len(store.files) == 5
    assert {stored.group for stored in store.files.values()} == {"neuro"}
    assert (health.config_revision, health.uploads_succeeded, health.spool_depth) == (1, 5, 0)
    assert filled_slots(settings.data_dir / "spool") == []


async def test_stop_is_idempotent_before_during_and_after_run(
    start: Any, settings: AgentSettings
) -> None:
    early = AgentRuntime(settings)
    early.stop()
    await early.run(ready=lambda port: pytest.fail("a runtime stopped before run never starts"))

    agent = start()
    port = await agent.started()
    agent.runtime.stop()
    agent.runtime.stop()
    await agent.task
    agent.runtime.stop()

    with pytest.raises(ConnectionError):
        await asyncio.to_thread(send_datasets, port, series_datasets(1, comments=None))
    with pytest.raises(RuntimeError, match="runs once"):
        await agent.runtime.run()
    with pytest.raises(RuntimeError, match="not running"):
        agent.runtime.health()


async def test_a_restart_on_the_same_data_dir_uploads_what_the_first_run_could_not(
    start: Any, store: StoreDouble
) -> None:
    store.fail_next.extend([503] * 1000)
    first = start()
    port = await first.started()
    statuses = await asyncio.to_thread(send_datasets, port, series_datasets(3, comments=None))
    assert statuses == [0] * 3
    await wait_until(lambda: first.runtime.counters.retries_scheduled >= 3)
    await first.stop()
    assert store.files == {}

    store.fail_next.clear()
    second = start()
    await second.started()
    await wait_until(lambda: len(store.files) == 3)


async def test_the_agent_starts_on_its_last_known_good_config_when_the_control_plane_is_away(
    start: Any, settings: AgentSettings
) -> None:
    first = start()
    await first.started()
    await first.stop()
    away = settings.model_copy(update={"control_plane_url": f"http://127.0.0.1:{free_port()}"})

    second = start(away)
    await second.started()

    health = await asyncio.to_thread(second.runtime.health)
    assert health.config_revision == 1
    await wait_until(lambda: "unreachable" in (second.runtime.counters.last_error or ""))


async def test_a_second_agent_on_the_same_data_directory_is_refused(
    start: Any, settings: AgentSettings
) -> None:
    first = start()
    await first.started()
    impatient = settings.model_copy(update={"association_drain_timeout": 0.1})

    second = start(impatient)

    # The wait is the drain timeout plus a grace for a dead agent's workers to exit.
    with pytest.raises(DataDirLocked, match="in use by another agent"):
        await asyncio.wait_for(second.task, timeout=30)
    assert first.runtime.listening_as is not None
