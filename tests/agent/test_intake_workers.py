"""Intake worker processes: they share the listener's port and spool, stop on SIGTERM or when
the agent is gone, and hold the data directory's lock until they have exited. Real processes,
real associations on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from agent.data_dir_lock import DataDirLock, DataDirLocked
from agent.dicom.listeners import IntakeEngine, Listener, make_listener
from agent.intake_workers import READY_LINE, IntakeWorkers, IntakeWorkerSpec, WorkerFailed
from agent.spool import Spool
from agent.state import AgentState
from tests.support.dicom_factory import make_series
from tests.support.scu import send_datasets


@dataclass
class Intake:
    """An in-process shared-port listener with one worker beside it, on one data directory."""

    listener: Listener
    workers: IntakeWorkers
    state: AgentState
    port: int


def series(count: int) -> list[Dataset]:
    return make_series(
        count,
        patient_id="WORKERTEST",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="shared port",
        study_description="workers",
    )


def spec_for(data_dir: Path, port: int, engine: IntakeEngine) -> IntakeWorkerSpec:
    return IntakeWorkerSpec(
        state_path=data_dir / "state.db",
        spool_dir=data_dir / "spool",
        spool_reserve_bytes=0,
        ae_title="CONNECTOR",
        host="127.0.0.1",
        port=port,
        peers=(),
        intake_engine=engine,
        drain_timeout=5.0,
    )


def shared_port_listener(
    data_dir: Path, state: AgentState, engine: IntakeEngine
) -> tuple[Listener, int]:
    """The agent's own listener on an OS-chosen port that workers can share; started."""
    listener = make_listener(
        engine,
        ae_title="CONNECTOR",
        host="127.0.0.1",
        port=0,
        peers=(),
        spool=Spool(data_dir / "spool", state),
        share_port=True,
    )
    return listener, listener.start()


@pytest.fixture
def lock(tmp_path: Path) -> Iterator[DataDirLock]:
    held = DataDirLock(tmp_path)
    held.acquire(timeout=1)
    yield held
    held.release()


@pytest.fixture
async def intake(
    tmp_path: Path, lock: DataDirLock, intake_engine: IntakeEngine
) -> AsyncIterator[Intake]:
    state = AgentState.open(tmp_path / "state.db")
    listener, port = shared_port_listener(tmp_path, state, intake_engine)
    workers = IntakeWorkers(1, spec_for(tmp_path, port, intake_engine), lock.fd)
    await workers.start()
    yield Intake(listener, workers, state, port)
    await workers.stop()
    listener.stop(timeout=5)
    state.close()


async def test_a_worker_serves_the_shared_port_into_the_same_state(intake: Intake) -> None:
    intake.listener.stop(timeout=5)  # only the worker listens now
    datasets = series(3)

    statuses = await asyncio.to_thread(send_datasets, intake.port, datasets)

    assert statuses == [0, 0, 0]
    rows = intake.state.spooled_instances(datasets[0].SeriesInstanceUID)
    assert {row.sop_instance_uid for row in rows} == {ds.SOPInstanceUID for ds in datasets}
    for row in rows:
        assert row.path.stat().st_size == row.size


async def test_associations_on_the_shared_port_all_land_whichever_process_takes_them(
    intake: Intake,
) -> None:
    batches = [series(5) for _ in range(4)]

    results = await asyncio.gather(
        *(asyncio.to_thread(send_datasets, intake.port, batch) for batch in batches)
    )

    assert all(status == 0 for statuses in results for status in statuses)
    for batch in batches:
        rows = intake.state.spooled_instances(batch[0].SeriesInstanceUID)
        assert len(rows) == len(batch)


async def test_stopped_workers_leave_the_port_to_nobody_and_report_no_exit(
    intake: Intake,
) -> None:
    await intake.workers.stop()
    intake.listener.stop(timeout=5)

    with pytest.raises(ConnectionError):
        await asyncio.to_thread(send_datasets, intake.port, series(1), timeout=2)
    assert intake.workers.exited() == []


def test_a_worker_whose_agent_is_gone_exits_and_only_then_frees_the_lock(
    tmp_path: Path, intake_engine: IntakeEngine
) -> None:
    state = AgentState.open(tmp_path / "state.db")
    listener, port = shared_port_listener(tmp_path, state, intake_engine)
    # The "agent" is this test: it holds the lock, hands the descriptor to the worker, then
    # lets go of both as a killed process would.
    lock = DataDirLock(tmp_path)
    lock.acquire(timeout=1)
    worker = subprocess.Popen(
        [sys.executable, "-m", "agent.intake_workers"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=(lock.fd,),
        text=True,
    )
    try:
        assert worker.stdin is not None
        assert worker.stdout is not None
        worker.stdin.write(spec_for(tmp_path, port, intake_engine).model_dump_json() + "\n")
        worker.stdin.flush()
        assert worker.stdout.readline().strip() == READY_LINE
        lock.release()
        with pytest.raises(DataDirLocked, match="in use by another agent"):
            DataDirLock(tmp_path).acquire(timeout=0.2)

        worker.stdin.close()  # what the kernel does to the pipe when the agent dies

        assert worker.wait(timeout=10) == 0
        successor = DataDirLock(tmp_path)
        successor.acquire(timeout=1)
        successor.release()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        listener.stop(timeout=5)
        state.close()


def test_a_second_agent_on_the_same_data_directory_is_refused_with_the_holder(
    tmp_path: Path, lock: DataDirLock
) -> None:
    with pytest.raises(DataDirLocked, match=rf"process {os.getpid()}\b.*own --data-dir"):
        DataDirLock(tmp_path).acquire(timeout=0.3)


async def test_a_worker_that_cannot_listen_fails_start_with_a_clear_error(
    tmp_path: Path, lock: DataDirLock, intake_engine: IntakeEngine
) -> None:
    # A port bound without SO_REUSEPORT: the worker's bind fails.
    blocker = socket.create_server(("127.0.0.1", 0))
    try:
        workers = IntakeWorkers(
            1, spec_for(tmp_path, blocker.getsockname()[1], intake_engine), lock.fd
        )
        with pytest.raises(WorkerFailed, match="did not start"):
            await workers.start()
    finally:
        blocker.close()
