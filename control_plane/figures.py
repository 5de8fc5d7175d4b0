"""The admin guide's operational figures, per site and per scanner, from the series figures
agents report (`series_figures`, one row per upload batch of a series).

- upload success rate: instances confirmed / upload attempts (confirmed + failed for good +
  failed and retried);
- upload latency: last instance received → upload ended, per batch that stored something,
  p50 and p95 (nearest rank);
- completeness: instances confirmed / instances received (sent for the first time); for PULL
  series also against what the source announced (`pull_completeness`: per series, confirmed
  up to the announced count, over the announced counts);
- routing accuracy: the share of series per routing reason (`routed` is the accurate share);
- working-hours impact: series that waited for the upload window, and how long in total and
  at most;
- bandwidth: bytes confirmed.

A scanner is the calling AE title the series arrived from: the modality's for PUSH, the PACS'
for PULL by C-MOVE (it opens the store association); series retrieved by C-GET, or whose AE
title is not known, are listed under `null`. Rows are selected by when their upload ended (`since` ≤
stored_at < `until`), so a batch retried later counts in the window of each attempt.
Must not import FastAPI.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections import defaultdict
from collections.abc import Sequence

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.models import SeriesFigure

DEFAULT_WINDOW = dt.timedelta(days=1)


class OperationalFigures(BaseModel):
    """The figures over a set of upload batches."""

    series: int = Field(description="Distinct series with an upload batch in the window.")
    instances_received: int
    instances_stored: int
    instances_failed: int = Field(description="Failed for good.")
    upload_attempts_failed: int = Field(description="Failed for good or retried.")
    upload_success_rate: float | None = Field(
        description="Confirmed / attempts; null without an attempt."
    )
    completeness: float | None = Field(
        description="Confirmed / received; null when nothing was received."
    )
    instances_announced: int = Field(
        description="PULL: instances the sources announced for the series in the window."
    )
    pull_completeness: float | None = Field(
        description="PULL: confirmed (at most as many as announced) / announced, per series; "
        "null without PULL series."
    )
    upload_latency_p50_s: float | None
    upload_latency_p95_s: float | None
    routing: dict[str, float] = Field(description="Share of series per routing reason.")
    series_deferred: int = Field(description="Series that waited for the upload window.")
    deferred_s_total: float
    deferred_s_max: float
    bytes_uploaded: int


class ScannerFigures(BaseModel):
    """The figures of one scanner (calling AE title; null: PULL or not known)."""

    calling_ae: str | None
    figures: OperationalFigures


class SiteMetrics(BaseModel):
    """`GET /api/v1/sites/{site}/metrics`."""

    site: str
    since: dt.datetime
    until: dt.datetime
    figures: OperationalFigures
    scanners: list[ScannerFigures]


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (`share` in (0, 1]) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def figures_of(rows: Sequence[SeriesFigure]) -> OperationalFigures:
    """The figures of these batches."""
    received = sum(row.instances_received for row in rows)
    stored = sum(row.instances_stored for row in rows)
    failed = sum(row.instances_failed for row in rows)
    retrying = sum(row.instances_retrying for row in rows)
    attempts = stored + failed + retrying
    latencies = [
        max(0.0, (row.stored_at - row.last_received_at).total_seconds())
        for row in rows
        if row.instances_stored
    ]
    reasons: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        reasons[row.routing_reason].add(row.series_key)
    series = {row.series_key for row in rows}
    announced: dict[str, int] = {}
    stored_per_series: dict[str, int] = defaultdict(int)
    for row in rows:
        stored_per_series[row.series_key] += row.instances_stored
        if row.instances_announced is not None:
            announced[row.series_key] = max(
                announced.get(row.series_key, 0), row.instances_announced
            )
    announced_total = sum(announced.values())
    pulled = sum(min(stored_per_series[key], count) for key, count in announced.items())
    deferred: dict[str, float] = defaultdict(float)
    for row in rows:
        if row.deferred_s > 0:
            deferred[row.series_key] += row.deferred_s
    return OperationalFigures(
        series=len(series),
        instances_received=received,
        instances_stored=stored,
        instances_failed=failed,
        upload_attempts_failed=failed + retrying,
        upload_success_rate=stored / attempts if attempts else None,
        completeness=stored / received if received else None,
        instances_announced=announced_total,
        pull_completeness=pulled / announced_total if announced_total else None,
        upload_latency_p50_s=percentile(latencies, 0.50),
        upload_latency_p95_s=percentile(latencies, 0.95),
        routing={reason: len(keys) / len(series) for reason, keys in sorted(reasons.items())},
        series_deferred=len(deferred),
        deferred_s_total=sum(deferred.values()),
        deferred_s_max=max(deferred.values(), default=0.0),
        bytes_uploaded=sum(row.bytes_uploaded for row in rows),
    )


def site_metrics(
    site: str, rows: Sequence[SeriesFigure], since: dt.datetime, until: dt.datetime
) -> SiteMetrics:
    """The site's figures and each scanner's (scanners by AE title, `null` last)."""
    by_scanner: dict[str | None, list[SeriesFigure]] = defaultdict(list)
    for row in rows:
        by_scanner[row.calling_ae].append(row)
    order = sorted(by_scanner, key=lambda ae: (ae is None, ae or ""))
    return SiteMetrics(
        site=site,
        since=since,
        until=until,
        figures=figures_of(rows),
        scanners=[
            ScannerFigures(calling_ae=ae, figures=figures_of(by_scanner[ae])) for ae in order
        ],
    )


async def load_figures(
    session: AsyncSession, site_id: uuid.UUID, since: dt.datetime, until: dt.datetime
) -> list[SeriesFigure]:
    """The site's series figures whose upload ended in [since, until)."""
    rows = await session.scalars(
        select(SeriesFigure)
        .where(
            SeriesFigure.site_id == site_id,
            SeriesFigure.stored_at >= since,
            SeriesFigure.stored_at < until,
        )
        .order_by(SeriesFigure.stored_at)
    )
    return list(rows)
