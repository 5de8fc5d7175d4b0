"""Header and routing decision -> hierarchy target, with the documented fallbacks."""

from __future__ import annotations

import pytest

from common.config import HierarchyConfig
from common.hierarchy import HierarchyTarget, SeriesHeader, map_to_hierarchy
from common.routing import RoutingReason, parse_routing

HEADER = SeriesHeader(
    patient_id="P-0042",
    study_instance_uid="1.2.826.0.1.3680043.10.1",
    study_description="MR Brain",
    series_instance_uid="1.2.826.0.1.3680043.10.1.7",
    series_description="T1 MPRAGE",
    series_number="7",
    fields={"PatientComments": "fw://neuro/p"},
)
BY_UID = HierarchyConfig()
BY_DESCRIPTION = HierarchyConfig(acquisition_grouping="series_description")


def test_a_full_routing_string_sets_every_label_it_names() -> None:
    target = map_to_hierarchy(HEADER, parse_routing("fw://Neuro/p/sub-01/ses-1"), BY_UID)
    assert target == HierarchyTarget(
        group="neuro",
        project="p",
        subject="sub-01",
        session="ses-1",
        acquisition="T1 MPRAGE",
        acquisition_key="1.2.826.0.1.3680043.10.1.7",
        routing_reason=RoutingReason.routed,
        routing_string="fw://Neuro/p/sub-01/ses-1",
    )


def test_subject_and_session_default_to_patient_id_and_study_description() -> None:
    target = map_to_hierarchy(HEADER, parse_routing("fw://neuro/p"), BY_UID)
    assert (target.subject, target.session) == ("P-0042", "MR Brain")


def test_no_routing_string_leaves_group_and_project_to_the_store() -> None:
    target = map_to_hierarchy(HEADER, parse_routing("nothing here"), BY_UID)
    assert (target.group, target.project) == (None, None)
    assert target.routing_reason is RoutingReason.no_routing_string
    assert target.routing_string is None
    assert (target.subject, target.session) == ("P-0042", "MR Brain")


def test_an_invalid_routing_string_is_not_used_but_is_kept_for_support() -> None:
    target = map_to_hierarchy(HEADER, parse_routing("fw://neuro/../x"), BY_UID)
    assert (target.group, target.project) == (None, None)
    assert target.routing_reason is RoutingReason.invalid_label
    assert target.routing_string == "fw://neuro/../x"


def test_session_falls_back_to_study_instance_uid_without_a_description() -> None:
    header = SeriesHeader(study_instance_uid="1.2.3", series_instance_uid="1.2.3.4")
    target = map_to_hierarchy(header, parse_routing(None), BY_UID)
    assert target.session == "1.2.3"


@pytest.mark.parametrize(
    ("description", "number", "expected"),
    [
        ("T1 MPRAGE", "7", "T1 MPRAGE"),
        (None, "7", "Series 7"),
        ("", "7", "Series 7"),
        ("   ", "7", "Series 7"),
        (None, None, "1.2.3.4"),
        (None, " ", "1.2.3.4"),
    ],
)
def test_acquisition_label_falls_back_to_series_number_then_series_uid(
    description: str | None, number: str | None, expected: str
) -> None:
    header = SeriesHeader(
        series_instance_uid="1.2.3.4", series_description=description, series_number=number
    )
    assert map_to_hierarchy(header, parse_routing(None), BY_UID).acquisition == expected


def test_acquisitions_are_grouped_by_series_uid_by_default() -> None:
    target = map_to_hierarchy(HEADER, parse_routing(None), BY_UID)
    assert target.acquisition_key == HEADER.series_instance_uid


def test_acquisitions_are_grouped_by_description_when_configured() -> None:
    target = map_to_hierarchy(HEADER, parse_routing(None), BY_DESCRIPTION)
    assert target.acquisition_key == "T1 MPRAGE"


def test_grouping_by_description_falls_back_to_series_uid_without_one() -> None:
    header = SeriesHeader(series_instance_uid="1.2.3.4", series_number="2")
    target = map_to_hierarchy(header, parse_routing(None), BY_DESCRIPTION)
    assert target.acquisition_key == "1.2.3.4"


@pytest.mark.parametrize(
    "unsafe",
    ["..", ".", "T1/T2", "T1\\T2", "T1\x00", "T1\nT2", "T1\u200b", "x" * 129, ""],
)
def test_an_unsafe_header_value_is_skipped_for_the_next_source_not_rewritten(
    unsafe: str,
) -> None:
    header = SeriesHeader(
        patient_id=unsafe,
        study_description=unsafe,
        study_instance_uid="1.2.3",
        series_description=unsafe,
        series_number="5",
        series_instance_uid="1.2.3.4",
    )
    target = map_to_hierarchy(header, parse_routing(None), BY_DESCRIPTION)
    assert target.subject == "unknown"
    assert target.session == "1.2.3"
    assert target.acquisition == "Series 5"
    assert target.acquisition_key == "1.2.3.4"


def test_a_128_character_header_value_is_still_a_label() -> None:
    header = SeriesHeader(series_description="d" * 128, series_instance_uid="1.2")
    assert map_to_hierarchy(header, parse_routing(None), BY_UID).acquisition == "d" * 128


def test_header_padding_spaces_are_not_part_of_a_label() -> None:
    header = SeriesHeader(patient_id=" P1 ", series_description="T2 ", series_instance_uid="1.2")
    target = map_to_hierarchy(header, parse_routing(None), BY_UID)
    assert (target.subject, target.acquisition) == ("P1", "T2")


def test_an_empty_header_maps_every_label_to_unknown() -> None:
    target = map_to_hierarchy(SeriesHeader(), parse_routing(None), BY_UID)
    assert (target.subject, target.session, target.acquisition, target.acquisition_key) == (
        "unknown",
        "unknown",
        "unknown",
        "unknown",
    )
