"""Pull benchmark: retrieval from a PACS (Orthanc) and the cost of a C-FIND round.

    TCP_NODELAY=1 .venv/bin/python bench/pull.py [--series 8] [--instances 100] [--rounds 3]
                   [--concurrency 1,4] [--find-series 1000] [--intake-processes N] [--get]

Retrieval: Orthanc holds `--series` series of `--instances` synthetic ~130 KB MR images. Round
after round, each receiver gets all of them with C-MOVE from the same Orthanc, `concurrency`
series at a time: the agent (a `SourcePoller` whose series are due at once, retrieving into its
real intake: a listener of the lean engine, durable spool, state database) asking with the lean
requestor, with one intake process and with `--intake-processes` sharing the port as the agent
runs them (`IntakeWorkers`); the same with the pynetdicom requestor (one intake process); and
the old path whole, pynetdicom's intake and requestor; against dcmtk `movescu` processes moving
into `storescp --fork` (which writes files without fsync). Every run starts from an empty
receiver and checks it got every instance. The agent's CPU counts the workers' too. With
`--get`, the same by C-GET (the images come back on the asking association): dcmtk `getscu`
(no fsync either) against the agent with each requestor.

C-FIND round: another Orthanc holds `--find-series` one-instance series (10 per study, dated
today); the agent's query round (study level, then series level per study, one association) is
timed, wall clock and the CPU time of this process (every thread): a full round alone, then
polls as the poller runs them (query round + ledger update): the first one, with every series
new, and later ones where nothing changed (the series of unchanged studies are not asked).

Prints the machine, a Markdown table and the agent's ratios; numbers go to docs/benchmarks.md
under "Pull". Needs Orthanc and dcmtk (make system-deps).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # bench/ scripts run by path, so the repository root is not importable otherwise.
    sys.path.insert(0, str(REPO_ROOT))

from _machine import process_cpu_seconds  # noqa: E402  (bench/, the script's directory)
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from agent.data_dir_lock import DataDirLock  # noqa: E402
from agent.dicom.listeners import IntakeEngine, make_listener  # noqa: E402
from agent.dicom.scu import (  # noqa: E402
    REQUESTOR_ENGINES,
    RequestorEngine,
    Scu,
    SourceAddress,
    SpoolSink,
)
from agent.health import PipelineCounters  # noqa: E402
from agent.intake_workers import IntakeWorkers, IntakeWorkerSpec  # noqa: E402
from agent.pull.ledger import PullLedger  # noqa: E402
from agent.pull.poller import SourcePoller  # noqa: E402
from agent.pull.query import FULL_ROUND_EVERY, QueryRounds, RoundQueries  # noqa: E402
from agent.site import SiteSnapshot  # noqa: E402
from agent.spool import Spool  # noqa: E402
from agent.state import AgentState  # noqa: E402
from common.config import validate_site_config  # noqa: E402
from common.logging import configure_logging  # noqa: E402
from tests.support.dicom_factory import make_series  # noqa: E402
from tests.support.environment import free_port, tool_env  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402

AGENT_AE = "CONNECTOR"
STORESCP_AE = "STORESCP"
GETSCU_AE = "GETSCU"


@dataclass(frozen=True)
class Retrieval:
    """One timed retrieval of every series by one receiver."""

    receiver: str
    concurrency: int
    seconds: float
    instances: int
    cpu_seconds: float | None  # this process's CPU (the agent); None for dcmtk

    @property
    def per_second(self) -> float:
        """Instances per second."""
        return self.instances / self.seconds


def main(argv: Sequence[str] | None = None) -> int:
    """Run both parts and print the report; return the exit status."""
    args = _parse_args(argv)
    # The agent's per-series and per-association log lines would drown the report.
    configure_logging(level="WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="pull-bench-", dir=args.workdir))
    try:
        print("\n".join(_machine()))
        retrievals = _retrieval_part(args, workdir / "retrieval")
        print(_retrieval_report(retrievals, args))
        print(_find_part(args, workdir / "find"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _retrieval_part(args: argparse.Namespace, workdir: Path) -> list[Retrieval]:
    total = args.series * args.instances
    results: list[Retrieval] = []
    # agent-<intake engine>-<intake processes>-<requestor engine>
    receivers = [
        "movescu+storescp",
        "agent-lean-1-lean",
        "agent-lean-1-pynetdicom",
        "agent-pynetdicom-1-pynetdicom",
    ]
    if args.intake_processes > 1:
        receivers.append(f"agent-lean-{args.intake_processes}-lean")
    if args.get:
        # C-GET: the images come back on the asking association, no listener involved.
        receivers += ["getscu", "agent-get-1-lean", "agent-get-1-pynetdicom"]
    with _orthanc(workdir / "orthanc") as pacs:
        started = time.monotonic()
        series = _fill(pacs, args.series, args.instances, rows=256)
        print(
            f"\nretrieval: {args.series} series x {args.instances} instances "
            f"(~130 KB each) stored in Orthanc in {time.monotonic() - started:.0f} s"
        )
        for round_number in range(1, args.rounds + 1):
            for concurrency in args.concurrency:
                for receiver in receivers:
                    run_dir = workdir / f"r{round_number}-{receiver}-{concurrency}"
                    run_dir.mkdir(parents=True)
                    if receiver.startswith("agent"):
                        _, engine, processes, requestor = receiver.split("-")
                        result = asyncio.run(
                            _agent_retrieval(
                                pacs,
                                run_dir,
                                concurrency,
                                total,
                                int(processes),
                                "pynetdicom" if engine == "pynetdicom" else "lean",
                                "lean" if requestor == "lean" else "pynetdicom",
                                method="get" if engine == "get" else "move",
                            )
                        )
                    elif receiver == "getscu":
                        result = _getscu_retrieval(pacs, series, run_dir, concurrency, total)
                    else:
                        result = _dcmtk_retrieval(pacs, series, run_dir, concurrency, total)
                    results.append(result)
                    shutil.rmtree(run_dir, ignore_errors=True)
                    print(
                        f"  round {round_number} {receiver:>29} x{concurrency}: "
                        f"{result.per_second:.0f} inst/s",
                        flush=True,
                    )
    return results


def _dcmtk_retrieval(
    pacs: Orthanc, series: list[tuple[str, str]], run_dir: Path, concurrency: int, total: int
) -> Retrieval:
    port = free_port()
    received = run_dir / "received"
    received.mkdir()
    pacs.register_modality("bench-storescp", STORESCP_AE, "127.0.0.1", port)
    scp = subprocess.Popen(
        ["storescp", "--fork", "-aet", STORESCP_AE, "-od", str(received), str(port)],
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_port(port)
        chunks = [series[index::concurrency] for index in range(concurrency)]
        started = time.perf_counter()
        movers = [
            subprocess.Popen(
                ["/bin/sh", "-c", " && ".join(_movescu(pacs, chunk)) or "true"],
                env=tool_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for chunk in chunks
        ]
        codes = [mover.wait() for mover in movers]
        seconds = time.perf_counter() - started
    finally:
        scp.terminate()
        scp.wait()
        _kill_group(scp.pid)
    got = sum(1 for _ in received.iterdir())
    if any(codes) or got != total:
        raise RuntimeError(f"movescu exited {codes}; storescp got {got} of {total} instances")
    return Retrieval("movescu+storescp", concurrency, seconds, total, None)


def _getscu_retrieval(
    pacs: Orthanc, series: list[tuple[str, str]], run_dir: Path, concurrency: int, total: int
) -> Retrieval:
    received = run_dir / "received"
    received.mkdir()
    pacs.register_modality("bench-getscu", GETSCU_AE, "127.0.0.1", free_port())
    chunks = [series[index::concurrency] for index in range(concurrency)]
    started = time.perf_counter()
    getters = [
        subprocess.Popen(
            ["/bin/sh", "-c", " && ".join(_getscu(pacs, chunk, received)) or "true"],
            env=tool_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for chunk in chunks
    ]
    codes = [getter.wait() for getter in getters]
    seconds = time.perf_counter() - started
    got = sum(1 for _ in received.iterdir())
    if any(codes) or got != total:
        raise RuntimeError(f"getscu exited {codes}; it got {got} of {total} instances")
    return Retrieval("getscu", concurrency, seconds, total, None)


def _getscu(pacs: Orthanc, chunk: list[tuple[str, str]], received: Path) -> list[str]:
    return [
        f"getscu -S -aet {GETSCU_AE} -aec {pacs.ae_title} -od {received} "
        f"-k QueryRetrieveLevel=SERIES -k StudyInstanceUID={study} "
        f"-k SeriesInstanceUID={uid} 127.0.0.1 {pacs.dicom_port}"
        for study, uid in chunk
    ]


def _movescu(pacs: Orthanc, chunk: list[tuple[str, str]]) -> list[str]:
    return [
        f"movescu -S -aet {STORESCP_AE} -aec {pacs.ae_title} -aem {STORESCP_AE} "
        f"-k QueryRetrieveLevel=SERIES -k StudyInstanceUID={study} "
        f"-k SeriesInstanceUID={uid} 127.0.0.1 {pacs.dicom_port}"
        for study, uid in chunk
    ]


async def _agent_retrieval(
    pacs: Orthanc,
    run_dir: Path,
    concurrency: int,
    total: int,
    processes: int,
    engine: IntakeEngine,
    requestor: RequestorEngine,
    *,
    method: Literal["move", "get"] = "move",
) -> Retrieval:
    lock = DataDirLock(run_dir)
    lock.acquire(timeout=5)
    state = AgentState.open(run_dir / "state.db")
    spool = Spool(run_dir / "spool", state)
    listener = make_listener(
        engine,
        ae_title=AGENT_AE,
        host="127.0.0.1",
        port=0,
        peers=(),
        spool=spool,
        share_port=processes > 1,
    )
    port = listener.start()
    # As the agent runs: its own listener and intake_processes - 1 workers on the same port.
    workers = IntakeWorkers(processes - 1, _worker_spec(run_dir, port, engine), lock.fd)
    await workers.start()
    pacs.register_modality("bench-agent", AGENT_AE, "127.0.0.1", port)
    try:
        snapshot = _snapshot(pacs, concurrency, method)
        (source,) = snapshot.config.pull.sources
        poller = SourcePoller(
            source,
            snapshot,
            state=state,
            ledger=PullLedger(state),
            sink=SpoolSink(spool),
            slots=asyncio.Semaphore(concurrency),
            counters=PipelineCounters(),
            requestor_engine=requestor,
        )
        worker_cpu = process_cpu_seconds(workers.pids)
        cpu, started = time.process_time(), time.perf_counter()
        report = await poller.poll_once()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        cpu += process_cpu_seconds(workers.pids) - worker_cpu
    finally:
        await workers.stop()
        listener.stop(timeout=30)
        spool.close()
        lock.release()
    got = state.stats().spooled_count
    state.close()
    if not report.ok or got != total:
        raise RuntimeError(f"the agent got {got} of {total} instances ({report.error})")
    how = f"{engine} intake ({processes} proc)" if method == "move" else "C-GET"
    return Retrieval(
        f"agent, {how}, {requestor} requestor",
        concurrency,
        seconds,
        total,
        cpu,
    )


def _worker_spec(run_dir: Path, port: int, engine: IntakeEngine) -> IntakeWorkerSpec:
    return IntakeWorkerSpec(
        state_path=run_dir / "state.db",
        spool_dir=run_dir / "spool",
        spool_reserve_bytes=0,
        ae_title=AGENT_AE,
        host="127.0.0.1",
        port=port,
        peers=(),
        intake_engine=engine,
        drain_timeout=30,
    )


def _find_part(args: argparse.Namespace, workdir: Path) -> str:
    with _orthanc(workdir / "orthanc") as pacs:
        started = time.monotonic()
        studies = max(1, args.find_series // 10)
        _fill(pacs, studies * 10, 1, rows=16, per_study=10)
        lines = [
            "",
            f"C-FIND round: {studies * 10} series in {studies} studies, stored in "
            f"{time.monotonic() - started:.0f} s",
        ]
        lines += [
            "| requestor | what | wall s (median) | agent CPU s (median) | each round (wall s) |",
            "|---|---|---:|---:|---|",
        ]
        asked = None
        for engine in REQUESTOR_ENGINES:
            rows, asked = _find_rounds(args, pacs, workdir / f"state-{engine}.db", engine)
            lines += rows
    if asked is not None:
        lines.append(
            f"a later poll asked {asked.studies} studies and the series of "
            f"{asked.series_queries} of them (one poll in {FULL_ROUND_EVERY} asks them all)"
        )
    return "\n".join(lines)


def _find_rounds(
    args: argparse.Namespace, pacs: Orthanc, state_path: Path, engine: RequestorEngine
) -> tuple[list[str], RoundQueries | None]:
    scu = Scu(
        SourceAddress(pacs.ae_title, "127.0.0.1", pacs.dicom_port),
        calling_ae_title=AGENT_AE,
        timeout=60,
        engine=engine,
    )
    since = dt.datetime.now(tz=dt.UTC).date() - dt.timedelta(days=3)
    every_study = QueryRounds(scu, full_every=1)
    full = [_timed(lambda: every_study.run(since)) for _ in range(args.rounds)]
    state = AgentState.open(state_path)
    ledger = PullLedger(state)
    rounds = QueryRounds(scu)

    def poll() -> None:
        found = rounds.run(since)
        ledger.record_round("bench", found, time.time(), 7 * 86_400)

    first = _timed(poll)
    unchanged = [_timed(poll) for _ in range(args.rounds)]
    state.close()
    rows = [
        _find_row(engine, "full query round: every study's series asked (C-FIND only)", full),
        _find_row(engine, "first poll: full round, every series new (query + ledger)", [first]),
        _find_row(engine, "later poll, nothing changed (query + ledger)", unchanged),
    ]
    return rows, rounds.last_queries


def _find_row(engine: str, what: str, runs: list[tuple[float, float]]) -> str:
    walls = [wall for wall, _ in runs]
    cpus = [cpu for _, cpu in runs]
    each = ", ".join(f"{wall:.2f}" for wall in walls)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return f"| {engine} | {what} | {wall:.2f} | {cpu:.2f} | {each} |"


def _timed(work: object) -> tuple[float, float]:
    assert callable(work)
    cpu, started = time.process_time(), time.perf_counter()
    work()
    return time.perf_counter() - started, time.process_time() - cpu


def _retrieval_report(results: list[Retrieval], args: argparse.Namespace) -> str:
    lines = [
        "",
        "| receiver | series at a time | inst/s (median) | MB/s | agent CPU s | each round |",
        "|---|---:|---:|---:|---:|---|",
    ]
    megabytes = _instance_megabytes()
    grouped: dict[tuple[str, int], list[Retrieval]] = {}
    for result in results:
        grouped.setdefault((result.receiver, result.concurrency), []).append(result)
    for (receiver, concurrency), runs in grouped.items():
        rate = statistics.median(run.per_second for run in runs)
        cpus = [run.cpu_seconds for run in runs if run.cpu_seconds is not None]
        cpu = f"{statistics.median(cpus):.1f}" if cpus else "-"
        each = ", ".join(f"{run.per_second:.0f}" for run in runs)
        lines.append(
            f"| {receiver} | {concurrency} | {rate:.0f} | {rate * megabytes:.1f} | {cpu} | {each} |"
        )
    lines.append("")
    agents = sorted({receiver for receiver, _ in grouped if receiver.startswith("agent")})
    for concurrency in args.concurrency:
        for name in agents:
            reference = "getscu" if "C-GET" in name else "movescu+storescp"
            baseline = grouped.get((reference, concurrency))
            agent = grouped.get((name, concurrency))
            if agent and baseline:
                agent_time = statistics.median(run.seconds for run in agent)
                baseline_time = statistics.median(run.seconds for run in baseline)
                lines.append(
                    f"{name}, {concurrency} series at a time: {agent_time / baseline_time:.2f}x "
                    f"the time of {reference}"
                )
    return "\n".join(lines)


def _fill(
    pacs: Orthanc, series_count: int, instances: int, *, rows: int, per_study: int | None = None
) -> list[tuple[str, str]]:
    """Store synthetic series dated today; return their (study UID, series UID)."""
    today = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%d")
    made: list[tuple[str, str]] = []
    study = generate_uid()
    for number in range(series_count):
        if per_study is not None and number % per_study == 0:
            study = generate_uid()
        uid = generate_uid()
        pacs.upload(
            make_series(
                instances,
                patient_id="BENCH-PULL",
                study_uid=study,
                series_uid=uid,
                series_description=f"pull benchmark {number}",
                study_description="synthetic MR",
                series_number=number + 1,
                rows=rows,
                cols=rows,
                transfer_syntax=ExplicitVRLittleEndian,
                extra={"StudyDate": today, "SeriesDate": today},
            )
        )
        made.append((study, uid))
    return made


def _snapshot(pacs: Orthanc, concurrency: int, method: Literal["move", "get"]) -> SiteSnapshot:
    config = validate_site_config(
        {
            "mode": "pull",
            "dicom": {"ae_title": AGENT_AE},
            "pull": {
                "sources": [
                    {
                        "ae_title": pacs.ae_title,
                        "host": "127.0.0.1",
                        "port": pacs.dicom_port,
                        "retrieve": method,
                    }
                ],
                "max_concurrent_retrievals": concurrency,
            },
            # Every series is due in the first round: the benchmark times retrieval only.
            "timing": {"acquisition_delay": "0s"},
        }
    )
    return SiteSnapshot("bench", 1, "UTC", config)


@contextmanager
def _orthanc(workdir: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(workdir)
    try:
        pacs.start()
        yield pacs
    finally:
        pacs.close()


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"storescp did not listen on port {port} within {timeout:.0f} s")


def _kill_group(pid: int) -> None:
    import contextlib
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _instance_megabytes() -> float:
    ds = make_series(
        1,
        patient_id="BENCH-PULL",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="size",
        study_description="size",
    )[0]
    from tests.support.dicom_factory import encode_part10

    return len(encode_part10(ds)) / 1e6


def _machine() -> list[str]:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    orthanc = subprocess.run(
        ["/usr/sbin/Orthanc", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"machine: {os.cpu_count()} cores ({cpu_model}), {platform.system()} "
        f"{platform.release()}, load average {load}",
        f"python {platform.python_version()}, pynetdicom {version('pynetdicom')}, "
        f"pydicom {version('pydicom')}, {' '.join(orthanc)}",
    ]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=8, help="series to retrieve")
    parser.add_argument("--instances", type=int, default=100, help="instances per series")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument(
        "--concurrency", default="1,4", help="series retrieved at a time, comma-separated"
    )
    parser.add_argument("--find-series", type=int, default=1000, help="series for the C-FIND part")
    parser.add_argument(
        "--intake-processes",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="the agent's intake processes in the second agent run (the agent's default: "
        "one per core); the first always runs one",
    )
    parser.add_argument(
        "--get",
        action="store_true",
        help="also retrieve by C-GET: dcmtk getscu against the agent with each requestor",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where temp data goes")
    args = parser.parse_args(argv)
    args.concurrency = [int(value) for value in args.concurrency.split(",")]
    return args


if __name__ == "__main__":
    sys.exit(main())
