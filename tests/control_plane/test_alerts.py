"""Webhook alerts: which status changes are sent (rules on a hand-moved clock), and a real
control plane delivering them to a real receiver, with retries, as a real agent comes and goes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import ValidationError

from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from control_plane.alerts import AlertRules
from control_plane.fleet.health_rules import AgentStatus, Verdict
from control_plane.fleet.view import AgentStatusEntry, SiteStatus
from control_plane.main import create_app
from control_plane.settings import AlertSettings, ControlPlaneSettings
from tests.agent.test_runtime import Running
from tests.support.served import served
from tests.support.webhook_receiver import WebhookReceiver, webhook_receiver

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
HOLD = dt.timedelta(seconds=30)


def _site(status: AgentStatus, name: str = "north") -> SiteStatus:
    reasons = () if status is AgentStatus.ok else (f"edge: something is {status.value}",)
    verdict = Verdict(status=status, reasons=reasons)
    agent = AgentStatusEntry("edge", Verdict(status=status, reasons=reasons[:1]), True)
    return SiteStatus(site=name, verdict=verdict, agents=(agent,), config_revision=1)


def _run(
    rules: AlertRules, timeline: list[tuple[float, AgentStatus]]
) -> list[tuple[float, str, AgentStatus]]:
    sent = []
    for seconds, status in timeline:
        for alert in rules.observe([_site(status)], T0 + dt.timedelta(seconds=seconds)):
            sent.append((seconds, alert.event, alert.previous_status))
    return sent


def test_each_transition_that_holds_sends_exactly_one_alert() -> None:
    rules = AlertRules(hold=HOLD, min_interval=dt.timedelta(0))
    ok, degraded, missing = AgentStatus.ok, AgentStatus.degraded, AgentStatus.missing

    sent = _run(
        rules,
        [(0, ok), (10, degraded), (39, degraded), (40, degraded), (50, degraded), (60, missing),
         (90, missing), (100, ok), (130, ok), (500, ok)],
    )  # fmt: skip

    assert sent == [(40, "degraded", ok), (90, "missing", degraded), (130, "recovered", missing)]


def test_a_flapping_status_sends_nothing() -> None:
    rules = AlertRules(hold=HOLD, min_interval=dt.timedelta(0))
    timeline = [(float(second), AgentStatus.ok) for second in range(0, 600, 20)]
    timeline += [(second + 10.0, AgentStatus.degraded) for second, _ in timeline]

    assert _run(rules, sorted(timeline, key=lambda entry: entry[0])) == []


def test_alerts_of_a_site_are_spaced_by_the_minimum_interval() -> None:
    rules = AlertRules(hold=dt.timedelta(0), min_interval=dt.timedelta(minutes=5))
    ok, degraded, unhealthy = AgentStatus.ok, AgentStatus.degraded, AgentStatus.unhealthy

    sent = _run(rules, [(0, ok), (1, degraded), (2, unhealthy), (3, degraded), (302, degraded)])

    # degraded at 1 s; the changes inside the interval collapse into where the site settled.
    assert sent == [(1, "degraded", ok)]
    assert _run(rules, [(400, ok)]) == [(400, "recovered", degraded)]


def test_a_site_is_watched_from_the_first_time_it_is_ok() -> None:
    rules = AlertRules(hold=dt.timedelta(0), min_interval=dt.timedelta(0))

    assert _run(rules, [(0, AgentStatus.missing), (5, AgentStatus.degraded)]) == []
    assert _run(rules, [(6, AgentStatus.ok), (7, AgentStatus.unhealthy)]) == [
        (7, "unhealthy", AgentStatus.ok)
    ]


def test_the_alert_names_the_agent_that_made_the_sites_status() -> None:
    rules = AlertRules(hold=dt.timedelta(0), min_interval=dt.timedelta(0))
    rules.observe([_site(AgentStatus.ok)], T0)

    (alert,) = rules.observe([_site(AgentStatus.unhealthy)], T0)

    body = alert.model_dump(mode="json")
    assert body["site"] == "north"
    assert body["agent"] == "edge"
    assert body["status"] == "unhealthy"
    assert body["reasons"] == ["edge: something is unhealthy"]
    assert body["agents"] == [
        {"name": "edge", "status": "unhealthy", "reasons": ["edge: something is unhealthy"]}
    ]


@pytest.mark.parametrize("url", ["ftp://host/x", "not a url", "http://"])
def test_a_webhook_that_is_not_an_http_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ValidationError) as raised:
        AlertSettings(webhooks=[url])  # type: ignore[list-item]

    assert "alerts.webhooks[1] is not an http(s) URL" in str(raised.value)
    assert url not in str(raised.value)


def test_webhooks_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_CONNECTOR_ALERTS__WEBHOOKS", '["https://hooks.example/t0k3n"]')
    monkeypatch.setenv("DICOM_CONNECTOR_ALERTS__HOLD_S", "5")

    settings = ControlPlaneSettings(
        database_url="sqlite:///x.db", blob_dir=Path("b"), admin_token="a" * 20
    )

    assert [url.get_secret_value() for url in settings.alerts.webhooks] == [
        "https://hooks.example/t0k3n"
    ]
    assert settings.alerts.hold_s == 5
    assert "t0k3n" not in repr(settings)


# --- a real control plane, agent and receiver ---------------------------------------------

ADMIN_TOKEN = "admin-token-for-alert-tests-0123456789"
HEARTBEAT_S = 0.3
WAIT_S = 60.0  # bounds a hang; not a performance assertion


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    # The first delivery is refused with 503: it must be retried, not lost or doubled.
    with webhook_receiver(refuse_first=1) as running:
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
            retry_backoff_s=0.05,
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


async def _call(client: httpx2.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, (path, response.status_code, response.text)
    return response.json()


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_an_agent_going_missing_and_coming_back_sends_one_alert_each(
    admin: httpx2.AsyncClient, control_plane_url: str, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    await _call(admin, "POST", "/api/v1/sites", json={"name": "north", "timezone": "UTC"})
    created = await _call(
        admin, "POST", "/api/v1/sites/north/agents", json={"name": "edge", "deployment": "edge"}
    )
    token_file = tmp_path / "agent-token"
    await asyncio.to_thread(token_file.write_text, created["token"], encoding="utf-8")
    settings = AgentSettings(
        control_plane_url=control_plane_url,
        token_file=token_file,
        data_dir=tmp_path / "agent",
        dicom_host="127.0.0.1",
        dicom_port_override=0,
        spool_reserve_bytes=0,
        intake_processes=1,
    )

    async def site_status() -> str:
        return str((await _call(admin, "GET", "/api/v1/sites/north/health"))["status"])

    first = Running(AgentRuntime(settings))
    try:
        await first.started()
        await first.runtime.link.wait_connected()
        deadline = time.monotonic() + WAIT_S
        while await site_status() != "ok":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # Watched from now: being set up (missing until the agent connected) was no news.
        await asyncio.sleep(0.5)
        assert receiver.events() == []
    finally:
        await first.stop()

    await _until(lambda: receiver.events() == [("north", "missing")], "the missing alert")

    second = Running(AgentRuntime(settings))
    try:
        await second.started()
        await _until(lambda: len(receiver.events()) == 2, "the recovered alert")
    finally:
        await second.stop()

    assert receiver.events() == [("north", "missing"), ("north", "recovered")]
    assert receiver.requests == 3  # the refused first delivery was tried again, once
    missing, recovered = receiver.accepted
    assert missing["agent"] == "edge"
    assert missing["previous_status"] == "ok"
    assert any("no heartbeat" in reason for reason in missing["reasons"])
    assert recovered["status"] == "ok"
    assert recovered["reasons"] == []
    assert missing["id"] != recovered["id"]
