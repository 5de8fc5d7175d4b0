"""Settings of one control-plane process, read from arguments or `DICOM_CONNECTOR_*` variables.

Nothing here runs at import time: callers build `ControlPlaneSettings(...)` and pass it to
`create_app`. Must not import FastAPI or the database layer.
"""

from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from control_plane.database_url import async_database_url
from control_plane.hierarchy.blobs import check_blob_url

MIN_ADMIN_TOKEN_LENGTH = 16


class AlertSettings(BaseModel):
    """`alerts.*`: webhooks told when a site turns degraded, unhealthy or missing, or recovers.

    Webhook URLs often carry a secret (a chat service's token): they are `SecretStr`, never
    logged or shown; a delivery is named by its position in the list.
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    webhooks: list[SecretStr] = Field(
        default_factory=list,
        description="http(s) URLs each transition is POSTed to as JSON; none: no alerts.",
    )
    hold_s: float = Field(
        default=60.0,
        ge=0,
        description="A site's new status must hold this long before it is alerted, so a "
        "status that flaps back within it sends nothing.",
    )
    min_interval_s: float = Field(
        default=300.0,
        ge=0,
        description="At most one alert per site this often; a change inside it is sent once "
        "the interval is over, if it still holds.",
    )
    check_interval_s: float = Field(
        default=5.0, gt=0, description="How often site statuses are compared."
    )
    attempts: int = Field(
        default=6, ge=1, le=100, description="Deliveries tried per alert and webhook."
    )
    retry_backoff_s: float = Field(
        default=2.0,
        gt=0,
        description="First wait between attempts; doubled each time, capped at 5 minutes.",
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Per delivery attempt.")

    @field_validator("webhooks")
    @classmethod
    def _http_urls(cls, value: list[SecretStr]) -> list[SecretStr]:
        for number, url in enumerate(value, start=1):
            parts = urlsplit(url.get_secret_value())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"alerts.webhooks[{number}] is not an http(s) URL")
        return value


class ControlPlaneSettings(BaseSettings):
    """Where the control plane keeps its data and how it authenticates its administrator."""

    # Inputs stay out of error messages: they would echo a weak admin token or a database
    # password into whatever log catches the error.
    model_config = SettingsConfigDict(
        env_prefix="DICOM_CONNECTOR_",
        env_nested_delimiter="__",
        extra="forbid",
        hide_input_in_errors=True,
    )

    database_url: str = Field(repr=False)
    blob_dir: Path | None = Field(
        default=None, description="Blobs in this local directory (the embedded default)."
    )
    blob_url: str | None = Field(
        default=None,
        description="Blobs in an S3-compatible bucket, s3://BUCKET[/PREFIX]; endpoint, region"
        " and credentials from the standard AWS_* environment variables.",
    )
    admin_token: SecretStr
    migrate_on_start: bool = True
    heartbeat_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="How often agents send health; 3 intervals without one is 'missing'.",
    )
    fleet_flush_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="Link state and health reports are written to the database in batches"
        " at most this far apart.",
    )
    fleet_reconcile_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often each control plane re-checks its links against the database:"
        " tokens rotated or revoked elsewhere, config revisions stored by another replica.",
    )
    rollout_lease_s: float = Field(
        default=5.0,
        gt=0,
        description="How long the replica driving a rollout holds it without renewing; another"
        " replica takes a rollout over this long after its driver died.",
    )
    rollout_tick_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often the rollout driver looks at the rollouts it drives (keep it"
        " well under rollout_lease_s).",
    )
    rollout_reconnect_grace_s: float = Field(
        default=90.0,
        gt=0,
        description="After a restart or a takeover, how long the driver lets agents reconnect"
        " before a disconnect fails a rollout (agents back off up to 60 s by default).",
    )
    tune_garbage_collector: bool = Field(
        default=True,
        description="Freeze what exists at start-up and collect the young generation less"
        " often (process-wide; see control_plane.main). Off leaves the collector alone.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest request body of every route but the ingest routes (413 over it).",
    )
    max_instance_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024,
        description="Largest body of POST /api/v1/ingest: one DICOM instance (413 over it).",
    )
    health_history_per_agent: int = Field(
        default=360,
        ge=1,
        description="Health reports kept per agent (360 is an hour at the 10 s default).",
    )

    metrics_token: SecretStr | None = Field(
        default=None,
        description="When set, GET /metrics needs it as a bearer token; else it is open.",
    )
    alerts: AlertSettings = Field(
        default_factory=AlertSettings,
        description="Webhook alerts on site status changes (`DICOM_CONNECTOR_ALERTS` as JSON, "
        "or `DICOM_CONNECTOR_ALERTS__WEBHOOKS='[\"https://...\"]'`).",
    )

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        return async_database_url(value)

    @field_validator("blob_url")
    @classmethod
    def _s3_blob_url(cls, value: str | None) -> str | None:
        return None if value is None else check_blob_url(value)

    @model_validator(mode="after")
    def _one_blob_store(self) -> Self:
        if (self.blob_dir is None) == (self.blob_url is None):
            raise ValueError(
                "give the blob store as exactly one of blob_dir (--blob-dir, a local"
                " directory) and blob_url (--blob-url, s3://BUCKET/PREFIX)"
                + (", not both" if self.blob_dir is not None else "")
            )
        return self

    @field_validator("admin_token")
    @classmethod
    def _refuse_weak_admin_token(cls, value: SecretStr) -> SecretStr:
        length = len(value.get_secret_value())
        if length < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"the admin token is {'empty' if length == 0 else f'{length} characters long'};"
                f" it must be at least {MIN_ADMIN_TOKEN_LENGTH} characters. Generate one with"
                ' `python -c "import secrets; print(secrets.token_urlsafe(32))"`'
            )
        return value
