"""The control-plane FastAPI application: `create_app(settings, clock)`.

Nothing is built at import time. The lifespan migrates the database (unless told not to),
opens the engine and the blob store, runs the hub's background work (link state flushes,
reconciling, history pruning), the replica bus (other replicas' changes, on PostgreSQL)
and the rollout driver, and on shutdown gives back its rollout leases, closes the agent
links, writes what they left pending and disposes of the engine.
Must not import `agent` or pynetdicom.
"""

import asyncio
import datetime as dt
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from opentelemetry.trace import TracerProvider

from common.telemetry import configure_tracing
from control_plane import migrate
from control_plane.alerts import Alerter
from control_plane.api.access_doc import publish_access
from control_plane.api.hardening import INTERNAL_ERROR_DETAIL, harden
from control_plane.api.http_metrics import HttpMetricsMiddleware
from control_plane.api.router import api_router
from control_plane.api.routes import health, metrics_export
from control_plane.api.routes.ingest import BATCH_LIMITS
from control_plane.clock import Clock, system_clock
from control_plane.db import (
    create_engine,
    create_read_engine,
    create_sessionmaker,
    ensure_database_directory,
)
from control_plane.errors import ControlPlaneError, InvalidConfigError
from control_plane.fleet.rollout_driver import RolloutDriver
from control_plane.hierarchy.blobs import BlobStore
from control_plane.hub import Hub
from control_plane.metrics import HttpMetrics
from control_plane.migrate import SchemaNotCurrentError
from control_plane.replica_bus import ReplicaBus
from control_plane.resources import Resources
from control_plane.security import token_digest
from control_plane.settings import ControlPlaneSettings
from control_plane.tracing import TRACER_NAME, trace_engine
from control_plane.ui import routes as ui_routes

logger = structlog.get_logger(__name__)

__all__ = ["INTERNAL_ERROR_DETAIL", "SchemaNotCurrentError", "create_app"]

SERVICE_NAME = "dicom-connector-control-plane"
# Room for the part headers and boundaries of a full batch around its instances' bytes.
BATCH_FRAMING_BYTES = 1024 * 1024


def _package_version() -> str:
    try:
        return version("dicom-connector")
    except PackageNotFoundError:
        return "unknown"


async def _check_schema(settings: ControlPlaneSettings) -> None:
    await asyncio.to_thread(ensure_database_directory, settings.database_url)
    await asyncio.to_thread(
        migrate.prepare_schema, settings.database_url, migrate=settings.migrate_on_start
    )


def create_app(
    settings: ControlPlaneSettings,
    clock: Clock = system_clock,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """A control-plane app for `settings`; its lifespan owns the database, the blob store and
    the hub. `clock` is what health is judged by (tests pass one they can move). Traces go to
    `tracer_provider`, else to one exporting to OTEL_EXPORTER_OTLP_ENDPOINT when that is set
    (`common.telemetry.configure_tracing`), which the lifespan flushes and shuts down."""
    owned = configure_tracing(SERVICE_NAME) if tracer_provider is None else None
    provider = tracer_provider or owned
    # Spans nobody exports are work for nothing on every request and statement: request and
    # SQL spans only when a provider was given or OTLP export is configured.
    tracing = tracer_provider is not None or bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    assert provider is not None
    tracer = provider.get_tracer(TRACER_NAME)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _check_schema(settings)
        blobs = await _prepared_blob_store(settings)
        engine = create_engine(settings.database_url)
        read_engine = create_read_engine(settings.database_url)
        for traced in (engine, read_engine):
            if traced is not None and tracing:
                trace_engine(traced, tracer)
        sessionmaker = create_sessionmaker(engine)
        read_sessionmaker = create_sessionmaker(read_engine or engine)
        hub = Hub(sessionmaker, read_sessionmaker, settings, clock, tracer=tracer)
        alerter = Alerter(
            settings.alerts,
            hub.view.site_statuses,
            clock,
            dt.timedelta(seconds=settings.heartbeat_interval_s),
        )
        rollouts = RolloutDriver(
            sessionmaker,
            hub,
            clock,
            lease=dt.timedelta(seconds=settings.rollout_lease_s),
            tick_interval_s=settings.rollout_tick_interval_s,
            heartbeat_interval=dt.timedelta(seconds=settings.heartbeat_interval_s),
            reconnect_grace=dt.timedelta(seconds=settings.rollout_reconnect_grace_s),
        )
        bus = ReplicaBus(settings.database_url, hub.apply_notice, hub.catch_up)
        app.state.resources = Resources(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            read_sessionmaker=read_sessionmaker,
            blobs=blobs,
            admin_token_digest=token_digest(settings.admin_token.get_secret_value()),
            hub=hub,
            clock=clock,
            alerter=alerter,
            rollouts=rollouts,
            replica_bus=bus,
        )
        # The fleet routes answer from the hub's view: it is filled before the first request.
        await hub.view.resync()
        hub_work = asyncio.create_task(hub.run(), name="hub")
        hub_work.add_done_callback(_report_crash)
        bus_work = asyncio.create_task(bus.run(), name="replica-bus")
        bus_work.add_done_callback(_report_crash)
        await _listening(bus)
        alerts_work = asyncio.create_task(alerter.run(), name="alerts")
        alerts_work.add_done_callback(_report_crash)
        # Rollouts left running by an earlier run (or a replica that died) are taken up here.
        rollouts_work = asyncio.create_task(rollouts.run(), name="rollouts")
        rollouts_work.add_done_callback(_report_crash)
        if settings.tune_garbage_collector:
            _tune_garbage_collector()
        logger.info("control plane started", revision=migrate.head_revision())
        try:
            yield
        finally:
            rollouts_work.cancel()
            alerts_work.cancel()
            bus_work.cancel()
            hub_work.cancel()
            await asyncio.wait([hub_work, bus_work, alerts_work, rollouts_work])
            await rollouts.release()
            await hub.close()
            await blobs.close()  # after the last request: waits for blob calls still running
            if read_engine is not None:
                await read_engine.dispose()
            await engine.dispose()
            if owned is not None:
                owned.shutdown()  # flushes spans still batched for export
            logger.info("control plane stopped")

    app = FastAPI(
        title="dicom-connector control plane",
        version=_package_version(),
        lifespan=lifespan,
        # FastAPI's own request spans; their URL path and query are dropped at export
        # (common.telemetry.AllowlistExporter), the route template kept.
        telemetry={
            "tracer_provider": provider,
            "tracing": tracing,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        },
    )
    app.include_router(health.router)
    app.include_router(metrics_export.router)
    app.include_router(ui_routes.router)
    app.mount("/ui/static", StaticFiles(directory=ui_routes.STATIC_DIR), name="ui-static")
    app.include_router(api_router)
    app.add_exception_handler(ControlPlaneError, _control_plane_error)
    harden(
        app,
        default_limit=settings.max_body_bytes,
        limits={
            "/api/v1/ingest": settings.max_instance_bytes,
            "/api/v1/ingest/batch": BATCH_LIMITS.max_bytes + BATCH_FRAMING_BYTES,
        },
    )
    publish_access(app)
    # Outermost: every request is counted, refused ones included.
    app.state.http_metrics = HttpMetrics()
    app.add_middleware(HttpMetricsMiddleware, metrics=app.state.http_metrics)
    return app


# Young-generation size before a collection (CPython's default is 700). Request-scoped objects
# then mostly die before a collection sees them, instead of being promoted and triggering
# full collections; with a thousand agent links (each holding ~180 objects in the ASGI stack)
# those paused the event loop for 300-650 ms (bench/fleet.py, docs/benchmarks.md).
GC_YOUNG_THRESHOLD = 50_000
GC_OLDER_THRESHOLDS = (20, 100)


def _tune_garbage_collector() -> None:
    # What exists once the first app has started (modules, schemas, compiled queries) lives as
    # long as the process: freezing it keeps full collections from walking it again and again.
    # Only once: a later freeze (another app in the same process, as in tests) would also pin
    # whatever garbage is alive at that moment.
    if gc.get_freeze_count() == 0:
        gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)


async def _prepared_blob_store(settings: ControlPlaneSettings) -> BlobStore:
    if settings.blob_url is not None:
        blobs = BlobStore.s3(settings.blob_url)
    else:
        assert settings.blob_dir is not None  # the settings hold exactly one of the two
        blobs = BlobStore.local(settings.blob_dir)
    try:
        await blobs.prepare()
    except BaseException:
        await blobs.close()  # its threads, should the refusal not end the process
        raise
    return blobs


# Ready means hearing other replicas' changes; a database that will not take the bus's
# connection is not worth refusing to start for (the reconcile still carries changes).
BUS_READY_TIMEOUT_S = 10.0


async def _listening(bus: ReplicaBus) -> None:
    if not bus.enabled:
        return
    try:
        async with asyncio.timeout(BUS_READY_TIMEOUT_S):
            await bus.listening.wait()
    except TimeoutError:
        logger.warning(
            "the replica bus is not listening yet; changes made through other replicas reach"
            " this one's agents at the next reconcile until it is"
        )


def _report_crash(task: "asyncio.Task[None]") -> None:
    # The hub's loops handle database errors themselves; anything else is a bug that leaves
    # link state unwritten, so it must not wait for shutdown to be seen.
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "background work stopped",
            service=task.get_name(),
            error=type(task.exception()).__name__,
        )


async def _control_plane_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ControlPlaneError)
    if isinstance(exc, InvalidConfigError):
        detail: object = {"message": exc.message, "problems": exc.problems}
    else:
        detail = exc.message
    if exc.http_status >= 500:
        logger.error("request failed", path=request.url.path, error=type(exc).__name__)
    return JSONResponse({"detail": detail}, status_code=exc.http_status)
