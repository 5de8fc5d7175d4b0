"""Fixtures: a real control plane (lifespan run, migrations applied) on SQLite and PostgreSQL.

Every test using a database fixture runs twice: on a SQLite file in its tmp dir and on a
PostgreSQL database created for this test session. Migrating is done once per session and
each test starts from empty tables (`database_url`); migration tests get a database without
any schema (`empty_database_url`).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from control_plane.migrate import upgrade
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.harness import ADMIN_TOKEN, ControlPlane, started_control_plane
from tests.support.postgres import reset_schema, temporary_database, truncate_tables

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
SQLITE_NAME = "control-plane.db"


@pytest.fixture(scope="session")
def migrated_postgres() -> Iterator[str]:
    """A PostgreSQL database of this session, migrated to head, dropped at the end."""
    with temporary_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def scratch_postgres() -> Iterator[str]:
    """A PostgreSQL database of this session for tests that migrate it themselves."""
    with temporary_database() as url:
        yield url


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head, copied by each test that needs one."""
    path = tmp_path_factory.mktemp("template") / SQLITE_NAME
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database at the newest schema with empty tables."""
    if request.param == "sqlite":
        path = tmp_path / SQLITE_NAME
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("migrated_postgres")
    truncate_tables(url)
    return url


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database without any schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / SQLITE_NAME}"
    url: str = request.getfixturevalue("scratch_postgres")
    reset_schema(url)
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> ControlPlaneSettings:
    """Settings of the control plane under test."""
    return ControlPlaneSettings(
        database_url=database_url, blob_dir=tmp_path / "blobs", admin_token=ADMIN_TOKEN
    )


@pytest.fixture
async def control_plane(settings: ControlPlaneSettings) -> AsyncIterator[ControlPlane]:
    """A started control plane with an admin client and an unauthenticated one."""
    async with started_control_plane(settings) as started:
        yield started
