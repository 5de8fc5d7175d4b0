"""STOW-RS into a real Orthanc with Debian's DICOMweb plugin, booked through the uploader."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from agent.health import PipelineCounters
from agent.spool import Spool
from agent.state import AgentState, InstanceRow, InstanceState
from agent.upload.base import UploadError, UploadResult
from agent.upload.dicomweb import STORED, DicomwebDestination
from agent.upload.http_retry import RetryPolicy
from agent.uploader import UploadBatch, Uploader
from common.config import RoutingConfig
from tests.agent.test_reaper import T0, series_datasets, spool_datasets
from tests.agent.test_upload_builtin_store import TARGET
from tests.support.dicom_factory import encode_part10
from tests.support.orthanc import Orthanc, running_orthanc

ROUTING = RoutingConfig()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path / "orthanc", dicomweb=True) as server:
        yield server


@pytest.fixture
async def destination(orthanc: Orthanc) -> AsyncIterator[DicomwebDestination]:
    built = DicomwebDestination(orthanc.dicomweb_url, retry=RetryPolicy(wait_initial=0.01))
    yield built
    await built.aclose()


def uploader(state: AgentState, destination: DicomwebDestination) -> Uploader:
    return Uploader(
        state,
        destination,
        concurrency=2,
        counters=PipelineCounters(),
        clock=lambda: T0 + 60,
        rng=random.Random(7),
    )


def spool_series(state: AgentState, spool: Spool, n: int) -> list[InstanceRow]:
    datasets = series_datasets(n, comments="fw://neuro/study-a")
    spool_datasets(spool, datasets, T0)
    return state.spooled_instances(datasets[0].SeriesInstanceUID)


def spool_from_another_study(spool: Spool, recorded: InstanceRow) -> None:
    """An instance of `recorded`'s series whose file names another study than its record."""
    [ds] = series_datasets(1, comments=None, series_uid=recorded.series_instance_uid)
    ds.StudyInstanceUID = generate_uid()
    spool.store(
        encode_part10(ds),
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        series_instance_uid=ds.SeriesInstanceUID,
        study_instance_uid=recorded.study_instance_uid,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        received_at=T0,
    )


async def test_a_series_is_stored_in_orthanc_and_storing_it_again_is_a_success_not_a_copy(
    orthanc: Orthanc, state: AgentState, spool: Spool, destination: DicomwebDestination
) -> None:
    rows = spool_series(state, spool, 5)

    first = await destination.upload_batch(rows, TARGET, ROUTING)
    again = await destination.upload_batch(rows, TARGET, ROUTING)

    assert [type(outcome) for outcome in first] == [UploadResult] * 5
    assert {outcome.status for outcome in first if isinstance(outcome, UploadResult)} == {STORED}
    assert [outcome.file_id for outcome in again if isinstance(outcome, UploadResult)] == [
        outcome.file_id for outcome in first if isinstance(outcome, UploadResult)
    ]
    assert orthanc.instance_count() == 5
    assert all(orthanc.holds_instance(row.sop_instance_uid) for row in rows)


async def test_an_instance_orthanc_refuses_is_failed_and_kept_while_the_others_are_uploaded(
    orthanc: Orthanc, state: AgentState, spool: Spool, destination: DicomwebDestination
) -> None:
    recorded = spool_series(state, spool, 3)
    spool_from_another_study(spool, recorded[0])
    rows = state.spooled_instances(recorded[0].series_instance_uid)
    [refused] = [row for row in rows if row not in recorded]

    report = await uploader(state, destination).upload_batch(
        UploadBatch(rows[0].series_instance_uid, TARGET, tuple(rows), T0 + 50), ROUTING
    )

    assert (report.uploaded, report.retrying, report.failed) == (3, 0, 1)
    assert orthanc.instance_count() == 3
    assert not orthanc.holds_instance(refused.sop_instance_uid)
    failed = state.instance(refused.id)
    assert failed.state is InstanceState.failed
    assert failed.path.exists()  # kept for support, never dropped
    assert failed.last_error == (
        "the DICOMweb archive failed the instance: failure reason 0x0110 (processing failure)"
    )
    assert refused.sop_instance_uid not in (failed.last_error or "")


async def test_a_part_orthanc_cannot_read_fails_alone_and_the_readable_ones_are_stored(
    orthanc: Orthanc, state: AgentState, spool: Spool, destination: DicomwebDestination
) -> None:
    rows = spool_series(state, spool, 3)
    rows[1].path.write_bytes(b"\0" * 128 + b"DICM" + b"not a data set" * 20)

    outcomes = await destination.upload_batch(rows, TARGET, ROUTING)

    assert isinstance(outcomes[0], UploadResult)
    assert isinstance(outcomes[2], UploadResult)
    assert isinstance(outcomes[1], UploadError)
    assert not outcomes[1].retryable
    assert outcomes[1].message == (
        "the DICOMweb archive answered HTTP 400 and named this instance neither stored nor failed"
    )
    assert orthanc.instance_count() == 2


DISCARD_MARKED = """
function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.ImageComments ~= 'DISCARD-ME'
end
"""


async def test_orthanc_reports_an_instance_its_lua_filter_discarded_as_stored(
    tmp_path: Path, state: AgentState, spool: Spool
) -> None:
    """Pins the known limit in docs/destinations.md: Orthanc 1.10 with DICOMweb 1.7 answers
    a discarded instance as stored, so nothing in the answer lets the agent keep it. If this
    starts failing, Orthanc now reports the refusal: update the docs."""
    datasets = series_datasets(2, comments=None)
    datasets[1].ImageComments = "DISCARD-ME"
    spool_datasets(spool, datasets, T0)
    rows = state.spooled_instances(datasets[0].SeriesInstanceUID)
    with running_orthanc(tmp_path / "orthanc", dicomweb=True, lua_script=DISCARD_MARKED) as server:
        destination = DicomwebDestination(server.dicomweb_url)
        try:
            outcomes = await destination.upload_batch(rows, TARGET, ROUTING)
        finally:
            await destination.aclose()
        held = server.instance_count()

    assert [type(outcome) for outcome in outcomes] == [UploadResult, UploadResult]
    assert held == 1
