"""Fleet benchmark: N simulated agents on one control-plane process, over real websockets.

    .venv/bin/python bench/fleet.py [--agents 1000] [--heartbeat 10] [--db sqlite|postgresql://…]

Starts `dicom-connector control-plane` as its own process, registers N agents in one site,
and connects N lightweight websocket clients that speak the real protocol
(`common.messages`): hello, config result, and a health report every heartbeat interval.
Then it measures, and prints as Markdown:

- the connect storm: all N agents dialling in at once until each has its welcome and config;
- memory per connection: the control plane's RSS growth divided by N;
- the API's latency (p50/p99 per route) under a concurrent HTTP load, first with no agent
  connected (the baseline) and then with all N heartbeating, side by side with the ratio;
- config push: from the PUT of a new revision until the last agent has it (several rounds),
  and until every agent's result is visible in the API.

Targets (issue 3): a new config reaches all 1,000 agents within 5 s; API p99 under 100 ms.

With `--rollout 1,10,100` it measures a rollout instead (`bench/_rollout.py`): N sites of one
agent each, one rollout over all of them in those stages, the time of each stage beyond its
soak, against the same change pushed by hand to every site.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import platform
import random
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path

import _rollout
import httpx2
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection, connect

from common.messages import (
    ConfigMessage,
    ConfigResult,
    Health,
    HealthReport,
    Hello,
    Welcome,
    encode_message,
    parse_message,
)

SITE = "bench"
READY_TIMEOUT_S = 60.0
CONNECT_CONCURRENCY = 200
OPEN_TIMEOUT_S = 60.0
API_ROUTES = ("agent", "site agents", "site health", "fleet health")
REPORT = HealthReport(
    listener_ok=True,
    uploads_open=True,
    last_query_duration_s=None,
    longest_reap_s=0.8,
    spool_depth=2,
    spool_bytes=900_000,
    deferred_uploads=0,
    failed_instances=0,
    uploads_succeeded=4200,
    uploads_failed=3,
    oldest_unuploaded_age_s=2.5,
    disk_free_bytes=300 * 10**9,
    disk_total_bytes=500 * 10**9,
    disk_reserve_bytes=10**9,
    last_error=None,
    last_error_at=None,
)


@dataclass
class SimulatedAgent:
    """One websocket client standing in for an agent."""

    agent_id: str
    token: str
    heartbeat_s: float
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    configured: asyncio.Event = field(default_factory=asyncio.Event)
    received_at: dict[int, float] = field(default_factory=dict)
    """perf_counter() when each config revision arrived."""
    heartbeats: int = 0
    _arrivals: dict[int, asyncio.Event] = field(default_factory=dict)

    def arrival(self, revision: int) -> asyncio.Event:
        """Set once config revision `revision` arrived."""
        return self._arrivals.setdefault(revision, asyncio.Event())

    async def run(self, url: str, stop: asyncio.Event) -> None:
        """Connect, say hello, answer configs and heartbeat until `stop`."""
        async with connect(
            url,
            additional_headers={"Authorization": f"Bearer {self.token}"},
            proxy=None,
            compression=None,
            open_timeout=OPEN_TIMEOUT_S,
        ) as ws:
            await ws.send(
                encode_message(
                    Hello(
                        agent_id=None,
                        agent_version="bench",
                        applied_revision=None,
                        protocol_versions=[1],
                    )
                )
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._receive(ws))
                beating = tasks.create_task(self._heartbeat(ws))
                await stop.wait()
                beating.cancel()
                await ws.close()

    async def _receive(self, ws: ClientConnection) -> None:
        async for frame in ws:
            message = parse_message(frame)
            if isinstance(message, Welcome):
                self.welcomed.set()
            elif isinstance(message, ConfigMessage):
                self.received_at[message.revision] = time.perf_counter()
                self.arrival(message.revision).set()
                message.site_config()
                await ws.send(
                    encode_message(ConfigResult(revision=message.revision, status="applied"))
                )
                self.configured.set()

    async def _heartbeat(self, ws: ClientConnection) -> None:
        # Agents started together would otherwise beat in lockstep.
        await asyncio.sleep(random.uniform(0, self.heartbeat_s))
        while True:
            await ws.send(encode_message(Health(report=REPORT)))
            self.heartbeats += 1
            await asyncio.sleep(self.heartbeat_s)


@dataclass
class Latencies:
    """Seconds per request, by route."""

    by_route: dict[str, list[float]] = field(default_factory=dict)
    errors: int = 0
    cpu_share: float = 0.0
    """Control-plane CPU use during the load, in cores."""

    def add(self, route: str, seconds: float) -> None:
        """Record one request."""
        self.by_route.setdefault(route, []).append(seconds)

    def percentile(self, route: str, share: float) -> float:
        """The `share` quantile of a route's latencies, in seconds."""
        return _quantile(self.by_route[route], share)


class ControlPlaneProcess:
    """`dicom-connector control-plane` on a free port, owned by the benchmark."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        heartbeat_s: float,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.admin_token = secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self._args = [
            sys.executable,
            "-m",
            "cli",
            "control-plane",
            "--db",
            database_url,
            "--http-port",
            str(self.port),
            "--blob-dir",
            str(workdir / "blobs"),
            "--host",
            "127.0.0.1",
        ]
        self._env = {
            **os.environ,
            "DICOM_CONNECTOR_ADMIN_TOKEN": self.admin_token,
            "DICOM_CONNECTOR_HEARTBEAT_INTERVAL_S": str(heartbeat_s),
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process and wait until `/healthz` answers."""
        log = (self.workdir / "control-plane.log").open("wb")
        self.process = subprocess.Popen(
            self._args, env=self._env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx2.Client(base_url=self.url) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the control plane exited; see {log.name}")
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"the control plane did not answer /healthz; see {log.name}")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the control-plane process used so far."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """Resident memory of the control-plane process."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 30 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report; the process exit status."""
    args = _parse_args(argv)
    _raise_open_file_limit(2 * args.agents + 1000)
    if args.replicas > 1:
        return await _main_replicas(args)
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    database_url = args.db if args.db != "sqlite" else f"sqlite:///{workdir / 'cp.db'}"
    extra_env = {}
    if args.rollout:
        extra_env["DICOM_CONNECTOR_ROLLOUT_TICK_INTERVAL_S"] = str(args.rollout_tick)
    control_plane = ControlPlaneProcess(workdir, database_url, args.heartbeat, extra_env)
    try:
        control_plane.start()
        if args.rollout:
            lines = await _measure_rollout(control_plane, args)
        else:
            lines = await _measure(control_plane, args)
    finally:
        control_plane.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(lines))
    return 0


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _measure(control_plane: ControlPlaneProcess, args: argparse.Namespace) -> list[str]:
    headers = {"Authorization": f"Bearer {control_plane.admin_token}"}
    async with httpx2.AsyncClient(base_url=control_plane.url, headers=headers, timeout=60) as admin:
        _progress(f"registering {args.agents} agents")
        agents = await _register(admin, args.agents, args.heartbeat)
        ids = [agent.agent_id for agent in agents]
        _progress("API load, no agent connected")
        idle = await _api_load(control_plane, ids, args)
        rss_before = control_plane.rss_bytes()

        # A thousand simulated links make a big heap: without this, collector pauses in this
        # process would delay the heartbeats and the timestamps of config arrival.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        _progress("connecting")
        cpu_before = control_plane.cpu_seconds()
        stop = asyncio.Event()
        link_url = control_plane.url.replace("http://", "ws://") + "/api/v1/agent/link"
        started = time.perf_counter()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        async with asyncio.TaskGroup() as tasks:
            for agent in agents:
                tasks.create_task(_connect(agent, link_url, stop, gate))
            await asyncio.gather(*(agent.configured.wait() for agent in agents))
            storm = time.perf_counter() - started
            storm_cpu = control_plane.cpu_seconds() - cpu_before
            _progress(f"connected in {storm:.1f} s; two heartbeat intervals")
            # One interval so that every agent has beaten, one to measure beating alone.
            await asyncio.sleep(args.heartbeat)
            cpu_steady = control_plane.cpu_seconds()
            await asyncio.sleep(args.heartbeat)
            steady = (control_plane.cpu_seconds() - cpu_steady) / args.heartbeat
            rss_after = control_plane.rss_bytes()
            _progress("API load, all agents heartbeating")
            loaded = await _api_load(control_plane, ids, args)
            pushes = []
            for round_number in range(args.pushes):
                _progress(f"config push {round_number + 1} of {args.pushes}")
                pushes.append(await _push(admin, agents, round_number))
            heartbeats = sum(agent.heartbeats for agent in agents)
            stop.set()
    return _report(
        args,
        Fleet(storm, storm_cpu, steady, rss_before, rss_after, heartbeats),
        idle,
        loaded,
        pushes,
    )


async def _measure_rollout(
    control_plane: ControlPlaneProcess, args: argparse.Namespace
) -> list[str]:
    """The rollout mode: see `bench/_rollout.py`."""
    stages = [int(part) for part in args.rollout.split(",")]
    headers = {"Authorization": f"Bearer {control_plane.admin_token}"}
    async with httpx2.AsyncClient(base_url=control_plane.url, headers=headers, timeout=60) as admin:
        _progress(f"registering {args.agents} sites of one agent each")
        agents = await _rollout.register_sites(
            admin,
            args.agents,
            lambda agent_id, token: SimulatedAgent(agent_id, token, args.heartbeat),
        )
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        _progress("connecting")
        stop = asyncio.Event()
        link_url = control_plane.url.replace("http://", "ws://") + "/api/v1/agent/link"
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def every_agent_has(revision: int) -> None:
            await asyncio.gather(*(agent.arrival(revision).wait() for agent in agents))

        async with asyncio.TaskGroup() as tasks:
            for agent in agents:
                tasks.create_task(_connect(agent, link_url, stop, gate))
            await asyncio.gather(*(agent.configured.wait() for agent in agents))
            # Every link recorded as connected, so the rollout counts every agent.
            await asyncio.sleep(2 * args.heartbeat)
            _progress("baseline: the same change by hand to every site")
            baseline = await _rollout.hand_push(admin, args.agents, every_agent_has)
            _progress(f"rollout in stages {stages}")
            run = await _rollout.run_rollout(admin, stages, args.rollout_soak, _progress)
            stop.set()
    lines = [
        *_machine(),
        f"command: .venv/bin/python bench/fleet.py --agents {args.agents}"
        f" --heartbeat {args.heartbeat:g} --db {'sqlite' if args.db == 'sqlite' else 'postgresql'}"
        f" --rollout {args.rollout} --rollout-soak {args.rollout_soak}"
        f" --rollout-tick {args.rollout_tick:g}",
        "",
    ]
    return lines + _rollout.report(
        dataclasses.replace(run, baseline_s=baseline), args.agents, args.rollout_tick
    )


async def _connect(
    agent: SimulatedAgent, url: str, stop: asyncio.Event, gate: asyncio.Semaphore
) -> None:
    # At most CONNECT_CONCURRENCY handshakes in flight: the bench's own event loop, not the
    # control plane, would otherwise be what a thousand simultaneous TLS-less opens measure.
    async with gate:
        running = asyncio.create_task(agent.run(url, stop))
        welcomed = asyncio.create_task(agent.welcomed.wait())
        await asyncio.wait({running, welcomed}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            welcomed.cancel()
            running.result()
            raise RuntimeError("an agent's link ended before its welcome")
    await running


@dataclass(frozen=True)
class Push:
    """One config push: when the last agent had it, and when the API showed all results."""

    reach_s: float
    median_s: float
    recorded_s: float


async def _push(admin: httpx2.AsyncClient, agents: list[SimulatedAgent], round_number: int) -> Push:
    document = {"timing": {"sleep_time": f"{61 + round_number}s"}}
    started = time.perf_counter()
    response = await admin.put(f"/api/v1/sites/{SITE}/config", content=json.dumps(document))
    response.raise_for_status()
    revision: int = response.json()["revision"]
    await asyncio.gather(*(agent.arrival(revision).wait() for agent in agents))
    arrivals = [agent.received_at[revision] - started for agent in agents]
    while True:
        listed = (await admin.get(f"/api/v1/sites/{SITE}/agents")).json()["items"]
        if all(item["config_revision"] == revision for item in listed):
            break
        await asyncio.sleep(0.05)
    return Push(
        reach_s=max(arrivals),
        median_s=statistics.median(arrivals),
        recorded_s=time.perf_counter() - started,
    )


async def _register(
    admin: httpx2.AsyncClient, count: int, heartbeat_s: float
) -> list[SimulatedAgent]:
    (await admin.post("/api/v1/sites", json={"name": SITE, "timezone": "UTC"})).raise_for_status()
    gate = asyncio.Semaphore(16)

    async def one(index: int) -> SimulatedAgent:
        async with gate:
            response = await admin.post(
                f"/api/v1/sites/{SITE}/agents",
                json={"name": f"agent-{index:05d}", "deployment": "edge"},
            )
        response.raise_for_status()
        created = response.json()
        return SimulatedAgent(created["id"], created["token"], heartbeat_s)

    return list(await asyncio.gather(*(one(index) for index in range(count))))


async def _api_load(
    control_plane: ControlPlaneProcess, agent_ids: list[str], args: argparse.Namespace
) -> Latencies:
    """Run the API load from a process of its own, so that the simulated agents (a thousand
    connections, with the garbage-collector pauses of a heap that size) do not stall the
    clock that times the requests."""
    loop = asyncio.get_running_loop()
    cpu_before = control_plane.cpu_seconds()
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        latencies = await loop.run_in_executor(
            pool,
            _api_load_process,
            control_plane.url,
            control_plane.admin_token,
            agent_ids,
            args.load_seconds,
            args.api_rate,
            args.view_rate,
        )
    latencies.cpu_share = (control_plane.cpu_seconds() - cpu_before) / args.load_seconds
    return latencies


def _api_load_process(
    url: str, token: str, agent_ids: list[str], seconds: float, api_rate: float, view_rate: float
) -> Latencies:
    return asyncio.run(_api_requests(url, token, agent_ids, seconds, api_rate, view_rate))


async def _api_requests(
    url: str, token: str, agent_ids: list[str], seconds: float, api_rate: float, view_rate: float
) -> Latencies:
    """Two steady streams of requests (open loop: a slow answer does not delay the next
    request, so latency is measured as a caller sees it, not as a queue length): one agent
    looked up at a time, as support staff and tools do, at `api_rate`; and the whole-site
    and whole-fleet views a dashboard polls, at `view_rate`, taking turns."""
    latencies = Latencies()
    views = [
        ("site agents", f"/api/v1/sites/{SITE}/agents"),
        ("site health", f"/api/v1/sites/{SITE}/health"),
        ("fleet health", "/api/v1/fleet/health"),
    ]

    async def one(client: httpx2.AsyncClient, route: str, path: str) -> None:
        began = time.perf_counter()
        response = await client.get(path)
        latencies.add(route, time.perf_counter() - began)
        if response.status_code != 200:
            latencies.errors += 1

    async def stream(
        client: httpx2.AsyncClient, rate: float, request: Callable[[int], tuple[str, str]]
    ) -> None:
        async with asyncio.TaskGroup() as tasks:
            started = time.perf_counter()
            for index in range(int(seconds * rate)):
                await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
                tasks.create_task(one(client, *request(index)))

    limits = httpx2.Limits(max_connections=int(api_rate + view_rate) + 8)
    async with httpx2.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60, limits=limits
    ) as client:
        await asyncio.gather(
            stream(
                client, api_rate, lambda _: ("agent", f"/api/v1/agents/{random.choice(agent_ids)}")
            ),
            stream(client, view_rate, lambda index: views[index % len(views)]),
        )
    return latencies


@dataclass(frozen=True)
class Fleet:
    """What connecting and keeping the agents cost the control plane."""

    storm_s: float
    storm_cpu_s: float
    steady_cpu_share: float
    """CPU use while the agents only heartbeat, in cores."""
    rss_before: int
    rss_after: int
    heartbeats: int


def _report(
    args: argparse.Namespace,
    fleet: Fleet,
    idle: Latencies,
    loaded: Latencies,
    pushes: list[Push],
) -> list[str]:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f}"

    per_agent = (fleet.rss_after - fleet.rss_before) / args.agents / 1000
    lines = [
        *_machine(),
        f"command: .venv/bin/python bench/fleet.py --agents {args.agents}"
        f" --heartbeat {args.heartbeat:g} --db {'sqlite' if args.db == 'sqlite' else 'postgresql'}"
        f" --load-seconds {args.load_seconds:g} --api-rate {args.api_rate:g}"
        f" --view-rate {args.view_rate:g} --pushes {args.pushes}",
        "",
        f"- connect storm: {args.agents} agents welcomed and configured in {fleet.storm_s:.1f} s"
        f" ({CONNECT_CONCURRENCY} handshakes in flight at most), control-plane CPU"
        f" {fleet.storm_cpu_s / args.agents * 1000:.1f} ms per agent",
        f"- steady state: heartbeats every {args.heartbeat:g} s keep the control plane"
        f" {fleet.steady_cpu_share * 100:.0f}% busy (of one core)",
        f"- memory: control-plane RSS {fleet.rss_before / 1e6:.0f} MB with no link,"
        f" {fleet.rss_after / 1e6:.0f} MB with {args.agents}: {per_agent:.1f} KB per link",
        f"- heartbeats received during the run: {fleet.heartbeats}",
        "",
        "| config push | last agent has it (s) | median agent (s) | every result in the API (s) |",
        "|---|---:|---:|---:|",
        *(
            f"| round {index + 1} | {push.reach_s:.3f} | {push.median_s:.3f} |"
            f" {push.recorded_s:.3f} |"
            for index, push in enumerate(pushes)
        ),
        "",
        f"API latency in ms, {args.load_seconds:g} s per phase: one agent looked up"
        f" {args.api_rate:g} times/s, and the {args.agents}-agent views {args.view_rate:g} times/s"
        f" in turn; idle = no agent connected (control plane {idle.cpu_share * 100:.0f}% busy),"
        f" loaded = all heartbeating ({loaded.cpu_share * 100:.0f}% busy):",
        "",
        "| route | requests | idle p50 | idle p99 | loaded p50 | loaded p99 | loaded/idle p99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for route in API_ROUTES:
        if route not in idle.by_route or route not in loaded.by_route:
            continue
        idle_p99, loaded_p99 = idle.percentile(route, 0.99), loaded.percentile(route, 0.99)
        lines.append(
            f"| {route} | {len(loaded.by_route[route])} | {ms(idle.percentile(route, 0.5))} |"
            f" {ms(idle_p99)} | {ms(loaded.percentile(route, 0.5))} | {ms(loaded_p99)} |"
            f" {loaded_p99 / idle_p99:.2f} |"
        )
    lines += ["", f"non-200 answers: {idle.errors + loaded.errors}"]
    return lines


def _quantile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _machine() -> list[str]:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"machine: {os.cpu_count()} cores ({cpu_model}), {platform.system()}"
        f" {platform.release()}, load average {load}",
        f"python {platform.python_version()}, uvicorn {version('uvicorn')},"
        f" websockets {version('websockets')}, SQLAlchemy {version('sqlalchemy')}",
    ]


def _raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"{needed} open files are needed but the hard limit is {hard}; raise it"
            " (e.g. `ulimit -Hn 65536` as root) or run with fewer --agents"
        )
    # Inherited by the control-plane process, which holds the other end of every link.
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000, help="simulated agents")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between beats")
    parser.add_argument(
        "--db", default="sqlite", help="'sqlite' (a file in the workdir) or a PostgreSQL URL"
    )
    parser.add_argument("--load-seconds", type=float, default=20.0, help="per API load phase")
    parser.add_argument(
        "--api-rate", type=float, default=20.0, help="single-agent lookups per second"
    )
    parser.add_argument(
        "--view-rate", type=float, default=1.0, help="whole-site/fleet views per second"
    )
    parser.add_argument("--pushes", type=int, default=5, help="config push rounds")
    parser.add_argument("--keep", action="store_true", help="keep the workdir and its log")
    parser.add_argument(
        "--rollout",
        default=None,
        help="measure a rollout in these stages (e.g. 1,10,100) over --agents sites instead",
    )
    parser.add_argument("--rollout-soak", default="1s", help="soak of each rollout stage")
    parser.add_argument(
        "--rollout-tick", type=float, default=1.0, help="the rollout driver's tick (seconds)"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        choices=(1, 2),
        help="2: one replica and then two on one PostgreSQL database (--db postgresql://…, a"
        " scratch database is made on that server), agents split between them, side by side",
    )
    args = parser.parse_args(argv)
    if args.replicas > 1 and args.db == "sqlite":
        parser.error("--replicas 2 needs PostgreSQL: --db postgresql://HOST/DB")
    if args.replicas > 1 and args.rollout:
        parser.error("--rollout and --replicas 2 are separate measurements; give one")
    return args


# --- --replicas 2: one replica, then two, on one PostgreSQL database ---------------------------


@dataclass(frozen=True)
class ReplicaPhase:
    """What one phase of the replica comparison measured."""

    replicas: int
    storm_s: float
    loaded: Latencies
    pushes: list[Push]
    last_by_replica: list[list[float]]
    """Per push, per serving replica: seconds until the last of its agents had the revision."""


async def _main_replicas(args: argparse.Namespace) -> int:
    """The agents on one replica, then split over two replicas of one database; both
    replicas run throughout, so the only difference between the phases is where the agents
    and the API requests go."""
    workdir = Path(tempfile.mkdtemp(prefix="fleet-replicas-"))
    replicas: list[ControlPlaneProcess] = []
    try:
        with _scratch_database(args.db) as database_url:
            for name in ("a", "b"):
                (workdir / name).mkdir()
                # Each replica has an admin token of its own (tokens are not in the database).
                replica = ControlPlaneProcess(workdir / name, database_url, args.heartbeat)
                replicas.append(replica)
                replica.start()
            phases = await _measure_replicas(replicas, args)
    finally:
        for replica in replicas:
            replica.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(_report_replicas(args, phases)))
    return 0


@contextlib.contextmanager
def _scratch_database(url: str) -> Iterator[str]:
    """A database of its own on the server of `url`, dropped afterwards (the run registers
    its site and agents from scratch)."""
    server = make_url(url).set(drivername="postgresql")
    name = f"fleet_bench_{secrets.token_hex(4)}"

    def run(statement: str) -> None:
        with psycopg.connect(server.render_as_string(hide_password=False), autocommit=True) as db:
            db.execute(sql.SQL(statement).format(sql.Identifier(name)))

    run("CREATE DATABASE {}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        run("DROP DATABASE IF EXISTS {} WITH (FORCE)")


async def _measure_replicas(
    replicas: list[ControlPlaneProcess], args: argparse.Namespace
) -> list[ReplicaPhase]:
    first = replicas[0]
    headers = {"Authorization": f"Bearer {first.admin_token}"}
    async with httpx2.AsyncClient(base_url=first.url, headers=headers, timeout=60) as admin:
        _progress(f"registering {args.agents} agents")
        registered = await _register(admin, args.agents, args.heartbeat)
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        phases = []
        for count in (1, 2):
            _progress(f"{count} replica(s): connecting")
            phases.append(await _replica_phase(admin, replicas[:count], registered, args))
    return phases


async def _replica_phase(
    admin: httpx2.AsyncClient,
    serving: list[ControlPlaneProcess],
    registered: list[SimulatedAgent],
    args: argparse.Namespace,
) -> ReplicaPhase:
    """Connect every agent (round robin over `serving`, as a load balancer would), load the
    API of `serving` evenly, push configs through the first replica, disconnect."""
    agents = [SimulatedAgent(a.agent_id, a.token, a.heartbeat_s) for a in registered]
    urls = [replica.url.replace("http://", "ws://") + "/api/v1/agent/link" for replica in serving]
    ids = [agent.agent_id for agent in agents]
    stop = asyncio.Event()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for index, agent in enumerate(agents):
            tasks.create_task(_connect(agent, urls[index % len(urls)], stop, gate))
        await asyncio.gather(*(agent.configured.wait() for agent in agents))
        storm = time.perf_counter() - started
        _progress(f"connected in {storm:.1f} s; one heartbeat interval")
        await asyncio.sleep(args.heartbeat)
        _progress("API load")
        loaded = await _api_load_spread(serving, ids, args)
        pushes, last_by_replica = [], []
        for round_number in range(args.pushes):
            _progress(f"config push {round_number + 1} of {args.pushes}")
            began = time.perf_counter()
            # Other numbers than the phase before, so every push is a new revision.
            pushes.append(await _push(admin, agents, 100 * len(serving) + round_number))
            revision = max(agents[0].received_at)
            last_by_replica.append(
                [
                    max(agent.received_at[revision] for agent in agents[index :: len(serving)])
                    - began
                    for index in range(len(serving))
                ]
            )
        stop.set()
    return ReplicaPhase(len(serving), storm, loaded, pushes, last_by_replica)


async def _api_load_spread(
    serving: list[ControlPlaneProcess], agent_ids: list[str], args: argparse.Namespace
) -> Latencies:
    """The same total request rates as `_api_load`, split evenly over the replicas (one load
    process each), latencies pooled."""
    loop = asyncio.get_running_loop()
    share = len(serving)
    with ProcessPoolExecutor(max_workers=share, mp_context=get_context("spawn")) as pool:
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool,
                    _api_load_process,
                    replica.url,
                    replica.admin_token,
                    agent_ids,
                    args.load_seconds,
                    args.api_rate / share,
                    args.view_rate / share,
                )
                for replica in serving
            )
        )
    pooled = Latencies()
    for part in parts:
        pooled.errors += part.errors
        for route, seconds in part.by_route.items():
            pooled.by_route.setdefault(route, []).extend(seconds)
    return pooled


def _report_replicas(args: argparse.Namespace, phases: list[ReplicaPhase]) -> list[str]:
    one, two = phases

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f}"

    def worst(phase: ReplicaPhase) -> float:
        return max(push.reach_s for push in phase.pushes)

    def median(phase: ReplicaPhase) -> float:
        return statistics.median(push.reach_s for push in phase.pushes)

    def recorded(phase: ReplicaPhase) -> float:
        return statistics.median(push.recorded_s for push in phase.pushes)

    lines = [
        *_machine(),
        f"command: .venv/bin/python bench/fleet.py --replicas 2 --agents {args.agents}"
        f" --heartbeat {args.heartbeat:g} --db postgresql --load-seconds {args.load_seconds:g}"
        f" --api-rate {args.api_rate:g} --view-rate {args.view_rate:g} --pushes {args.pushes}",
        "",
        f"{args.agents} agents on one replica, then split evenly over two replicas of one"
        " PostgreSQL database (both replicas run throughout); configs PUT through the first"
        " replica, so with two, half the agents hear of each revision over LISTEN/NOTIFY.",
        "",
        "| | 1 replica | 2 replicas | 2 / 1 |",
        "|---|---:|---:|---:|",
        f"| connect storm (s) | {one.storm_s:.1f} | {two.storm_s:.1f} |"
        f" {two.storm_s / one.storm_s:.2f} |",
        f"| config push, last agent has it, median of {args.pushes} (s) | {median(one):.3f} |"
        f" {median(two):.3f} | {median(two) / median(one):.2f} |",
        f"| config push, last agent has it, worst of {args.pushes} (s) | {worst(one):.3f} |"
        f" {worst(two):.3f} | {worst(two) / worst(one):.2f} |",
        f"| config push, last agent on the PUT's replica has it, median (s) |"
        f" {statistics.median(r[0] for r in one.last_by_replica):.3f} |"
        f" {statistics.median(r[0] for r in two.last_by_replica):.3f} | |",
        f"| config push, last agent on the other replica has it (NOTIFY), median (s) | n/a |"
        f" {statistics.median(r[1] for r in two.last_by_replica):.3f} | |",
        f"| config push, every result in the first replica's API, median (s) |"
        f" {recorded(one):.3f} | {recorded(two):.3f} | {recorded(two) / recorded(one):.2f} |",
    ]
    for route in API_ROUTES:
        if route in one.loaded.by_route and route in two.loaded.by_route:
            a, b = one.loaded.percentile(route, 0.99), two.loaded.percentile(route, 0.99)
            lines.append(f"| API p99, {route} (ms) | {ms(a)} | {ms(b)} | {b / a:.2f} |")
    lines += [
        "",
        f"API load: one agent looked up {args.api_rate:g} times/s and the whole-site/fleet"
        f" views {args.view_rate:g} times/s in all, for {args.load_seconds:g} s, split evenly"
        " over the serving replicas; non-200 answers:"
        f" {one.loaded.errors} (1 replica), {two.loaded.errors} (2 replicas)",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
