"""Schema migrations, run programmatically: Alembic's config is built here, not in an ini file.

`script_location` points at the installed `migrations` package, so this works from a wheel.
`prepare_schema` is what a control plane runs at start-up: under a PostgreSQL advisory lock
(so replicas starting together migrate once: the others wait, then find the schema current)
it reads the database's revision, refuses one this code does not know (a newer version
migrated it) and migrates one that is behind, or refuses it when migrating is switched off.
Blocking (sync drivers): call it from a thread when inside an event loop. Must not import
FastAPI.
"""

from dataclasses import dataclass
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, pool, text

import migrations
from control_plane.database_url import sync_database_url

logger = structlog.get_logger(__name__)

MIGRATION_LOCK_KEY = 0x0D1C0C0A
"""The advisory lock every replica takes around migrating (migrations/env.py takes it too)."""


class SchemaNotCurrentError(RuntimeError):
    """The database schema is not the one this code expects, and this code will not fix it."""


class SchemaAheadError(SchemaNotCurrentError):
    """The database is at a revision this code does not ship: a newer version migrated it."""


class SchemaBehindError(SchemaNotCurrentError):
    """The database is behind this code and migrating was switched off."""


@dataclass(frozen=True)
class SchemaState:
    """The database's schema revision before and after `prepare_schema`."""

    before: str | None
    after: str | None

    @property
    def migrated(self) -> bool:
        """Whether this call ran migrations."""
        return self.before != self.after


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
    return _script().get_current_head()


def current_revision(database_url: str) -> str | None:
    """The schema revision the database is at (None for an empty database)."""
    engine = create_engine(sync_database_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def prepare_schema(database_url: str, *, migrate: bool) -> SchemaState:
    """Make sure the database's schema is the one this code needs, migrating it if `migrate`.

    Raises:
        SchemaAheadError: the database is at a revision this code does not know.
        SchemaBehindError: the database is behind and `migrate` is false.
    """
    engine = create_engine(sync_database_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            locking = connection.dialect.name == "postgresql"
            if locking:
                # Held by this session across the commits below, until it is unlocked.
                connection.execute(
                    text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                connection.commit()
            try:
                return _prepare_locked(connection, database_url, migrate=migrate)
            finally:
                if locking:
                    connection.rollback()
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                    connection.commit()
    finally:
        engine.dispose()


def _prepare_locked(connection: Connection, database_url: str, *, migrate: bool) -> SchemaState:
    script = _script()
    head = script.get_current_head()
    current = MigrationContext.configure(connection).get_current_revision()
    connection.commit()
    if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
        raise SchemaAheadError(
            f"the database schema is at revision {current}, which this control plane does not"
            f" know (its newest is {head}): a newer version of dicom-connector migrated it."
            " Run that version or a newer one on every replica; schemas are never migrated"
            " down automatically (restore the database from a backup taken before the"
            " upgrade to go back)"
        )
    if current == head:
        logger.info("database schema is current", revision=head)
        return SchemaState(before=current, after=current)
    if not migrate:
        raise SchemaBehindError(
            f"the database schema is at revision {current or 'none (an empty database)'} but"
            f" this control plane needs {head}; run the migrations: start one control plane"
            " without --no-migrate (it migrates under a lock, the other replicas wait), then"
            " the others"
        )
    config = alembic_config(database_url)
    # The migrations run on this connection, inside the lock it holds.
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    connection.commit()
    logger.info("database schema migrated", revision=head, state=current or "empty")
    return SchemaState(before=current, after=head)


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite:///unused.db"))
