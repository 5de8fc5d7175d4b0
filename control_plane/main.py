"""The control-plane FastAPI application: `create_app(settings)`.

Nothing is built at import time. The lifespan migrates the database (unless told not to),
opens the engine and the blob store, and disposes of the engine on shutdown.
Must not import `agent` or pynetdicom.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from control_plane import migrate
from control_plane.api.router import api_router
from control_plane.api.routes import health
from control_plane.db import create_engine, create_sessionmaker, ensure_database_directory
from control_plane.errors import ControlPlaneError, InvalidConfigError
from control_plane.hierarchy.blobs import BlobStore
from control_plane.resources import Resources
from control_plane.security import token_digest
from control_plane.settings import ControlPlaneSettings

logger = structlog.get_logger(__name__)

INTERNAL_ERROR_DETAIL = "internal error; see control-plane log"


class SchemaNotCurrentError(RuntimeError):
    """The database schema is not the one this code expects and migrating was switched off."""


def _package_version() -> str:
    try:
        return version("dicom-connector")
    except PackageNotFoundError:
        return "unknown"


async def _check_schema(settings: ControlPlaneSettings) -> None:
    await asyncio.to_thread(ensure_database_directory, settings.database_url)
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate.upgrade, settings.database_url)
        return
    current = await asyncio.to_thread(migrate.current_revision, settings.database_url)
    head = migrate.head_revision()
    if current != head:
        raise SchemaNotCurrentError(
            f"the database schema is at revision {current or 'none'} but this control plane"
            f" needs {head}; run the migrations (start once with migrate_on_start enabled)"
        )


def create_app(settings: ControlPlaneSettings) -> FastAPI:
    """A control-plane app for `settings`; its lifespan owns the database and blob store."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _check_schema(settings)
        blobs = BlobStore(settings.blob_dir)
        await blobs.prepare()
        engine = create_engine(settings.database_url)
        app.state.resources = Resources(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            blobs=blobs,
            admin_token_digest=token_digest(settings.admin_token.get_secret_value()),
        )
        logger.info("control plane started", revision=migrate.head_revision())
        try:
            yield
        finally:
            await engine.dispose()
            logger.info("control plane stopped")

    app = FastAPI(
        title="dicom-connector control plane",
        version=_package_version(),
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(api_router)
    app.add_exception_handler(ControlPlaneError, _control_plane_error)
    app.add_exception_handler(Exception, _internal_error)
    return app


async def _control_plane_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ControlPlaneError)
    if isinstance(exc, InvalidConfigError):
        detail: object = {"message": exc.message, "problems": exc.problems}
    else:
        detail = exc.message
    if exc.http_status >= 500:
        logger.error("request failed", path=request.url.path, error=type(exc).__name__)
    return JSONResponse({"detail": detail}, status_code=exc.http_status)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Only the exception's class is logged: messages of database errors can quote values
    # (labels) that identify a patient.
    logger.error("unhandled error", path=request.url.path, error=type(exc).__name__)
    return JSONResponse({"detail": INTERNAL_ERROR_DETAIL}, status_code=500)
