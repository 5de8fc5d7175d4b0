"""Choosing a series' destination (`destination_by_group`), and replacing the destinations of
a running agent when a new config revision changes them.

Destinations are real servers: the store double, Orthanc with DICOMweb, the Flywheel fake.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from agent.health import PipelineCounters
from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from agent.site import SiteSnapshot
from agent.spool import Spool
from agent.state import AgentState, InstanceRow
from agent.upload.base import BatchLimits, UploadError, UploadResult
from agent.upload.builtin_store import BuiltinStoreDestination
from agent.upload.destinations import Destinations, build_destinations
from agent.uploader import UploadBatch, Uploader
from common.config import RoutingConfig, SiteConfig, validate_site_config
from common.hierarchy import HierarchyTarget
from common.routing import RoutingReason
from tests.agent.test_reaper import T0, series_datasets, spool_datasets
from tests.agent.test_runtime import Running, config_answer
from tests.agent.test_upload_builtin_store import TARGET
from tests.agent.test_upload_loop import wait_until
from tests.agent.test_upload_store_double import AGENT_TOKEN, StoreDouble
from tests.support.flywheel_fake import API_KEY, FlywheelFake
from tests.support.orthanc import Orthanc, running_orthanc
from tests.support.scu import send_datasets

ROUTING = RoutingConfig()


@pytest.fixture
def store() -> Iterator[StoreDouble]:
    double = StoreDouble(config_answer=config_answer())
    double.start()
    yield double
    double.stop()


@pytest.fixture
def flywheel() -> Iterator[FlywheelFake]:
    fake = FlywheelFake()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path / "orthanc", dicomweb=True) as server:
        yield server


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "fw-key"
    path.write_text(API_KEY, encoding="utf-8")
    return path


def spool_series(state: AgentState, spool: Spool, comments: str | None) -> list[InstanceRow]:
    datasets = series_datasets(2, comments=comments)
    spool_datasets(spool, datasets, T0)
    return state.spooled_instances(datasets[0].SeriesInstanceUID)


def site_config(**document: object) -> SiteConfig:
    return validate_site_config(document)


async def test_destination_by_group_sends_each_series_where_its_group_says(
    store: StoreDouble,
    flywheel: FlywheelFake,
    orthanc: Orthanc,
    key_file: Path,
    state: AgentState,
    spool: Spool,
) -> None:
    config = site_config(
        destination={"kind": "dicomweb", "url": orthanc.dicomweb_url},
        destination_by_group={
            "neuro": {"kind": "flywheel", "url": flywheel.base_url, "api_key_file": str(key_file)},
            "unknown": {"kind": "builtin"},
        },
    )
    builtin = BuiltinStoreDestination(store.base_url, AGENT_TOKEN)
    destinations = build_destinations(config, builtin, timeout=30)
    uploader = Uploader(
        state, destinations, concurrency=2, counters=PipelineCounters(), rng=random.Random(7)
    )
    neuro = spool_series(state, spool, "fw://neuro/study-a")
    cardio = spool_series(state, spool, "fw://cardio/trial")
    unrouted = spool_series(state, spool, None)
    targets = {
        "neuro": TARGET,
        "cardio": replace(TARGET, group="cardio", project="trial"),
        "unrouted": replace(
            TARGET,
            group=None,
            project=None,
            routing_string=None,
            routing_reason=RoutingReason.no_routing_string,
        ),
    }
    try:
        for rows, target in ((neuro, targets["neuro"]), (cardio, targets["cardio"])):
            batch = UploadBatch(rows[0].series_instance_uid, target, tuple(rows), T0)
            assert (await uploader.upload_batch(batch, ROUTING)).uploaded == 2
        batch = UploadBatch(
            unrouted[0].series_instance_uid, targets["unrouted"], tuple(unrouted), T0
        )
        assert (await uploader.upload_batch(batch, ROUTING)).uploaded == 2
    finally:
        await destinations.retire()
        await builtin.aclose()

    assert {f.name.removesuffix(".dcm") for _, f in flywheel.files()} == {
        row.sop_instance_uid for row in neuro
    }
    assert all(orthanc.holds_instance(row.sop_instance_uid) for row in cardio)
    assert orthanc.instance_count() == 2
    assert set(store.files) == {row.sop_instance_uid for row in unrouted}


class Recording:
    """A destination that stores nothing and says so; it records when it is closed."""

    def __init__(self) -> None:
        self.closed = 0
        self.release = asyncio.Event()

    @property
    def batch_limits(self) -> BatchLimits:
        return BatchLimits(max_instances=64, max_bytes=1 << 30)

    async def upload_batch(
        self, instances: Sequence[InstanceRow], target: HierarchyTarget, routing: RoutingConfig
    ) -> list[UploadResult | UploadError]:
        await self.release.wait()
        return [UploadError(True, "recording only") for _ in instances]

    async def aclose(self) -> None:
        self.closed += 1


async def test_a_retired_set_closes_its_destinations_only_after_the_batch_in_flight(
    state: AgentState, spool: Spool
) -> None:
    recording = Recording()
    old = Destinations((SiteConfig().destination, ()), recording, {}, [recording])
    uploader = Uploader(state, old, concurrency=1, counters=PipelineCounters())
    rows = spool_series(state, spool, None)
    in_flight = asyncio.create_task(
        uploader.upload_batch(
            UploadBatch(rows[0].series_instance_uid, TARGET, tuple(rows), T0), ROUTING
        )
    )
    await wait_until(lambda: old._leases == 1)

    await uploader.replace_destinations(Destinations.single(Recording())).retire()
    closed_while_sending = recording.closed
    recording.release.set()
    report = await in_flight

    assert closed_while_sending == 0
    assert recording.closed == 1
    assert report.retrying == 2


async def test_a_new_revision_moves_the_next_series_to_its_new_destination(
    store: StoreDouble, orthanc: Orthanc, tmp_path: Path
) -> None:
    token_file = tmp_path / "agent-token"
    token_file.write_text(AGENT_TOKEN, encoding="utf-8")
    settings = AgentSettings(
        control_plane_url=store.base_url,
        token_file=token_file,
        data_dir=tmp_path / "agent",
        dicom_host="127.0.0.1",
        dicom_port_override=0,
        reap_interval=0.05,
        spool_reserve_bytes=0,
        intake_processes=1,
        association_drain_timeout=5,
        upload_drain_timeout=5,
    )
    agent = Running(AgentRuntime(settings))
    try:
        port = await agent.started()
        first = series_datasets(2, comments="fw://neuro/study-a")
        assert await asyncio.to_thread(send_datasets, port, first) == [0, 0]
        await wait_until(lambda: agent.runtime.counters.uploads_succeeded == 2)

        document = config_answer(revision=2)["config"] | {
            "destination": {"kind": "dicomweb", "url": orthanc.dicomweb_url}
        }
        await agent.runtime.apply_config(
            SiteSnapshot("default", 2, "UTC", validate_site_config(document))
        )
        second = series_datasets(2, comments="fw://neuro/study-a")
        assert await asyncio.to_thread(send_datasets, port, second) == [0, 0]
        await wait_until(lambda: agent.runtime.counters.uploads_succeeded == 4)
    finally:
        await agent.stop()

    assert set(store.files) == {ds.SOPInstanceUID for ds in first}
    assert orthanc.instance_count() == 2
    assert all(orthanc.holds_instance(ds.SOPInstanceUID) for ds in second)
