"""Sessions of the hierarchy store (admin only): show, move to the right project, purge."""

import uuid

from fastapi import APIRouter

from control_plane.deps import AdminDep, BlobsDep, ReadSessionDep, SessionDep
from control_plane.hierarchy import sessions
from control_plane.schemas import PurgedSession, SessionMove, SessionPublic

router = APIRouter(tags=["hierarchy"])


@router.get("/sessions/{session_id}")
async def get_session(
    session_id: uuid.UUID, principal: AdminDep, session: ReadSessionDep
) -> SessionPublic:
    """A session, where it is and its history of moves."""
    return await sessions.get_session(session, session_id)


@router.post("/sessions/{session_id}/move")
async def move_session(
    session_id: uuid.UUID, body: SessionMove, principal: AdminDep, session: SessionDep
) -> SessionPublic:
    """Move a misrouted session, with its acquisitions and files, to an existing project;
    its history records where it was, who moved it and when."""
    return await sessions.move_session(
        session, session_id, body.group, body.project, principal.name
    )


@router.delete("/sessions/{session_id}")
async def purge_session(
    session_id: uuid.UUID, principal: AdminDep, session: SessionDep, blobs: BlobsDep
) -> PurgedSession:
    """Delete a session uploaded by mistake: its acquisitions, every file version and their
    stored bytes. The purge is recorded (who, when, from where, how much), labels excluded."""
    return await sessions.purge_session(session, blobs, session_id, principal.name)
