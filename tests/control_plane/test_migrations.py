"""The schema is only ever changed by Alembic, and the models say the same as the migrations."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool, text

from control_plane.database_url import sync_database_url
from control_plane.main import SchemaNotCurrentError, create_app
from control_plane.migrate import (
    SchemaAheadError,
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
)
from control_plane.models import Base
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.harness import ADMIN_TOKEN


def _differences(database_url: str) -> list[object]:
    engine = create_engine(sync_database_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _tables(database_url: str) -> set[str]:
    engine = create_engine(sync_database_url(database_url), poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrading_an_empty_database_to_head_matches_the_models(empty_database_url: str) -> None:
    upgrade(empty_database_url)

    assert current_revision(empty_database_url) == head_revision()
    assert _differences(empty_database_url) == []


def test_upgrading_twice_changes_nothing(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    upgrade(empty_database_url)

    assert current_revision(empty_database_url) == head_revision()


def test_downgrade_to_base_removes_every_table_and_upgrade_restores_them(
    empty_database_url: str,
) -> None:
    upgrade(empty_database_url)
    command.downgrade(alembic_config(empty_database_url), "base")

    assert _tables(empty_database_url) <= {"alembic_version"}

    upgrade(empty_database_url)
    assert _differences(empty_database_url) == []


async def test_start_migrates_an_empty_database_when_migrate_on_start_is_on(
    empty_database_url: str, tmp_path: Path
) -> None:
    settings = ControlPlaneSettings(
        database_url=empty_database_url, blob_dir=tmp_path / "blobs", admin_token=ADMIN_TOKEN
    )
    app = create_app(settings)

    async with app.router.lifespan_context(app):
        revision = await asyncio.to_thread(current_revision, empty_database_url)

    assert revision == head_revision()


async def test_start_refuses_an_unmigrated_database_when_migrate_on_start_is_off(
    empty_database_url: str, tmp_path: Path
) -> None:
    settings = ControlPlaneSettings(
        database_url=empty_database_url,
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
        migrate_on_start=False,
    )
    app = create_app(settings)

    with pytest.raises(SchemaNotCurrentError, match="run the migrations"):
        async with app.router.lifespan_context(app):
            pass


async def test_start_accepts_a_migrated_database_when_migrate_on_start_is_off(
    database_url: str, tmp_path: Path
) -> None:
    settings = ControlPlaneSettings(
        database_url=database_url,
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
        migrate_on_start=False,
    )
    app = create_app(settings)

    async with app.router.lifespan_context(app):
        assert app.state.resources.settings.migrate_on_start is False


async def test_start_refuses_a_database_migrated_by_a_newer_version(
    empty_database_url: str, tmp_path: Path
) -> None:
    upgrade(empty_database_url)
    await asyncio.to_thread(_stamp, empty_database_url, "0999_from_the_future")
    settings = ControlPlaneSettings(
        database_url=empty_database_url, blob_dir=tmp_path / "blobs", admin_token=ADMIN_TOKEN
    )
    app = create_app(settings)

    with pytest.raises(SchemaAheadError, match=r"0999_from_the_future.*its newest is"):
        async with app.router.lifespan_context(app):
            pass


def _stamp(database_url: str, revision: str) -> None:
    engine = create_engine(sync_database_url(database_url))
    try:
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE alembic_version SET version_num = :revision"), {"revision": revision}
            )
    finally:
        engine.dispose()
