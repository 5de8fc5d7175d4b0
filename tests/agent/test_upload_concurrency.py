"""The upload concurrency: a limit that a new config revision can change while uploads wait."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from agent.site import SiteSnapshot
from agent.upload.slots import Slots
from common.config import validate_site_config
from tests.agent.test_runtime import Running, config_answer
from tests.agent.test_upload_store_double import AGENT_TOKEN, StoreDouble


async def test_a_waiter_gets_the_room_a_larger_limit_makes_without_a_holder_leaving() -> None:
    slots = Slots(1)
    entered: list[str] = []
    leave = asyncio.Event()

    async def hold(name: str) -> None:
        async with slots.slot():
            entered.append(name)
            await leave.wait()

    first = asyncio.create_task(hold("first"))
    second = asyncio.create_task(hold("second"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    waiting = list(entered)
    await slots.resize(2)
    for _ in range(3):
        await asyncio.sleep(0)
    after_resize = list(entered)
    leave.set()
    await asyncio.gather(first, second)

    assert waiting == ["first"]
    assert after_resize == ["first", "second"]


async def test_a_smaller_limit_lets_the_holders_over_it_finish_and_admits_no_one_new() -> None:
    slots = Slots(2)
    leave = asyncio.Event()
    entered: list[str] = []

    async def hold(name: str) -> None:
        async with slots.slot():
            entered.append(name)
            await leave.wait()

    holders = [asyncio.create_task(hold(name)) for name in ("a", "b")]
    await asyncio.sleep(0)
    await slots.resize(1)
    late = asyncio.create_task(hold("late"))
    for _ in range(3):
        await asyncio.sleep(0)
    before_leaving = list(entered)
    leave.set()
    await asyncio.gather(*holders, late)

    assert before_leaving == ["a", "b"]
    assert entered == ["a", "b", "late"]


async def test_the_site_configs_upload_concurrency_overrides_the_agent_setting_per_revision(
    tmp_path: Path,
) -> None:
    answer = config_answer()
    answer["config"] = answer["config"] | {"upload": {"concurrency": 2}}
    store = StoreDouble(config_answer=answer)
    store.start()
    token_file = tmp_path / "agent-token"
    token_file.write_text(AGENT_TOKEN, encoding="utf-8")
    settings = AgentSettings(
        control_plane_url=store.base_url,
        token_file=token_file,
        data_dir=tmp_path / "agent",
        dicom_host="127.0.0.1",
        dicom_port_override=0,
        spool_reserve_bytes=0,
        intake_processes=1,
        upload_concurrency=3,
    )
    agent = Running(AgentRuntime(settings))
    try:
        await agent.started()
        configured = agent.runtime.upload_concurrency
        document = config_answer(revision=2)["config"]
        await agent.runtime.apply_config(
            SiteSnapshot("default", 2, "UTC", validate_site_config(document))
        )
        unset = agent.runtime.upload_concurrency
    finally:
        await agent.stop()
        store.stop()

    assert (configured, unset) == (2, 3)
