"""The agent's own Prometheus metrics and probes, served when `--metrics-port` is given.

`GET /metrics`: the health snapshot as metrics (spool, uploads, retries, deferrals, oldest
un-uploaded instance, longest reap over the window, disk, each PULL source's last C-ECHO and
C-FIND outcome, refused associations). `GET /healthz`: 200 while the agent runs with its DICOM
listener up, else 503 (readiness); `GET /livez`: 200 while the process serves at all
(liveness: an agent waiting for a valid config is not ready, but restarting it would not help).

Every value is read from the snapshot at scrape time, on the server's thread (the snapshot
reads the state database, which is safe from any thread). Label values are PULL source
addresses (AE_TITLE@host:port), refusal reasons and peer addresses: node identities, never a
DICOM value. A small stdlib HTTP server rather than a web framework: the agent must not import
one (docs/architecture.md), and two paths need no more.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.health import HealthSnapshot

PREFIX = "dicom_connector_agent"

__all__ = ["AgentMetricsServer", "HealthCollector"]


class HealthCollector(Collector):
    """Metric families of one health snapshot, taken when scraped."""

    def __init__(self, snapshot: Callable[[], HealthSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Read the snapshot and yield its metrics."""
        health = self._snapshot()
        yield from _gauges(health)
        yield from _counters(health)
        yield from _pull_sources(health)
        rejections = CounterMetricFamily(
            f"{PREFIX}_dicom_rejections",
            "Associations or TLS handshakes refused, by reason and peer address.",
            labels=["reason", "source"],
        )
        for reason, source, count in health.dicom_rejections:
            rejections.add_metric([reason, source], count)
        yield rejections


def _gauge(name: str, help_text: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", help_text)
    if value is not None:
        family.add_metric([], value)
    return family


def _gauges(health: HealthSnapshot) -> Iterator[GaugeMetricFamily]:
    yield _gauge("spool_instances", "Instances in the spool, not yet uploaded.", health.spool_depth)
    yield _gauge("spool_bytes", "Bytes in the spool, not yet uploaded.", health.spool_bytes)
    yield _gauge("failed_instances", "Instances failed for good, kept.", health.failed_instances)
    yield _gauge("failed_series", "Series failed as a whole, kept.", health.failed_series)
    yield _gauge(
        "deferred_instances", "Instances waiting for the upload window.", health.deferred_instances
    )
    yield _gauge("uploads_open", "1 inside the upload window.", int(health.uploads_open))
    yield _gauge("listener_up", "1 while the DICOM listener accepts.", int(health.listener_ok))
    yield _gauge(
        "oldest_unuploaded_age_seconds",
        "Age of the oldest instance not yet uploaded (absent when the spool is empty).",
        health.oldest_unuploaded_age,
    )
    yield _gauge(
        "longest_reap_seconds",
        "Longest processing of a series within the reap window.",
        health.longest_reap,
    )
    failing = None
    if health.upload_failing_since is not None:
        failing = max(0.0, health.at - health.upload_failing_since)
    yield _gauge(
        "uploads_failing_seconds",
        "How long upload attempts have failed with no success in between (0 when fine).",
        failing or 0.0,
    )
    yield _gauge("disk_free_bytes", "Free space on the spool's filesystem.", health.disk_free_bytes)
    yield _gauge(
        "disk_headroom_bytes",
        "Free space above the reserve (below 0 the agent refuses images).",
        health.disk_headroom_bytes,
    )
    yield _gauge(
        "tls_certificate_days_left",
        "Days until the DICOM TLS certificate expires (absent without TLS).",
        health.tls_certificate_days_left,
    )


def _counters(health: HealthSnapshot) -> Iterator[CounterMetricFamily]:
    for name, help_text, value in (
        ("uploads_succeeded", "Instances confirmed since start.", health.uploads_succeeded),
        ("uploads_failed", "Instances failed for good since start.", health.uploads_failed),
        ("upload_retries", "Upload attempts failed and scheduled again.", health.retries_scheduled),
    ):
        family = CounterMetricFamily(f"{PREFIX}_{name}", help_text)
        family.add_metric([], value)
        yield family


def _pull_sources(health: HealthSnapshot) -> Iterator[GaugeMetricFamily]:
    labels = ["source"]
    echo = GaugeMetricFamily(
        f"{PREFIX}_pull_echo_ok", "1 when the source's last C-ECHO answered.", labels=labels
    )
    query = GaugeMetricFamily(
        f"{PREFIX}_pull_query_ok", "1 when the source's last C-FIND round worked.", labels=labels
    )
    failed_rounds = GaugeMetricFamily(
        f"{PREFIX}_pull_failed_rounds", "C-FIND rounds failed in a row.", labels=labels
    )
    duration = GaugeMetricFamily(
        f"{PREFIX}_pull_query_seconds", "Duration of the last C-FIND round.", labels=labels
    )
    short = GaugeMetricFamily(
        f"{PREFIX}_pull_series_short", "Series retrieved short.", labels=labels
    )
    for source in health.pull_sources:
        if source.echo_ok is not None:
            echo.add_metric([source.source], int(source.echo_ok))
        if source.last_round_ok is not None:
            query.add_metric([source.source], int(source.last_round_ok))
        failed_rounds.add_metric([source.source], source.consecutive_failed_rounds)
        if source.last_round_duration is not None:
            duration.add_metric([source.source], source.last_round_duration)
        short.add_metric([source.source], source.series_short)
    yield from (echo, query, failed_rounds, duration, short)


class AgentMetricsServer:
    """`/metrics`, `/healthz` and `/livez` on a port of their own, in a daemon thread.

    `close()` stops it.
    """

    def __init__(self, host: str, port: int, snapshot: Callable[[], HealthSnapshot]) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(HealthCollector(snapshot))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    try:
                        body, status = generate_latest(registry), 200
                    except RuntimeError:  # not running (yet, or any more)
                        body, status = b"", 503
                    self._answer(status, CONTENT_TYPE_LATEST, body)
                elif self.path == "/healthz":
                    self._answer(*_probe(snapshot))
                elif self.path == "/livez":
                    # Liveness only: an agent waiting for a valid config (listener down,
                    # /healthz 503) is doing its job; restarting it would not help.
                    self._answer(200, "application/json", b'{"status":"alive"}')
                else:
                    self._answer(404, "text/plain", b"not found\n")

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                # Scrapes every few seconds would flood the log; nothing here is news.
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="agent-metrics", daemon=True
        )

    def start(self) -> int:
        """Serve in the background; the port (an OS-chosen one when 0 was asked)."""
        self._thread.start()
        return self.port

    def close(self) -> None:
        """Stop serving and close the socket; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def _probe(snapshot: Callable[[], HealthSnapshot]) -> tuple[int, str, bytes]:
    try:
        health = snapshot()
    except RuntimeError:
        return 503, "application/json", b'{"status":"not running"}'
    if not health.listener_ok:
        return 503, "application/json", b'{"status":"listener down"}'
    return 200, "application/json", json.dumps({"status": "ok"}).encode()
