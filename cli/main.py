"""The `dicom-connector` console script: one command per deployable, plus the admin client.

Each command imports its side lazily, so `dicom-connector agent` never loads FastAPI and
`dicom-connector control-plane` never loads pynetdicom.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.admin import admin_app, agents_app, sites_app
from cli.admin_metrics import card, metrics
from cli.admin_rollouts import labels_app, rollouts_app
from cli.admin_routing import route_check
from cli.admin_series import series_app
from cli.admin_sessions import sessions_app
from cli.admin_support import diagnostics, echo, query

if TYPE_CHECKING:
    from control_plane.settings import ControlPlaneSettings

BLOB_ENV = ("DICOM_CONNECTOR_BLOB_DIR", "DICOM_CONNECTOR_BLOB_URL")

app = typer.Typer(
    name="dicom-connector",
    help="Move DICOM from scanners and PACS into the group/project/subject/session hierarchy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
admin_app.add_typer(series_app, name="series")
admin_app.add_typer(sessions_app, name="sessions")
admin_app.add_typer(rollouts_app, name="rollouts")
sites_app.add_typer(labels_app, name="labels")
admin_app.command("route-check")(route_check)
admin_app.command("metrics")(metrics)
admin_app.command("card")(card)
agents_app.command("echo")(echo)
agents_app.command("query")(query)
agents_app.command("diagnostics")(diagnostics)
app.add_typer(admin_app, name="admin")

AdminTokenOption = Annotated[
    str | None,
    typer.Option(
        "--admin-token",
        help="Admin token; else env DICOM_CONNECTOR_ADMIN_TOKEN, else DATA_DIR/admin-token.",
        show_default=False,
    ),
]


@app.command("all-in-one")
def all_in_one(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where everything is kept.")],
    http_port: Annotated[int, typer.Option("--http-port", help="HTTP API port.")] = 8080,
    dicom_port: Annotated[
        int, typer.Option("--dicom-port", help="DICOM port (C-STORE SCP).")
    ] = 11112,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Site config (YAML or JSON) for the default site.", exists=True
        ),
    ] = None,
    admin_token: AdminTokenOption = None,
    http_host: Annotated[
        str, typer.Option("--http-host", help="Address the HTTP API binds to.")
    ] = "127.0.0.1",
) -> None:
    """Run the control plane (SQLite, local blobs) and one agent on this machine."""
    from cli.all_in_one import run_all_in_one

    raise typer.Exit(
        run_all_in_one(
            data_dir=data_dir,
            http_port=http_port,
            dicom_port=dicom_port,
            config_file=config,
            admin_token=admin_token,
            http_host=http_host,
        )
    )


@app.command("control-plane")
def control_plane(
    db: Annotated[str, typer.Option("--db", help="sqlite:///PATH or postgresql://…")],
    http_port: Annotated[int, typer.Option("--http-port", help="HTTP API port.")] = 8080,
    blob_dir: Annotated[
        Path | None,
        typer.Option(
            "--blob-dir", help="Directory for stored files (default ./blobs).", show_default=False
        ),
    ] = None,
    blob_url: Annotated[
        str | None,
        typer.Option(
            "--blob-url",
            help="S3-compatible storage for stored files, s3://BUCKET/PREFIX; endpoint, region"
            " and credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,"
            " AWS_SECRET_ACCESS_KEY (see docs/operations.md).",
        ),
    ] = None,
    admin_token: AdminTokenOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "0.0.0.0",  # noqa: S104
    no_migrate: Annotated[
        bool,
        typer.Option(
            "--no-migrate",
            help="Do not migrate the database at start-up; refuse to start when its schema is"
            " not the one this version needs.",
        ),
    ] = False,
) -> None:
    """Run the control plane: fleet API and the built-in hierarchy store."""
    import uvicorn

    from cli.tokens import resolve_admin_token
    from common.logging import configure_logging
    from control_plane.main import create_app

    if blob_dir is not None and blob_url is not None:
        typer.echo(
            "control-plane: --blob-dir and --blob-url name two blob stores; give one of them"
            " (a local directory or s3://BUCKET/PREFIX)",
            err=True,
        )
        raise typer.Exit(2)
    try:
        token = resolve_admin_token(admin_token, None)
    except ValueError as exc:
        typer.echo(f"control-plane: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging()
    settings = _control_plane_settings(db, blob_dir, blob_url, token, no_migrate)
    # log_config=None keeps uvicorn's loggers on our handler and its PHI filter; the access
    # log is off because request URLs carry hierarchy labels in their query strings.
    uvicorn.run(
        create_app(settings),
        host=host,
        port=http_port,
        log_config=None,
        access_log=False,
    )


def _control_plane_settings(
    db: str, blob_dir: Path | None, blob_url: str | None, token: str, no_migrate: bool
) -> ControlPlaneSettings:
    """Settings for `control-plane`, with the database schema made ready (migrated under a
    lock unless `no_migrate`); exits with a clear message when either cannot be done."""
    import asyncio

    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from control_plane.db import ensure_database_directory
    from control_plane.hierarchy.blobs import BlobStore, BlobStoreConfigError
    from control_plane.migrate import SchemaNotCurrentError, prepare_schema
    from control_plane.settings import ControlPlaneSettings

    # Flags first, then DICOM_CONNECTOR_BLOB_DIR / _BLOB_URL, then ./blobs.
    blobs: dict[str, Any] = {"blob_dir": blob_dir} if blob_dir is not None else {}
    blobs |= {"blob_url": blob_url} if blob_url is not None else {}
    if not blobs and not any(os.environ.get(name) for name in BLOB_ENV):
        blobs = {"blob_dir": Path("blobs")}
    try:
        settings = ControlPlaneSettings(database_url=db, admin_token=token, **blobs)
    except ValidationError as exc:
        problems = "; ".join(str(error["msg"]) for error in exc.errors())
        typer.echo(f"control-plane: {problems}", err=True)
        raise typer.Exit(2) from None
    # Before the server starts, so a refusal is one clear line, not a traceback from the
    # server's start-up; the app then only checks that the schema is current (and the blob
    # store again).
    try:
        ensure_database_directory(settings.database_url)
        prepare_schema(settings.database_url, migrate=settings.migrate_on_start and not no_migrate)
    except SchemaNotCurrentError as exc:
        typer.echo(f"control-plane: {exc}", err=True)
        raise typer.Exit(2) from None
    except SQLAlchemyError as exc:
        typer.echo(
            f"control-plane: the database cannot be used ({type(exc).__name__}); check --db,"
            " that the server is running and that this user may connect",
            err=True,
        )
        raise typer.Exit(2) from None
    if settings.blob_url is not None:

        async def check_blob_store(url: str) -> None:
            async with BlobStore.s3(url) as blobs:
                await blobs.prepare()

        try:
            asyncio.run(check_blob_store(settings.blob_url))
        except BlobStoreConfigError as exc:
            typer.echo(f"control-plane: {exc}", err=True)
            raise typer.Exit(2) from None
    return settings.model_copy(update={"migrate_on_start": False})


@app.command("agent")
def agent(
    control_plane_url: Annotated[
        str, typer.Option("--control-plane", help="Base URL of the control plane.")
    ],
    token_file: Annotated[Path, typer.Option("--token-file", help="File holding the agent token.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Spool, state and cached config.")],
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            help="PEM file of the private CA that signed the control plane's certificate"
            " (https:// only); trusted instead of the system's CAs.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Serve Prometheus /metrics and a /healthz probe on this port"
            " (address: env DICOM_CONNECTOR_AGENT_METRICS_HOST, default 127.0.0.1).",
        ),
    ] = None,
) -> None:
    """Run an edge agent: DICOM intake, spool, routing and upload."""
    from pydantic import ValidationError

    from agent.runtime import main as run_agent
    from agent.settings import AgentSettings
    from cli.all_in_one import AGENT_READY_PREFIX

    # Only a given flag overrides the environment (DICOM_CONNECTOR_AGENT_METRICS_PORT).
    optional: dict[str, Any] = {} if metrics_port is None else {"metrics_port": metrics_port}
    try:
        settings = AgentSettings(
            control_plane_url=control_plane_url,
            token_file=token_file,
            data_dir=data_dir,
            control_plane_ca=ca_file,
            **optional,
        )
    except ValidationError as exc:
        for error in exc.errors():
            typer.echo(f"agent: {error['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None

    def announce(port: int) -> None:
        print(f"{AGENT_READY_PREFIX} dicom_port={port}", flush=True)

    raise typer.Exit(run_agent(settings, ready=announce))
