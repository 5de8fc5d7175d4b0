"""`GET /api/v1/audit`: who changed what, when (a site-bound token sees its site's entries)."""

from typing import Annotated

from fastapi import APIRouter, Query

from control_plane import audit
from control_plane.auth_schemas import AuditFilter, AuditPage
from control_plane.deps import ReaderDep, ReadSessionDep

router = APIRouter(tags=["access"])


@router.get("/audit")
async def list_audit(
    where: Annotated[AuditFilter, Query()], principal: ReaderDep, session: ReadSessionDep
) -> AuditPage:
    """Entries newest first, filtered by site, action and time; page with `before`."""
    if principal.site_name is not None and where.site not in (None, principal.site_name):
        return AuditPage(items=[], next=None)
    return await audit.list_entries(session, where, principal.site_name)
