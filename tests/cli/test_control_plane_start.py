"""`dicom-connector control-plane` at start-up: the schema is migrated once however many
replicas start together, a schema newer than the code or (with --no-migrate) older than it is
refused with a message naming both revisions, and the blob store is given exactly once.

Real processes on free loopback ports, stopped by the test that started them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx2
import psycopg
import pytest

from control_plane.migrate import head_revision, upgrade
from tests.support.cli_process import control_plane_process
from tests.support.postgres import libpq_url, temporary_database
from tests.support.s3_server import s3_server

FUTURE_REVISION = "0999_from_the_future"
MIGRATED = "database schema migrated"


def _healthy(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test only, without any schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cp.db'}"
        return
    with temporary_database() as url:
        yield url


@pytest.mark.postgres
def test_two_replicas_starting_together_on_an_empty_database_migrate_it_once(
    tmp_path: Path,
) -> None:
    with temporary_database() as url, ExitStack() as stack:
        started = [control_plane_process(url, tmp_path) for _ in range(2)]
        for process, _ in started:
            stack.callback(process.stop)
        for process, base_url in started:
            process.wait_ready(lambda base_url=base_url: _healthy(base_url))

        outputs = ["".join(process.output) for process, _ in started]
        assert sum(output.count(MIGRATED) for output in outputs) == 1, outputs
        assert all(
            "database schema is current" in output for output in outputs if MIGRATED not in output
        )


def test_a_database_migrated_by_a_newer_version_is_refused(
    fresh_database: str, tmp_path: Path
) -> None:
    upgrade(fresh_database)
    _set_revision(fresh_database, FUTURE_REVISION)

    process, _ = control_plane_process(fresh_database, tmp_path)

    assert process.wait_exit() == 2
    output = "".join(process.output)
    assert FUTURE_REVISION in output
    assert f"its newest is {head_revision()}" in output
    assert "newer version of dicom-connector migrated it" in output
    assert "Traceback" not in output


def test_a_database_behind_the_code_is_refused_under_no_migrate(
    fresh_database: str, tmp_path: Path
) -> None:
    process, _ = control_plane_process(fresh_database, tmp_path, "--no-migrate")

    assert process.wait_exit() == 2
    output = "".join(process.output)
    assert "at revision none (an empty database)" in output
    assert f"needs {head_revision()}" in output
    assert "without --no-migrate" in output
    assert "Traceback" not in output


def test_blob_dir_and_blob_url_together_are_refused(tmp_path: Path) -> None:
    process, _ = control_plane_process(
        f"sqlite:///{tmp_path / 'cp.db'}",
        tmp_path,
        "--blob-dir",
        str(tmp_path / "blobs"),
        "--blob-url",
        "s3://bucket/prefix",
    )

    assert process.wait_exit() == 2
    assert "--blob-dir and --blob-url name two blob stores" in "".join(process.output)


def test_a_blob_url_that_is_not_s3_is_refused(tmp_path: Path) -> None:
    process, _ = control_plane_process(
        f"sqlite:///{tmp_path / 'cp.db'}", tmp_path, "--blob-url", "gs://bucket/prefix"
    )

    assert process.wait_exit() == 2
    assert "s3://BUCKET/PREFIX" in "".join(process.output)


def test_a_blob_url_whose_bucket_does_not_exist_is_refused(tmp_path: Path) -> None:
    with s3_server() as s3:
        process, _ = control_plane_process(
            f"sqlite:///{tmp_path / 'cp.db'}",
            tmp_path,
            "--blob-url",
            f"s3://no-such-bucket-{s3.bucket}/connector",
            env=s3.env,
        )

        assert process.wait_exit() == 2
    output = "".join(process.output)
    assert "cannot be used" in output
    assert "AWS_ENDPOINT_URL" in output
    assert "Traceback" not in output


def _set_revision(database_url: str, revision: str) -> None:
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as connection:
            connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        return
    with psycopg.connect(libpq_url(database_url), autocommit=True) as connection:
        connection.execute("UPDATE alembic_version SET version_num = %s", (revision,))
