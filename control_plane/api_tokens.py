"""API tokens for people and automation: create (shown once), list, revoke, authenticate.

Stored as sha256 digests and found by that digest (a unique index), so nothing compares a
presented token byte by byte. Expiry is judged by the app's clock. Must not import FastAPI.
"""

import datetime as dt
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import audit
from control_plane.auth_schemas import (
    DEFAULT_TOKEN_LIFETIME,
    MAX_TOKEN_LIFETIME,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    TokenRole,
    TokenState,
)
from control_plane.errors import ControlPlaneError, InvalidRequestError, NotFoundError
from control_plane.fleet.sites import site_by_name
from control_plane.models import ApiToken, Site
from control_plane.security import Principal, Role, digests_match, new_token, token_digest


class TokenRefusedError(ControlPlaneError):
    """A token that exists but no longer works: expired or revoked."""

    http_status = 401


async def create_token(
    session: AsyncSession, body: TokenCreate, actor: Principal, now: dt.datetime
) -> TokenCreated:
    """Issue a token; its value is in the answer only, the database keeps its digest."""
    site = None if body.site is None else await site_by_name(session, body.site)
    if body.expires_at is not None:
        expires_at = body.expires_at.astimezone(dt.UTC)
        if expires_at <= now:
            raise InvalidRequestError("expires_at is in the past; give a time in the future")
        if expires_at > now + MAX_TOKEN_LIFETIME:
            raise InvalidRequestError(
                f"expires_at is more than {MAX_TOKEN_LIFETIME.days} days away; give an earlier time"
            )
    else:
        expires_at = now + (body.expires_in or DEFAULT_TOKEN_LIFETIME)
    token = new_token()
    row = ApiToken(
        id=uuid.uuid4(),
        name=body.name,
        role=body.role.value,
        site_id=None if site is None else site.id,
        token_sha256=token_digest(token),
        created_at=now,
        created_by=actor.name,
        expires_at=expires_at,
    )
    session.add(row)
    audit.record(
        session,
        actor,
        audit.AuditAction.token_create,
        f"token {row.id}",
        site=body.site,
        changes={"name": body.name, "role": body.role.value, "expires_at": expires_at.isoformat()},
    )
    await session.commit()
    return TokenCreated(
        id=row.id,
        token=token,
        role=body.role,
        site=body.site,
        name=body.name,
        expires_at=expires_at,
    )


async def list_tokens(session: AsyncSession, now: dt.datetime) -> list[TokenPublic]:
    """Every token ever issued, newest first, with whether it works now."""
    rows = await session.execute(
        select(ApiToken, Site.name)
        .outerjoin(Site, ApiToken.site_id == Site.id)
        .order_by(ApiToken.created_at.desc(), ApiToken.id)
    )
    return [
        TokenPublic(
            id=token.id,
            name=token.name,
            role=TokenRole(token.role),
            site=site_name,
            state=_state(token, now),
            created_at=token.created_at,
            created_by=token.created_by,
            expires_at=token.expires_at,
            revoked_at=token.revoked_at,
        )
        for token, site_name in rows
    ]


async def revoke_token(
    session: AsyncSession, token_id: uuid.UUID, actor: Principal, now: dt.datetime
) -> None:
    """Revoke a token at once (revoking a revoked token changes nothing)."""
    row = await session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"token {token_id} does not exist; see GET /api/v1/tokens")
    if row.revoked_at is not None:
        return
    row.revoked_at = now
    site = None if row.site_id is None else await session.get(Site, row.site_id)
    audit.record(
        session,
        actor,
        audit.AuditAction.token_revoke,
        f"token {token_id}",
        site=None if site is None else site.name,
        changes={"name": row.name, "role": row.role},
    )
    await session.commit()


async def authenticate(session: AsyncSession, digest: str, now: dt.datetime) -> Principal | None:
    """The principal of the API token with this digest; None when no token has it.

    Raises `TokenRefusedError` for a token that expired or was revoked.
    """
    row = (
        await session.execute(
            select(ApiToken, Site.name)
            .outerjoin(Site, ApiToken.site_id == Site.id)
            .where(ApiToken.token_sha256 == digest)
        )
    ).first()
    if row is None:
        return None
    token, site_name = row[0], row[1]
    if not digests_match(digest, token.token_sha256):
        return None
    if token.revoked_at is not None:
        raise TokenRefusedError(
            f"this token ({token.name!r}, id {token.id}) was revoked; ask for a new one"
        )
    if token.expires_at <= now:
        raise TokenRefusedError(
            f"this token ({token.name!r}, id {token.id}) expired at"
            f" {token.expires_at.isoformat()}; ask for a new one"
        )
    return Principal(
        role=Role(token.role),
        name=token.name,
        token_id=token.id,
        site_id=token.site_id,
        site_name=site_name,
    )


def _state(token: ApiToken, now: dt.datetime) -> TokenState:
    if token.revoked_at is not None:
        return TokenState.revoked
    return TokenState.expired if token.expires_at <= now else TokenState.active
