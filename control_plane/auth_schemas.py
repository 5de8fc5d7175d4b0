"""API models of tokens and the audit log: `POST /api/v1/tokens` and friends, `GET /api/v1/audit`.

Must not import FastAPI or the database layer.
"""

import datetime as dt
import uuid
from enum import StrEnum
from typing import Any, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from common.config import PositiveDuration
from common.ingest import StorableLabel

DEFAULT_TOKEN_LIFETIME = dt.timedelta(days=90)
MAX_TOKEN_LIFETIME = dt.timedelta(days=3 * 365)


class TokenRole(StrEnum):
    """The roles an API token can be given (agents get theirs by registration)."""

    support = "support"
    site_admin = "site-admin"
    read_only = "read-only"


class TokenCreate(BaseModel):
    """Body of `POST /api/v1/tokens`. Without `expires_in`/`expires_at` a token lives 90 days."""

    model_config = ConfigDict(extra="forbid")

    role: TokenRole
    site: StorableLabel | None = Field(
        default=None,
        description="Required for site-admin, optional for read-only (bound to one site),"
        " refused for support.",
    )
    name: StorableLabel = Field(description="Who or what holds it.")
    expires_in: PositiveDuration | None = Field(default=None, description="e.g. 30d, 12h.")
    expires_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.expires_in is not None and self.expires_at is not None:
            raise ValueError("give expires_in or expires_at, not both")
        if self.expires_in is not None and self.expires_in > MAX_TOKEN_LIFETIME:
            raise ValueError(f"expires_in is over the maximum of {MAX_TOKEN_LIFETIME.days} days")
        if self.role is TokenRole.site_admin and self.site is None:
            raise ValueError("a site-admin token needs `site`: the one site it administers")
        if self.role is TokenRole.support and self.site is not None:
            raise ValueError(
                "a support token covers the whole fleet and takes no `site`;"
                " use site-admin or read-only for one site"
            )
        return self


class TokenCreated(BaseModel):
    """Answer of `POST /api/v1/tokens`: the token is shown this once and never again."""

    id: uuid.UUID
    token: str
    role: TokenRole
    site: str | None
    name: str
    expires_at: dt.datetime


class TokenState(StrEnum):
    """Whether a token works now."""

    active = "active"
    expired = "expired"
    revoked = "revoked"


class TokenPublic(BaseModel):
    """A token as `GET /api/v1/tokens` lists it: never the token, nor its digest."""

    id: uuid.UUID
    name: str
    role: TokenRole
    site: str | None
    state: TokenState
    created_at: dt.datetime
    created_by: str
    expires_at: dt.datetime
    revoked_at: dt.datetime | None


class AuditActor(BaseModel):
    """Who made a change: role, name and the id of the token used (never the token)."""

    role: str
    id: str = Field(description="API token id, agent id, or `admin` for the admin token.")
    name: str


class AuditEntryPublic(BaseModel):
    """One change: who, when, what action on what target, and what changed."""

    id: int
    at: dt.datetime
    actor: AuditActor
    action: str
    target: str
    site: str | None
    changes: dict[str, Any]


class AuditPage(BaseModel):
    """A page of the audit log, newest first; pass `next` as `before` for the following page."""

    items: list[AuditEntryPublic]
    next: int | None


class AuditFilter(BaseModel):
    """Query of `GET /api/v1/audit`; every filter is optional."""

    model_config = ConfigDict(extra="forbid")

    site: StorableLabel | None = None
    action: StorableLabel | None = None
    since: AwareDatetime | None = None
    before: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="Entries older than this id."
    )
    limit: int = Field(default=100, ge=1, le=1000)
