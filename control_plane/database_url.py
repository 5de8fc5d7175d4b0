"""Database URL normalisation: the one place that knows which drivers we run on.

The app talks to the database through async drivers (aiosqlite, psycopg async); Alembic runs
on the sync flavour of the same driver. Must not import anything beyond SQLAlchemy's URL parser.
"""

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite", "sqlite+aiosqlite"}
_POSTGRES_DRIVERS = {
    "postgres",
    "postgresql",
    "postgresql+psycopg",
    "postgresql+psycopg_async",
}
_ACCEPTED = "sqlite:///PATH, sqlite+aiosqlite:///PATH, postgresql://… or postgresql+psycopg://…"


def _parse(database_url: str) -> URL:
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise ValueError(f"the database URL could not be parsed; use one of {_ACCEPTED}") from exc
    if url.drivername in _SQLITE_DRIVERS:
        if url.database in (None, "", ":memory:"):
            raise ValueError(
                "an in-memory SQLite database would lose everything on restart and cannot be"
                " shared between connections; give a file path: sqlite:///PATH"
            )
        return url.set(drivername="sqlite")
    if url.drivername in _POSTGRES_DRIVERS:
        return url.set(drivername="postgresql+psycopg")
    raise ValueError(f"database driver {url.drivername!r} is not supported; use one of {_ACCEPTED}")


def is_sqlite(database_url: str) -> bool:
    """Whether the URL (any accepted flavour) points at a SQLite file."""
    return _parse(database_url).drivername == "sqlite"


def async_database_url(database_url: str) -> str:
    """The URL rewritten for the async driver the app uses (aiosqlite or psycopg async)."""
    url = _parse(database_url)
    if url.drivername == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    return url.render_as_string(hide_password=False)


def sync_database_url(database_url: str) -> str:
    """The URL rewritten for the sync driver Alembic uses (pysqlite or psycopg)."""
    return _parse(database_url).render_as_string(hide_password=False)
