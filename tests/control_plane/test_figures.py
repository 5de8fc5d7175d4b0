"""The operational figures computed from scripted series figures whose true values are known."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from control_plane.figures import figures_of, percentile, site_metrics
from control_plane.models import SeriesFigure

T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
SITE_ID, AGENT_ID = uuid.uuid4(), uuid.uuid4()


def _row(
    key: str,
    *,
    ae: str | None = "MRI_A",
    reason: str = "routed",
    received: int = 10,
    stored: int = 10,
    failed: int = 0,
    retrying: int = 0,
    size: int = 1000,
    latency_s: float = 60.0,
    deferred_s: float = 0.0,
    announced: int | None = None,
) -> SeriesFigure:
    return SeriesFigure(
        id=uuid.uuid4(),
        site_id=SITE_ID,
        agent_id=AGENT_ID,
        series_key=key,
        calling_ae=ae,
        routing_reason=reason,
        instances_received=received,
        instances_announced=announced,
        instances_stored=stored,
        instances_failed=failed,
        instances_retrying=retrying,
        bytes_uploaded=stored * size,
        last_received_at=T0,
        stored_at=T0 + dt.timedelta(seconds=latency_s),
        deferred_s=deferred_s,
        recorded_at=T0,
    )


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20

    assert percentile(values, 0.5) == 10.0
    assert percentile(values, 0.95) == 19.0
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.5) is None


def test_the_figures_of_a_scripted_day_are_its_true_values() -> None:
    rows = [
        # MRI_A: 4 series, routed but one, latencies 10, 20, 30, 40 s; one series retried once.
        _row("a1", latency_s=10),
        _row("a2", latency_s=20, received=10, stored=8, retrying=2),
        _row("a2", latency_s=40, received=0, stored=2),  # the retry of a2's two instances
        _row("a3", latency_s=30, reason="unknown_project"),
        _row("a4", latency_s=40, deferred_s=3600.0),
        # CT_B: 1 series with a permanent failure, outside working hours for 2 h.
        _row("b1", ae="CT_B", reason="no_routing_string", received=4, stored=3, failed=1,
             latency_s=100, deferred_s=7200.0),
    ]  # fmt: skip

    figures = figures_of(rows)

    assert figures.series == 5
    assert figures.instances_received == 44
    assert figures.instances_stored == 43
    assert figures.instances_failed == 1
    assert figures.upload_attempts_failed == 3
    assert figures.upload_success_rate == pytest.approx(43 / 46)
    assert figures.completeness == pytest.approx(43 / 44)
    # Latencies of the batches that stored something: 10, 20, 40, 30, 40, 100.
    assert figures.upload_latency_p50_s == 30.0
    assert figures.upload_latency_p95_s == 100.0
    assert figures.routing == {
        "no_routing_string": pytest.approx(0.2),
        "routed": pytest.approx(0.6),
        "unknown_project": pytest.approx(0.2),
    }
    assert figures.series_deferred == 2
    assert figures.deferred_s_total == 10800.0
    assert figures.deferred_s_max == 7200.0
    assert figures.bytes_uploaded == 43 * 1000

    metrics = site_metrics("north", rows, T0, T0 + dt.timedelta(days=1))
    assert [scanner.calling_ae for scanner in metrics.scanners] == ["CT_B", "MRI_A"]
    ct = metrics.scanners[0].figures
    assert (ct.series, ct.upload_success_rate, ct.completeness) == (1, 0.75, 0.75)
    assert ct.routing == {"no_routing_string": 1.0}
    mri = metrics.scanners[1].figures
    assert (mri.series, mri.instances_stored, mri.upload_latency_p50_s) == (4, 40, 30.0)


def test_no_batches_have_no_rates() -> None:
    figures = figures_of([])

    assert (figures.series, figures.upload_success_rate, figures.completeness) == (0, None, None)
    assert figures.upload_latency_p50_s is None
    assert figures.routing == {}


def test_pull_completeness_counts_each_series_against_what_its_source_announced() -> None:
    rows = [
        # p1: 5 announced, 3 stored, then the 2 missing ones in a later batch.
        _row("p1", ae=None, announced=5, received=3, stored=3),
        _row("p1", ae=None, announced=5, received=2, stored=2),
        # p2: 4 announced, 3 ever arrived (retrieved short).
        _row("p2", ae=None, announced=4, received=3, stored=3),
        # A PUSH series has nothing announced and does not count here.
        _row("s1", received=2, stored=2),
    ]

    figures = figures_of(rows)

    assert figures.instances_announced == 9
    assert figures.pull_completeness == pytest.approx(8 / 9)
    assert figures.completeness == 1.0  # everything received was stored
    assert figures_of([_row("s1")]).pull_completeness is None
