"""Batched uploads against the real control plane (served by uvicorn on 127.0.0.1, on SQLite
and PostgreSQL): a series goes up in chunks, each instance's outcome is booked on its own."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from agent.health import PipelineCounters
from agent.spool import Spool
from agent.state import AgentState, InstanceRow, InstanceState
from agent.upload.base import UploadError, UploadResult
from agent.upload.builtin_store import BuiltinStoreDestination
from agent.uploader import UploadBatch, Uploader
from common.config import RoutingConfig
from tests.agent.test_reaper import T0, series_datasets, spool_datasets
from tests.agent.test_upload_builtin_store import TARGET
from tests.agent.test_upload_store_double import UvicornThread

# The control plane's database fixtures: every test here runs on SQLite and on PostgreSQL.
from tests.control_plane.conftest import (  # noqa: F401
    database_url,
    migrated_postgres,
    migrated_sqlite,
)

ADMIN_TOKEN = "admin-token-for-batch-tests-0123456789"
ROUTING = RoutingConfig()


@dataclass
class Store:
    """A running control plane, an agent token for it and an admin client."""

    url: str
    token: str
    admin: httpx2.AsyncClient


@pytest.fixture
def control_plane_url(database_url: str, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    from control_plane.main import create_app
    from control_plane.settings import ControlPlaneSettings

    settings = ControlPlaneSettings(
        database_url=database_url, blob_dir=tmp_path / "blobs", admin_token=ADMIN_TOKEN
    )
    server = UvicornThread(create_app(settings))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
async def store(control_plane_url: str) -> AsyncIterator[Store]:
    async with httpx2.AsyncClient(
        base_url=control_plane_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as admin:
        for path, body in (
            ("/api/v1/groups", {"id": "neuro", "label": "Neuro"}),
            ("/api/v1/groups/neuro/projects", {"label": "study-a"}),
            ("/api/v1/sites", {"name": "default", "timezone": "UTC"}),
            ("/api/v1/sites/default/agents", {"name": "edge", "deployment": "edge"}),
        ):
            response = await admin.post(path, json=body)
            assert response.status_code == 201, response.text
        yield Store(control_plane_url, response.json()["token"], admin)


@pytest.fixture
async def destination(store: Store) -> AsyncIterator[BuiltinStoreDestination]:
    built = BuiltinStoreDestination(store.url, store.token, retry_wait_initial=0.01)
    yield built
    await built.aclose()


def _spooled(state: AgentState, spool: Spool, n: int) -> list[InstanceRow]:
    datasets = series_datasets(n, comments="fw://neuro/study-a")
    spool_datasets(spool, datasets, T0)
    return state.spooled_instances(datasets[0].SeriesInstanceUID)


def _uploader(state: AgentState, destination: BuiltinStoreDestination) -> Uploader:
    return Uploader(
        state,
        destination,
        concurrency=2,
        counters=PipelineCounters(),
        clock=lambda: T0 + 60,
        rng=random.Random(7),
    )


async def _stored_files(store: Store) -> dict[str, str]:
    response = await store.admin.get("/api/v1/acquisitions", params={"group": "neuro"})
    assert response.status_code == 200
    return {
        file["sop_instance_uid"]: file["sha256"]
        for item in response.json()["items"]
        for file in item["files"]
    }


async def test_a_series_larger_than_the_cap_is_uploaded_in_chunks_and_stored_whole(
    store: Store, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    rows = _spooled(state, spool, destination.batch_limits.max_instances + 6)

    report = await _uploader(state, destination).upload_batch(
        UploadBatch(rows[0].series_instance_uid, TARGET, tuple(rows), T0 + 50), ROUTING
    )

    assert (report.uploaded, report.retrying, report.failed) == (len(rows), 0, 0)
    assert await _stored_files(store) == {row.sop_instance_uid: row.sha256 for row in rows}
    assert state.stats().uploaded_count == len(rows)
    assert not any(row.path.exists() for row in rows)


async def test_a_corrupted_spool_file_fails_alone_while_the_rest_of_its_chunk_is_stored(
    store: Store, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    rows = _spooled(state, spool, 4)
    damaged = rows[1]
    data = bytearray(damaged.path.read_bytes())
    data[-1] ^= 0xFF
    damaged.path.write_bytes(bytes(data))

    report = await _uploader(state, destination).upload_batch(
        UploadBatch(rows[0].series_instance_uid, TARGET, tuple(rows), T0 + 50), ROUTING
    )

    assert (report.uploaded, report.retrying, report.failed) == (3, 0, 1)
    failed = state.instance(damaged.id)
    assert failed.state is InstanceState.failed
    assert failed.last_error is not None
    assert failed.last_error.startswith("store refused the instance: sha256 mismatch")
    assert damaged.path.exists()
    assert set(await _stored_files(store)) == {
        row.sop_instance_uid for row in rows if row is not damaged
    }


async def test_an_unreadable_spool_file_fails_alone_and_the_others_are_sent(
    store: Store, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    rows = _spooled(state, spool, 3)
    rows[0].path.unlink()

    outcomes = await destination.upload_batch(rows, TARGET, ROUTING)

    missing, *sent = outcomes
    assert isinstance(missing, UploadError)
    assert not missing.retryable
    assert "cannot be read" in missing.message
    assert [type(outcome) for outcome in sent] == [UploadResult, UploadResult]
    assert set(await _stored_files(store)) == {row.sop_instance_uid for row in rows[1:]}


async def test_sending_a_chunk_again_is_answered_exists_with_the_same_files(
    state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    rows = _spooled(state, spool, 3)

    first = await destination.upload_batch(rows, TARGET, ROUTING)
    again = await destination.upload_batch(rows, TARGET, ROUTING)

    assert [o.status for o in first if isinstance(o, UploadResult)] == ["created"] * 3
    assert [o.status for o in again if isinstance(o, UploadResult)] == ["exists"] * 3
    assert [o.file_id for o in again if isinstance(o, UploadResult)] == [
        o.file_id for o in first if isinstance(o, UploadResult)
    ]


async def test_a_refused_token_keeps_the_batch_spooled_until_the_token_file_is_fixed(
    store: Store, state: AgentState, spool: Spool
) -> None:
    rows = _spooled(state, spool, 3)
    token = ["not-a-token"]
    destination = BuiltinStoreDestination(store.url, lambda: token[0], retry_wait_initial=0.01)
    batch = UploadBatch(rows[0].series_instance_uid, TARGET, tuple(rows), T0 + 50)
    try:
        refused = await _uploader(state, destination).upload_batch(batch, ROUTING)
        waiting = [state.instance(row.id) for row in rows]
        token[0] = store.token  # the admin installs the rotated token; no restart
        accepted = await _uploader(state, destination).upload_batch(batch, ROUTING)
    finally:
        await destination.aclose()

    assert (refused.failed, refused.retrying) == (0, 3)
    for row in waiting:
        assert row.state is InstanceState.spooled
        assert row.last_error is not None
        assert row.last_error.startswith("store answered HTTP 401")
    assert accepted.uploaded == 3
