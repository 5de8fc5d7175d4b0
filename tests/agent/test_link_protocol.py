"""Frames the real control plane never sends: a websocket server on 127.0.0.1 (port 0) plays
the control plane's part with `common.messages` and hands the agent's link unusable frames."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent.config_client import ConfigClient
from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from agent.site import parse_snapshot
from common.messages import (
    Command,
    CommandResult,
    Error,
    ErrorCode,
    Hello,
    Message,
    Ping,
    Pong,
    Welcome,
    encode_message,
    parse_message,
)
from tests.agent.test_runtime import Running


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[asyncio.Queue[Message], int]]:
    """A server that welcomes the agent, sends the frames of the test, and queues answers."""
    answers: asyncio.Queue[Message] = asyncio.Queue()
    frames_to_send: list[str] = [
        '{"v": 1, "type": "teleport"}',
        "not json at all",
        encode_message(Ping(nonce="n-1")),
        encode_message(Command(id=uuid.UUID(int=7), name="reboot")),
    ]

    async def handler(websocket: ServerConnection) -> None:
        hello = parse_message(await websocket.recv())
        assert isinstance(hello, Hello)
        welcome = Welcome(
            protocol_version=1, heartbeat_interval_s=60, agent_id=uuid.uuid4(), site="s"
        )
        await websocket.send(encode_message(welcome))
        for frame in frames_to_send:
            await websocket.send(frame)
        async for frame in websocket:
            await answers.put(parse_message(frame))

    async with serve(handler, "127.0.0.1", 0) as server:
        yield answers, next(iter(server.sockets)).getsockname()[1]


async def test_unusable_frames_get_error_frames_and_the_link_stays_up(
    scripted: tuple[asyncio.Queue[Message], int], tmp_path: Path
) -> None:
    answers, port = scripted
    token_file = tmp_path / "token"
    token_file.write_text("any-token", encoding="utf-8")
    settings = AgentSettings(
        control_plane_url=f"http://127.0.0.1:{port}",
        token_file=token_file,
        data_dir=tmp_path / "agent",
        dicom_host="127.0.0.1",
        dicom_port_override=0,
        spool_reserve_bytes=0,
    )
    store = ConfigClient(settings.control_plane_url, token_file, settings.data_dir)
    stored = parse_snapshot({"site": "s", "revision": 1, "timezone": "UTC", "config": {}})
    await asyncio.to_thread(store.save, stored)
    await store.aclose()
    agent = Running(AgentRuntime(settings))
    try:
        await agent.started()
        received: list[Message] = []
        while not any(isinstance(m, CommandResult) for m in received):
            received.append(await asyncio.wait_for(answers.get(), 30))
        assert agent.runtime.link.connected
    finally:
        await agent.stop()

    errors = [m.code for m in received if isinstance(m, Error)]
    assert errors == [ErrorCode.unknown_type, ErrorCode.malformed]
    assert Pong(nonce="n-1") in received
    result = next(m for m in received if isinstance(m, CommandResult))
    assert (result.id, result.ok) == (uuid.UUID(int=7), False)
    assert json.loads(encode_message(result))["detail"]
