"""The agent process: one `asyncio.TaskGroup` owns the control-plane link, the upload loop
and the pull service (which polls sources only while the site config says `mode: pull`).

Start-up: config (last-known-good, else one fetched over HTTP, waiting for the control plane
if need be) → the data directory's lock → state database → spool recovery → DICOM listener
and its sibling intake processes (`agent.intake_workers`) → `ready(port)` → the link,
which brings every newer config (`apply_config`) and reports health. Shutdown (SIGTERM,
`stop()` or cancellation) runs the same code path every time, whatever was started: the link
closes first (no config is applied while stopping), pulling stops (its associations are
aborted), then the listener (open associations finish), in-flight uploads get
`upload_drain_timeout` to finish, then the destinations, config client and state are closed.

Destinations (`agent.upload.destinations`) are built from the config at start and rebuilt when
a new revision changes `destination` or `destination_by_group`; the set they replace is
closed once the batches using it are done. `upload.concurrency` (else the agent setting) is
applied with every revision.
`stop()` may be called any number of times.

DICOM threads meet asyncio at exactly one seam: the listener's `on_stored` callback tells the
upload loop about the arrival through `loop.call_soon_threadsafe`.

Must not import fastapi or control_plane; pynetdicom only through `agent.dicom`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from agent.config_client import ConfigClient
from agent.data_dir_lock import DataDirLock
from agent.dicom.association_limit import AssociationLimit
from agent.dicom.intake import identify_spooled
from agent.dicom.listeners import Listener, make_listener
from agent.dicom.timeouts import ScpTimeouts
from agent.dicom.tls import TlsContexts, TlsError, TlsFiles
from agent.figures import FiguresBuffer
from agent.health import HealthSnapshot, PipelineCounters, health_report, take_snapshot
from agent.intake_workers import IntakeWorkers, IntakeWorkerSpec, WorkerFailed
from agent.link import ConfigNotApplied, ControlPlaneLink
from agent.metrics import AgentMetricsServer
from agent.outgoing import DeidProfile, Outgoing
from agent.pull.ledger import check_ledger
from agent.pull.service import PullService
from agent.reaper import Reaper
from agent.rejections import RejectionCounter
from agent.settings import AgentSettings
from agent.site import SiteSnapshot
from agent.spool import Spool
from agent.state import AgentState
from agent.tls import control_plane_ssl_context
from agent.tracing import TRACER_NAME, PipelineTracer
from agent.upload.base import Destination
from agent.upload.builtin_store import BuiltinStoreDestination
from agent.upload.destinations import Destinations, build_destinations, destinations_key
from agent.uploader import Uploader, UploadLoop
from common.deid.errors import DeidError
from common.deployment import IN_CLUSTER, in_cluster_problems
from common.logging import RecentLogLines, configure_logging, series_key
from common.messages import HealthReport
from common.telemetry import configure_tracing

STATE_FILE_NAME = "state.db"
_LOCK_GRACE_SECONDS = 10.0
SPOOL_DIR_NAME = "spool"
# De-identified copies waiting to be sent (agent.outgoing): derived data, wiped at start.
OUTGOING_DIR_NAME = "outgoing"
ASSOCIATION_SLOTS_DIR_NAME = "association-slots"
SERVICE_NAME = "dicom-connector-agent"

log = structlog.get_logger(__name__)

# What restarts the listener when a config revision changes it: AE title, port, peers, the
# association cap, the timeouts and whether TLS is on. New TLS files do not: they are swapped in.
ListenerKey = tuple[str, int, tuple[tuple[str, str], ...], int, tuple[float, float, float], bool]


class AgentRuntime:
    """One agent: its state, spool, DICOM listener and upload pipeline; runs once."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        clock: Callable[[], float] = time.time,
        tracer_provider: TracerProvider | None = None,
        destination: Destination | None = None,
        config_client: ConfigClient | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._tracer = PipelineTracer(tracer_provider)
        self._destination = destination
        # One TLS context for the link, the config fetch and uploads (agent.tls).
        self._control_plane_tls = control_plane_ssl_context(settings.control_plane_ca)
        self._config_client = config_client or ConfigClient(
            settings.control_plane_url,
            settings.token_file,
            settings.data_dir,
            timeout=settings.http_timeout,
            verify=self._control_plane_tls,
        )
        self.counters = PipelineCounters()
        self.figures = FiguresBuffer()
        self.recent_logs = RecentLogLines()
        """The latest log lines while running (PHI-filtered), for the diagnostics bundle."""
        """Series figures waiting for the link (the operational figures' raw facts)."""
        self._stop_requested = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._snapshot: SiteSnapshot | None = None
        self._state: AgentState | None = None
        self._spool: Spool | None = None
        self._listener: Listener | None = None
        self._listener_key: ListenerKey | None = None
        self._tls: TlsContexts | None = None
        self._workers: IntakeWorkers | None = None
        self._data_dir_lock = DataDirLock(settings.data_dir)
        self._upload_loop: UploadLoop | None = None
        self._outgoing: Outgoing | None = None
        self._uploader: Uploader | None = None
        self._builtin: Destination | None = None
        self._pull: PullService | None = None
        self.dicom_port: int | None = None
        self.metrics_port: int | None = None
        """The port /metrics and /healthz are served on, when `settings.metrics_port` is set."""
        self.link = ControlPlaneLink(
            settings.control_plane_url,
            settings.token_file,
            self,
            self._config_client,
            backoff_base=settings.link_backoff_base,
            backoff_cap=settings.link_backoff_cap,
            unauthorized_retry_interval=settings.link_unauthorized_retry_interval,
            open_timeout=settings.link_open_timeout,
            ssl_context=self._control_plane_tls,
            figures=self.figures,
            tracer=(tracer_provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME),
            recent_logs=self.recent_logs,
        )
        """The websocket to the control plane (up while `link.connected`)."""

    @property
    def listening_as(self) -> tuple[str, int] | None:
        """The AE title and port DICOM is accepted on, or None while not listening."""
        if self._listener is None or self._listener_key is None or self.dicom_port is None:
            return None
        return self._listener_key[0], self.dicom_port

    def stop(self) -> None:
        """Ask the runtime to shut down; idempotent, callable from any thread or before `run`."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._stop_requested.set()
        else:
            loop.call_soon_threadsafe(self._stop_requested.set)

    def health(self) -> HealthSnapshot:
        """The current health (blocking: reads the state database); only while running."""
        if self._state is None or self._snapshot is None:
            raise RuntimeError("the agent is not running; health is available once it started")
        now = self._clock()
        if self._workers is not None:
            for message in self._workers.exited():
                self.counters.record_error(message, now)
        timing = self._snapshot.config.timing
        pulling = self._snapshot.config.mode == "pull"
        return take_snapshot(
            self._state,
            self.counters,
            spool_dir=self.settings.data_dir / SPOOL_DIR_NAME,
            reserve_bytes=self.settings.spool_reserve_bytes,
            reap_time_threshold=timing.reap_time_threshold.total_seconds(),
            config_revision=self._snapshot.revision,
            uploads_open=self._upload_loop.uploads_open(now) if self._upload_loop else False,
            listener_ok=self._listener is not None,
            now=now,
            pull_sources=self._pull.health() if self._pull else (),
            query_time_threshold=timing.query_time_threshold.total_seconds() if pulling else None,
            dicom_rejections=self._rejection_counts(),
            tls_certificate_not_after=None if self._tls is None else self._tls.not_after,
            tls_problem=None if self._tls is None else self._tls.problem,
        )

    def _rejection_counts(self) -> list[tuple[str, str, int]]:
        parts = [] if self._workers is None else self._workers.rejections()
        if self._listener is not None:
            parts.append(self._listener.rejections.counts())
        return RejectionCounter.merged(parts)

    @property
    def upload_concurrency(self) -> int | None:
        """Chunk requests the uploader allows in flight now; None before it runs."""
        return None if self._uploader is None else self._uploader.concurrency

    @property
    def applied_revision(self) -> int | None:
        """The config revision the agent runs on; None before it has one."""
        return None if self._snapshot is None else self._snapshot.revision

    def health_report(self) -> HealthReport:
        """`health()` as the wire report the link sends (blocking); only while running."""
        return health_report(self.health())

    def record_error(self, message: str) -> None:
        """Make `message` (a PHI-free sentence) the latest error shown in health."""
        self.counters.record_error(message, self._clock())

    async def run_command(self, name: str, args: dict[str, Any]) -> tuple[bool, str]:
        """Carry out a support command sent over the link (arguments already validated)."""
        state = self._state
        if state is None:
            return False, "the agent is not running yet; try again once it reports health"
        if name in ("retry_series", "discard_series"):
            key = str(args["series_key"])
            uid = await asyncio.to_thread(_failed_series_by_key, state, key)
            if uid is None:
                return False, f"no failed series {key} on this agent"
            if name == "retry_series":
                count = await asyncio.to_thread(state.retry_series, uid)
                if self._upload_loop is not None:
                    self._upload_loop.wake()
                return True, f"series {key}: {count} instance(s) queued for upload again"
            count = await asyncio.to_thread(state.discard_series, uid, "discarded by support")
            return True, f"series {key}: {count} instance(s) discarded and deleted"
        if name in ("echo_source", "query_source"):
            if self._pull is None:
                return False, "the agent is not running yet; try again once it reports health"
            source = str(args["source"])
            if name == "echo_source":
                return await self._pull.echo_now(source)
            return await self._pull.query_now(source)
        return False, f"this agent has no command {name!r}"

    async def run(self, *, ready: Callable[[int], None] | None = None) -> None:
        """Run until `stop()` or cancellation; call `ready(port)` once DICOM is accepted."""
        if self._started:
            raise RuntimeError("an AgentRuntime runs once; create a new one to start again")
        self._started = True
        self._loop = asyncio.get_running_loop()
        async with AsyncExitStack() as resources:
            # Before anything in the data directory is read or written, config.json included.
            await self._lock_data_dir(resources)
            self.recent_logs.attach()
            resources.callback(self.recent_logs.detach)
            resources.push_async_callback(self._config_client.aclose)
            snapshot = await self._until_stopped(self._config_client.initial())
            if snapshot is None:
                return
            self._snapshot = snapshot
            if self._config_client.last_error:
                self.counters.record_error(self._config_client.last_error, self._clock())
            await self._open_storage(resources)
            self._serve_metrics(resources)
            builtin = self._destination or await self._builtin_destination()
            resources.push_async_callback(builtin.aclose)
            self._builtin = builtin
            destinations = build_destinations(
                snapshot.config, builtin, timeout=self.settings.http_timeout
            )
            # Runs before the built-in store closes (LIFO), after the uploads drained.
            resources.push_async_callback(self._retire_destinations)
            upload_loop = self._build_upload_loop(destinations, snapshot)
            self._pull = self._build_pull_service(snapshot)
            resources.push_async_callback(self._stop_listener)
            await self._start_listener(snapshot)
            assert self.dicom_port is not None
            if ready is not None and not self._stop_requested.is_set():
                ready(self.dicom_port)
            await self._serve(upload_loop)

    async def _serve(self, upload_loop: UploadLoop) -> None:
        assert self._pull is not None
        pull = self._pull
        async with asyncio.TaskGroup() as group:
            link_task = group.create_task(self.link.run())
            upload_task = group.create_task(upload_loop.run())
            pull_task = group.create_task(pull.run())
            try:
                await self._stop_requested.wait()
            finally:
                # Same order on a clean stop, a cancellation and a crashed task: no config
                # change, no new retrievals or associations, then the uploads finish briefly.
                log.info("agent.stopping")
                link_task.cancel()
                await asyncio.wait([link_task])
                pull.stop()
                await asyncio.wait([pull_task])
                await self._stop_listener()
                upload_loop.stop()
                await asyncio.wait([upload_task])

    async def _until_stopped(self, work: Coroutine[Any, Any, SiteSnapshot]) -> SiteSnapshot | None:
        """Await `work` unless a stop arrives first (then cancel it and return None)."""
        work_task = asyncio.ensure_future(work)
        stop_task = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait([work_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work_task, stop_task):
                task.cancel()
            await asyncio.gather(work_task, stop_task, return_exceptions=True)
        if work_task.cancelled():
            return None
        return work_task.result()

    async def _lock_data_dir(self, resources: AsyncExitStack) -> None:
        await asyncio.to_thread(self.settings.data_dir.mkdir, parents=True, exist_ok=True)
        # The intake workers of an agent killed with -9 abort at once but hold the lock until
        # they are gone; a live agent keeps it (and the error says so) after this wait.
        lock_timeout = self.settings.association_drain_timeout + _LOCK_GRACE_SECONDS
        await asyncio.to_thread(self._data_dir_lock.acquire, lock_timeout)
        resources.callback(self._data_dir_lock.release)

    async def _open_storage(self, resources: AsyncExitStack) -> None:
        data_dir = self.settings.data_dir
        state = await asyncio.to_thread(
            AgentState.open, data_dir / STATE_FILE_NAME, clock=self._clock
        )
        self._state = state
        resources.push_async_callback(asyncio.to_thread, state.close)
        # Before the spool recovery: with a state file that is not this directory's, recovery
        # would delete every spooled file as an orphan.
        await asyncio.to_thread(check_ledger, state, data_dir)
        # Runs before the close above (LIFO): health() says "not running" from here on.
        resources.callback(self._forget_state)
        spool = await asyncio.to_thread(
            Spool, data_dir / SPOOL_DIR_NAME, state, self.settings.spool_reserve_bytes
        )
        resources.push_async_callback(asyncio.to_thread, spool.close)
        await asyncio.to_thread(spool.recover, identify_spooled)
        self._spool = spool
        self._outgoing = Outgoing(data_dir / OUTGOING_DIR_NAME)
        await asyncio.to_thread(self._outgoing.reset)

    def _serve_metrics(self, resources: AsyncExitStack) -> None:
        if self.settings.metrics_port is None:
            return
        server = AgentMetricsServer(
            self.settings.metrics_host, self.settings.metrics_port, self.health
        )
        self.metrics_port = server.start()
        # Closed after the state (LIFO): a scrape meanwhile answers 503, never a crash.
        resources.push_async_callback(asyncio.to_thread, server.close)
        log.info("agent.metrics_serving", port=self.metrics_port)

    def _forget_state(self) -> None:
        self._state = None
        self._upload_loop = None

    async def _builtin_destination(self) -> Destination:
        token_file = self.settings.token_file
        await asyncio.to_thread(token_file.read_text, encoding="utf-8")  # fail early if unreadable

        def current_token() -> str:
            return token_file.read_text(encoding="utf-8").strip()

        return BuiltinStoreDestination(
            self.settings.control_plane_url,
            current_token,
            timeout=self.settings.http_timeout,
            verify=self._control_plane_tls,
        )

    def _build_upload_loop(self, destinations: Destinations, snapshot: SiteSnapshot) -> UploadLoop:
        assert self._state is not None
        uploader = Uploader(
            self._state,
            destinations,
            concurrency=self._upload_concurrency(snapshot),
            counters=self.counters,
            clock=self._clock,
            tracer=self._tracer,
            outgoing=self._outgoing,
        )
        self._uploader = uploader
        self._upload_loop = UploadLoop(
            self._state,
            Reaper(self._state, clock=self._clock),
            uploader,
            snapshot,
            counters=self.counters,
            interval=self.settings.reap_interval,
            drain_timeout=self.settings.upload_drain_timeout,
            clock=self._clock,
            outgoing=self._outgoing,
            figures=self.figures,
        )
        return self._upload_loop

    def _build_pull_service(self, snapshot: SiteSnapshot) -> PullService:
        assert self._state is not None
        assert self._spool is not None
        return PullService(
            self._state,
            self._spool,
            snapshot,
            data_dir=self.settings.data_dir,
            counters=self.counters,
            clock=self._clock,
            on_stored=self._on_stored,
            requestor_engine=self.settings.requestor_engine,
        )

    async def apply_config(self, snapshot: SiteSnapshot) -> None:
        """Switch to a new config; restart the listener if its AE title, port or peers changed.

        Associations in flight finish before the listener restarts. Raises `ConfigNotApplied`
        when the de-identification profile cannot be built (the previous config stays in
        force), or when the new listener cannot start: the previous config is back in force,
        listener included.
        """
        try:
            await asyncio.to_thread(DeidProfile.of, snapshot.config.deid, snapshot.deid_salt)
        except DeidError as exc:
            raise ConfigNotApplied(
                f"the de-identification profile of revision {snapshot.revision} cannot be "
                f"used: {exc}"
            ) from exc
        if self.link.deployment == IN_CLUSTER and (
            problems := in_cluster_problems(snapshot.config)
        ):
            raise ConfigNotApplied(
                "this agent runs in-cluster, where connectors use mutual TLS and push only: "
                + "; ".join(problems)
            )
        if self._listener is not None and self._listener_key == self._key_of(snapshot):
            await self._use_tls(snapshot)
        previous, self._snapshot = self._snapshot, snapshot
        self._hand_to_pipeline(snapshot)
        if self._listener is None or self._listener_key == self._key_of(snapshot):
            await self._apply_upload_config(snapshot)
            return
        log.info("agent.listener_restarting", revision=snapshot.revision)
        await self._stop_listener()
        try:
            await self._start_listener(snapshot)
        except (OSError, ValueError) as exc:
            assert previous is not None
            message = f"cannot listen as configured in revision {snapshot.revision}: {exc}"
            log.error("agent.listener_restart_failed", revision=snapshot.revision, error=message)
            self._snapshot = previous
            self._hand_to_pipeline(previous)
            await self._start_listener(previous)
            raise ConfigNotApplied(message) from exc
        await self._apply_upload_config(snapshot)

    def _upload_concurrency(self, snapshot: SiteSnapshot) -> int:
        """The site config's `upload.concurrency`, else the agent's setting."""
        configured = snapshot.config.upload.concurrency
        return self.settings.upload_concurrency if configured is None else configured

    async def _apply_upload_config(self, snapshot: SiteSnapshot) -> None:
        """Rebuild the destinations if this revision changed them and retire the old set;
        apply its upload concurrency."""
        uploader, builtin = self._uploader, self._builtin
        if uploader is None or builtin is None:
            return
        await uploader.set_concurrency(self._upload_concurrency(snapshot))
        if uploader.destinations.key == destinations_key(snapshot.config):
            return
        replacement = build_destinations(
            snapshot.config, builtin, timeout=self.settings.http_timeout
        )
        log.info("agent.destinations_changed", revision=snapshot.revision)
        await uploader.replace_destinations(replacement).retire()

    async def _retire_destinations(self) -> None:
        if self._uploader is not None:
            await self._uploader.destinations.retire()

    async def _use_tls(self, snapshot: SiteSnapshot) -> None:
        """Swap in the TLS files of `snapshot` for the next association (every intake process);
        `ConfigNotApplied` when they cannot be used (the files in force stay)."""
        tls, files = snapshot.config.dicom.tls, TlsFiles.of(snapshot.config.dicom.tls)
        if self._tls is None or tls is None or files is None or files == self._tls.files:
            return
        try:
            await asyncio.to_thread(self._tls.use, files)
        except TlsError as exc:
            raise ConfigNotApplied(f"revision {snapshot.revision}: {exc}") from exc
        if self._workers is not None:
            await self._workers.use_tls(tls)
        log.info("agent.tls_files_changed", revision=snapshot.revision)

    def _hand_to_pipeline(self, snapshot: SiteSnapshot) -> None:
        if self._upload_loop is not None:
            self._upload_loop.snapshot = snapshot
            self._upload_loop.wake()
        if self._pull is not None:
            self._pull.apply(snapshot)

    def _key_of(self, snapshot: SiteSnapshot) -> ListenerKey:
        dicom = snapshot.config.dicom
        port = self.settings.dicom_port_override
        peers = tuple((peer.ae_title, peer.host) for peer in dicom.peers)
        timeouts = dicom.timeouts
        return (
            dicom.ae_title,
            dicom.port if port is None else port,
            peers,
            dicom.max_associations,
            (
                timeouts.artim.total_seconds(),
                timeouts.dimse.total_seconds(),
                timeouts.network.total_seconds(),
            ),
            dicom.tls is not None,
        )

    async def _start_listener(self, snapshot: SiteSnapshot) -> None:
        assert self._spool is not None
        key = self._key_of(snapshot)
        ae_title, port, peers, max_associations, (artim, dimse, network), _ = key
        dul_loop_delay = self.settings.dul_loop_delay
        processes = self.settings.intake_processes or len(os.sched_getaffinity(0))
        files = TlsFiles.of(snapshot.config.dicom.tls)
        tls = None if files is None else await asyncio.to_thread(TlsContexts, files)
        limit = await asyncio.to_thread(
            AssociationLimit,
            max_associations,
            self.settings.data_dir / ASSOCIATION_SLOTS_DIR_NAME,
        )
        listener = make_listener(
            self.settings.intake_engine,
            ae_title=ae_title,
            host=self.settings.dicom_host,
            port=port,
            peers=peers,
            spool=self._spool,
            on_stored=self._on_stored,
            dul_loop_delay=dul_loop_delay,
            share_port=processes > 1,
            tls=tls,
            association_limit=limit,
            timeouts=ScpTimeouts(artim=artim, dimse=dimse, network=network),
        )
        try:
            self.dicom_port = await asyncio.to_thread(listener.start)
        except BaseException:
            limit.close()
            raise
        self._listener, self._listener_key, self._tls = listener, key, tls
        log.info("agent.listening", ae_title=ae_title, port=self.dicom_port)
        if processes > 1:
            await self._start_workers(processes - 1, snapshot, key, self.dicom_port, dul_loop_delay)

    async def _start_workers(
        self,
        count: int,
        snapshot: SiteSnapshot,
        key: ListenerKey,
        port: int,
        dul_loop_delay: float | None,
    ) -> None:
        """Start the extra intake processes; without them intake goes on in this one."""
        ae_title, _, peers, max_associations, timeouts, _ = key
        spec = IntakeWorkerSpec(
            state_path=self.settings.data_dir / STATE_FILE_NAME,
            spool_dir=self.settings.data_dir / SPOOL_DIR_NAME,
            spool_reserve_bytes=self.settings.spool_reserve_bytes,
            ae_title=ae_title,
            host=self.settings.dicom_host,
            port=port,
            peers=peers,
            intake_engine=self.settings.intake_engine,
            dul_loop_delay=dul_loop_delay,
            drain_timeout=self.settings.association_drain_timeout,
            tls=snapshot.config.dicom.tls,
            max_associations=max_associations,
            association_slots_dir=self.settings.data_dir / ASSOCIATION_SLOTS_DIR_NAME,
            timeouts=timeouts,
        )
        workers = IntakeWorkers(count, spec, self._data_dir_lock.fd)
        try:
            await workers.start()
        except WorkerFailed as exc:
            log.error("intake.workers_failed", error=str(exc))
            self.record_error(f"{exc}; intake continues in one process")
            return
        self._workers = workers

    async def _stop_listener(self) -> None:
        listener, self._listener = self._listener, None
        workers, self._workers = self._workers, None
        stopping = [] if workers is None else [workers.stop()]
        if listener is not None:
            stopping.append(
                asyncio.to_thread(listener.stop, self.settings.association_drain_timeout)
            )
        await asyncio.gather(*stopping)
        if listener is not None:
            log.info("agent.listener_stopped", port=self.dicom_port)

    def _on_stored(self, series_instance_uid: str) -> None:
        """Called on an association thread after an instance became durable."""
        loop, upload_loop = self._loop, self._upload_loop
        if loop is not None and upload_loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(upload_loop.note_arrival, series_instance_uid)


def main(settings: AgentSettings, *, ready: Callable[[int], None] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; return the process exit status (0 = clean stop)."""
    configure_logging()
    provider = configure_tracing(SERVICE_NAME)
    runtime = AgentRuntime(settings, tracer_provider=provider)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, runtime.stop)
        try:
            await runtime.run(ready=ready)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    try:
        asyncio.run(serve())
    # The process boundary: whatever escaped is reported once and becomes the exit status.
    except Exception as exc:
        for error in _root_causes(exc):
            log.error("agent.crashed", error=f"{type(error).__name__}: {error}", exc_info=error)
        return 1
    finally:
        provider.shutdown()  # flushes spans still batched for export
    log.info("agent.stopped")
    return 0


def _failed_series_by_key(state: AgentState, key: str) -> str | None:
    _, failed = state.failed_series(limit=sys.maxsize)
    for series in failed:
        if series_key(series.series_instance_uid) == key:
            return series.series_instance_uid
    return None


def _root_causes(exc: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups, so the log names what actually failed."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _root_causes(inner)]
    return [exc]
