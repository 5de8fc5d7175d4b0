"""Series that need support (admin only): list them, retry or discard them on the agents."""

import asyncio
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from control_plane import audit
from control_plane.deps import HubDep, ReadSessionDep, SessionDep, SiteChangerDep, SiteReaderDep
from control_plane.errors import NotFoundError
from control_plane.fleet import failed_series, sites
from control_plane.fleet_schemas import (
    FailedSeriesPublic,
    SeriesActionAnswer,
    SeriesActionResult,
)
from control_plane.hub import AgentNotConnectedError
from control_plane.schemas import ItemList

router = APIRouter(tags=["fleet"])

COMMAND_TIMEOUT_S = 30.0
SeriesKey = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]


@router.get("/sites/{site}/series")
async def list_series(
    site: str,
    principal: SiteReaderDep,
    session: ReadSessionDep,
    state: Annotated[
        Literal["failed"],
        Query(description="Which series: only failed ones are reported to the control plane."),
    ] = "failed",
) -> ItemList[FailedSeriesPublic]:
    """Series the site's agents could not deliver and keep for support, newest first."""
    site_row = await sites.site_by_name(session, site)
    return ItemList(items=await failed_series.failed_series(session, site_row))


@router.post("/sites/{site}/series/{series_key}/retry")
async def retry_series(
    site: str, series_key: SeriesKey, principal: SiteChangerDep, session: SessionDep, hub: HubDep
) -> SeriesActionAnswer:
    """Ask the agents keeping a failed series to try it again under their current config."""
    return await _act(site, series_key, "retry_series", principal, session, hub)


@router.post("/sites/{site}/series/{series_key}/discard")
async def discard_series(
    site: str, series_key: SeriesKey, principal: SiteChangerDep, session: SessionDep, hub: HubDep
) -> SeriesActionAnswer:
    """Ask the agents keeping a failed series to give up on it and delete its files."""
    return await _act(site, series_key, "discard_series", principal, session, hub)


async def _act(
    site: str,
    key: str,
    command: str,
    principal: SiteChangerDep,
    session: SessionDep,
    hub: HubDep,
) -> SeriesActionAnswer:
    site_row = await sites.site_by_name(session, site)
    agent_ids = await failed_series.agents_reporting(session, site_row, key)
    if not agent_ids:
        raise NotFoundError(
            f"no agent of site {site} reports a failed series {key}; list them with"
            f" GET /api/v1/sites/{site}/series?state=failed"
        )
    action = (
        audit.AuditAction.series_retry
        if command == "retry_series"
        else audit.AuditAction.series_discard
    )
    audit.record(session, principal, action, key, site=site, changes={"agents": len(agent_ids)})
    await session.commit()
    await session.close()

    async def one(agent_id: uuid.UUID) -> SeriesActionResult:
        try:
            result = await hub.command(agent_id, command, {"series_key": key}, COMMAND_TIMEOUT_S)
        except AgentNotConnectedError:
            return SeriesActionResult(
                agent_id=agent_id, ok=False, detail="the agent has no link to this control plane"
            )
        except TimeoutError:
            return SeriesActionResult(
                agent_id=agent_id,
                ok=False,
                detail=f"the agent did not answer within {COMMAND_TIMEOUT_S:.0f} s",
            )
        return SeriesActionResult(agent_id=agent_id, ok=result.ok, detail=result.detail)

    results = await asyncio.gather(*(one(agent_id) for agent_id in agent_ids))
    return SeriesActionAnswer(series_key=key, results=list(results))
