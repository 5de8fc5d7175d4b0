"""Session metadata in the hierarchy store: merging what each series brings, reading it back.

Metadata is what the site's metadata patterns extracted beyond the labels (name → text). The
series of one session may disagree; the rule (docs/routing.md) is **the first value recorded
for a name stays the session's value, and every different value sent later is kept beside it
as a conflict**. So a value never changes under a reader's feet, a late or resent upload of an
old series cannot overwrite a newer one's, and nothing an agent sent is silently lost. Merging
is idempotent: the same name and value again changes nothing.

Values come from DICOM headers and may identify a patient: they are stored and shown to those
who may read the session, never logged or put in an error. Must not import FastAPI.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.models import SessionMetadataValue, utc_now

__all__ = ["SessionMetadata", "merge_metadata", "metadata_of"]


@dataclass(frozen=True)
class SessionMetadata:
    """A session's metadata: each name's value, and the other values sent for it."""

    values: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, list[str]] = field(default_factory=dict)


async def merge_metadata(
    session: AsyncSession, session_id: uuid.UUID, metadata: Mapping[str, str] | None
) -> None:
    """Add a series' `metadata` to the session's, in the caller's transaction.

    A name the session does not have yet takes this value; a value the session already has
    for the name is ignored; any other value is recorded as a conflict. Two transactions
    that both record a first value for a name collide on a unique index (`IntegrityError` at
    the flush or commit): the caller starts its transaction over and then sees the winner.
    """
    if not metadata:
        return
    digests = {name: _digest(value) for name, value in metadata.items()}
    rows = await session.execute(
        select(
            SessionMetadataValue.name,
            SessionMetadataValue.value_sha256,
            SessionMetadataValue.is_current,
        ).where(
            SessionMetadataValue.session_id == session_id,
            SessionMetadataValue.name.in_(sorted(metadata)),
        )
    )
    known: set[tuple[str, str]] = set()
    named: set[str] = set()
    for name, digest, current in rows:
        known.add((name, digest))
        if current:
            named.add(name)
    now = utc_now()
    added = [
        {
            "id": uuid.uuid4(),
            "session_id": session_id,
            "name": name,
            "value": value,
            "value_sha256": digests[name],
            "is_current": name not in named,
            "created_at": now,
        }
        for name, value in sorted(metadata.items())
        if (name, digests[name]) not in known
    ]
    if added:
        await session.execute(insert(SessionMetadataValue), added)


async def metadata_of(
    session: AsyncSession, session_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, SessionMetadata]:
    """The metadata of each of `session_ids` (an empty one for a session without any)."""
    wanted = sorted(set(session_ids))
    found: dict[uuid.UUID, SessionMetadata] = {
        session_id: SessionMetadata() for session_id in wanted
    }
    if not wanted:
        return found
    rows = await session.execute(
        select(
            SessionMetadataValue.session_id,
            SessionMetadataValue.name,
            SessionMetadataValue.value,
            SessionMetadataValue.is_current,
        )
        .where(SessionMetadataValue.session_id.in_(wanted))
        .order_by(
            SessionMetadataValue.session_id,
            SessionMetadataValue.name,
            SessionMetadataValue.created_at,
            SessionMetadataValue.value,
        )
    )
    for session_id, name, value, current in rows:
        entry = found[session_id]
        if current:
            entry.values[name] = value
        else:
            entry.conflicts.setdefault(name, []).append(value)
    return found


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()
