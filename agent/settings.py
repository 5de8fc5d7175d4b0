"""Process settings of one agent: where its control plane, token and data live, and its tuning.

Site behaviour (AE title, routing, timing...) is NOT here: it comes from the control plane as a
`common.config.SiteConfig`. These are the few knobs an operator sets on the machine itself,
from the CLI or from `DICOM_CONNECTOR_AGENT_*` environment variables. Nothing is built at
import time: callers construct `AgentSettings(...)` and pass it in.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.tls import control_plane_ssl_context

MIB = 1024 * 1024


class AgentSettings(BaseSettings):
    """Settings of one agent process (env prefix `DICOM_CONNECTOR_AGENT_`)."""

    model_config = SettingsConfigDict(env_prefix="DICOM_CONNECTOR_AGENT_", extra="forbid")

    control_plane_url: str = Field(
        description="Base URL of the control plane, e.g. https://cp:8080"
    )
    token_file: Path = Field(description="File holding this agent's bearer token")
    control_plane_ca: Path | None = Field(
        default=None,
        description="PEM file of the private CA that signed the control plane's certificate;"
        " trusted instead of the system's CAs for the link and every HTTP request",
    )
    data_dir: Path = Field(description="Directory for state.db, spool/ and config.json")
    # Scanners reach the agent over the site LAN, so the SCP listens on every interface.
    dicom_host: str = "0.0.0.0"  # noqa: S104
    dicom_port_override: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Listen on this port instead of the config's dicom.port (0 = any free port)",
    )
    upload_concurrency: int = Field(default=4, ge=1, le=64)
    reap_interval: float = Field(default=0.5, gt=0, description="Seconds between reaper checks")
    # Full jitter up to a minute spreads a fleet reconnecting after a control-plane restart
    # over that minute instead of one burst, and brings a single agent back within it.
    link_backoff_base: float = Field(
        default=1.0, gt=0, description="Seconds before the first link reconnect (upper bound)"
    )
    link_backoff_cap: float = Field(
        default=60.0, gt=0, description="Longest wait in seconds between link reconnects"
    )
    link_unauthorized_retry_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between link attempts while the control plane refuses the token"
        " (rotated or revoked): the admin may install a new token file meanwhile",
    )
    link_open_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to open the link (TCP, TLS, upgrade)"
    )
    # Intake answers Out of Resources (0xA700) before free space drops under this reserve. It
    # keeps room for the SQLite WAL, logs and the OS, and for one large enhanced multi-frame
    # object (hundreds of MiB) already being received, while costing little on a spool disk
    # of tens of GiB.
    spool_reserve_bytes: int = Field(default=512 * MIB, ge=0)
    # pynetdicom's per-message work keeps one process to one core (docs/benchmarks.md): more
    # processes share the DICOM port (agent.intake_workers). 0 means one per CPU core.
    intake_processes: int = Field(
        default=0, ge=0, le=16, description="DICOM intake processes on the port (0 = per core)"
    )
    # The lean engine (one loop per association on pynetdicom's codec, agent.dicom.engine) or
    # pynetdicom's own association threads (agent.dicom.scp), kept for one release.
    intake_engine: Literal["lean", "pynetdicom"] = Field(
        default="lean", description="DICOM intake engine: lean (default) or pynetdicom"
    )
    # The requestor of PULL (C-FIND, C-MOVE, C-GET): the lean engine's blocking loop on
    # pynetdicom's codec (agent.dicom.requestor_lean) or pynetdicom's AE with its reader
    # threads (agent.dicom.requestor_pynetdicom), kept for one release.
    requestor_engine: Literal["lean", "pynetdicom"] = Field(
        default="lean", description="DICOM requestor engine of PULL: lean (default) or pynetdicom"
    )
    # None keeps the listener's tuned default (agent.dicom.scp, measured in docs/intake.md);
    # only the pynetdicom engine has a DUL thread to tune.
    dul_loop_delay: float | None = Field(default=None, ge=0, le=1)
    http_timeout: float = Field(default=60.0, gt=0, description="Seconds per HTTP request")
    association_drain_timeout: float = Field(
        default=30.0, gt=0, description="Seconds to wait for open associations when stopping"
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve /metrics (Prometheus) and /healthz on this port; none: no HTTP at all",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address of the metrics port (0.0.0.0 for a scrape or probe from elsewhere)",
    )
    upload_drain_timeout: float = Field(
        default=5.0, ge=0, description="Seconds to let in-flight uploads finish when stopping"
    )

    @model_validator(mode="after")
    def _delay_needs_pynetdicom(self) -> Self:
        if self.dul_loop_delay is not None and self.intake_engine != "pynetdicom":
            raise ValueError(
                "dul_loop_delay tunes intake_engine 'pynetdicom' only (the lean engine has no "
                "DUL thread): unset it or set intake_engine to pynetdicom"
            )
        return self

    @field_validator("control_plane_ca")
    @classmethod
    def _usable_ca(cls, value: Path | None) -> Path | None:
        if value is not None:
            control_plane_ssl_context(value)  # refuse a missing or unreadable file at start
        return value

    @field_validator("control_plane_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"control_plane_url must start with http:// or https://, got {value!r}"
            )
        return value.rstrip("/")
