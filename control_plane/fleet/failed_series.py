"""Series that need support, as the site's agents report them in their health.

An agent keeps every series it could not deliver (de-identification failed, refused by the
destination, out of retries) with its files, and reports the latest of them in each health
report (`HealthReport.failed_series_recent`). This module reads those reports; retrying or
discarding a series is a command to the agents that report it (`retry_series`,
`discard_series`). Must not import FastAPI.
"""

from __future__ import annotations

import uuid

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common.messages import HealthReport
from control_plane.fleet_schemas import FailedSeriesPublic
from control_plane.models import Agent, Site


async def failed_series(session: AsyncSession, site: Site) -> list[FailedSeriesPublic]:
    """The failed series the site's agents last reported, newest first."""
    rows = await session.execute(
        select(Agent.id, Agent.name, Agent.health_report).where(Agent.site_id == site.id)
    )
    found: list[FailedSeriesPublic] = []
    for agent_id, name, document in rows:
        report = _report(document)
        if report is None:
            continue
        found += [
            FailedSeriesPublic(
                agent_id=agent_id,
                agent=name,
                series_key=series.series_key,
                reason=series.reason,
                failed_at=series.failed_at,
                instances=series.instances,
            )
            for series in report.failed_series_recent
        ]
    found.sort(key=lambda series: (series.failed_at, series.series_key), reverse=True)
    return found


async def agents_reporting(session: AsyncSession, site: Site, key: str) -> list[uuid.UUID]:
    """The site's agents whose last report names the failed series `key`."""
    return sorted(
        {
            series.agent_id
            for series in await failed_series(session, site)
            if series.series_key == key
        }
    )


def _report(document: object) -> HealthReport | None:
    if document is None:
        return None
    try:
        return HealthReport.model_validate(document)
    except ValidationError:
        # A report stored by another agent version; it names no series this one can act on.
        return None
