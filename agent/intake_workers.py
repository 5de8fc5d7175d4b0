"""Extra DICOM intake processes that share the agent's port, spool and state database.

pynetdicom does its per-message work in Python, so one process keeps one core busy at most
(the GIL); on four associations the agent measured half of Orthanc's rate with the second core
idle. Each worker is a listener (`make_listener`) bound with SO_REUSEPORT to the agent's port,
writing into the same spool (its own slot pool) and state database (SQLite serialises the
writers); the kernel spreads new associations over the listening processes. Workers never
reap or upload: the agent's reaper finds their instances in the state on its next pass, and a
C-MOVE the agent asked for counts what arrived from the state too.

The agent starts them after spool recovery, with an `IntakeWorkerSpec` as one JSON line on
stdin, and keeps stdin open: each further line is a `WorkerUpdate` (new TLS files from a config
revision, used by the worker's next association). A worker writes its ready line on stdout,
then a `WorkerReport` line (its rejection counts) whenever they changed, at most once per
`REPORT_INTERVAL_SECONDS`; the agent adds those up for health. The association cap is shared
through the slot files of `agent.dicom.association_limit`. A worker stops on SIGTERM the way
the agent's own listener does (associations in flight finish, up to the drain timeout); when
it reads end-of-file on stdin the agent is gone (even after kill -9), and it aborts its
associations and exits at once.
Workers inherit the data directory's lock (`agent.data_dir_lock`), so a restarted agent waits
until they have exited before it recovers the spool.

Run as ``python -m agent.intake_workers``; only the agent starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from agent.dicom.association_limit import AssociationLimit
from agent.dicom.listeners import make_listener
from agent.dicom.timeouts import ScpTimeouts
from agent.dicom.tls import TlsContexts, TlsError, TlsFiles
from agent.rejections import Key
from agent.spool import Spool
from agent.state import AgentState
from common.config import DicomTls
from common.logging import configure_logging

__all__ = ["IntakeWorkerSpec", "IntakeWorkers", "WorkerFailed", "WorkerReport", "WorkerUpdate"]

log = structlog.get_logger(__name__)

READY_LINE = "intake-worker ready"
_READY_TIMEOUT_SECONDS = 30.0
_KILL_GRACE_SECONDS = 5.0
REPORT_INTERVAL_SECONDS = 1.0


class WorkerFailed(Exception):
    """An intake worker did not start; the message says why."""


class IntakeWorkerSpec(BaseModel):
    """Everything a worker needs: where the data lives and how its listener listens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_path: Path
    spool_dir: Path
    spool_reserve_bytes: int = Field(ge=0)
    ae_title: str
    host: str
    port: int = Field(gt=0, le=65535)
    peers: tuple[tuple[str, str], ...]
    intake_engine: Literal["lean", "pynetdicom"] = "lean"
    dul_loop_delay: float | None = Field(default=None, ge=0)
    drain_timeout: float = Field(gt=0)
    tls: DicomTls | None = None
    max_associations: int = Field(default=16, ge=1)
    association_slots_dir: Path | None = None
    timeouts: tuple[float, float, float] = (30.0, 60.0, 120.0)  # ARTIM, DIMSE, network

    def scp_timeouts(self) -> ScpTimeouts:
        """`timeouts` as the listener takes them."""
        artim, dimse, network = self.timeouts
        return ScpTimeouts(artim=artim, dimse=dimse, network=network)


class WorkerUpdate(BaseModel):
    """Agent → worker (a stdin line): the TLS files of a new config revision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tls: DicomTls


class WorkerReport(BaseModel):
    """Worker → agent (a stdout line): the worker's rejection counts since it started."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rejections: list[tuple[str, str, int]]

    def counts(self) -> dict[Key, int]:
        """The counts keyed as `RejectionCounter.counts` keys them."""
        return {(reason, source): count for reason, source, count in self.rejections}


class IntakeWorkers:
    """The running workers of one listener configuration, owned by the agent runtime."""

    def __init__(self, count: int, spec: IntakeWorkerSpec, lock_fd: int) -> None:
        """`count` workers for `spec`; `lock_fd` is the data directory's locked descriptor."""
        self._count = count
        self._spec = spec
        self._lock_fd = lock_fd
        self._processes: list[asyncio.subprocess.Process] = []
        self._stopping = False
        self._reported: set[int] = set()
        self._readers: list[asyncio.Task[None]] = []
        self._rejections: dict[int, dict[Key, int]] = {}

    async def start(self) -> None:
        """Start every worker and wait until each listens; raise `WorkerFailed` otherwise
        (the ones already started are stopped again)."""
        try:
            for _ in range(self._count):
                self._processes.append(await self._start_one())
        except BaseException:
            await self.stop()
            raise
        log.info("intake.workers_started", count=len(self._processes), port=self._spec.port)

    async def stop(self) -> None:
        """SIGTERM every worker, wait for it (drain timeout and a grace), then kill. Idempotent."""
        self._stopping = True
        running = [process for process in self._processes if process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        timeout = self._spec.drain_timeout + _KILL_GRACE_SECONDS
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for process in self._processes:
            if process.stdin is not None:
                process.stdin.close()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers = []
        self._processes = []

    def rejections(self) -> list[dict[Key, int]]:
        """Each worker's latest rejection counts (workers that exited included)."""
        return list(self._rejections.values())

    async def use_tls(self, tls: DicomTls) -> None:
        """Hand new TLS files to every running worker (its next association uses them)."""
        line = WorkerUpdate(tls=tls).model_dump_json().encode() + b"\n"
        for process in self._processes:
            if process.returncode is None and process.stdin is not None:
                with contextlib.suppress(ConnectionError):
                    process.stdin.write(line)
                    await process.stdin.drain()

    async def _read_reports(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            try:
                report = WorkerReport.model_validate_json(line)
            except ValueError:
                log.warning("intake.worker_report_unreadable", pid=process.pid)
                continue
            self._rejections[process.pid] = report.counts()

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers started (for CPU accounting)."""
        return [process.pid for process in self._processes]

    def exited(self) -> list[str]:
        """A sentence for each worker that exited on its own since the last call (health)."""
        if self._stopping:
            return []
        messages = []
        for process in self._processes:
            if process.returncode is not None and process.pid not in self._reported:
                self._reported.add(process.pid)
                messages.append(
                    f"DICOM intake worker process {process.pid} exited with status "
                    f"{process.returncode}; the agent's other intake processes keep the port "
                    "open; restart the agent to start it again"
                )
        return messages

    async def _start_one(self) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.intake_workers",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=(self._lock_fd,),
        )
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(self._spec.model_dump_json().encode() + b"\n")
        await process.stdin.drain()
        try:
            line = await asyncio.wait_for(process.stdout.readline(), _READY_TIMEOUT_SECONDS)
        except TimeoutError:
            line = b""
        if line.decode(errors="replace").strip() != READY_LINE:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            status = await process.wait()
            raise WorkerFailed(
                f"a DICOM intake worker did not start (exit status {status}); its log lines "
                "above say why"
            )
        self._readers.append(asyncio.create_task(self._read_reports(process)))
        return process


def worker_main() -> int:
    """A worker process: read the spec, listen, stop on SIGTERM or end of stdin."""
    configure_logging()
    line = sys.stdin.readline()
    if not line:
        log.error("intake.worker_without_spec", reason="stdin closed before the agent sent it")
        return 2
    spec = IntakeWorkerSpec.model_validate_json(line)
    state = AgentState.open(spec.state_path)
    spool = Spool(spec.spool_dir, state, spec.spool_reserve_bytes)
    try:
        files = TlsFiles.of(spec.tls)
        tls = None if files is None else TlsContexts(files)
        listener = make_listener(
            spec.intake_engine,
            ae_title=spec.ae_title,
            host=spec.host,
            port=spec.port,
            peers=spec.peers,
            spool=spool,
            dul_loop_delay=spec.dul_loop_delay,
            share_port=True,
            tls=tls,
            association_limit=AssociationLimit(spec.max_associations, spec.association_slots_dir),
            timeouts=spec.scp_timeouts(),
        )
        listener.start()
        stop = threading.Event()
        orphaned = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the agent, which stops us

        def watch_stdin() -> None:
            for update in sys.stdin:  # ends at end-of-file: the agent's end of the pipe closed
                _apply_update(update, tls)
            orphaned.set()
            stop.set()

        def report() -> None:
            sent: dict[Key, int] = {}
            while not stop.wait(REPORT_INTERVAL_SECONDS):
                counts = listener.rejections.counts()
                if counts != sent:
                    rows = [(reason, source, n) for (reason, source), n in counts.items()]
                    print(WorkerReport(rejections=rows).model_dump_json(), flush=True)
                    sent = counts

        threading.Thread(target=watch_stdin, name="agent-watch", daemon=True).start()
        print(READY_LINE, flush=True)
        threading.Thread(target=report, name="agent-report", daemon=True).start()
        stop.wait()
        # An orphan aborts at once: a restarted agent waits for the data directory's lock.
        listener.stop(0.0 if orphaned.is_set() else spec.drain_timeout)
    finally:
        spool.close()
        state.close()
    return 0


def _apply_update(line: str, tls: TlsContexts | None) -> None:
    try:
        update = WorkerUpdate.model_validate_json(line)
        files = TlsFiles.of(update.tls)
        if tls is None or files is None:
            log.error("intake.worker_tls_update_ignored", reason="this worker started without TLS")
            return
        tls.use(files)
    except (ValueError, json.JSONDecodeError, TlsError) as exc:
        log.error("intake.worker_update_failed", error=str(exc))


if __name__ == "__main__":
    sys.exit(worker_main())
