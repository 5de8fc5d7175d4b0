"""Schema migrations, run programmatically: Alembic's config is built here, not in an ini file.

`script_location` points at the installed `migrations` package, so this works from a wheel.
Blocking (sync drivers): call it from a thread when inside an event loop. Must not import FastAPI.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

import migrations
from control_plane.database_url import sync_database_url


def alembic_config(database_url: str) -> Config:
    """An Alembic config for `database_url` (any accepted flavour), for `alembic.command` calls."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # Passed as an attribute, not a main option: configparser would choke on "%" in passwords.
    config.attributes["database_url"] = sync_database_url(database_url)
    return config


def upgrade(database_url: str) -> None:
    """Bring the database at `database_url` to the newest schema revision."""
    command.upgrade(alembic_config(database_url), "head")


def head_revision() -> str | None:
    """The newest schema revision this code ships."""
    script = ScriptDirectory.from_config(alembic_config("sqlite:///unused.db"))
    return script.get_current_head()


def current_revision(database_url: str) -> str | None:
    """The schema revision the database is at (None for an empty database)."""
    engine = create_engine(sync_database_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
