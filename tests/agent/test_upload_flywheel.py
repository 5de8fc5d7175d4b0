"""The Flywheel destination through fw-client against a FAKE Flywheel (tests/support/
flywheel_fake.py: the documented label upload, in memory; no Flywheel runs here)."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import pytest

from agent.health import PipelineCounters
from agent.spool import Spool
from agent.state import AgentState, InstanceRow, InstanceState
from agent.upload.base import UploadError, UploadResult
from agent.upload.flywheel import UPLOADED, FlywheelDestination, file_name
from agent.upload.http_retry import RetryPolicy
from agent.upload.multipart import FormDataBody, open_part
from agent.uploader import UploadBatch, Uploader
from common.config import RoutingConfig
from common.routing import RoutingReason
from tests.agent.test_reaper import T0, series_datasets, spool_datasets
from tests.agent.test_upload_builtin_store import TARGET
from tests.agent.test_upload_loop import wait_until
from tests.support.flywheel_fake import API_KEY, FlywheelFake

ROUTING = RoutingConfig()


@pytest.fixture
def flywheel() -> Iterator[FlywheelFake]:
    fake = FlywheelFake()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "fw-key"
    path.write_text(f"{API_KEY}\n", encoding="utf-8")
    return path


@pytest.fixture
async def destination(flywheel: FlywheelFake, key_file: Path) -> AsyncIterator[FlywheelDestination]:
    built = FlywheelDestination(flywheel.base_url, key_file, retry=RetryPolicy(wait_initial=0.01))
    yield built
    await built.aclose()


def rotate_key(path: Path, key: str) -> None:
    path.write_text(key, encoding="utf-8")


def spool_series(state: AgentState, spool: Spool, n: int) -> list[InstanceRow]:
    datasets = series_datasets(n, comments="fw://neuro/study-a")
    spool_datasets(spool, datasets, T0)
    return state.spooled_instances(datasets[0].SeriesInstanceUID)


async def test_a_series_is_filed_by_label_with_its_uids_and_each_file_under_its_instance(
    flywheel: FlywheelFake, state: AgentState, spool: Spool, destination: FlywheelDestination
) -> None:
    rows = spool_series(state, spool, 3)

    outcomes = await destination.upload_batch(rows, TARGET, ROUTING)

    assert outcomes == [UploadResult(file_id=file_name(row), status=UPLOADED) for row in rows]
    [acquisition] = flywheel.acquisitions
    assert (
        acquisition.group,
        acquisition.project,
        acquisition.subject,
        acquisition.session,
        acquisition.label,
        acquisition.session_uid,
        acquisition.uid,
    ) == (
        "neuro",
        "study-a",
        "SUBJ7",
        "visit-1",
        "T1 MPRAGE",
        rows[0].study_instance_uid,
        rows[0].series_instance_uid,
    )
    assert {name: f.data for name, f in acquisition.files.items()} == {
        file_name(row): row.path.read_bytes() for row in rows
    }
    assert {f.info["sha256"] for f in acquisition.files.values()} == {row.sha256 for row in rows}


async def test_sending_a_series_again_replaces_its_files_and_never_adds_a_copy(
    flywheel: FlywheelFake, state: AgentState, spool: Spool, destination: FlywheelDestination
) -> None:
    rows = spool_series(state, spool, 2)

    await destination.upload_batch(rows, TARGET, ROUTING)
    again = await destination.upload_batch(rows, TARGET, ROUTING)

    assert [type(o) for o in again] == [UploadResult, UploadResult]
    assert len(flywheel.files()) == 2
    assert {f.version for _, f in flywheel.files()} == {2}


async def test_a_series_without_routing_goes_to_the_sites_fallback_names(
    flywheel: FlywheelFake, state: AgentState, spool: Spool, destination: FlywheelDestination
) -> None:
    rows = spool_series(state, spool, 1)
    unrouted = replace(
        TARGET,
        group=None,
        project=None,
        routing_string=None,
        routing_reason=RoutingReason.no_routing_string,
    )

    await destination.upload_batch(rows, unrouted, RoutingConfig(unsorted_project="Inbox"))

    [acquisition] = flywheel.acquisitions
    assert (acquisition.group, acquisition.project) == ("unknown", "Inbox")


async def test_a_group_flywheel_does_not_know_is_filed_where_flywheel_puts_it(
    flywheel: FlywheelFake, state: AgentState, spool: Spool, destination: FlywheelDestination
) -> None:
    rows = spool_series(state, spool, 1)

    await destination.upload_batch(rows, replace(TARGET, group="cardio"), ROUTING)

    [acquisition] = flywheel.acquisitions
    assert (acquisition.group, acquisition.project) == ("unknown", "cardio_study-a")


async def test_a_rotated_key_file_is_used_without_a_restart_and_a_bad_key_waits(
    flywheel: FlywheelFake,
    state: AgentState,
    spool: Spool,
    destination: FlywheelDestination,
    key_file: Path,
) -> None:
    rows = spool_series(state, spool, 1)
    flywheel.api_key = "rotated-key-4567"

    with pytest.raises(UploadError) as refused:
        await destination.upload_batch(rows, TARGET, ROUTING)
    rotate_key(key_file, "rotated-key-4567")
    outcomes = await destination.upload_batch(rows, TARGET, ROUTING)

    assert refused.value.retryable
    assert refused.value.message == "Flywheel answered HTTP 401: Invalid or missing API key"
    assert [type(o) for o in outcomes] == [UploadResult]


async def test_outcomes_are_booked_a_5xx_is_retried_and_a_refusal_keeps_no_label_in_the_error(
    flywheel: FlywheelFake, state: AgentState, spool: Spool, destination: FlywheelDestination
) -> None:
    rows = spool_series(state, spool, 2)
    uploader = Uploader(
        state,
        destination,
        concurrency=2,
        counters=PipelineCounters(),
        clock=lambda: T0 + 60,
        rng=random.Random(7),
    )
    batch = UploadBatch(rows[0].series_instance_uid, TARGET, tuple(rows), T0 + 50)
    flywheel.fail_next.extend([503, 503, 503])

    waiting = await uploader.upload_batch(batch, ROUTING)
    stored = await uploader.upload_batch(batch, ROUTING)

    assert (waiting.retrying, stored.uploaded) == (2, 2)
    assert all(state.instance(row.id).state is InstanceState.uploaded for row in rows)
    assert not any(row.path.exists() for row in rows)


async def test_a_refusal_fails_the_instances_with_flywheels_message_without_our_labels(
    flywheel: FlywheelFake, state: AgentState, spool: Spool, destination: FlywheelDestination
) -> None:
    rows = spool_series(state, spool, 1)
    flywheel.read_only_groups.add("neuro")

    with pytest.raises(UploadError) as raised:
        await destination.upload_batch(rows, TARGET, ROUTING)

    assert not raised.value.retryable
    assert raised.value.message == (
        "Flywheel answered HTTP 403: User does not have read-write access to group <redacted>"
    )


async def test_a_form_data_body_is_as_long_as_announced_and_parses_into_its_fields_and_files(
    state: AgentState, spool: Spool
) -> None:
    rows = spool_series(state, spool, 2)
    parts = [await open_part(row) for row in rows]
    try:
        body = FormDataBody({"metadata": '{"label": "Säo"}'}, parts, ["a.dcm", "b.dcm"])
        data = b"".join([chunk async for chunk in body.chunks()])
    finally:
        for part in parts:
            os.close(part.descriptor)

    assert len(data) == body.content_length
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {body.content_type}\r\n\r\n".encode() + data
    )
    fields = [
        (
            part.get_param("name", header="content-disposition"),
            part.get_filename(),
            part.get_payload(decode=True),
        )
        for part in message.get_payload()
    ]
    assert fields == [
        ("metadata", None, '{"label": "Säo"}'.encode()),
        ("file1", "a.dcm", rows[0].path.read_bytes()),
        ("file2", "b.dcm", rows[1].path.read_bytes()),
    ]


async def test_a_key_rotated_while_a_chunk_is_in_flight_lets_that_chunk_finish(
    flywheel: FlywheelFake,
    state: AgentState,
    spool: Spool,
    destination: FlywheelDestination,
    key_file: Path,
) -> None:
    first, second = spool_series(state, spool, 1), spool_series(state, spool, 1)
    flywheel.other_keys.add("rotated-key-4567")
    flywheel.hold = threading.Event()
    old_key = asyncio.create_task(destination.upload_batch(first, TARGET, ROUTING))
    await wait_until(lambda: flywheel.waiting == 1)
    rotate_key(key_file, "rotated-key-4567")
    new_key = asyncio.create_task(destination.upload_batch(second, TARGET, ROUTING))
    # The new key's chunk goes out while the old key's is still answered: replacing the
    # client neither closes the old one under its request nor waits for it (the fake holds
    # answers for 30 s).
    await wait_until(lambda: flywheel.waiting == 2, within=10)

    flywheel.hold.set()
    outcomes = await old_key + await new_key

    assert [type(o) for o in outcomes] == [UploadResult, UploadResult]
    assert flywheel.statuses == [200, 200]


async def test_session_metadata_goes_into_the_sessions_info(
    flywheel: FlywheelFake, state: AgentState, spool: Spool, destination: FlywheelDestination
) -> None:
    first, second = spool_series(state, spool, 1), spool_series(state, spool, 1)

    await destination.upload_batch(first, replace(TARGET, metadata={"protocol": "BRAIN"}), ROUTING)
    await destination.upload_batch(
        second, replace(TARGET, metadata={"protocol": "SPINE", "visit": "V2"}), ROUTING
    )

    # Flywheel sets each info key only where the session has none (core's upsert).
    assert flywheel.session_info == {
        ("neuro", "study-a", "SUBJ7", "visit-1"): {"protocol": "BRAIN", "visit": "V2"}
    }
