"""`GET /healthz`: unauthenticated liveness that includes the database."""

from fastapi import APIRouter, Response, status
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from control_plane.deps import SessionDep
from control_plane.schemas import HealthStatus

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(session: SessionDep, response: Response) -> HealthStatus:
    """`ok` only when the database answers; 503 otherwise."""
    try:
        await session.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return HealthStatus(status="database unavailable")
    return HealthStatus(status="ok")
