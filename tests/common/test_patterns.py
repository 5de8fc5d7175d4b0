"""Metadata extraction patterns and label templates: what is refused at save, what a match gives."""

from __future__ import annotations

import pytest

from common.config import ConfigError, dictionary_problems, validate_site_config
from common.patterns import (
    MATCH_TIMEOUT_SECONDS,
    apply_patterns,
    check_pattern,
    render_template,
    template_keywords,
    vr_problem,
)

VRS = {"PatientID": "LO", "StudyDate": "DA", "StudyInstanceUID": "UI", "PatientAge": "AS"}


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("(?P<subject>\\w+", "is not a regular expression"),
        ("^\\w+_\\w+$", "has no named group"),
        ("^(?P<subjet>\\w+)$", "did you mean 'subject'?"),
        ("^(?P<Session>\\w+)$", "did you mean 'session'?"),
        ("(?P<subject>x)" * 40, "longer than 512 characters"),
    ],
)
def test_a_pattern_that_cannot_work_is_refused_with_the_reason(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_pattern(pattern)


@pytest.mark.parametrize(
    "pattern", ["^(?P<subject>\\w+)_(?P<session>\\w+)$", "(?P<site>[A-Z]+)-(?P<subject>\\d+)"]
)
def test_a_sound_pattern_is_accepted(pattern: str) -> None:
    assert check_pattern(pattern) == pattern


@pytest.mark.parametrize(
    ("pattern", "vr", "impossible"),
    [
        ("^(?P<subject>[A-Z]+)_V\\d$", "DA", True),  # '_' and 'V' never occur in a date
        ("^(?P<subject>\\d{4})", "DA", False),
        ("sub-(?P<subject>\\d+)", "UI", True),
        ("(?P<subject>\\d+)\\.(?P<session>\\d+)", "UI", False),
        ("(a|1)(?P<subject>x)?", "UI", False),  # a choice one branch of which fits
        ("(?P<subject>[a-z]+)", "DA", True),
        ("(?P<subject>[^a-z]+)", "DA", False),
        ("(?P<subject>P\\d+)", "LO", False),  # free text holds anything
        ("(?P<age>\\d+)Y", "AS", False),
    ],
)
def test_a_pattern_that_can_never_match_its_attributes_vr_is_found(
    pattern: str, vr: str, impossible: bool
) -> None:
    assert (vr_problem(pattern, vr) is not None) is impossible


def test_saving_a_config_names_each_bad_pattern_and_keyword() -> None:
    with pytest.raises(ConfigError) as refused:
        validate_site_config(
            {"metadata": {"patterns": [{"field": "PatientID", "regex": "(?P<subject>"}]}}
        )
    assert refused.value.problems[0].startswith("metadata.patterns[0].regex: ")

    config = validate_site_config(
        {
            "routing": {"fields": ["PatientComments", "StudyComent"]},
            "metadata": {
                "patterns": [
                    {"field": "PatientID", "regex": "(?P<subject>\\w+)"},
                    {"field": "StudyDate", "regex": "^(?P<session>[a-z]+)$"},
                ]
            },
        }
    )
    problems = dictionary_problems(config, VRS.get)
    assert any(p.startswith("routing.fields[0]: 'PatientComments'") for p in problems)
    assert any(p.startswith("routing.fields[1]: 'StudyComent'") for p in problems)
    assert any(p.startswith("metadata.patterns[1].regex: ") for p in problems)
    assert not any("patterns[0]" in p for p in problems)


def test_patterns_fill_labels_in_order_and_keep_other_groups_as_metadata() -> None:
    outcome = apply_patterns(
        [
            ("PatientID", "^(?P<subject>[A-Z]+\\d+)_(?P<session>V\\d)_(?P<site>\\w+)$"),
            ("StudyDescription", "^(?P<session>.+)$"),
            ("StudyDescription", "^(?P<acquisition>.+)$"),
        ],
        {"PatientID": "P042_V2_oxford", "StudyDescription": "Brain"},
    )
    assert outcome.labels == {"subject": "P042", "session": "V2", "acquisition": "Brain"}
    assert outcome.metadata == {"site": "oxford"}
    assert outcome.problems == ()


def test_a_pattern_over_an_absent_attribute_or_without_match_gives_nothing() -> None:
    outcome = apply_patterns(
        [("PatientComments", "(?P<subject>.+)"), ("PatientID", "^X(?P<subject>\\d+)$")],
        {"PatientID": "P042"},
    )
    assert outcome.labels == {}
    assert outcome.metadata == {}


def test_a_catastrophic_pattern_is_cut_off_and_reported_without_the_value() -> None:
    outcome = apply_patterns(
        [("PatientID", "^(?P<subject>(a|aa)+)$"), ("PatientID", "^(?P<session>a{3})")],
        {"PatientID": "a" * 60 + "!"},
    )
    assert outcome.labels == {"session": "aaa"}
    [problem] = outcome.problems
    assert "metadata.patterns[0]" in problem
    assert "time limit" in problem
    assert "aaaa" not in problem
    assert MATCH_TIMEOUT_SECONDS <= 0.1


@pytest.mark.parametrize(
    ("template", "values", "label"),
    [
        (
            "{SeriesNumber} - {SeriesDescription}",
            {"SeriesNumber": "3", "SeriesDescription": "T1"},
            "3 - T1",
        ),
        ("{SeriesNumber} - {SeriesDescription}", {"SeriesNumber": "3"}, None),
        ("{SeriesDescription}", {"SeriesDescription": "T1 "}, "T1"),
    ],
)
def test_a_template_renders_only_when_every_attribute_it_names_has_a_value(
    template: str, values: dict[str, str], label: str | None
) -> None:
    assert render_template(template, values) == label


@pytest.mark.parametrize("template", ["{SeriesNumber!r}", "{SeriesNumber:>4}", "{a[0]}", "{"])
def test_a_template_with_anything_but_plain_keywords_is_refused(template: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each of these fails for its own reason
        template_keywords(template)
    with pytest.raises(ConfigError, match=r"hierarchy\.acquisition_label"):
        validate_site_config({"hierarchy": {"acquisition_label": template}})
