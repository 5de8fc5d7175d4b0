"""SQLAlchemy models of the control-plane database: the fleet and the hierarchy store.

The schema changes only through Alembic (`migrations/versions/`); a test proves that these
models and the migrations agree. Queries join explicitly, so no relationships (and no lazy
loads under asyncio) are declared. Must not import FastAPI or pydantic schemas.
"""

import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.ingest import LABEL_LENGTH, METADATA_NAME_LENGTH, ROUTING_STRING_LENGTH, UID_LENGTH
from common.patterns import METADATA_VALUE_MAX_LENGTH

SHA256_HEX_LENGTH = 64
REASON_LENGTH = 2000
DEID_SALT_LENGTH = 64

# Deterministic constraint names keep migrations reviewable and let SQLite batch mode
# recreate tables without inventing names.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONDocument = JSON().with_variant(JSONB(), "postgresql")


def new_deid_salt() -> str:
    """A fresh per-site de-identification salt: 256 random bits as hex."""
    return secrets.token_hex(DEID_SALT_LENGTH // 2)


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC: the only clock the store's timestamps use."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; pass an aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base sharing one metadata with a naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(Uuid, primary_key=True, default=uuid.uuid4)


def _created_at() -> Mapped[datetime]:
    return mapped_column(UTCDateTime, default=utc_now)


class Site(Base):
    """A hospital site: one config document (as revisions) and the agents that run it."""

    __tablename__ = "sites"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(64), unique=True)
    timezone: Mapped[str] = mapped_column(String(64))
    # Keys the site's UID remapping and hashes; delivered to its agents with the config, never
    # shown by the API, so the same UID maps to the same new UID across restarts and agents.
    deid_salt: Mapped[str] = mapped_column(String(DEID_SALT_LENGTH), default=new_deid_salt)
    created_at: Mapped[datetime] = _created_at()
    # Free-form `key: value` labels (region, scanner kind...) that fleet views filter by and
    # rollouts select sites with; validated by `control_plane.fleet.labels`.
    labels: Mapped[dict[str, str]] = mapped_column(
        JSONDocument, default=dict, server_default=text("'{}'")
    )


class ConfigRevision(Base):
    """One immutable, numbered version of a site's config, with who made it and what changed."""

    __tablename__ = "config_revisions"
    __table_args__ = (UniqueConstraint("site_id", "revision"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id"))
    revision: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    diff: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = _created_at()
    created_by: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    # Set when a rollout wrote this revision: `apply` (its config) or `rollback` (the revision
    # before it, written back when the rollout failed or was aborted).
    rollout_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("rollouts.id"))
    rollout_action: Mapped[str | None] = mapped_column(String(16))


class Rollout(Base):
    """A staged config change over many sites (`control_plane.fleet.rollouts`).

    `state` is what the API shows; `rollback_pending` says that the sites it changed still have
    to be given their previous revision back (after a failure or an abort). The driving
    control plane holds `driver_id` until `lease_expires_at` and renews it while driving;
    another replica takes over once it has expired.
    """

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_state", "state"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    state: Mapped[str] = mapped_column(String(16))
    rollback_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    config_mode: Mapped[str] = mapped_column(String(16))
    target: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    stages: Mapped[list[int]] = mapped_column(JSONDocument)
    soak_s: Mapped[float] = mapped_column(Float)
    apply_timeout_s: Mapped[float] = mapped_column(Float)
    current_stage: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = _created_at()
    actor_role: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(64))
    actor_name: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    driver_id: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RolloutStage(Base):
    """One stage of a rollout: when it started, when all its agents had applied the new
    revision (its soak began), and when it completed."""

    __tablename__ = "rollout_stages"
    __table_args__ = (UniqueConstraint("rollout_id", "stage"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    rollout_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rollouts.id"))
    stage: Mapped[int] = mapped_column(Integer)
    percent: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    soak_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RolloutSite(Base):
    """One site of a rollout: its stage, and the revisions the rollout found and wrote."""

    __tablename__ = "rollout_sites"
    __table_args__ = (UniqueConstraint("rollout_id", "site_id"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    rollout_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rollouts.id"))
    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id"), index=True)
    stage: Mapped[int] = mapped_column(Integer)
    agents: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    previous_revision: Mapped[int | None] = mapped_column(Integer)
    revision: Mapped[int | None] = mapped_column(Integer)
    rollback_revision: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(String(REASON_LENGTH))


class Agent(Base):
    """An agent registered for a site, and what its link last told us.

    Only the sha256 of its bearer token is kept; a revoked token is NULL. The link columns
    (from `agent_version` on) are written by `control_plane.fleet.recorder` in batches.
    """

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("site_id", "name"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id"))
    name: Mapped[str] = mapped_column(String(64))
    deployment: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX_LENGTH), unique=True)
    created_at: Mapped[datetime] = _created_at()
    agent_version: Mapped[str | None] = mapped_column(String(64))
    config_revision: Mapped[int | None] = mapped_column(Integer)
    config_failed_revision: Mapped[int | None] = mapped_column(Integer)
    config_failure_reason: Mapped[str | None] = mapped_column(String(REASON_LENGTH))
    connected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disconnected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    health_report: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    health_reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The latest report's own verdict, judged when it arrived: whole-fleet views then need
    # not parse and judge a thousand reports per request.
    health_status: Mapped[str | None] = mapped_column(String(16))
    health_reasons: Mapped[list[str] | None] = mapped_column(JSONDocument)


class AgentHealthReport(Base):
    """One health report as received, with the status it was given then (a bounded history:
    `control_plane.fleet.recorder` keeps the newest few hundred per agent)."""

    __tablename__ = "agent_health_reports"
    __table_args__ = (
        Index("ix_agent_health_reports_agent_id_received_at", "agent_id", "received_at"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[str]] = mapped_column(JSONDocument)
    report: Mapped[dict[str, Any]] = mapped_column(JSONDocument)


class SeriesFigure(Base):
    """One upload batch of a series as an agent reported it (`common.messages.SeriesFigures`):
    the raw facts of the operational figures (`control_plane.figures`). PHI-free."""

    __tablename__ = "series_figures"
    __table_args__ = (Index("ix_series_figures_site_id_stored_at", "site_id", "stored_at"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id"))
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"))
    series_key: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    routing_reason: Mapped[str] = mapped_column(String(32))
    instances_received: Mapped[int] = mapped_column(Integer)
    instances_announced: Mapped[int | None] = mapped_column(Integer)
    instances_stored: Mapped[int] = mapped_column(Integer)
    instances_failed: Mapped[int] = mapped_column(Integer)
    instances_retrying: Mapped[int] = mapped_column(Integer)
    bytes_uploaded: Mapped[int] = mapped_column(BigInteger)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deferred_s: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Group(Base):
    """Top of the hierarchy; its id is the GROUP of a routing string."""

    __tablename__ = "groups"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    created_at: Mapped[datetime] = _created_at()


class Project(Base):
    """A project of a group, addressed by its label (the PROJECT of a routing string)."""

    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("group_id", "label"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.id"))
    label: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    created_at: Mapped[datetime] = _created_at()


class Subject(Base):
    """A subject of a project; created by ingest."""

    __tablename__ = "subjects"
    __table_args__ = (UniqueConstraint("project_id", "label"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"))
    label: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    created_at: Mapped[datetime] = _created_at()


class Session(Base):
    """A session (study) of a subject, remembering why its data was routed where it is."""

    __tablename__ = "sessions"
    __table_args__ = (UniqueConstraint("subject_id", "label"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    subject_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subjects.id"))
    label: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    study_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    site_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("sites.id"))
    routing_reason: Mapped[str] = mapped_column(String(32))
    routing_string: Mapped[str | None] = mapped_column(String(ROUTING_STRING_LENGTH))
    created_at: Mapped[datetime] = _created_at()


class SessionMetadataValue(Base):
    """One value of a session's metadata (extracted by the site's metadata patterns).

    The first value recorded for a name is the session's (`current`); a different value sent
    later by another series of the session is kept beside it as a conflict (`is_current` false),
    never replacing it. A partial unique index lets only one value per name be current, so
    concurrent ingests that both think they are first collide and retry; a value is recorded
    once per name (by its digest: values may be longer than an index entry allows).
    """

    __tablename__ = "session_metadata"
    __table_args__ = (
        UniqueConstraint("session_id", "name", "value_sha256"),
        Index(
            "ix_session_metadata_current",
            "session_id",
            "name",
            unique=True,
            sqlite_where=text("is_current"),
            postgresql_where=text("is_current"),
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id"))
    name: Mapped[str] = mapped_column(String(METADATA_NAME_LENGTH))
    value: Mapped[str] = mapped_column(String(METADATA_VALUE_MAX_LENGTH))
    value_sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH))
    is_current: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = _created_at()


class Acquisition(Base):
    """An acquisition of a session: the instances sharing one acquisition key (a series)."""

    __tablename__ = "acquisitions"
    __table_args__ = (UniqueConstraint("session_id", "key"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id"))
    key: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    label: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    created_at: Mapped[datetime] = _created_at()


class File(Base):
    """One stored version of a SOP instance; its bytes live in the blob store under `sha256`.

    A version replaced by other bytes for the same SOP Instance UID keeps its row, with
    `replaced_at` set and `replaced_by_id` pointing at its successor.
    """

    __tablename__ = "files"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "sha256"),
        # At most one current version per SOP instance, enforced by the database so that
        # concurrent replacements cannot both win.
        Index(
            "ix_files_current_sop_instance_uid",
            "sop_instance_uid",
            unique=True,
            sqlite_where=text("replaced_at IS NULL"),
            postgresql_where=text("replaced_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    acquisition_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("acquisitions.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _created_at()
    replaced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    replaced_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("files.id"))


class SessionEvent(Base):
    """A session moved to another project, or purged with its files, and who did it.

    Purge events outlive their session, so `session_id` is no foreign key. Subject and
    session labels are not kept: a purged session's labels may be what had to go.
    """

    __tablename__ = "session_events"

    id: Mapped[uuid.UUID] = _uuid_pk()
    session_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    from_group: Mapped[str] = mapped_column(String(64))
    from_project: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    to_group: Mapped[str | None] = mapped_column(String(64))
    to_project: Mapped[str | None] = mapped_column(String(LABEL_LENGTH))
    files: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class ApiToken(Base):
    """A bearer token for people and automation: a role, maybe one site, an expiry.

    Only the sha256 of the token is kept. A revoked token keeps its row (`revoked_at` set) so
    the token list and the audit log can still name it.
    """

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    role: Mapped[str] = mapped_column(String(16))
    site_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("sites.id"))
    token_sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), unique=True)
    created_at: Mapped[datetime] = _created_at()
    created_by: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """One change made through the API: who (never their token), when, what, and what changed.

    Written in the same transaction as the change it records. `site` is the site's name (sites
    are never renamed), NULL for changes outside any site (groups, tokens of support).
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_site", "site", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now, index=True)
    actor_role: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(64))
    actor_name: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    site: Mapped[str | None] = mapped_column(String(64))
    changes: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
