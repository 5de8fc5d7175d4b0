"""Engine and session factory for the control-plane database (SQLite file or PostgreSQL).

Must not import FastAPI: routes reach the database through `control_plane.deps`.
"""

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from control_plane.database_url import async_database_url, is_sqlite

# Seconds a SQLite writer waits for another writer before failing with "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine for `database_url`, with SQLite set up for safe concurrent writers.

    Bound parameters are hidden from error messages because they may hold subject or session
    labels, which are patient identifiers.
    """
    url = async_database_url(database_url)
    if not is_sqlite(url):
        return create_async_engine(url, hide_parameters=True, pool_pre_ping=True)

    # One connection: SQLite runs one writer at a time anyway, and when several connections of
    # this process contend, sqlite3's busy handler sleeps in steps of up to 100 ms. Queuing on
    # the async pool instead hands the connection over as soon as it is free. The busy timeout
    # still covers other processes (migrations run from a thread at start-up).
    engine = create_async_engine(
        url,
        hide_parameters=True,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
        pool_size=1,
        max_overflow=0,
        pool_timeout=SQLITE_BUSY_TIMEOUT_S,
    )
    event.listen(engine.sync_engine, "connect", _configure_sqlite_connection)
    event.listen(engine.sync_engine, "begin", _begin_immediate)
    return engine


def ensure_database_directory(database_url: str) -> None:
    """Create the directory of a SQLite database file (nothing to do for PostgreSQL)."""
    if not is_sqlite(database_url):
        return
    database = make_url(async_database_url(database_url)).database
    if database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # sqlite3's own BEGIN handling is disabled so that `_begin_immediate` decides how
    # transactions start; WAL lets readers proceed while a writer holds the lock.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    # A deferred transaction that reads and then writes fails at once with "database is
    # locked" when another writer got in between; taking the write lock up front makes
    # concurrent ingests queue on the busy timeout instead.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (routes serialise them afterwards)."""
    return async_sessionmaker(engine, expire_on_commit=False)


# Readers do not queue behind the one writer connection: WAL lets them read a snapshot while
# it writes.
SQLITE_READ_POOL_SIZE = 4


def create_read_engine(database_url: str) -> AsyncEngine | None:
    """An engine for read-only sessions on SQLite; None on PostgreSQL, where the main engine's
    pool serves readers and writers alike.

    On SQLite every session of the main engine takes the write lock (BEGIN IMMEDIATE) on one
    connection, so a read through it waits for every write in flight. This engine's sessions
    begin deferred transactions on connections of their own, set `query_only` so that a write
    through them fails loudly, and read a consistent snapshot beside the writer.
    """
    if not is_sqlite(database_url):
        return None
    engine = create_async_engine(
        async_database_url(database_url),
        hide_parameters=True,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
        pool_size=SQLITE_READ_POOL_SIZE,
        max_overflow=0,
        pool_timeout=SQLITE_BUSY_TIMEOUT_S,
    )
    event.listen(engine.sync_engine, "connect", _configure_sqlite_reader)
    event.listen(engine.sync_engine, "begin", _begin_deferred)
    return engine


def _configure_sqlite_reader(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def _begin_deferred(connection: Any) -> None:
    # sqlite3 in autocommit mode starts no transaction by itself; without one, each statement
    # of a request would read a different snapshot.
    connection.exec_driver_sql("BEGIN DEFERRED")
