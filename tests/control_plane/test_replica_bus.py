"""The replica bus on a real PostgreSQL server: notices sent in a transaction arrive when it
commits (and not when it rolls back); a dropped connection is re-established and followed by
a resync; on SQLite the bus does nothing."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from control_plane.db import create_engine, create_sessionmaker
from control_plane.fleet.notices import FleetNotice, announce
from control_plane.replica_bus import APPLICATION_NAME, ReplicaBus
from tests.support.postgres import libpq_url

WAIT_S = 30.0


class Heard:
    """What the bus handed over."""

    def __init__(self) -> None:
        self.notices: asyncio.Queue[FleetNotice] = asyncio.Queue()
        self.resyncs = 0
        self.resynced: asyncio.Queue[int] = asyncio.Queue()

    async def notice(self, notice: FleetNotice) -> None:
        await self.notices.put(notice)

    async def resync(self) -> None:
        self.resyncs += 1
        await self.resynced.put(self.resyncs)


@contextlib.asynccontextmanager
async def running(bus: ReplicaBus) -> AsyncIterator[None]:
    work = asyncio.create_task(bus.run())
    try:
        async with asyncio.timeout(WAIT_S):
            await bus.listening.wait()
        yield
    finally:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work


async def _send(database_url: str, notice: FleetNotice, *, commit: bool) -> None:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            await announce(session, notice)
            if commit:
                await session.commit()
            else:
                await session.rollback()
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_a_notice_arrives_when_its_transaction_commits_and_never_when_it_rolls_back(
    migrated_postgres: str,
) -> None:
    heard = Heard()
    bus = ReplicaBus(migrated_postgres, heard.notice, heard.resync)
    site = uuid.uuid4()
    async with running(bus):
        await _send(migrated_postgres, FleetNotice.config_revision(site, 1), commit=False)
        await _send(migrated_postgres, FleetNotice.config_revision(site, 2), commit=True)

        async with asyncio.timeout(WAIT_S):
            received = await heard.notices.get()

    assert received == FleetNotice.config_revision(site, 2)
    assert heard.notices.empty()
    assert heard.resyncs == 1  # once, right after LISTEN took effect


@pytest.mark.postgres
async def test_a_dropped_connection_is_reopened_and_followed_by_a_resync(
    migrated_postgres: str,
) -> None:
    heard = Heard()
    bus = ReplicaBus(migrated_postgres, heard.notice, heard.resync, probe_interval_s=0.2)
    agent = uuid.uuid4()
    async with running(bus):
        with psycopg.connect(libpq_url(migrated_postgres), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,),
            )
        async with asyncio.timeout(WAIT_S):
            # The first resync followed the first LISTEN; the second follows the reconnect's.
            while await heard.resynced.get() < 2:
                pass
        await _send(migrated_postgres, FleetNotice.token_changed(agent), commit=True)
        async with asyncio.timeout(WAIT_S):
            received = await heard.notices.get()

    assert received == FleetNotice.token_changed(agent)
    assert bus.connections == 2
    assert heard.resyncs == 2  # what was sent while it was away is caught up with


async def test_on_sqlite_the_bus_does_nothing(tmp_path: Path) -> None:
    heard = Heard()
    bus = ReplicaBus(f"sqlite:///{tmp_path / 'cp.db'}", heard.notice, heard.resync)

    async with asyncio.timeout(WAIT_S):
        await bus.run()

    assert not bus.enabled
    assert heard.resyncs == 0
