"""Webhook alerts: a site turning degraded, unhealthy or missing, or recovering, is POSTed as
JSON to every URL of `alerts.webhooks`.

Three parts:

- `AlertRules` (pure): compares each site's status with the last one alerted and decides what
  to send. A site is watched from the first time it is seen `ok` (a site being set up, or one
  already broken when this process started, was no news to announce). A new status must hold
  for `hold_s` before it is sent, and a site gets at most one alert per `min_interval_s`, so a
  flapping status sends nothing, or one alert for where it settled; never one per flap.
- `WebhookSender`: one queue and task per webhook, so alerts reach a receiver in the order
  they were made and a slow receiver delays no other. Each alert is tried `attempts` times
  with a doubling backoff on transport errors and 5xx/429; other answers are final. The
  alert's `id` stays the same across attempts, for receivers that deduplicate.
- `Alerter`: the loop (owned by the app's lifespan) that judges every site of the hub's
  `FleetView` every `check_interval_s` and hands new alerts to the senders.

Webhook URLs are secrets (they often carry a token): logs name a webhook by its number.
Reasons are the health reasons, which never hold a DICOM value. With several control-plane
replicas, configure webhooks on one of them only: each replica judges the whole fleet.
Must not import FastAPI.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx2
import structlog
from pydantic import BaseModel, SecretStr

from control_plane.clock import Clock
from control_plane.fleet.health import HealthContext
from control_plane.fleet.health_rules import AgentStatus
from control_plane.fleet.view import SiteStatus
from control_plane.settings import AlertSettings

logger = structlog.get_logger(__name__)

MAX_BACKOFF_S = 300.0
# Alerts waiting per webhook while it is down; the oldest are dropped first (and counted).
MAX_QUEUED = 1000

AlertEvent = Literal["degraded", "unhealthy", "missing", "recovered"]


class AlertAgent(BaseModel):
    """One agent of the site, as the alert shows it."""

    name: str
    status: AgentStatus
    reasons: list[str]


class Alert(BaseModel):
    """The JSON body POSTed to each webhook."""

    id: uuid.UUID
    event: AlertEvent
    site: str
    agent: str | None
    """The agent whose status made the site's (the first listed at that status); null on
    recovery and for a site without agents."""
    status: AgentStatus
    previous_status: AgentStatus
    reasons: list[str]
    agents: list[AlertAgent]
    at: dt.datetime


@dataclass
class _Watch:
    alerted: AgentStatus
    alerted_at: dt.datetime | None = None
    departed_at: dt.datetime | None = None
    """Since when the status differs from `alerted` (None while it is the same)."""


class AlertRules:
    """Decides which status changes become alerts (see the module docstring)."""

    def __init__(self, *, hold: dt.timedelta, min_interval: dt.timedelta) -> None:
        self._hold = hold
        self._min_interval = min_interval
        self._watched: dict[str, _Watch] = {}

    def observe(self, statuses: Sequence[SiteStatus], now: dt.datetime) -> list[Alert]:
        """The alerts to send for the sites' statuses at `now`."""
        alerts: list[Alert] = []
        for site in statuses:
            status = site.verdict.status
            watch = self._watched.get(site.site)
            if watch is None:
                if status is AgentStatus.ok:
                    self._watched[site.site] = _Watch(alerted=status)
                continue
            if status is watch.alerted:
                watch.departed_at = None
                continue
            if watch.departed_at is None:
                watch.departed_at = now
            held = now - watch.departed_at >= self._hold
            spaced = watch.alerted_at is None or now - watch.alerted_at >= self._min_interval
            if held and spaced:
                alerts.append(_alert(site, watch.alerted, now))
                watch.alerted, watch.alerted_at, watch.departed_at = status, now, None
        known = {site.site for site in statuses}
        for gone in [name for name in self._watched if name not in known]:
            del self._watched[gone]
        return alerts


def _alert(site: SiteStatus, previous: AgentStatus, now: dt.datetime) -> Alert:
    status = site.verdict.status
    cause = None
    if status is not AgentStatus.ok:
        cause = next((agent.name for agent in site.agents if agent.verdict.status is status), None)
    return Alert(
        id=uuid.uuid4(),
        event="recovered" if status is AgentStatus.ok else status.value,
        site=site.site,
        agent=cause,
        status=status,
        previous_status=previous,
        reasons=list(site.verdict.reasons),
        agents=[
            AlertAgent(
                name=agent.name, status=agent.verdict.status, reasons=list(agent.verdict.reasons)
            )
            for agent in site.agents
        ],
        at=now,
    )


class WebhookSender:
    """Delivers alerts to one webhook, in order, with retries."""

    def __init__(
        self, number: int, url: SecretStr, settings: AlertSettings, client: httpx2.AsyncClient
    ) -> None:
        self.number = number
        self._url = url
        self._settings = settings
        self._client = client
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=MAX_QUEUED)
        self.delivered = 0
        self.failed = 0
        """Alerts given up on (every attempt failed, or refused for good, or dropped)."""

    def put(self, alert: Alert) -> None:
        """Queue an alert; the oldest queued one is dropped when the queue is full."""
        if self._queue.full():
            self._queue.get_nowait()
            self.failed += 1
            logger.error("alert dropped: webhook queue full", webhook=self.number)
        self._queue.put_nowait(alert)

    async def run(self) -> None:
        """Deliver queued alerts until cancelled."""
        while True:
            alert = await self._queue.get()
            if await self._deliver(alert):
                self.delivered += 1
            else:
                self.failed += 1

    async def _deliver(self, alert: Alert) -> bool:
        body = alert.model_dump_json().encode()
        wait = self._settings.retry_backoff_s
        for attempt in range(1, self._settings.attempts + 1):
            outcome = await self._post(body)
            if outcome is None:
                logger.info(
                    "alert delivered", webhook=self.number, reason=alert.event, site=alert.site
                )
                return True
            final = attempt == self._settings.attempts or not outcome[1]
            logger.warning(
                "alert delivery failed",
                webhook=self.number,
                attempt=attempt,
                error=outcome[0],
                state="given up" if final else "retrying",
            )
            if final:
                return False
            await asyncio.sleep(wait)
            wait = min(wait * 2, MAX_BACKOFF_S)
        return False

    async def _post(self, body: bytes) -> tuple[str, bool] | None:
        """None when delivered, else (what went wrong, whether it is worth retrying)."""
        try:
            response = await self._client.post(
                self._url.get_secret_value(),
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=self._settings.timeout_s,
            )
        except httpx2.TransportError as exc:
            # Only the type: the message of a transport error may quote the URL.
            return type(exc).__name__, True
        if response.is_success:
            return None
        status = response.status_code
        return f"HTTP {status}", status >= 500 or status == 429


class Alerter:
    """Judges every site periodically and sends the alerts `AlertRules` decides on."""

    def __init__(
        self,
        settings: AlertSettings,
        statuses: Callable[[HealthContext], list[SiteStatus]],
        clock: Clock,
        heartbeat_interval: dt.timedelta,
    ) -> None:
        self._settings = settings
        self._statuses = statuses
        self._clock = clock
        self._heartbeat_interval = heartbeat_interval
        self.rules = AlertRules(
            hold=dt.timedelta(seconds=settings.hold_s),
            min_interval=dt.timedelta(seconds=settings.min_interval_s),
        )
        self.senders: list[WebhookSender] = []

    def check(self) -> list[Alert]:
        """Judge every site now and queue what is to be sent; the alerts queued."""
        now = self._clock()
        context = HealthContext(now=now, heartbeat_interval=self._heartbeat_interval)
        alerts = self.rules.observe(self._statuses(context), now)
        for alert in alerts:
            for sender in self.senders:
                sender.put(alert)
        return alerts

    async def run(self) -> None:
        """Check every `check_interval_s` and deliver, until cancelled; nothing without
        webhooks."""
        if not self._settings.webhooks:
            return
        async with httpx2.AsyncClient(follow_redirects=False) as client:
            self.senders = [
                WebhookSender(number, url, self._settings, client)
                for number, url in enumerate(self._settings.webhooks, start=1)
            ]
            async with asyncio.TaskGroup() as tasks:
                for sender in self.senders:
                    tasks.create_task(sender.run())
                while True:
                    self.check()
                    await asyncio.sleep(self._settings.check_interval_s)
