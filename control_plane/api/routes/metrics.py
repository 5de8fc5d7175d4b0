"""The operational figures of a site (`control_plane.figures`), over a window of time."""

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.deps import ReadSessionDep, ResourcesDep, SiteReaderDep
from control_plane.errors import InvalidRequestError
from control_plane.figures import DEFAULT_WINDOW, SiteMetrics, load_figures, site_metrics
from control_plane.fleet import sites

router = APIRouter(tags=["fleet"])


@router.get("/sites/{site}/metrics")
async def site_metrics_route(
    site: str,
    _: SiteReaderDep,
    session: ReadSessionDep,
    resources: ResourcesDep,
    since: Annotated[
        dt.datetime | None,
        Query(description="Start of the window (ISO 8601 with a timezone); default: a day ago."),
    ] = None,
) -> SiteMetrics:
    """Upload success rate, latency p50/p95, completeness, routing accuracy, working-hours
    impact and bytes uploaded, for the site and for each scanner (calling AE title)."""
    until = resources.clock()
    if since is not None and since.tzinfo is None:
        raise InvalidRequestError("since needs a timezone, e.g. 2026-12-01T00:00:00Z")
    start = until - DEFAULT_WINDOW if since is None else since
    found = await sites.site_by_name(session, site)
    rows = await load_figures(session, found.id, start, until)
    return site_metrics(found.name, rows, start, until)
