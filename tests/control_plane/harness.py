"""Helpers for driving a control plane under test through its HTTP API."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from common.messages import HealthReport
from control_plane.clock import Clock, system_clock
from control_plane.main import create_app
from control_plane.resources import Resources
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.instances import DEFAULT_SERIES_UID, sha256_hex

ADMIN_TOKEN = "test-admin-token-0123456789"
# A report that every health rule passes, for tests that change one field of it.
HEALTHY = HealthReport(
    listener_ok=True,
    uploads_open=True,
    last_query_duration_s=None,
    longest_reap_s=1.5,
    spool_depth=3,
    spool_bytes=1_500_000,
    deferred_uploads=0,
    failed_instances=0,
    uploads_succeeded=120,
    uploads_failed=0,
    oldest_unuploaded_age_s=4.0,
    disk_free_bytes=400 * 10**9,
    disk_total_bytes=500 * 10**9,
    disk_reserve_bytes=10**9,
    last_error=None,
    last_error_at=None,
)
BASE_URL = "http://control-plane.test"


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for `token`."""
    return {"Authorization": f"Bearer {token}"}


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        """Move time forward."""
        self.now += delta


@dataclass
class ControlPlane:
    """A running control plane and clients talking to it in-process."""

    app: FastAPI
    settings: ControlPlaneSettings
    admin: httpx2.AsyncClient
    anonymous: httpx2.AsyncClient

    @property
    def resources(self) -> Resources:
        """The app's engine, sessions and blob store (to look behind the API)."""
        resources: Resources = self.app.state.resources
        return resources

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A database session on the app's engine."""
        async with self.resources.sessionmaker() as session:
            yield session

    @asynccontextmanager
    async def client(self, token: str) -> AsyncIterator[httpx2.AsyncClient]:
        """A client sending `token`."""
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=self.app), base_url=BASE_URL, headers=bearer(token)
        ) as client:
            yield client

    async def register_agent(self, site: str = "hospital-a", name: str = "agent-1") -> str:
        """Create the site (if needed) and an agent in it; return the agent's token."""
        sites = (await self.admin.get("/api/v1/sites")).json()["items"]
        if all(existing["name"] != site for existing in sites):
            created = await self.admin.post("/api/v1/sites", json={"name": site, "timezone": "UTC"})
            assert created.status_code == 201, created.text
        response = await self.admin.post(
            f"/api/v1/sites/{site}/agents", json={"name": name, "deployment": "edge"}
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token


@asynccontextmanager
async def started_control_plane(
    settings: ControlPlaneSettings, clock: Clock = system_clock
) -> AsyncIterator[ControlPlane]:
    """A control plane with its lifespan running, an admin client and an unauthenticated
    one, served in-process."""
    app: FastAPI = create_app(settings, clock)
    transport = httpx2.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(
            transport=transport, base_url=BASE_URL, headers=bearer(ADMIN_TOKEN)
        ) as admin,
        httpx2.AsyncClient(transport=transport, base_url=BASE_URL) as anonymous,
    ):
        yield ControlPlane(app=app, settings=settings, admin=admin, anonymous=anonymous)


async def post_ingest(
    client: httpx2.AsyncClient,
    body: bytes,
    *,
    sop_instance_uid: str,
    series_instance_uid: str = DEFAULT_SERIES_UID,
    subject: str = "SUBJ-1",
    session: str = "SESSION-1",
    acquisition: str = "T1w",
    **extra: str,
) -> httpx2.Response:
    """POST one instance to /api/v1/ingest; `extra` adds or overrides query parameters."""
    params: dict[str, Any] = {
        "subject": subject,
        "session": session,
        "acquisition": acquisition,
        "series_instance_uid": series_instance_uid,
        "sop_instance_uid": sop_instance_uid,
        "sha256": sha256_hex(body),
        **extra,
    }
    return await client.post(
        "/api/v1/ingest",
        params=params,
        content=body,
        headers={"Content-Type": "application/dicom"},
    )
