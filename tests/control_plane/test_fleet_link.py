"""The agent link over real websockets: a control plane served by uvicorn on 127.0.0.1 (port
0) and a `websockets` client speaking `common.messages` in place of the agent.

Runs on SQLite and PostgreSQL. Time is a manual clock given to `create_app`, so "missing"
is reached by moving it, not by waiting. Link state is written in batches; a test makes it
visible by a ping/pong barrier (the server handled everything sent before) followed by a
flush of the recorder.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
import pytest
import uvicorn
from sqlalchemy import select, update
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from common.messages import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REPLACED,
    CLOSE_UNAUTHORIZED,
    Command,
    CommandResult,
    ConfigMessage,
    ConfigResult,
    Error,
    ErrorCode,
    Health,
    Hello,
    Message,
    Ping,
    Pong,
    Welcome,
    encode_message,
    parse_message,
)
from control_plane.fleet.notices import FleetNotice
from control_plane.hub import Hub
from control_plane.main import create_app
from control_plane.models import Agent, Site
from control_plane.security import token_digest
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.harness import ADMIN_TOKEN, HEALTHY, ManualClock, bearer

M = TypeVar("M", bound=Message)
HEARTBEAT_S = 10.0
START = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)


@dataclass
class Server:
    """A control plane served by uvicorn, with an admin client and its manual clock."""

    port: int
    hub: Hub
    admin: httpx2.AsyncClient
    clock: ManualClock

    @property
    def link_url(self) -> str:
        """Where agents dial in."""
        return f"ws://127.0.0.1:{self.port}/api/v1/agent/link"

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """An admin API call that must succeed; its JSON answer (None when empty)."""
        response = await self.admin.request(method, path, **kwargs)
        assert response.is_success, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    async def register(
        self, site: str = "hospital-a", name: str = "edge-1", deployment: str = "edge"
    ) -> tuple[str, str]:
        """Create the site if needed and an agent in it; (agent id, token)."""
        existing = await self.call("GET", "/api/v1/sites")
        if all(entry["name"] != site for entry in existing["items"]):
            await self.call("POST", "/api/v1/sites", json={"name": site, "timezone": "UTC"})
        created = await self.call(
            "POST", f"/api/v1/sites/{site}/agents", json={"name": name, "deployment": deployment}
        )
        return created["id"], created["token"]

    async def put_config(self, site: str, document: dict[str, Any]) -> int:
        """Store a config revision; its number."""
        answer = await self.call(
            "PUT", f"/api/v1/sites/{site}/config", content=json.dumps(document)
        )
        revision: int = answer["revision"]
        return revision

    async def agent(self, agent_id: str) -> dict[str, Any]:
        """`GET /api/v1/agents/{id}` after everything recorded so far was written."""
        await self.hub.recorder.flush()
        answer: dict[str, Any] = await self.call("GET", f"/api/v1/agents/{agent_id}")
        return answer

    async def site_health(self, site: str) -> dict[str, Any]:
        """`GET /api/v1/sites/{site}/health` after everything recorded so far was written."""
        await self.hub.recorder.flush()
        answer: dict[str, Any] = await self.call("GET", f"/api/v1/sites/{site}/health")
        return answer


class Peer:
    """The test's stand-in for an agent: a real websocket client speaking the protocol."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket

    async def send(self, message: Message) -> None:
        """Send one message."""
        await self.websocket.send(encode_message(message))

    async def receive(self) -> Message:
        """The next message from the control plane."""
        return parse_message(await self.websocket.recv())

    async def expect(self, kind: type[M]) -> M:
        """The next message, which must be a `kind`."""
        message = await self.receive()
        assert isinstance(message, kind), message
        return message

    async def hello(self, applied_revision: int | None = None) -> Welcome:
        """Say hello; the welcome."""
        await self.send(
            Hello(
                agent_id=None,
                agent_version="9.8.7",
                applied_revision=applied_revision,
                protocol_versions=[1],
            )
        )
        return await self.expect(Welcome)

    async def barrier(self) -> None:
        """Ping and wait for the pong: the server handled everything sent before, and sent
        nothing else in between."""
        nonce = uuid.uuid4().hex
        await self.send(Ping(nonce=nonce))
        assert await self.expect(Pong) == Pong(nonce=nonce)

    async def closed_with(self) -> int | None:
        """Wait for the server to close the link; its close code."""
        await self.websocket.wait_closed()
        return self.websocket.close_code


@pytest.fixture
def clock() -> ManualClock:
    """The control plane's clock."""
    return ManualClock(START)


@pytest.fixture
async def server(settings: ControlPlaneSettings, clock: ManualClock) -> AsyncIterator[Server]:
    """A control plane under uvicorn on a free port, stopped after the test."""
    app = create_app(settings.model_copy(update={"heartbeat_interval_s": HEARTBEAT_S}), clock)
    uvicorn_server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    )
    serving = asyncio.create_task(uvicorn_server.serve())
    while not uvicorn_server.started:
        if serving.done():
            serving.result()
            pytest.fail("uvicorn stopped before it started serving")
        await asyncio.sleep(0.01)
    port = uvicorn_server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx2.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=bearer(ADMIN_TOKEN), timeout=30
        ) as admin:
            yield Server(port=port, hub=app.state.resources.hub, admin=admin, clock=clock)
    finally:
        uvicorn_server.should_exit = True
        await serving


@asynccontextmanager
async def linked(server: Server, token: str) -> AsyncIterator[Peer]:
    """A link to the control plane with `token`."""
    async with connect(server.link_url, additional_headers=bearer(token), proxy=None) as ws:
        yield Peer(ws)


async def test_hello_is_welcomed_and_sent_the_current_config_when_the_agent_runs_another(
    server: Server,
) -> None:
    agent_id, token = await server.register()
    revision = await server.put_config("hospital-a", {"dicom": {"ae_title": "SITE_A"}})

    async with linked(server, token) as peer:
        welcome = await peer.hello(applied_revision=None)
        config = await peer.expect(ConfigMessage)

    assert welcome.agent_id == uuid.UUID(agent_id)
    assert welcome.site == "hospital-a"
    assert welcome.protocol_version == 1
    assert welcome.heartbeat_interval_s == HEARTBEAT_S
    assert welcome.deployment == "edge"
    assert (config.revision, config.site, config.timezone) == (revision, "hospital-a", "UTC")
    assert config.site_config().dicom.ae_title == "SITE_A"


async def test_each_site_has_its_own_deid_salt_which_reaches_its_agents_and_no_api_answer(
    server: Server,
) -> None:
    _, token_a1 = await server.register("hospital-a", "edge-1")
    _, token_a2 = await server.register("hospital-a", "edge-2")
    _, token_b = await server.register("hospital-b", "edge-1")
    await server.put_config("hospital-a", {"deid": {"profile": "none"}})
    await server.put_config("hospital-b", {"deid": {"profile": "none"}})

    salts = []
    for token in (token_a1, token_a2, token_b):
        async with linked(server, token) as peer:
            await peer.hello(applied_revision=None)
            salts.append((await peer.expect(ConfigMessage)).deid_salt)
        fetched = await server.admin.get("/api/v1/agent/config", headers=bearer(token))
        assert fetched.json()["deid_salt"] == salts[-1]

    assert salts[0] == salts[1] != salts[2]
    assert all(len(salt) == 64 for salt in salts)
    for path in (
        "/api/v1/sites",
        "/api/v1/sites/hospital-a/config",
        "/api/v1/sites/hospital-a/config/revisions",
        "/api/v1/sites/hospital-a/agents",
    ):
        answer = await server.admin.get(path)
        assert answer.is_success, path
        assert salts[0] not in answer.text, path


async def test_the_welcome_tells_an_in_cluster_agent_its_deployment(server: Server) -> None:
    _, token = await server.register(name="pod-1", deployment="in-cluster")

    async with linked(server, token) as peer:
        welcome = await peer.hello(applied_revision=None)

    assert welcome.deployment == "in-cluster"


async def test_hello_with_the_current_revision_is_sent_no_config(server: Server) -> None:
    _, token = await server.register()
    revision = await server.put_config("hospital-a", {"timing": {"sleep_time": "2m"}})

    async with linked(server, token) as peer:
        await peer.hello(applied_revision=revision)
        await peer.barrier()


async def test_new_revision_is_pushed_at_once_to_the_connected_agents_of_its_site_only(
    server: Server,
) -> None:
    _, token_a1 = await server.register("hospital-a", "edge-1")
    _, token_a2 = await server.register("hospital-a", "edge-2")
    _, token_b = await server.register("hospital-b", "edge-1")
    async with (
        linked(server, token_a1) as a1,
        linked(server, token_a2) as a2,
        linked(server, token_b) as b,
    ):
        for peer in (a1, a2, b):
            await peer.hello(applied_revision=0)
            await peer.barrier()

        revision = await server.put_config("hospital-a", {"dicom": {"port": 11113}})

        for peer in (a1, a2):
            pushed = await peer.expect(ConfigMessage)
            assert pushed.revision == revision
            assert pushed.site_config().dicom.port == 11113
        await b.barrier()


async def test_applied_config_result_becomes_the_agents_config_revision(server: Server) -> None:
    agent_id, token = await server.register()
    revision = await server.put_config("hospital-a", {"timing": {"acquisition_delay": "45s"}})

    async with linked(server, token) as peer:
        await peer.hello(applied_revision=None)
        await peer.expect(ConfigMessage)
        await peer.send(ConfigResult(revision=revision, status="applied"))
        await peer.barrier()
        agent = await server.agent(agent_id)

    assert agent["connected"] is True
    assert agent["config_revision"] == revision
    assert agent["health"]["agent_version"] == "9.8.7"
    assert agent["health"]["config_failure"] is None
    assert agent["health"]["status"] == "ok"


async def test_rejected_config_keeps_the_old_revision_and_shows_why(server: Server) -> None:
    agent_id, token = await server.register()
    first = await server.put_config("hospital-a", {"dicom": {"port": 11112}})
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=first)
        second = await server.put_config("hospital-a", {"dicom": {"port": 104}})
        await peer.expect(ConfigMessage)
        await peer.send(
            ConfigResult(
                revision=second, status="failed", reason="port 104 needs privileges this VM lacks"
            )
        )
        await peer.barrier()
        agent = await server.agent(agent_id)

    assert agent["config_revision"] == first
    assert agent["health"]["config_failure"] == {
        "revision": second,
        "reason": "port 104 needs privileges this VM lacks",
    }
    assert agent["health"]["status"] == "degraded"
    assert agent["health"]["reasons"] == [
        f"config revision {second} was rejected: port 104 needs privileges this VM lacks"
    ]


async def test_applying_a_later_revision_settles_an_earlier_rejection(server: Server) -> None:
    agent_id, token = await server.register()
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)
        rejected = await server.put_config("hospital-a", {"dicom": {"port": 104}})
        await peer.expect(ConfigMessage)
        await peer.send(ConfigResult(revision=rejected, status="failed", reason="privileged port"))
        fixed = await server.put_config("hospital-a", {"dicom": {"port": 11114}})
        await peer.expect(ConfigMessage)
        await peer.send(ConfigResult(revision=fixed, status="applied"))
        await peer.barrier()
        agent = await server.agent(agent_id)

    assert agent["config_revision"] == fixed
    assert agent["health"]["config_failure"] is None


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param(bearer("not-a-token-anyone-was-given"), id="unknown-token"),
        pytest.param(bearer(ADMIN_TOKEN), id="admin-token"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="not-bearer"),
    ],
)
async def test_link_without_a_valid_agent_token_is_refused_with_401_before_opening(
    server: Server, headers: dict[str, str]
) -> None:
    await server.register()

    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.link_url, additional_headers=headers, proxy=None):
            pass

    assert refused.value.response.status_code == 401
    assert b"agent token" in refused.value.response.body


@pytest.mark.parametrize("role", ["support", "read-only"])
async def test_link_refuses_api_tokens_of_people(server: Server, role: str) -> None:
    await server.register()
    created = await server.call("POST", "/api/v1/tokens", json={"name": "person", "role": role})

    with pytest.raises(InvalidStatus) as refused:
        async with linked(server, created["token"]):
            pass

    assert refused.value.response.status_code == 401


async def test_rotating_the_token_closes_the_link_and_only_the_new_token_connects(
    server: Server,
) -> None:
    agent_id, old_token = await server.register()
    async with linked(server, old_token) as peer:
        await peer.hello(applied_revision=0)
        rotated = await server.call("POST", f"/api/v1/agents/{agent_id}/token")
        code = await peer.closed_with()

    assert code == CLOSE_UNAUTHORIZED
    assert rotated["id"] == agent_id
    assert rotated["token"] != old_token
    with pytest.raises(InvalidStatus) as refused:
        async with linked(server, old_token):
            pass
    assert refused.value.response.status_code == 401
    async with linked(server, rotated["token"]) as peer:
        assert (await peer.hello(applied_revision=0)).agent_id == uuid.UUID(agent_id)


async def test_revoking_the_token_closes_the_link_and_refuses_it_from_then_on(
    server: Server,
) -> None:
    agent_id, token = await server.register()
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)
        await server.call("DELETE", f"/api/v1/agents/{agent_id}/token")
        code = await peer.closed_with()

    assert code == CLOSE_UNAUTHORIZED
    with pytest.raises(InvalidStatus) as refused:
        async with linked(server, token):
            pass
    assert refused.value.response.status_code == 401
    agent = await server.agent(agent_id)
    assert agent["connected"] is False
    assert agent["health"]["status"] == "missing"
    assert any("token is revoked" in reason for reason in agent["health"]["reasons"])


async def test_token_changed_behind_this_process_closes_the_link_at_reconcile(
    server: Server,
) -> None:
    agent_id, token = await server.register()
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)
        # What another replica's rotation leaves behind: the stored digest changed, and this
        # process's hub was not told.
        async with server.hub.recorder._sessionmaker() as session:
            await session.execute(
                update(Agent)
                .where(Agent.id == uuid.UUID(agent_id))
                .values(token_sha256=token_digest("rotated-elsewhere"))
            )
            await session.commit()
        await server.hub.reconcile()
        code = await peer.closed_with()

    assert code == CLOSE_UNAUTHORIZED


async def test_revision_stored_behind_this_process_reaches_the_agent_at_reconcile(
    server: Server, settings: ControlPlaneSettings
) -> None:
    _, token = await server.register()
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)
        await peer.barrier()
        # Another replica stores a revision: simulated by a second app on the same database.
        other = create_app(settings)
        async with (
            other.router.lifespan_context(other),
            httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=other),
                base_url="http://replica-2",
                headers=bearer(ADMIN_TOKEN),
            ) as replica,
        ):
            stored = await replica.put(
                "/api/v1/sites/hospital-a/config", content=json.dumps({"dicom": {"port": 2000}})
            )
        await server.hub.reconcile()
        pushed = await peer.expect(ConfigMessage)

    assert pushed.revision == stored.json()["revision"]
    assert pushed.site_config().dicom.port == 2000


async def test_second_link_of_an_agent_replaces_the_first(server: Server) -> None:
    _, token = await server.register()
    async with linked(server, token) as first:
        await first.hello(applied_revision=0)
        async with linked(server, token) as second:
            await second.hello(applied_revision=0)
            assert await first.closed_with() == CLOSE_REPLACED
            await second.barrier()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param('{"v": 1, "type": "teleport"}', ErrorCode.unknown_type, id="unknown-type"),
        pytest.param("this is not json", ErrorCode.malformed, id="not-json"),
        pytest.param('{"v": 7, "type": "health"}', ErrorCode.unsupported_version, id="version"),
        pytest.param('{"v": 1, "type": "health"}', ErrorCode.invalid_message, id="no-report"),
        pytest.param(
            '{"v": 1, "type": "welcome", "protocol_version": 1, '
            '"heartbeat_interval_s": 1, "agent_id": "00000000-0000-0000-0000-000000000000",'
            ' "site": "x"}',
            ErrorCode.unexpected_message,
            id="wrong-direction",
        ),
    ],
)
async def test_unusable_frame_is_answered_with_an_error_and_the_link_stays_open(
    server: Server, frame: str, code: ErrorCode
) -> None:
    _, token = await server.register()
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)

        await peer.websocket.send(frame)
        error = await peer.expect(Error)

        await peer.barrier()
    assert error.code is code
    assert error.message


async def test_first_frame_that_is_not_a_hello_is_refused_and_closed(server: Server) -> None:
    _, token = await server.register()
    async with linked(server, token) as peer:
        await peer.send(Health(report=HEALTHY))

        error = await peer.expect(Error)
        code = await peer.closed_with()

    assert error.code is ErrorCode.unexpected_message
    assert code == CLOSE_PROTOCOL_ERROR


async def test_hello_without_a_common_protocol_version_is_refused(server: Server) -> None:
    _, token = await server.register()
    async with linked(server, token) as peer:
        await peer.send(
            Hello(agent_id=None, agent_version="99", applied_revision=None, protocol_versions=[5])
        )

        error = await peer.expect(Error)
        code = await peer.closed_with()

    assert error.code is ErrorCode.unsupported_version
    assert code == CLOSE_PROTOCOL_ERROR


async def test_hello_naming_another_agent_is_refused(server: Server) -> None:
    _, token = await server.register()
    async with linked(server, token) as peer:
        await peer.send(
            Hello(
                agent_id=uuid.uuid4(),
                agent_version="1",
                applied_revision=None,
                protocol_versions=[1],
            )
        )

        error = await peer.expect(Error)
        assert await peer.closed_with() == CLOSE_PROTOCOL_ERROR

    assert error.code is ErrorCode.agent_mismatch


async def test_closing_the_link_is_recorded_as_disconnected(server: Server) -> None:
    agent_id, token = await server.register()
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)
        await peer.barrier()
        assert (await server.agent(agent_id))["connected"] is True

    # The server notices the close on its own schedule, and tells no one.
    while server.hub.is_connected(uuid.UUID(agent_id)):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    agent = await server.agent(agent_id)
    assert agent["connected"] is False
    assert agent["health"]["disconnected_at"] is not None


async def test_command_reaches_the_agent_and_its_result_is_the_answer(server: Server) -> None:
    agent_id, token = await server.register()
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)
        await peer.barrier()

        asking = asyncio.create_task(
            server.admin.post(
                f"/api/v1/agents/{agent_id}/commands",
                json={"name": "report_health", "args": {"now": True}},
            )
        )
        command = await peer.expect(Command)
        await peer.send(CommandResult(id=command.id, ok=True, detail="health sent"))
        answer = await asking

    assert (command.name, command.args) == ("report_health", {"now": True})
    assert answer.status_code == 200
    assert answer.json() == {
        "id": str(command.id),
        "ok": True,
        "detail": "health sent",
        "diagnostics": None,
    }


async def test_command_to_an_agent_without_a_link_is_409(server: Server) -> None:
    agent_id, _ = await server.register()

    response = await server.admin.post(
        f"/api/v1/agents/{agent_id}/commands", json={"name": "report_health"}
    )

    assert response.status_code == 409
    assert "no link" in response.json()["detail"]


async def test_health_is_degraded_when_the_last_query_exceeds_the_sites_threshold(
    server: Server,
) -> None:
    agent_id, token = await server.register()
    revision = await server.put_config("hospital-a", {"timing": {"query_time_threshold": "5m"}})
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=revision)
        await peer.send(Health(report=HEALTHY.model_copy(update={"last_query_duration_s": 312.0})))
        await peer.barrier()
        site = await server.site_health("hospital-a")
        fleet = await server.call("GET", "/api/v1/fleet/health")
        agent = await server.agent(agent_id)

    reason = "the last query took 5m12s, over the query_time_threshold of 5m"
    assert agent["health"]["status"] == "degraded"
    assert agent["health"]["reasons"] == [reason]
    assert agent["health"]["report"]["last_query_duration_s"] == 312.0
    assert site["status"] == "degraded"
    assert site["reasons"] == [f"edge-1: {reason}"]
    assert fleet["status"] == "degraded"
    assert fleet["attention"] == [
        {"site": "hospital-a", "status": "degraded", "reasons": [f"edge-1: {reason}"]}
    ]


async def test_health_within_thresholds_is_ok(server: Server) -> None:
    _, token = await server.register()
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)
        await peer.send(Health(report=HEALTHY.model_copy(update={"last_query_duration_s": 30.0})))
        await peer.barrier()
        site = await server.site_health("hospital-a")

    assert site["status"] == "ok"
    assert site["agents"][0]["status"] == "ok"
    assert site["agents"][0]["reasons"] == []
    assert site["agents"][0]["connected"] is True


async def test_listener_down_makes_the_agent_and_its_site_unhealthy(server: Server) -> None:
    await server.register("hospital-a", "edge-1")
    _, token = await server.register("hospital-a", "edge-2")
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)
        await peer.send(Health(report=HEALTHY.model_copy(update={"listener_ok": False})))
        await peer.barrier()
        site = await server.site_health("hospital-a")

    statuses = {agent["name"]: agent["status"] for agent in site["agents"]}
    assert statuses == {"edge-1": "missing", "edge-2": "unhealthy"}
    assert site["status"] == "missing"
    assert "edge-1: has never connected" in site["reasons"]
    assert "edge-2: the DICOM listener is down: no images can be received" in site["reasons"]


async def test_agent_turns_missing_when_heartbeats_stop_for_three_intervals(
    server: Server,
) -> None:
    agent_id, token = await server.register()
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)
        await peer.send(Health(report=HEALTHY))
        await peer.barrier()

        server.clock.advance(dt.timedelta(seconds=3 * HEARTBEAT_S))
        still_ok = await server.agent(agent_id)
        server.clock.advance(dt.timedelta(seconds=1))
        silent = await server.agent(agent_id)
        site = await server.site_health("hospital-a")

        await peer.send(Health(report=HEALTHY))
        await peer.barrier()
        back = await server.agent(agent_id)

    assert still_ok["health"]["status"] == "ok"
    assert silent["health"]["status"] == "missing"
    assert silent["health"]["reasons"] == ["no heartbeat for 31s (expected every 10s)"]
    assert silent["connected"] is False
    assert site["status"] == "missing"
    assert back["health"]["status"] == "ok"
    assert back["connected"] is True


async def test_every_health_report_is_kept_in_the_history_newest_first(server: Server) -> None:
    agent_id, token = await server.register()
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)
        reports = [HEALTHY.model_copy(update={"spool_depth": depth}) for depth in (1, 2, 3)]
        for report in [*reports, HEALTHY.model_copy(update={"listener_ok": False})]:
            server.clock.advance(dt.timedelta(seconds=HEARTBEAT_S))
            await peer.send(Health(report=report))
            # Received (and timestamped) before the clock moves again.
            await peer.barrier()
        await server.hub.recorder.flush()
        history = await server.call("GET", f"/api/v1/agents/{agent_id}/health/history")
        latest_two = await server.call(
            "GET", f"/api/v1/agents/{agent_id}/health/history", params={"limit": 2}
        )

    entries = history["items"]
    assert [entry["status"] for entry in entries] == ["unhealthy", "ok", "ok", "ok"]
    assert [entry["report"]["spool_depth"] for entry in entries[1:]] == [3, 2, 1]
    assert latest_two["items"] == entries[:2]


async def test_a_revision_notice_from_another_replica_reaches_the_agent_at_once(
    server: Server, settings: ControlPlaneSettings
) -> None:
    _, token = await server.register()
    async with linked(server, token) as peer:
        await peer.hello(applied_revision=0)
        await peer.barrier()
        other = create_app(settings)
        async with (
            other.router.lifespan_context(other),
            httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=other),
                base_url="http://replica-2",
                headers=bearer(ADMIN_TOKEN),
            ) as replica,
        ):
            stored = await replica.put(
                "/api/v1/sites/hospital-a/config", content=json.dumps({"dicom": {"port": 2000}})
            )
        async with server.hub.recorder._sessionmaker() as session:
            site_id = await session.scalar(select(Site.id).where(Site.name == "hospital-a"))
        assert site_id is not None
        # What the replica bus hands the hub on PostgreSQL (on SQLite, a test stands in).
        await server.hub.apply_notice(
            FleetNotice.config_revision(site_id, stored.json()["revision"])
        )
        pushed = await peer.expect(ConfigMessage)

    assert pushed.revision == stored.json()["revision"]
    assert pushed.site_config().dicom.port == 2000


async def test_a_late_token_notice_leaves_a_link_made_with_the_new_token_open(
    server: Server,
) -> None:
    agent_id, _ = await server.register()
    rotated = await server.call("POST", f"/api/v1/agents/{agent_id}/token")
    async with linked(server, rotated["token"]) as peer:
        await peer.hello(applied_revision=0)

        await server.hub.apply_notice(FleetNotice.token_changed(uuid.UUID(agent_id)))

        await peer.barrier()
        assert server.hub.is_connected(uuid.UUID(agent_id))
