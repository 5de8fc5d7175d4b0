"""Upload benchmark: the agent's destinations side by side with a plain HTTP sink.

    .venv/bin/python bench/upload.py [--instances 400] [--series 4] [--rounds 3]
                                     [--concurrency 4]

Each round uploads `--instances` synthetic ~130 KB MR instances in `--series` series to each
destination in turn, in a rotating order, timed from the first request to the last answer.
Every upload gets freshly written instances (new UIDs, so no destination answers "already
stored"; writing them is not timed):

- `sink`: the baseline, a plain HTTP server in its own process (bench/_http_sink.py) that
  reads each body and answers 200; the agent streams the same multipart/related bodies to it
  (spool files, `RelatedBody`, httpx2) and takes the answer as confirmation;
- `stow-rs`: `DicomwebDestination` into Orthanc with Debian's DICOMweb plugin (its own
  process, index and storage on the work directory's disk);
- `builtin`: `BuiltinStoreDestination` into `dicom-connector control-plane` (its own
  process, SQLite, local blobs);
- `orthanc-rest`: for reference, the same Orthanc through its plain REST upload
  (`POST /instances`, one instance per request, `--concurrency` in flight): what storing in
  Orthanc costs without STOW-RS.

Every destination gets the series as the uploader sends them: one batch per series, cut into
chunks by the destination's `batch_limits`, `--concurrency` chunk requests in flight, and each
instance's outcome checked (a destination that did not confirm every instance fails the run).
The agent's bookkeeping (state database) is left out: it is the same for every destination.

Prints the machine, a Markdown table of instances/s and MB/s per round with the median, and
each destination's ratio to the sink measured in the same run. Target: STOW-RS at least 0.8x
the sink. Numbers go to docs/benchmarks.md under "Upload destinations". Needs Orthanc and
orthanc-dicomweb (make system-deps).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # bench/ scripts run by path, so the repository root is not importable otherwise.
    sys.path.insert(0, str(REPO_ROOT))

import httpx2  # noqa: E402
from _instances import write_instances  # noqa: E402
from _machine import describe, process_cpu_seconds  # noqa: E402  (bench/, the script's dir)
from _processes import free_port, wait_for_port  # noqa: E402
from deid_cost import measure_deid_cost  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from agent.state import InstanceRow, InstanceState  # noqa: E402
from agent.upload.base import BatchLimits, Destination, UploadError, UploadResult  # noqa: E402
from agent.upload.builtin_store import BuiltinStoreDestination  # noqa: E402
from agent.upload.dicomweb import STOW_BATCH_LIMITS, DicomwebDestination  # noqa: E402
from agent.upload.multipart import RelatedBody, open_part  # noqa: E402
from agent.uploader import split_into_chunks  # noqa: E402
from common.config import RoutingConfig  # noqa: E402
from common.hierarchy import HierarchyTarget  # noqa: E402
from common.routing import RoutingReason  # noqa: E402
from tests.support.dicom_factory import make_series, write_files  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402

ADMIN_TOKEN = "upload-benchmark-admin-token-0123456789"
ROUTING = RoutingConfig()
TARGET = HierarchyTarget(
    group=None,
    project=None,
    subject="BENCH-0001",
    session="synthetic MR",
    acquisition="upload benchmark",
    acquisition_key="upload benchmark",
    routing_reason=RoutingReason.no_routing_string,
    routing_string=None,
)
SUBJECTS = ("stow-rs", "builtin", "orthanc-rest")
BASELINE = "sink"
STOW_TARGET_RATIO = 0.8


@dataclass(frozen=True)
class Measurement:
    """One timed upload of every instance of a round to one destination."""

    destination: str
    seconds: float
    instances: int
    total_bytes: int
    client_cpu_seconds: float  # this process: the agent's side of the upload
    server_cpu_seconds: float  # the receiving process and its children

    @property
    def per_second(self) -> float:
        """Instances per second."""
        return self.instances / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        """Instance megabytes per second, 1 MB = 10^6 bytes."""
        return self.total_bytes / self.seconds / 1e6

    @property
    def client_ms_per_instance(self) -> float:
        """The agent side's CPU per instance, in milliseconds."""
        return self.client_cpu_seconds / self.instances * 1000

    @property
    def server_ms_per_instance(self) -> float:
        """The receiver's CPU per instance, in milliseconds."""
        return self.server_cpu_seconds / self.instances * 1000


class SinkDestination:
    """The baseline: the same streamed bodies as STOW-RS, confirmed by any 200 answer."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client = httpx2.AsyncClient(timeout=120)

    @property
    def batch_limits(self) -> BatchLimits:
        return STOW_BATCH_LIMITS

    async def upload_batch(
        self, instances: Sequence[InstanceRow], target: HierarchyTarget, routing: RoutingConfig
    ) -> list[UploadResult | UploadError]:
        parts = [await open_part(instance) for instance in instances]
        try:
            body = RelatedBody(parts, instance_headers=False)
            response = await self._client.post(
                self._url,
                content=body.chunks(),
                headers={
                    "Content-Type": body.content_type,
                    "Content-Length": str(body.content_length),
                    "Accept": "application/dicom+json",
                },
            )
        finally:
            for part in parts:
                os.close(part.descriptor)
        ok = response.status_code == 200
        return [
            UploadResult("sink", "stored") if ok else UploadError(True, "sink refused")
            for _ in instances
        ]

    async def aclose(self) -> None:
        await self._client.aclose()


class OrthancRestDestination:
    """Orthanc's own upload, one Part-10 file per `POST /instances`."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client = httpx2.AsyncClient(timeout=120)

    @property
    def batch_limits(self) -> BatchLimits:
        return BatchLimits(max_instances=1, max_bytes=1 << 30)

    async def upload_batch(
        self, instances: Sequence[InstanceRow], target: HierarchyTarget, routing: RoutingConfig
    ) -> list[UploadResult | UploadError]:
        outcomes: list[UploadResult | UploadError] = []
        for instance in instances:
            data = await asyncio.to_thread(instance.path.read_bytes)
            response = await self._client.post(
                self._url, content=data, headers={"Content-Type": "application/dicom"}
            )
            ok = response.status_code == 200 and response.json().get("Status") == "Success"
            outcomes.append(UploadResult("rest", "stored") if ok else UploadError(True, "no"))
        return outcomes

    async def aclose(self) -> None:
        await self._client.aclose()


def main() -> None:
    """Run the benchmark and print its report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--series", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="upload-bench-", dir=args.workdir))
    try:
        print(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> str:
    """Every round against every destination; the report."""
    results: list[Measurement] = []
    machine: list[str] = []
    with ExitStack() as servers:
        sink_url, sink_pid = servers.enter_context(http_sink(workdir))
        # Without --verbose: a log line per request is a test's tool, not an archive's load.
        orthanc = Orthanc(workdir / "orthanc", dicomweb=True, verbose=False)
        orthanc.start()
        servers.callback(orthanc.close)
        assert orthanc.pid is not None
        store_url, store_pid = servers.enter_context(control_plane(workdir))
        pids = {
            BASELINE: sink_pid,
            "stow-rs": orthanc.pid,
            "orthanc-rest": orthanc.pid,
            "builtin": store_pid,
        }
        for number in range(args.rounds):
            order = [BASELINE, *SUBJECTS]
            order = order[number % len(order) :] + order[: number % len(order)]
            for name in order:
                # Fresh UIDs for every upload: two destinations share one Orthanc.
                directory = workdir / f"round-{number}-{name}"
                files = round_files(directory, args.instances, args.series)
                if not machine:
                    machine = describe(workdir, [row.path for rows in files for row in rows])
                destination = build(name, sink_url, orthanc, store_url)
                results.append(
                    asyncio.run(measure(name, destination, files, args.concurrency, pids[name]))
                )
                shutil.rmtree(directory, ignore_errors=True)
    return report(machine, args, results)


def round_files(directory: Path, count: int, series: int) -> list[list[InstanceRow]]:
    """Fresh instances for one round, as spooled rows, one list per series."""
    directory.mkdir(parents=True)
    study_uid = generate_uid()
    size, extra = divmod(count, series)
    rows: list[list[InstanceRow]] = []
    next_id = 1
    for number in range(1, series + 1):
        datasets = make_series(
            size + (1 if number <= extra else 0),
            patient_id="BENCH-0001",
            study_uid=study_uid,
            series_uid=generate_uid(),
            series_description=f"upload benchmark {number}",
            study_description="synthetic MR",
            series_number=number,
            transfer_syntax=ExplicitVRLittleEndian,
        )
        paths = write_files(datasets, directory / f"series-{number}")
        batch = []
        for ds, path in zip(datasets, paths, strict=True):
            data = path.read_bytes()
            batch.append(
                InstanceRow(
                    id=next_id,
                    sop_instance_uid=ds.SOPInstanceUID,
                    series_instance_uid=ds.SeriesInstanceUID,
                    study_instance_uid=ds.StudyInstanceUID,
                    sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data),
                    path=path,
                    received_at=0.0,
                    spooled_at=0.0,
                    state=InstanceState.spooled,
                    attempts=0,
                    next_attempt_at=None,
                    last_error=None,
                )
            )
            next_id += 1
        rows.append(batch)
    return rows


def build(name: str, sink_url: str, orthanc: Orthanc, store_url: str) -> Destination:
    """A fresh destination (its own connection pool) for one measurement."""
    if name == BASELINE:
        return SinkDestination(sink_url)
    if name == "stow-rs":
        return DicomwebDestination(orthanc.dicomweb_url, timeout=120)
    if name == "orthanc-rest":
        return OrthancRestDestination(f"http://127.0.0.1:{orthanc.http_port}/instances")
    return BuiltinStoreDestination(store_url, ADMIN_TOKEN, timeout=120)


async def measure(
    name: str,
    destination: Destination,
    series: list[list[InstanceRow]],
    concurrency: int,
    server_pid: int,
) -> Measurement:
    """Upload every series as the uploader would; fail unless every instance was confirmed."""
    slots = asyncio.Semaphore(concurrency)

    async def send(chunk: Sequence[InstanceRow]) -> list[UploadResult | UploadError]:
        async with slots:
            return await destination.upload_batch(chunk, TARGET, ROUTING)

    chunks = [
        chunk for rows in series for chunk in split_into_chunks(rows, destination.batch_limits)
    ]
    try:
        server_before = process_cpu_seconds([server_pid])
        client_before = time.process_time()
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(send(chunk) for chunk in chunks))
        seconds = time.perf_counter() - started
        client = time.process_time() - client_before
        server = process_cpu_seconds([server_pid]) - server_before
    finally:
        await destination.aclose()
    failed = [o for chunk in outcomes for o in chunk if not isinstance(o, UploadResult)]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} instances not confirmed, e.g. {failed[0]}")
    rows = [row for chunk in chunks for row in chunk]
    return Measurement(name, seconds, len(rows), sum(row.size for row in rows), client, server)


@contextmanager
def http_sink(workdir: Path) -> Iterator[tuple[str, int]]:
    """The plain sink in its own process; its URL and process id."""
    port = free_port()
    log = (workdir / "sink.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_http_sink.py")), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, proc, 30)
        yield f"http://127.0.0.1:{port}/sink", proc.pid
    finally:
        proc.kill()
        proc.wait()
        log.close()


@contextmanager
def control_plane(workdir: Path) -> Iterator[tuple[str, int]]:
    """`dicom-connector control-plane` (SQLite, local blobs) in its own process; its URL and
    process id."""
    port = free_port()
    log = (workdir / "control-plane.log").open("w")
    executable = Path(sys.executable).with_name("dicom-connector")
    proc = subprocess.Popen(
        [
            str(executable),
            "control-plane",
            "--db",
            f"sqlite:///{workdir / 'control-plane.db'}",
            "--http-port",
            str(port),
            "--blob-dir",
            str(workdir / "blobs"),
            "--admin-token",
            ADMIN_TOKEN,
            "--host",
            "127.0.0.1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, proc, 60)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def deid_cost_section(args: argparse.Namespace) -> list[str]:
    """The de-identification cost per ~130 KB instance under `basic` and a 30-rule Flywheel
    profile (bench/deid_cost.py), measured in the same run as the uploads."""
    with tempfile.TemporaryDirectory(prefix="deid-cost-") as tmp:
        paths = write_instances(min(args.instances, 200), Path(tmp), series=4)
        costs = measure_deid_cost(paths, rounds=args.rounds)
    lines = [
        "",
        "De-identification, µs per instance (target: at most 1,000 µs added):",
        "",
        "| run | µs per instance | added to reading | CPU µs added |",
        "|---|---:|---:|---:|",
    ]
    for cost in costs:
        if cost.name.startswith("read only"):
            lines.append(f"| {cost.name} | {cost.per_instance_us:.0f} | - | - |")
        else:
            lines.append(
                f"| {cost.name} | {cost.per_instance_us:.0f} | {cost.added_us:.0f}"
                f" | {cost.added_cpu_us:.0f} |"
            )
    return lines


def report(machine: list[str], args: argparse.Namespace, results: list[Measurement]) -> str:
    """Machine, table (per round and median) and ratios to the sink."""
    names = [BASELINE, *SUBJECTS]
    by_name = {name: [m for m in results if m.destination == name] for name in names}
    lines = [*machine, ""]
    lines.append(
        f"{args.instances} instances in {args.series} series per round, {args.rounds} rounds,"
        f" {args.concurrency} chunk requests in flight"
    )
    lines.append("")
    header = " | ".join(f"round {n + 1}" for n in range(args.rounds))
    lines.append(
        f"| destination | {header} | median | MB/s (median) | agent CPU ms/instance"
        " | receiver CPU ms/instance |"
    )
    lines.append("|---" * (args.rounds + 5) + "|")
    medians: dict[str, float] = {}
    for name in names:
        rates = [m.per_second for m in by_name[name]]
        medians[name] = statistics.median(rates)
        mbs = statistics.median(m.megabytes_per_second for m in by_name[name])
        cells = " | ".join(f"{rate:.0f}/s" for rate in rates)
        client = statistics.median(m.client_ms_per_instance for m in by_name[name])
        server = statistics.median(m.server_ms_per_instance for m in by_name[name])
        lines.append(
            f"| {name} | {cells} | **{medians[name]:.0f}/s** | {mbs:.1f} | {client:.2f}"
            f" | {server:.2f} |"
        )
    lines.append("")
    rest = statistics.median(
        stow.per_second / plain.per_second
        for stow, plain in zip(by_name["stow-rs"], by_name["orthanc-rest"], strict=True)
    )
    for name in SUBJECTS:
        per_round = [
            subject.per_second / baseline.per_second
            for subject, baseline in zip(by_name[name], by_name[BASELINE], strict=True)
        ]
        rounds = ", ".join(f"{ratio:.2f}x" for ratio in per_round)
        lines.append(
            f"{name}: {statistics.median(per_round):.2f}x the sink (median of rounds: {rounds})"
        )
    stow = statistics.median(
        subject.per_second / baseline.per_second
        for subject, baseline in zip(by_name["stow-rs"], by_name[BASELINE], strict=True)
    )
    verdict = "met" if stow >= STOW_TARGET_RATIO else "NOT met"
    lines.append(f"target STOW-RS >= {STOW_TARGET_RATIO}x the sink: {verdict}")
    lines.append(f"stow-rs: {rest:.2f}x Orthanc's own REST upload into the same Orthanc")
    # What the agent alone could reach if the archive cost nothing: instances per second of
    # the agent's own CPU, against the sink's in the same round.
    cpu_bound = statistics.median(
        baseline.client_ms_per_instance / stow.client_ms_per_instance
        for stow, baseline in zip(by_name["stow-rs"], by_name[BASELINE], strict=True)
    )
    lines.append(
        f"stow-rs, agent side alone (instances per agent CPU second): {cpu_bound:.2f}x the sink"
    )
    lines += deid_cost_section(args)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
