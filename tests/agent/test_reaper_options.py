"""The routing and hierarchy options of the guide: field order, patterns, precedence, templates,
grouping strategies, and labels refused with a reason rather than mangled."""

from __future__ import annotations

from typing import Any

import pytest

from agent.reaper import decide
from common.config import HierarchyConfig, validate_site_config
from common.decision import find_routing
from common.hierarchy import SeriesHeader, map_to_hierarchy
from common.patterns import apply_patterns
from common.routing import RoutingReason, parse_routing


def header(**fields: str) -> SeriesHeader:
    named = {
        "PatientID": "patient_id",
        "StudyInstanceUID": "study_instance_uid",
        "StudyDescription": "study_description",
        "SeriesInstanceUID": "series_instance_uid",
        "SeriesDescription": "series_description",
        "SeriesNumber": "series_number",
    }
    base = {
        "PatientID": "P042_V2",
        "StudyInstanceUID": "1.2.3",
        "StudyDescription": "MR Brain",
        "SeriesInstanceUID": "1.2.3.4",
        "SeriesDescription": "T1 MPRAGE",
        "SeriesNumber": "7",
        **fields,
    }
    return SeriesHeader(
        **{named[k]: v for k, v in base.items() if k in named},
        fields={k: v for k, v in base.items() if k not in named},
    )


@pytest.mark.parametrize(
    ("fields", "values", "expected"),
    [
        # The first field holding a routing string wins.
        (["StudyComments", "PatientComments"], {"PatientComments": "fw://a/p"}, "fw://a/p"),
        (
            ["StudyComments", "PatientComments"],
            {"StudyComments": "see fw://b/q", "PatientComments": "fw://a/p"},
            "fw://b/q",
        ),
        # An invalid routing string in an earlier field decides (it is what was typed).
        (
            ["StudyComments", "PatientComments"],
            {"StudyComments": "fw://b/../x", "PatientComments": "fw://a/p"},
            "fw://b/../x",
        ),
        (["StudyComments"], {"PatientComments": "fw://a/p"}, None),
    ],
)
def test_routing_fields_are_searched_in_order(
    fields: list[str], values: dict[str, str], expected: str | None
) -> None:
    assert find_routing(header(**values), fields).raw == expected


def test_field_is_accepted_as_a_one_element_fields_and_never_written_back() -> None:
    config = validate_site_config({"routing": {"field": "StudyComments"}})
    assert config.routing.fields == ["StudyComments"]
    assert "field" not in config.model_dump()["routing"]
    assert validate_site_config(config.model_dump()) == config


def test_field_and_fields_that_disagree_are_refused() -> None:
    with pytest.raises(ValueError, match="set only fields"):
        validate_site_config({"routing": {"field": "A", "fields": ["B"]}})


SUBJECT_SESSION = {"field": "PatientID", "regex": "^(?P<subject>P\\d+)_(?P<session>V\\d)$"}


@pytest.mark.parametrize(
    ("comments", "patterns", "subject", "session", "reason"),
    [
        # routing string > pattern > default tag
        ("fw://neuro/p/sub-9/ses-9", [SUBJECT_SESSION], "sub-9", "ses-9", "routed"),
        ("fw://neuro/p/sub-9", [SUBJECT_SESSION], "sub-9", "V2", "routed"),
        ("fw://neuro/p", [SUBJECT_SESSION], "P042", "V2", "routed"),
        (None, [SUBJECT_SESSION], "P042", "V2", "no_routing_string"),
        (None, [], "P042_V2", "MR Brain", "no_routing_string"),
    ],
)
def test_labels_take_the_routing_string_then_the_patterns_then_the_header(
    comments: str | None,
    patterns: list[dict[str, str]],
    subject: str,
    session: str,
    reason: str,
) -> None:
    config = validate_site_config({"metadata": {"patterns": patterns}})
    values = {"PatientComments": comments} if comments else {}
    decision = decide(header(**values), config)
    assert decision.target is not None
    assert (decision.target.subject, decision.target.session) == (subject, session)
    assert decision.target.routing_reason == reason


def test_a_pattern_can_route_a_series_without_a_routing_string_and_keeps_extra_metadata() -> None:
    config = validate_site_config(
        {
            "metadata": {
                "patterns": [
                    {
                        "field": "StudyDescription",
                        "regex": "^(?P<group>\\w+)/(?P<project>[\\w-]+) (?P<scanner>\\w+)$",
                    }
                ]
            }
        }
    )
    decision = decide(header(StudyDescription="Neuro/study-a prisma"), config)
    assert decision.target is not None
    assert (decision.target.group, decision.target.project) == ("neuro", "study-a")
    assert decision.target.routing_reason is RoutingReason.routed
    assert decision.target.metadata == {"scanner": "prisma"}


def test_an_invalid_routing_string_is_not_overridden_by_a_pattern() -> None:
    config = validate_site_config(
        {
            "metadata": {
                "patterns": [{"field": "StudyDescription", "regex": "(?P<group>a)(?P<project>b)"}]
            }
        }
    )
    decision = decide(header(PatientComments="fw://bad group/p", StudyDescription="ab"), config)
    assert decision.target is not None
    assert decision.target.group is None
    assert decision.target.routing_reason is RoutingReason.invalid_label


@pytest.mark.parametrize(
    ("hierarchy", "values", "subject", "session"),
    [
        ({"subject_field": "PatientName"}, {"PatientName": "SYNTH^ONE"}, "SYNTH^ONE", "MR Brain"),
        ({"session_field": "AccessionNumber"}, {"AccessionNumber": "ACC9"}, "P042_V2", "ACC9"),
        # An empty session field falls back to the StudyInstanceUID.
        ({"session_field": "AccessionNumber"}, {}, "P042_V2", "1.2.3"),
    ],
)
def test_subject_and_session_fields_are_configurable(
    hierarchy: dict[str, str], values: dict[str, str], subject: str, session: str
) -> None:
    target = map_to_hierarchy(
        header(**values), parse_routing(None), HierarchyConfig.model_validate(hierarchy)
    )
    assert (target.subject, target.session) == (subject, session)


@pytest.mark.parametrize(
    ("template", "values", "label"),
    [
        ("{SeriesNumber} - {SeriesDescription}", {}, "7 - T1 MPRAGE"),
        (
            "{SeriesDescription} ({ProtocolName})",
            {"ProtocolName": "t1_mprage"},
            "T1 MPRAGE (t1_mprage)",
        ),
        # A missing attribute: the next source, not "T1 MPRAGE ()".
        ("{SeriesDescription} ({ProtocolName})", {}, "Series 7"),
    ],
)
def test_acquisition_labels_follow_the_template(
    template: str, values: dict[str, str], label: str
) -> None:
    target = map_to_hierarchy(
        header(**values),
        parse_routing(None),
        HierarchyConfig(acquisition_label=template),
    )
    assert target.acquisition == label


@pytest.mark.parametrize(
    ("grouping", "values", "key"),
    [
        ("series_instance_uid", {}, "1.2.3.4"),
        ("series_description", {}, "T1 MPRAGE"),
        ("series_number_acquisition_number", {"AcquisitionNumber": "2"}, "7-2"),
        ("series_number_acquisition_number", {}, "7"),
        ("series_number_acquisition_number", {"SeriesNumber": " "}, "1.2.3.4"),
    ],
)
def test_acquisition_grouping_strategies(grouping: Any, values: dict[str, str], key: str) -> None:
    target = map_to_hierarchy(
        header(**values), parse_routing(None), HierarchyConfig(acquisition_grouping=grouping)
    )
    assert target.acquisition_key == key


def test_a_label_the_store_would_refuse_is_passed_over_with_a_reason_never_mangled() -> None:
    long_description = "d" * 129
    target = map_to_hierarchy(
        header(SeriesDescription=long_description, PatientID="a/b"),
        parse_routing(None),
        HierarchyConfig(),
    )
    assert target.acquisition == "Series 7"
    assert target.subject == "unknown"
    assert any(
        note.startswith("hierarchy.acquisition_label is longer than 128 characters")
        for note in target.label_notes
    )
    assert any(
        "hierarchy.subject_field (PatientID) contains a path separator" in note
        for note in target.label_notes
    )
    assert all(long_description not in note and "a/b" not in note for note in target.label_notes)


def test_a_cut_off_pattern_is_noted_on_the_target() -> None:
    found = apply_patterns([("PatientID", "^(?P<subject>(a|aa)+)$")], {"PatientID": "a" * 60 + "!"})
    target = map_to_hierarchy(header(), parse_routing(None), HierarchyConfig(), found)
    assert target.subject == "P042_V2"
    assert any("time limit" in note for note in target.label_notes)
