"""Sessions of the hierarchy store: show (who may see its site), move and purge (support)."""

import uuid

from fastapi import APIRouter

from control_plane.deps import (
    BlobsDep,
    ReadSessionDep,
    SessionDep,
    SessionReaderDep,
    SupportDep,
)
from control_plane.hierarchy import sessions
from control_plane.schemas import PurgedSession, SessionMove, SessionPublic

router = APIRouter(tags=["hierarchy"])


@router.get("/sessions/{session_id}")
async def get_session(
    session_id: uuid.UUID, principal: SessionReaderDep, session: ReadSessionDep
) -> SessionPublic:
    """A session, where it is and its history of moves."""
    return await sessions.get_session(session, session_id)


@router.post("/sessions/{session_id}/move")
async def move_session(
    session_id: uuid.UUID, body: SessionMove, principal: SupportDep, session: SessionDep
) -> SessionPublic:
    """Move a misrouted session, with its acquisitions and files, to an existing project;
    its history records where it was, who moved it and when."""
    return await sessions.move_session(session, session_id, body.group, body.project, principal)


@router.delete("/sessions/{session_id}")
async def purge_session(
    session_id: uuid.UUID, principal: SupportDep, session: SessionDep, blobs: BlobsDep
) -> PurgedSession:
    """Delete a session uploaded by mistake: its acquisitions, every file version and their
    stored bytes. The purge is recorded (who, when, from where, how much), labels excluded."""
    return await sessions.purge_session(session, blobs, session_id, principal)
