"""The pipeline counters behind health: reap time over a sliding window, failing uploads."""

from __future__ import annotations

from agent.health import PipelineCounters


def test_one_slow_reap_stops_counting_once_it_left_the_window() -> None:
    counters = PipelineCounters(reap_window_seconds=3600.0)
    counters.record_reap(5400.0, at=1000.0)
    counters.record_reap(10.0, at=2000.0)

    assert counters.longest_reap(now=2000.0) == 5400.0
    assert counters.longest_reap(now=1000.0 + 3600.0) == 5400.0
    # An hour after it ended, the slow one is gone and the later, shorter one is the longest.
    assert counters.longest_reap(now=1000.0 + 3601.0) == 10.0
    assert counters.longest_reap(now=2000.0 + 3601.0) == 0.0


def test_a_longer_reap_replaces_the_shorter_earlier_ones() -> None:
    counters = PipelineCounters(reap_window_seconds=100.0)
    for at, duration in [(0.0, 5.0), (1.0, 3.0), (2.0, 7.0), (3.0, 1.0)]:
        counters.record_reap(duration, at=at)

    assert counters.longest_reap(now=3.0) == 7.0
    assert counters.longest_reap(now=102.5) == 1.0


def test_failing_uploads_run_from_the_first_failure_until_a_success() -> None:
    counters = PipelineCounters()
    counters.record_upload_failure(at=10.0)
    counters.record_upload_failure(at=20.0)

    assert (counters.upload_failing_since, counters.consecutive_upload_failures) == (10.0, 2)

    counters.record_upload_success()

    assert (counters.upload_failing_since, counters.consecutive_upload_failures) == (None, 0)
    assert counters.uploads_succeeded == 1
