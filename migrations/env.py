"""Alembic environment: runs migrations on the URL that `control_plane.migrate` passes in.

The URL never comes from an ini file, so a deployment cannot migrate a database other than
the one its settings name.
"""

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

from control_plane.migrate import MIGRATION_LOCK_KEY
from control_plane.models import Base

config = context.config
_given_url = config.attributes.get("database_url")
if not isinstance(_given_url, str):
    raise RuntimeError(
        "no database URL was given to the migrations; run them through"
        " control_plane.migrate.upgrade(database_url), not the bare alembic command"
    )
database_url: str = _given_url


def _configure(connection: Connection | None) -> None:
    is_sqlite = database_url.startswith("sqlite")
    context.configure(
        connection=connection,
        url=None if connection is not None else database_url,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place; batch mode recreates the table instead.
        render_as_batch=is_sqlite,
        compare_type=True,
        literal_binds=connection is None,
    )


def run_migrations_offline() -> None:
    """Emit the migration SQL without a database connection (`--sql` mode)."""
    _configure(None)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Apply the migrations over a connection to the database: the one
    `control_plane.migrate.prepare_schema` holds its lock on, else a new one."""
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _migrate(given)
        return
    engine = create_engine(database_url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        _migrate(connection)
    engine.dispose()


def _migrate(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Replicas starting together would otherwise race through the same migration;
            # the lock is released when this transaction ends (a session that already holds
            # it, as prepare_schema's does, takes it again at once).
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
