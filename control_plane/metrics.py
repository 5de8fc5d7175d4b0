"""Prometheus metrics of the control plane (`GET /metrics`, text format 0.0.4).

- HTTP: requests and their durations by method, route *template* and status (never the raw
  path: ids in paths would make every file its own series);
- links and health: connected agents, agents per status and each site's status, per site;
- the operational figures per site and scanner: totals since the figures began
  (`series_figures`), and the latency p50/p95 of the last 24 h;
- alerts delivered and given up on;
- on PostgreSQL, whether the replica bus listens and how often it (re)connected.

Label values are site names, calling AE titles (scanner node identities), route templates,
statuses and routing reasons: nothing read from a DICOM data set. A test feeds PHI canaries
through the whole pipeline and finds none of them in the exposition.

Each app has its own registry (tests build many apps in one process). Everything but the HTTP
counters is read at scrape time. Must not import FastAPI (the route is
`control_plane.api.routes.metrics_export`, the middleware `control_plane.api.http_metrics`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.alerts import Alerter
from control_plane.figures import figures_of
from control_plane.fleet.health_rules import AgentStatus
from control_plane.fleet.view import SiteStatus
from control_plane.models import SeriesFigure, Site
from control_plane.replica_bus import ReplicaBus

PREFIX = "dicom_connector"
LATENCY_WINDOW = dt.timedelta(days=1)
UNKNOWN_SCANNER = "unknown"
# Request durations: a health read takes milliseconds, an ingest batch up to seconds.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class HttpMetrics:
    """The request counters of one app, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)


@dataclass(frozen=True)
class FigureTotals:
    """Sums of `series_figures` for one site and scanner."""

    site: str
    scanner: str
    series_batches: int
    instances_received: int
    instances_stored: int
    attempts_failed: int
    bytes_uploaded: int
    deferred_s: float


@dataclass(frozen=True)
class Scrape:
    """Everything read for one scrape."""

    statuses: list[SiteStatus]
    totals: list[FigureTotals]
    routing: list[tuple[str, str, int]]  # site, routing reason, batches
    latency: dict[str, tuple[float | None, float | None]]  # site → p50, p95 (last 24 h)
    alerts_delivered: int
    alerts_failed: int
    replica_bus: tuple[bool, int] | None = None
    """Whether the replica bus listens and how often it connected; None on SQLite."""


async def read_scrape(
    session: AsyncSession,
    statuses: list[SiteStatus],
    now: dt.datetime,
    alerter: Alerter | None,
    replica_bus: ReplicaBus | None = None,
) -> Scrape:
    """Read what a scrape shows: sums of the figures, recent latencies, alert counts."""
    figures = SeriesFigure
    totals = await session.execute(
        select(
            Site.name,
            figures.calling_ae,
            func.count(),
            func.sum(figures.instances_received),
            func.sum(figures.instances_stored),
            func.sum(figures.instances_failed + figures.instances_retrying),
            func.sum(figures.bytes_uploaded),
            func.sum(figures.deferred_s),
        )
        .join(Site, Site.id == figures.site_id)
        .group_by(Site.name, figures.calling_ae)
    )
    routing = await session.execute(
        select(Site.name, figures.routing_reason, func.count())
        .join(Site, Site.id == figures.site_id)
        .group_by(Site.name, figures.routing_reason)
    )
    recent = await session.execute(
        select(Site.name, figures)
        .join(Site, Site.id == figures.site_id)
        .where(figures.stored_at >= now - LATENCY_WINDOW)
    )
    by_site: dict[str, list[SeriesFigure]] = {}
    for site, row in recent.all():
        by_site.setdefault(site, []).append(row)
    latency = {}
    for site, rows in by_site.items():
        computed = figures_of(rows)
        latency[site] = (computed.upload_latency_p50_s, computed.upload_latency_p95_s)
    senders = [] if alerter is None else alerter.senders
    return Scrape(
        statuses=statuses,
        totals=[
            FigureTotals(
                site, ae or UNKNOWN_SCANNER, n, rec or 0, sto or 0, bad or 0, b or 0, d or 0.0
            )
            for site, ae, n, rec, sto, bad, b, d in totals.all()
        ],
        routing=[(site, reason, count) for site, reason, count in routing.all()],
        latency=latency,
        alerts_delivered=sum(sender.delivered for sender in senders),
        alerts_failed=sum(sender.failed for sender in senders),
        replica_bus=(
            (replica_bus.listening.is_set(), replica_bus.connections)
            if replica_bus is not None and replica_bus.enabled
            else None
        ),
    )


class _ScrapeCollector(Collector):
    def __init__(self, scrape: Scrape) -> None:
        self._scrape = scrape

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from _fleet_families(self._scrape.statuses)
        yield from _figure_families(self._scrape)
        delivered = CounterMetricFamily(f"{PREFIX}_alerts_delivered", "Alerts a webhook accepted.")
        delivered.add_metric([], self._scrape.alerts_delivered)
        yield delivered
        failed = CounterMetricFamily(
            f"{PREFIX}_alerts_failed", "Alerts given up on (every attempt failed or refused)."
        )
        failed.add_metric([], self._scrape.alerts_failed)
        yield failed
        if self._scrape.replica_bus is not None:
            yield from _bus_families(*self._scrape.replica_bus)


def _bus_families(
    listening: bool, connections: int
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    gauge = GaugeMetricFamily(
        f"{PREFIX}_replica_bus_listening",
        "1 while this replica hears other replicas' changes at once (LISTEN/NOTIFY); 0 while"
        " it relies on the periodic reconcile alone.",
    )
    gauge.add_metric([], int(listening))
    yield gauge
    connects = CounterMetricFamily(
        f"{PREFIX}_replica_bus_connects",
        "Times the replica bus connected (more than one: it lost its connection and resynced).",
    )
    connects.add_metric([], connections)
    yield connects


def _fleet_families(statuses: Iterable[SiteStatus]) -> Iterator[GaugeMetricFamily]:
    site_status = GaugeMetricFamily(
        f"{PREFIX}_site_status",
        "1 for the site's current status (ok, degraded, unhealthy, missing), 0 for the others.",
        labels=["site", "status"],
    )
    agents = GaugeMetricFamily(
        f"{PREFIX}_agents", "Agents of the site per status.", labels=["site", "status"]
    )
    connected = GaugeMetricFamily(
        f"{PREFIX}_agents_connected",
        "Agents of the site with an open link to the control plane.",
        labels=["site"],
    )
    for site in statuses:
        for status in AgentStatus:
            site_status.add_metric([site.site, status.value], int(site.verdict.status is status))
            count = sum(1 for agent in site.agents if agent.verdict.status is status)
            agents.add_metric([site.site, status.value], count)
        connected.add_metric([site.site], sum(1 for agent in site.agents if agent.connected))
    yield site_status
    yield agents
    yield connected


def _figure_families(scrape: Scrape) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    labels = ["site", "scanner"]
    families = {
        "batches": CounterMetricFamily(
            f"{PREFIX}_upload_batches",
            "Upload batches of series reported by agents.",
            labels=labels,
        ),
        "received": CounterMetricFamily(
            f"{PREFIX}_instances_received",
            "Instances sent for upload the first time.",
            labels=labels,
        ),
        "stored": CounterMetricFamily(
            f"{PREFIX}_instances_stored", "Instances confirmed by their destination.", labels=labels
        ),
        "failed": CounterMetricFamily(
            f"{PREFIX}_upload_attempts_failed",
            "Upload attempts that failed (retried or for good).",
            labels=labels,
        ),
        "bytes": CounterMetricFamily(
            f"{PREFIX}_uploaded_bytes", "Bytes confirmed by destinations.", labels=labels
        ),
        "deferred": CounterMetricFamily(
            f"{PREFIX}_deferred_seconds",
            "Time series waited for the working-hours upload window.",
            labels=labels,
        ),
    }
    for total in scrape.totals:
        values = [total.site, total.scanner]
        families["batches"].add_metric(values, total.series_batches)
        families["received"].add_metric(values, total.instances_received)
        families["stored"].add_metric(values, total.instances_stored)
        families["failed"].add_metric(values, total.attempts_failed)
        families["bytes"].add_metric(values, total.bytes_uploaded)
        families["deferred"].add_metric(values, total.deferred_s)
    yield from families.values()
    routing = CounterMetricFamily(
        f"{PREFIX}_routed_batches",
        "Upload batches per routing reason (routed: where the routing string said).",
        labels=["site", "reason"],
    )
    for site, reason, count in scrape.routing:
        routing.add_metric([site, reason], count)
    yield routing
    latency = GaugeMetricFamily(
        f"{PREFIX}_upload_latency_seconds",
        "Last instance received to stored, over the last 24 h, by quantile.",
        labels=["site", "quantile"],
    )
    for site, (p50, p95) in sorted(scrape.latency.items()):
        if p50 is not None and p95 is not None:
            latency.add_metric([site, "0.5"], p50)
            latency.add_metric([site, "0.95"], p95)
    yield latency


def exposition(http: HttpMetrics, scrape: Scrape) -> bytes:
    """The text exposition of the app's HTTP metrics and of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ScrapeCollector(scrape))
    return generate_latest(http.registry) + generate_latest(registry)
