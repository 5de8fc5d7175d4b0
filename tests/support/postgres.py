"""PostgreSQL for tests: a throwaway database per test session, on the server named by
`DICOM_CONNECTOR_TEST_PG` (default `postgresql://127.0.0.1:5432/test`).

Outside CI an unreachable server skips the tests that need it; with `CI` set it fails them.
Usage in a conftest::

    @pytest.fixture(scope="session")
    def postgres_database() -> Iterator[str]:
        with temporary_database() as url:
            yield url

then `reset_schema(url)` before each test that needs an empty database, or migrate once and
`truncate_tables(url)` before each test that needs empty tables.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

SERVER_URL_ENV = "DICOM_CONNECTOR_TEST_PG"
DEFAULT_SERVER_URL = "postgresql://127.0.0.1:5432/test"
DATABASE_PREFIX = "dc_test_"


def server_url() -> str:
    """The URL of a database on the test server that we may connect to and create others from."""
    return os.environ.get(SERVER_URL_ENV, DEFAULT_SERVER_URL)


def libpq_url(url: str) -> str:
    """`url` without a SQLAlchemy driver suffix (`postgresql+psycopg://` → `postgresql://`)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _connect(url: str) -> psycopg.Connection:
    try:
        return psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _unavailable(
            f"PostgreSQL is not reachable at {make_url(url).render_as_string()} ({exc}); start"
            f" it or point {SERVER_URL_ENV} at a server where this user may create databases"
        )


@contextmanager
def temporary_database(url: str | None = None) -> Iterator[str]:
    """Create a uniquely named database on the server, yield its URL, drop it afterwards.

    Commits do not wait for the disk (`synchronous_commit = off`): a test database never has
    to survive a server crash, and waiting would dominate the suite's run time. The drop uses
    FORCE, so connections a failed test left open do not keep the database alive.
    """
    base = url or server_url()
    name = f"{DATABASE_PREFIX}{secrets.token_hex(6)}"
    with _connect(base) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        connection.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(name))
        )
    try:
        yield make_url(libpq_url(base)).set(database=name).render_as_string(hide_password=False)
    finally:
        with _connect(base) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def reset_schema(url: str) -> None:
    """Empty a test database: drop and recreate its `public` schema (tables, types, versions)."""
    with _connect(url) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")


def truncate_tables(url: str, keep: tuple[str, ...] = ("alembic_version",)) -> None:
    """Delete every row of every table in `public` except `keep` (much faster than migrating
    a fresh schema for each test)."""
    with _connect(url) as connection:
        names = [
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
            if row[0] not in keep
        ]
        if names:
            connection.execute(
                sql.SQL("TRUNCATE TABLE {} RESTART IDENTITY CASCADE").format(
                    sql.SQL(", ").join(sql.Identifier(name) for name in names)
                )
            )


def on_databases(argname: str, *, sqlite: bool) -> pytest.MarkDecorator:
    """Parametrize the fixture `argname` (indirectly) with "postgresql", and "sqlite" first
    when `sqlite`; the fixture builds the database from `request.param`."""
    postgresql = pytest.param("postgresql", marks=pytest.mark.postgres)
    return pytest.mark.parametrize(
        argname, ["sqlite", postgresql] if sqlite else [postgresql], indirect=True
    )
