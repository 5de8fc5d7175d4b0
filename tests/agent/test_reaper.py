"""Reap decisions on real spooled files: upload policy, routing, and late instances."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from agent.reaper import Reaper, SeriesDecision
from agent.spool import Spool
from agent.state import AgentState, InstanceState, SeriesRow
from common.config import SiteConfig, validate_site_config
from common.routing import RoutingReason
from tests.support.dicom_factory import encode_part10, make_series
from tests.support.spool_files import filled_slots

T0 = 1_700_000_000.0


def spool_datasets(spool: Spool, datasets: Sequence[Dataset], received_at: float) -> None:
    """Store `datasets` through the real spool, as the SCP does after a C-STORE."""
    for ds in datasets:
        spool.store(
            encode_part10(ds),
            sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID,
            series_instance_uid=ds.SeriesInstanceUID,
            study_instance_uid=ds.StudyInstanceUID,
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
            received_at=received_at,
        )


def series_datasets(
    n: int, *, comments: str | None, series_uid: str | None = None
) -> list[Dataset]:
    """A small synthetic series (64x64 pixels keep the files small)."""
    return make_series(
        n,
        patient_id="SYNTH001",
        study_uid="1.2.826.0.1.3680043.8.498.1",
        series_uid=series_uid or generate_uid(),
        series_description="T1 MPRAGE",
        study_description="Brain",
        patient_comments=comments,
        rows=64,
        cols=64,
    )


def due(state: AgentState, series_uid: str) -> SeriesRow:
    [row] = [s for s in state.due_series(T0 + 100, 30) if s.series_instance_uid == series_uid]
    return row


def config(**sections: Any) -> SiteConfig:
    return validate_site_config(sections)


async def test_reap_skips_a_series_whose_policy_field_holds_an_opt_out_string(
    state: AgentState, spool: Spool
) -> None:
    datasets = series_datasets(3, comments="research NOFW")
    spool_datasets(spool, datasets, T0)
    uid = datasets[0].SeriesInstanceUID

    outcome = await Reaper(state).reap(due(state, uid), config())

    assert outcome.decision == SeriesDecision(upload=False, reason="opted_out", target=None)
    assert outcome.skipped == 3
    assert state.stats().skipped_count == 3
    assert state.spooled_instances(uid) == []
    assert filled_slots(spool.root) == []


async def test_reap_skips_a_series_without_the_opt_in_string_under_opt_in(
    state: AgentState, spool: Spool
) -> None:
    datasets = series_datasets(2, comments="fw://neuro/study-a")
    spool_datasets(spool, datasets, T0)
    site = config(upload_policy={"mode": "opt-in", "strings": ["FWUPLOAD"]})

    outcome = await Reaper(state).reap(due(state, datasets[0].SeriesInstanceUID), site)

    assert outcome.decision is not None
    assert (outcome.decision.upload, outcome.decision.reason) == (False, "not_opted_in")
    assert state.stats().skipped_count == 2


async def test_skipped_series_are_counted_per_reason_for_health(
    state: AgentState, spool: Spool
) -> None:
    site = config(upload_policy={"mode": "opt-in", "strings": ["FWUPLOAD"]})
    for comments in ("no string here", "nothing either", "FWUPLOAD fw://neuro/study-a"):
        datasets = series_datasets(1, comments=comments)
        spool_datasets(spool, datasets, T0)
        await Reaper(state).reap(due(state, datasets[0].SeriesInstanceUID), site)

    assert state.skipped_series() == {"not_opted_in": 2}


async def test_reap_routes_a_series_with_a_routing_string_and_stores_the_target(
    state: AgentState, spool: Spool
) -> None:
    datasets = series_datasets(2, comments="scan fw://Neuro/study-a/SUBJ7/visit-1 FWUPLOAD")
    spool_datasets(spool, datasets, T0)
    uid = datasets[0].SeriesInstanceUID
    site = config(upload_policy={"mode": "opt-in", "strings": ["FWUPLOAD"]})

    outcome = await Reaper(state).reap(due(state, uid), site)

    assert outcome.decision is not None
    target = outcome.decision.target
    assert target is not None
    assert (target.group, target.project, target.subject, target.session) == (
        "neuro",
        "study-a",
        "SUBJ7",
        "visit-1",
    )
    assert (target.acquisition, target.acquisition_key) == ("T1 MPRAGE", uid)
    assert target.routing_reason is RoutingReason.routed
    assert len(state.spooled_instances(uid)) == 2
    stored = state.series(uid)
    assert stored is not None
    assert stored.target == outcome.decision.to_json()


async def test_reap_without_a_routing_string_maps_subject_and_session_from_the_header(
    state: AgentState, spool: Spool
) -> None:
    datasets = series_datasets(1, comments=None)
    spool_datasets(spool, datasets, T0)

    outcome = await Reaper(state).reap(due(state, datasets[0].SeriesInstanceUID), config())

    assert outcome.decision is not None
    assert outcome.decision.target is not None
    target = outcome.decision.target
    assert (target.group, target.project) == (None, None)
    assert (target.subject, target.session) == ("SYNTH001", "Brain")
    assert target.routing_reason is RoutingReason.no_routing_string


async def test_late_instances_reuse_the_stored_target_without_a_new_decision(
    state: AgentState, spool: Spool
) -> None:
    datasets = series_datasets(3, comments="fw://neuro/study-a")
    uid = datasets[0].SeriesInstanceUID
    spool_datasets(spool, datasets[:2], T0)
    reaper = Reaper(state)
    first = await reaper.reap(due(state, uid), config())
    # A late instance whose header would route elsewhere (and even opt out) if re-read.
    late = series_datasets(1, comments="NOFW fw://other/place", series_uid=uid)
    spool_datasets(spool, late, T0 + 10)

    second = await reaper.reap(due(state, uid), config())

    assert second.reused
    assert second.decision == first.decision
    assert second.skipped == 0
    assert len(state.spooled_instances(uid)) == 3


async def test_late_instances_of_a_skipped_series_are_skipped_too(
    state: AgentState, spool: Spool
) -> None:
    datasets = series_datasets(1, comments="NOFW")
    uid = datasets[0].SeriesInstanceUID
    spool_datasets(spool, datasets, T0)
    reaper = Reaper(state)
    await reaper.reap(due(state, uid), config())
    spool_datasets(spool, series_datasets(2, comments=None, series_uid=uid), T0 + 10)

    outcome = await reaper.reap(due(state, uid), config())

    assert outcome.reused
    assert outcome.skipped == 2
    assert state.stats().skipped_count == 3


async def test_an_unreadable_first_instance_is_failed_and_the_next_one_decides(
    state: AgentState, spool: Spool
) -> None:
    datasets = series_datasets(2, comments="fw://neuro/study-a")
    uid = datasets[0].SeriesInstanceUID
    spool_datasets(spool, datasets, T0)
    first, second = state.spooled_instances(uid)
    first.path.write_bytes(b"not a DICOM file")

    outcome = await Reaper(state).reap(due(state, uid), config())

    assert outcome.failed == 1
    assert outcome.decision is not None
    assert outcome.decision.upload
    assert state.instance(first.id).state is InstanceState.failed
    assert state.instance(second.id).state is InstanceState.spooled


async def test_reap_duration_comes_from_the_injected_clock(state: AgentState, spool: Spool) -> None:
    datasets = series_datasets(1, comments=None)
    spool_datasets(spool, datasets, T0)
    ticks = itertools.count(T0 + 100, 0.25)

    outcome = await Reaper(state, clock=lambda: next(ticks)).reap(
        due(state, datasets[0].SeriesInstanceUID), config()
    )

    assert outcome.duration == 0.25
