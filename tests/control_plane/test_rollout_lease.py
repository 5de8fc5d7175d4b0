"""The rollout driver's lease on SQLite and PostgreSQL: of two drivers (two replicas) only one
holds a rollout; the holder renews it; the other takes it over only once it has expired."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control_plane.db import create_engine, create_sessionmaker
from control_plane.fleet.rollout_driver import RolloutDriver
from control_plane.fleet.rollout_schemas import RolloutCreate
from control_plane.fleet.rollouts import create_rollout
from control_plane.hub import Hub
from control_plane.models import Site
from control_plane.security import ADMIN
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.harness import ManualClock

LEASE = dt.timedelta(seconds=5)
START = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def sessionmaker(
    settings: ControlPlaneSettings,
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings.database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


def _driver(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: ControlPlaneSettings,
    clock: ManualClock,
) -> RolloutDriver:
    hub = Hub(sessionmaker, sessionmaker, settings, clock)
    return RolloutDriver(
        sessionmaker,
        hub,
        clock,
        lease=LEASE,
        tick_interval_s=1.0,
        heartbeat_interval=dt.timedelta(seconds=10),
    )


async def _running_rollout(sessionmaker: async_sessionmaker[AsyncSession]) -> uuid.UUID:
    async with sessionmaker() as session:
        session.add(Site(name="site-a", timezone="UTC"))
        await session.commit()
        created = await create_rollout(
            session,
            RolloutCreate.model_validate({"sites": "all", "config": {}}),
            ADMIN,
            driver_id="nobody-yet",
            now=START - LEASE,  # its creator's lease has just run out
            lease=LEASE,
        )
    return created.id


async def test_only_one_of_two_drivers_takes_a_lease_and_the_other_waits_for_it_to_expire(
    sessionmaker: async_sessionmaker[AsyncSession], settings: ControlPlaneSettings
) -> None:
    clock = ManualClock(START + dt.timedelta(milliseconds=1))
    rollout_id = await _running_rollout(sessionmaker)
    first, second = _driver(sessionmaker, settings, clock), _driver(sessionmaker, settings, clock)

    held = await asyncio.gather(first.acquire(clock()), second.acquire(clock()))

    assert sorted(held, key=len) == [[], [rollout_id]]
    holder, other = (first, second) if held[0] else (second, first)
    clock.advance(LEASE * 0.8)
    assert await other.acquire(clock()) == []
    assert await holder.acquire(clock()) == [rollout_id]  # renewed until now + LEASE
    clock.advance(LEASE * 0.8)
    assert await other.acquire(clock()) == []
    # The holder stops renewing (its process died): once the lease expires, the other takes it.
    clock.advance(LEASE * 0.3)
    assert await other.acquire(clock()) == [rollout_id]
    assert await holder.acquire(clock()) == []


async def test_a_released_lease_is_taken_at_once(
    sessionmaker: async_sessionmaker[AsyncSession], settings: ControlPlaneSettings
) -> None:
    clock = ManualClock(START + dt.timedelta(milliseconds=1))
    rollout_id = await _running_rollout(sessionmaker)
    stopping, restarted = (
        _driver(sessionmaker, settings, clock),
        _driver(sessionmaker, settings, clock),
    )
    assert await stopping.acquire(clock()) == [rollout_id]

    await stopping.release()

    assert await restarted.acquire(clock()) == [rollout_id]
