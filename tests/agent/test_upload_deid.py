"""De-identification in the upload pipeline: what leaves the agent, and what a failure holds back.

Real spool and state, the real de-identification engine, and the store double over HTTP: the
bytes checked are the bytes the store received.
"""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from agent.health import PipelineCounters, health_report, take_snapshot
from agent.outgoing import DeidProfile, Outgoing
from agent.reaper import Reaper
from agent.site import SiteSnapshot
from agent.spool import Spool
from agent.state import AgentState, InstanceState
from agent.upload.builtin_store import BuiltinStoreDestination
from agent.uploader import Uploader, UploadLoop
from common.config import validate_site_config
from tests.agent.test_reaper import series_datasets, spool_datasets
from tests.agent.test_upload_store_double import AGENT_TOKEN, StoredFile, StoreDouble

# The tests write a date that is not a date on purpose; pydicom says so when it is set.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR DA")

SALT = "a3" * 32
OTHER_SALT = "5c" * 32
PATIENT_ID = "SYNTH001"
INCREMENT_STUDY_DATE: dict[str, Any] = {
    "version": 1,
    "name": "shift study dates",
    "dicom": {
        "date-increment": -10,
        "fields": [
            {"name": "StudyDate", "increment-date": True},
            {"name": "PatientName", "replace-with": "REDACTED"},
        ],
    },
}


def site(profile: Any, salt: str | None = SALT, **deid: Any) -> SiteSnapshot:
    config = validate_site_config(
        {"timing": {"acquisition_delay": "30s"}, "deid": {"profile": profile, **deid}}
    )
    return SiteSnapshot("default", 1, "UTC", config, deid_salt=salt)


@pytest.fixture
def store() -> Iterator[StoreDouble]:
    double = StoreDouble()
    double.start()
    yield double
    double.stop()


@pytest.fixture
async def destination(store: StoreDouble) -> AsyncIterator[BuiltinStoreDestination]:
    built = BuiltinStoreDestination(store.base_url, AGENT_TOKEN, retry_wait_initial=0.01)
    yield built
    await built.aclose()


class Pipeline:
    """One agent's upload pipeline over `state`, as the runtime builds it."""

    def __init__(
        self,
        state: AgentState,
        destination: BuiltinStoreDestination,
        snapshot: SiteSnapshot,
        outgoing_dir: Path,
        now: float,
    ) -> None:
        self.now = now
        self.counters = PipelineCounters()
        self.outgoing = Outgoing(outgoing_dir)
        self.outgoing.reset()
        clock = self.clock
        uploader = Uploader(
            state,
            destination,
            concurrency=2,
            counters=self.counters,
            clock=clock,
            outgoing=self.outgoing,
        )
        self.loop = UploadLoop(
            state,
            Reaper(state, clock=clock),
            uploader,
            snapshot,
            counters=self.counters,
            interval=0.05,
            drain_timeout=5,
            clock=clock,
            outgoing=self.outgoing,
        )
        self.uploader = uploader

    def clock(self) -> float:
        return self.now

    async def run_once(self) -> int:
        """One tick and its batches; how many instances were uploaded."""
        uploaded = 0
        for batch in await self.loop.tick():
            report = await self.uploader.upload_batch(batch, self.loop.snapshot.config.routing)
            uploaded += report.uploaded
        return uploaded


def uid_values(ds: Dataset) -> set[str]:
    """Every UI value in a dataset, its file meta and nested sequences, but the
    Implementation Class UID (it names the software that wrote the file, not a patient)."""
    found: set[str] = set()
    for element in [*ds.file_meta, *ds]:
        if element.keyword == "ImplementationClassUID":
            continue
        if element.VR == "UI" and element.value:
            found.add(str(element.value))
        elif element.VR == "SQ":
            for item in element.value:
                found |= uid_values_of_items(item)
    return found


def uid_values_of_items(item: Dataset) -> set[str]:
    found: set[str] = set()
    for element in item:
        if element.VR == "UI" and element.value:
            found.add(str(element.value))
        elif element.VR == "SQ":
            for nested in element.value:
                found |= uid_values_of_items(nested)
    return found


def stored(store: StoreDouble) -> list[tuple[StoredFile, Dataset]]:
    """Every file the store holds, with its dataset as stored."""
    files = list(store.files.values())
    return [(file, pydicom.dcmread(io.BytesIO(file.data))) for file in files]


async def test_a_series_under_basic_arrives_without_its_identifiers_under_new_uids(
    state: AgentState,
    spool: Spool,
    destination: BuiltinStoreDestination,
    store: StoreDouble,
    tmp_path: Path,
) -> None:
    datasets = series_datasets(3, comments="fw://neuro/study-a")
    t0 = time.time()
    spool_datasets(spool, datasets, t0 - 100)
    pipeline = Pipeline(state, destination, site("basic"), tmp_path / "outgoing", t0)

    assert await pipeline.run_once() == 3

    files = stored(store)
    assert len(files) == 3
    originals = {ds.SOPInstanceUID for ds in datasets}
    for file, ds in files:
        for identifier in (PATIENT_ID, "SYNTHETIC^", "fw://neuro", "Brain", "T1 MPRAGE"):
            assert identifier.encode() not in file.data
        uids = {datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID, *originals}
        assert not uids & uid_values(ds)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        # The routing string was read before de-identification removed it.
        assert (file.group, file.project, file.routing_reason) == ("neuro", "study-a", "routed")
        assert file.params["series_instance_uid"] == ds.SeriesInstanceUID
        assert file.params["study_instance_uid"] == ds.StudyInstanceUID
        assert file.params["subject"] != PATIENT_ID
        assert file.params["session"] != "Brain"
    assert len({ds.SeriesInstanceUID for _, ds in files}) == 1
    assert len({ds.StudyInstanceUID for _, ds in files}) == 1
    assert len({ds.SOPInstanceUID for _, ds in files}) == 3
    assert not list((tmp_path / "outgoing").iterdir()), "copies are removed once uploaded"


async def test_uids_stay_the_same_across_a_restart_and_for_a_late_instance(
    state: AgentState,
    spool: Spool,
    destination: BuiltinStoreDestination,
    store: StoreDouble,
    tmp_path: Path,
) -> None:
    first_series = series_datasets(2, comments="fw://neuro/study-a")
    second_series = series_datasets(1, comments="fw://neuro/study-a")
    late = series_datasets(
        1, comments="fw://neuro/study-a", series_uid=first_series[0].SeriesInstanceUID
    )
    t0 = time.time()
    spool_datasets(spool, [*first_series, *second_series], t0 - 100)
    before = Pipeline(state, destination, site("basic"), tmp_path / "outgoing", t0)
    assert await before.run_once() == 3
    series_uids = {ds.SeriesInstanceUID for _, ds in stored(store)}
    study_uids = {ds.StudyInstanceUID for _, ds in stored(store)}
    assert len(series_uids) == 2
    assert len(study_uids) == 1, "both series belong to one study"

    spool_datasets(spool, late, t0)
    restarted = Pipeline(state, destination, site("basic"), tmp_path / "outgoing", t0 + 100)
    assert await restarted.run_once() == 1

    files = stored(store)
    assert len(files) == 4
    assert {ds.SeriesInstanceUID for _, ds in files} == series_uids
    assert {ds.StudyInstanceUID for _, ds in files} == study_uids


async def test_another_sites_salt_gives_other_uids(
    state: AgentState,
    spool: Spool,
    destination: BuiltinStoreDestination,
    store: StoreDouble,
    tmp_path: Path,
) -> None:
    datasets = series_datasets(1, comments=None)
    t0 = time.time()
    spool_datasets(spool, datasets, t0 - 100)
    copies = []
    for salt in (SALT, OTHER_SALT):
        outgoing = Outgoing(tmp_path / salt[:4])
        outgoing.reset()
        built = DeidProfile.of(site("basic", salt).config.deid, salt)
        assert built is not None
        [copy] = outgoing.prepare(state.spooled_instances(datasets[0].SeriesInstanceUID), built)
        copies.append(copy)
    assert copies[0].series_instance_uid != copies[1].series_instance_uid
    assert copies[0].sop_instance_uid != copies[1].sop_instance_uid


async def test_a_flywheel_profile_is_applied_field_by_field(
    state: AgentState,
    spool: Spool,
    destination: BuiltinStoreDestination,
    store: StoreDouble,
    tmp_path: Path,
) -> None:
    datasets = series_datasets(2, comments="fw://neuro/study-a")
    t0 = time.time()
    spool_datasets(spool, datasets, t0 - 100)
    pipeline = Pipeline(state, destination, site(INCREMENT_STUDY_DATE), tmp_path / "out", t0)

    assert await pipeline.run_once() == 2

    for _, ds in stored(store):
        assert ds.StudyDate == "20231223"
        assert ds.PatientName == "REDACTED"
        # Not named by the profile: kept as sent.
        assert ds.PatientID == PATIENT_ID
        assert ds.SeriesDate == "20240102"


async def test_a_series_that_cannot_be_deidentified_sends_nothing_and_shows_in_health(
    state: AgentState,
    spool: Spool,
    destination: BuiltinStoreDestination,
    store: StoreDouble,
    tmp_path: Path,
) -> None:
    datasets = series_datasets(3, comments="fw://neuro/study-a")
    datasets[2].StudyDate = "NOTADATE"
    uid = datasets[0].SeriesInstanceUID
    t0 = time.time()
    spool_datasets(spool, datasets, t0 - 100)
    pipeline = Pipeline(state, destination, site(INCREMENT_STUDY_DATE), tmp_path / "out", t0)

    assert await pipeline.run_once() == 0

    assert store.files == {}
    series = state.series(uid)
    assert series is not None
    assert series.failed_at is not None
    assert series.failure is not None
    assert "de-identification failed" in series.failure
    assert "NOTADATE" not in series.failure
    instances = [state.instance(number) for number in range(1, 4)]
    assert {instance.state for instance in instances} == {InstanceState.failed}
    assert all(instance.path.exists() for instance in instances), "kept for support"

    report = health_report(
        take_snapshot(
            state,
            pipeline.counters,
            spool_dir=tmp_path,
            reserve_bytes=0,
            reap_time_threshold=3600,
            config_revision=1,
            uploads_open=True,
            listener_ok=True,
            now=t0,
        )
    )
    assert report.failed_series == 1
    [failed] = report.failed_series_recent
    assert failed.instances == 3
    assert "de-identification failed" in failed.reason
    assert uid not in report.model_dump_json()
    assert report.last_error is not None
    assert "de-identification" in report.last_error

    # A late instance of the failed series does not leave either.
    late = series_datasets(1, comments="fw://neuro/study-a", series_uid=uid)
    spool_datasets(spool, late, t0)
    pipeline.now = t0 + 100
    assert await pipeline.run_once() == 0
    assert store.files == {}
    assert state.instance(4).state is InstanceState.failed


async def test_a_series_whose_first_instance_cannot_be_deidentified_fails_at_reap(
    state: AgentState,
    spool: Spool,
    destination: BuiltinStoreDestination,
    store: StoreDouble,
    tmp_path: Path,
) -> None:
    datasets = series_datasets(2, comments="fw://neuro/study-a")
    datasets[0].StudyDate = "NOTADATE"
    uid = datasets[0].SeriesInstanceUID
    t0 = time.time()
    spool_datasets(spool, datasets, t0 - 100)
    pipeline = Pipeline(state, destination, site(INCREMENT_STUDY_DATE), tmp_path / "out", t0)

    assert await pipeline.run_once() == 0

    assert store.files == {}
    series = state.series(uid)
    assert series is not None
    assert series.failed_at is not None
    assert series.target is None


async def test_without_a_salt_a_deidentifying_site_uploads_nothing_and_says_why(
    state: AgentState,
    spool: Spool,
    destination: BuiltinStoreDestination,
    store: StoreDouble,
    tmp_path: Path,
) -> None:
    datasets = series_datasets(1, comments="fw://neuro/study-a")
    t0 = time.time()
    spool_datasets(spool, datasets, t0 - 100)
    pipeline = Pipeline(state, destination, site("basic", salt=None), tmp_path / "out", t0)

    assert await pipeline.run_once() == 0

    assert store.files == {}
    assert pipeline.counters.last_error is not None
    assert "salt" in pipeline.counters.last_error
    assert state.spooled_instances(datasets[0].SeriesInstanceUID), "kept, not failed"
