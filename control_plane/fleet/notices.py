"""Fleet notices between control-plane replicas: what changed, sent with the change itself.

A notice names what changed (a site's config revision, an agent's token) and nothing more:
ids, a kind and a revision number, never a config, a token or anything read from a DICOM
header. A replica that hears one reads the rest from the database (`control_plane.replica_bus`
listens, `Hub.apply_notice` acts).

`announce` issues PostgreSQL's `pg_notify` inside the caller's transaction, so the notice is
delivered when, and only when, the change commits (a rolled-back attempt sends nothing). On
SQLite, where one process owns the database, it does nothing. Must not import FastAPI.
"""

from __future__ import annotations

import enum
import uuid

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

CHANNEL = "dicom_connector_fleet"
"""The one PostgreSQL channel every replica listens on."""


class NoticeKind(enum.StrEnum):
    """What changed."""

    config = "config"
    """A site stored a new config revision (`site`, `revision`)."""
    token = "token"  # noqa: S105 - a kind of notice, not a secret
    """An agent's token was rotated or revoked (`agent`): its links must close."""
    states = "states"
    """Replica `origin` wrote link states readers should see soon (connects, disconnects,
    config results): the other replicas' fleet views catch up."""


class FleetNotice(BaseModel):
    """One notice: a few hundred bytes at most (PostgreSQL's limit is 8000)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: NoticeKind
    site: uuid.UUID | None = None
    agent: uuid.UUID | None = None
    revision: int | None = None
    origin: uuid.UUID | None = None

    @classmethod
    def config_revision(cls, site_id: uuid.UUID, revision: int) -> FleetNotice:
        """A new config revision of a site."""
        return cls(kind=NoticeKind.config, site=site_id, revision=revision)

    @classmethod
    def token_changed(cls, agent_id: uuid.UUID) -> FleetNotice:
        """An agent's token was rotated or revoked."""
        return cls(kind=NoticeKind.token, agent=agent_id)

    @classmethod
    def states_written(cls, origin: uuid.UUID) -> FleetNotice:
        """Replica `origin` wrote link states worth showing at once."""
        return cls(kind=NoticeKind.states, origin=origin)


def parse_notice(payload: str) -> FleetNotice | None:
    """The notice in a payload; None for one this code does not understand (a newer
    replica's kind during a rolling upgrade), which the periodic reconcile covers."""
    try:
        return FleetNotice.model_validate_json(payload)
    except ValidationError:
        return None


async def announce(session: AsyncSession, notice: FleetNotice) -> None:
    """Queue `notice` in the session's transaction (PostgreSQL); a no-op on SQLite."""
    if session.get_bind().dialect.name != "postgresql":
        return
    await session.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {"channel": CHANNEL, "payload": notice.model_dump_json(exclude_none=True)},
    )
