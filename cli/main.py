"""The `dicom-connector` console script: one command per deployable, plus the admin client.

Each command imports its side lazily, so `dicom-connector agent` never loads FastAPI and
`dicom-connector control-plane` never loads pynetdicom.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.admin import admin_app, agents_app, sites_app
from cli.admin_metrics import card, metrics
from cli.admin_rollouts import labels_app, rollouts_app
from cli.admin_routing import route_check
from cli.admin_series import series_app
from cli.admin_sessions import sessions_app
from cli.admin_support import diagnostics, echo, query

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
        Path, typer.Option("--blob-dir", help="Directory for stored files.")
    ] = Path("blobs"),
    admin_token: AdminTokenOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "0.0.0.0",  # noqa: S104
) -> None:
    """Run the control plane: fleet API and the built-in hierarchy store."""
    import uvicorn

    from cli.tokens import resolve_admin_token
    from common.logging import configure_logging
    from control_plane.main import create_app
    from control_plane.settings import ControlPlaneSettings

    try:
        token = resolve_admin_token(admin_token, None)
    except ValueError as exc:
        typer.echo(f"control-plane: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = ControlPlaneSettings(database_url=db, blob_dir=blob_dir, admin_token=token)
    configure_logging()
    # log_config=None keeps uvicorn's loggers on our handler and its PHI filter; the access
    # log is off because request URLs carry hierarchy labels in their query strings.
    uvicorn.run(
        create_app(settings),
        host=host,
        port=http_port,
        log_config=None,
        access_log=False,
    )


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
