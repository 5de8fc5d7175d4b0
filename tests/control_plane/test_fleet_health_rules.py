"""Health rules: which report, silence or config failure earns which status, and the words."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from common.config import SiteConfig
from common.messages import HealthReport, PullSourceReport
from control_plane.fleet.health_rules import (
    AgentFacts,
    AgentStatus,
    Thresholds,
    judge_agent,
    verdict_of_report,
    worst,
)

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
HEARTBEAT = dt.timedelta(seconds=10)
THRESHOLDS = Thresholds(query_time=dt.timedelta(minutes=10), reap_time=dt.timedelta(hours=1))
GB = 10**9
HEALTHY = HealthReport(
    listener_ok=True,
    uploads_open=True,
    last_query_duration_s=60.0,
    longest_reap_s=120.0,
    spool_depth=0,
    spool_bytes=0,
    deferred_uploads=0,
    failed_instances=0,
    uploads_succeeded=0,
    uploads_failed=0,
    oldest_unuploaded_age_s=None,
    disk_free_bytes=80 * GB,
    disk_total_bytes=100 * GB,
    disk_reserve_bytes=1 * GB,
    last_error=None,
    last_error_at=None,
)


SEEN_JUST_NOW = AgentFacts(
    report_verdict=verdict_of_report(HEALTHY, THRESHOLDS),
    last_seen_at=NOW,
    token_active=True,
    config_failed_revision=None,
    config_failure_reason=None,
)


def _facts(**changes: Any) -> AgentFacts:
    return dataclasses.replace(SEEN_JUST_NOW, **changes)


def _judge(facts: AgentFacts) -> tuple[AgentStatus, tuple[str, ...]]:
    verdict = judge_agent(facts, now=NOW, heartbeat_interval=HEARTBEAT)
    return verdict.status, verdict.reasons


def _with_report(report: HealthReport, **changes: Any) -> AgentFacts:
    return _facts(report_verdict=verdict_of_report(report, THRESHOLDS), **changes)


def test_healthy_report_seen_just_now_is_ok_without_reasons() -> None:
    assert _judge(_facts()) == (AgentStatus.ok, ())


def test_thresholds_come_from_the_sites_timing_config() -> None:
    config = SiteConfig.model_validate(
        {"timing": {"query_time_threshold": "2m", "reap_time_threshold": "30s"}}
    )

    assert Thresholds.of(config) == Thresholds(
        query_time=dt.timedelta(minutes=2), reap_time=dt.timedelta(seconds=30)
    )


SOURCE = "PACS@10.0.0.5:104"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {
                "pull_sources": [
                    PullSourceReport(
                        source=SOURCE,
                        echo_ok=True,
                        query_ok=False,
                        query_error="connection refused",
                        consecutive_failed_queries=2,
                    )
                ]
            },
            f"PULL source {SOURCE} cannot be queried (2 failed C-FIND round(s) in a row):"
            " connection refused",
        ),
        (
            {"pull_sources": [PullSourceReport(source=SOURCE, echo_ok=False, echo_error="no")]},
            f"PULL source {SOURCE} does not answer C-ECHO: no",
        ),
        (
            {
                "pull_sources": [
                    PullSourceReport(
                        source=SOURCE, query_ok=True, series_short=1, instances_missing=4
                    )
                ]
            },
            f"PULL source {SOURCE}: 1 series retrieved short (4 instance(s) missing), retried"
            " with a backoff",
        ),
        (
            {"uploads_failing_for_s": 1200.0, "consecutive_upload_failures": 7},
            "uploads have been failing for 20m (7 failed attempt(s), no success since), over"
            " the upload_failure_threshold of 15m",
        ),
        (
            {"oldest_unuploaded_age_s": 3 * 3600.0, "spool_depth": 12},
            "the oldest instance not yet uploaded is 3h old, over the spool_age_threshold of 2h"
            " (12 instance(s) waiting)",
        ),
        (
            {"longest_reap_s": 5400.0, "reap_window_s": 3600.0},
            "the longest reap took 1h30m, over the reap_time_threshold of 1h (within the last 1h)",
        ),
    ],
)
def test_a_failure_the_report_shows_degrades_with_its_reason(
    changes: dict[str, Any], reason: str
) -> None:
    report = HEALTHY.model_copy(update=changes)

    assert _judge(_with_report(report)) == (AgentStatus.degraded, (reason,))


@pytest.mark.parametrize(
    "changes",
    [
        {"uploads_failing_for_s": 899.0},
        {"oldest_unuploaded_age_s": 7199.0},
        # Outside the upload window the spool is meant to age.
        {"oldest_unuploaded_age_s": 3 * 3600.0, "uploads_open": False},
        {"pull_sources": [PullSourceReport(source=SOURCE, echo_ok=True, query_ok=True)]},
        # A C-ECHO that failed at start-up is settled by a query round that worked.
        {"pull_sources": [PullSourceReport(source=SOURCE, echo_ok=False, query_ok=True)]},
    ],
)
def test_what_stays_under_its_threshold_is_ok(changes: dict[str, Any]) -> None:
    report = HEALTHY.model_copy(update=changes)

    assert _judge(_with_report(report)) == (AgentStatus.ok, ())


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        (
            {"last_query_duration_s": 601.0},
            AgentStatus.degraded,
            "the last query took 10m1s, over the query_time_threshold of 10m",
        ),
        (
            {"longest_reap_s": 5400.0},
            AgentStatus.degraded,
            "the longest reap took 1h30m, over the reap_time_threshold of 1h",
        ),
        (
            {"failed_instances": 3},
            AgentStatus.degraded,
            "3 instance(s) failed for good and are kept in the spool for support",
        ),
        (
            {"listener_ok": False},
            AgentStatus.unhealthy,
            "the DICOM listener is down: no images can be received",
        ),
        (
            {"disk_free_bytes": 8 * GB},
            AgentStatus.degraded,
            "the spool disk is nearly full: 8.0 GB free of 100.0 GB",
        ),
        (
            {"disk_free_bytes": 4 * GB},
            AgentStatus.unhealthy,
            "the spool disk is nearly full: 4.0 GB free of 100.0 GB",
        ),
        (
            {"disk_free_bytes": 900_000_000, "disk_total_bytes": None},
            AgentStatus.unhealthy,
            "the spool disk is full: 900.0 MB free, at or below the 1.0 GB reserve,"
            " so images are refused",
        ),
    ],
)
def test_report_over_a_limit_earns_its_status_and_says_why(
    changes: dict[str, object], status: AgentStatus, reason: str
) -> None:
    report = HEALTHY.model_copy(update=changes)

    assert _judge(_with_report(report)) == (status, (reason,))


def test_values_exactly_at_the_thresholds_are_still_ok() -> None:
    report = HEALTHY.model_copy(update={"last_query_duration_s": 600.0, "longest_reap_s": 3600.0})

    assert _judge(_with_report(report)) == (AgentStatus.ok, ())


def test_silence_up_to_three_heartbeats_is_ok_and_beyond_is_missing() -> None:
    assert _judge(_facts(last_seen_at=NOW - 3 * HEARTBEAT))[0] is AgentStatus.ok

    status, reasons = _judge(_facts(last_seen_at=NOW - dt.timedelta(minutes=5)))

    assert status is AgentStatus.missing
    assert reasons == ("no heartbeat for 5m (expected every 10s)",)


def test_agent_that_never_connected_is_missing() -> None:
    assert _judge(_facts(report_verdict=None, last_seen_at=None)) == (
        AgentStatus.missing,
        ("has never connected",),
    )


def test_missing_agent_keeps_the_reasons_of_its_last_report() -> None:
    report = HEALTHY.model_copy(update={"listener_ok": False})

    status, reasons = _judge(_with_report(report, last_seen_at=NOW - dt.timedelta(hours=1)))

    assert status is AgentStatus.missing
    assert reasons[1] == "the DICOM listener is down: no images can be received"


def test_rejected_config_is_degraded_with_the_agents_reason() -> None:
    facts = _facts(config_failed_revision=7, config_failure_reason="dicom.port: 70000 too big")

    assert _judge(facts) == (
        AgentStatus.degraded,
        ("config revision 7 was rejected: dicom.port: 70000 too big",),
    )


def test_revoked_token_says_how_to_recover() -> None:
    status, reasons = _judge(_facts(token_active=False))

    assert status is AgentStatus.missing
    assert "issue a new one" in reasons[0]


def test_worst_orders_ok_degraded_unhealthy_missing() -> None:
    assert worst([]) is AgentStatus.ok
    assert worst([AgentStatus.ok, AgentStatus.degraded]) is AgentStatus.degraded
    assert worst([AgentStatus.unhealthy, AgentStatus.degraded]) is AgentStatus.unhealthy
    assert worst([AgentStatus.unhealthy, AgentStatus.missing]) is AgentStatus.missing


def test_a_tls_certificate_within_30_days_of_expiry_degrades_with_the_days_left() -> None:
    report = HEALTHY.model_copy(update={"tls_certificate_days_left": 12.5})

    verdict = verdict_of_report(report, THRESHOLDS)

    assert verdict.status is AgentStatus.degraded
    assert verdict.reasons == (
        "the agent's DICOM TLS certificate expires in 12 day(s); renew it (write it over the "
        "dicom.tls.cert file or name new files in a config revision)",
    )


def test_an_expired_tls_certificate_is_unhealthy_and_a_far_one_is_fine() -> None:
    expired = HEALTHY.model_copy(update={"tls_certificate_days_left": -0.5})
    far = HEALTHY.model_copy(update={"tls_certificate_days_left": 31.0})

    assert verdict_of_report(expired, THRESHOLDS).status is AgentStatus.unhealthy
    assert verdict_of_report(far, THRESHOLDS).status is AgentStatus.ok


def test_a_tls_renewal_that_could_not_be_loaded_degrades_with_its_reason() -> None:
    problem = "dicom.tls.cert: cannot read a PEM certificate; the previous certificate stays"
    report = HEALTHY.model_copy(update={"tls_problem": problem})

    assert verdict_of_report(report, THRESHOLDS).reasons == (problem,)
