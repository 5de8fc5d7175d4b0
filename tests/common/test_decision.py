"""The series decision (`common.decision`): per-scanner routing fields chosen by the calling AE
title, and what the metadata patterns keep as session metadata."""

from __future__ import annotations

import pytest

from common.config import ConfigError, validate_site_config
from common.decision import plan_series
from common.hierarchy import SeriesHeader
from common.routing import RoutingReason

CONFIG = validate_site_config(
    {
        "dicom": {
            "peers": [
                # The CT writes the routing string into StudyComments...
                {"ae_title": "CT1", "host": "10.0.0.5", "routing": {"fields": ["StudyComments"]}},
                # ...the MR into PatientComments (the site's field): no block of its own.
                {"ae_title": "MR1", "host": "10.0.0.6"},
                # An older spelling, and two fields in order.
                {"ae_title": "PET", "host": "10.0.0.7", "routing": {"field": "ImageComments"}},
                {
                    "ae_title": "XA",
                    "host": "10.0.0.8",
                    "routing": {"fields": ["RequestedProcedureDescription", "StudyComments"]},
                },
                {"ae_title": "CT1", "host": "10.0.0.9", "routing": {"fields": ["StudyComments"]}},
            ]
        },
        "routing": {"fields": ["PatientComments"]},
    }
)
EVERYWHERE = {
    "PatientComments": "fw://neuro/from-patient-comments",
    "StudyComments": "fw://neuro/from-study-comments",
    "ImageComments": "fw://neuro/from-image-comments",
}


@pytest.mark.parametrize(
    ("calling_ae", "values", "project", "reason", "routing_from"),
    [
        ("CT1", EVERYWHERE, "from-study-comments", "routed", "dicom.peers[0].routing"),
        ("CT1 ", EVERYWHERE, "from-study-comments", "routed", "dicom.peers[0].routing"),
        ("MR1", EVERYWHERE, "from-patient-comments", "routed", "routing"),
        ("PET", EVERYWHERE, "from-image-comments", "routed", "dicom.peers[2].routing"),
        ("XA", EVERYWHERE, "from-study-comments", "routed", "dicom.peers[3].routing"),
        (
            "XA",
            {**EVERYWHERE, "RequestedProcedureDescription": "fw://neuro/first-field"},
            "first-field",
            "routed",
            "dicom.peers[3].routing",
        ),
        # Not listed, or no calling AE title known: the site's fields.
        ("OTHER", EVERYWHERE, "from-patient-comments", "routed", "routing"),
        (None, EVERYWHERE, "from-patient-comments", "routed", "routing"),
        # AE titles are compared exactly (after DICOM padding): ct1 is not CT1.
        ("ct1", EVERYWHERE, "from-patient-comments", "routed", "routing"),
        # The scanner's fields replace the site's: nothing falls back to PatientComments.
        (
            "CT1",
            {"PatientComments": "fw://neuro/from-patient-comments"},
            None,
            "no_routing_string",
            "dicom.peers[0].routing",
        ),
        (
            "CT1",
            {"StudyComments": "fw://neuro/..", **{"PatientComments": "fw://neuro/x"}},
            None,
            "invalid_label",
            "dicom.peers[0].routing",
        ),
    ],
)
def test_a_scanners_routing_block_chooses_where_the_routing_string_is_read(
    calling_ae: str | None,
    values: dict[str, str],
    project: str | None,
    reason: str,
    routing_from: str,
) -> None:
    header = SeriesHeader(
        patient_id="P1", study_instance_uid="1.2.3", fields=values, calling_ae_title=calling_ae
    )

    plan = plan_series(header, CONFIG)

    assert plan.target is not None
    assert plan.target.project == project
    assert plan.target.routing_reason is RoutingReason(reason)
    assert plan.routing_from == routing_from


def test_the_upload_policy_stays_the_sites_for_every_scanner() -> None:
    config = validate_site_config(
        {
            "dicom": {
                "peers": [
                    {"ae_title": "CT1", "host": "h", "routing": {"fields": ["StudyComments"]}}
                ]
            },
            "upload_policy": {"field": "PatientComments", "strings": ["NOFW"]},
        }
    )
    header = SeriesHeader(
        fields={"PatientComments": "NOFW", "StudyComments": "fw://neuro/a"},
        calling_ae_title="CT1",
    )

    plan = plan_series(header, config)

    assert not plan.policy.upload
    assert plan.target is None


@pytest.mark.parametrize(
    ("peer_routing", "key", "why"),
    [
        ({"fields": ["Study Comments"]}, "dicom.peers[1].routing.fields[0]", "not a DICOM keyword"),
        ({"fields": []}, "dicom.peers[1].routing.fields", "not valid"),
        ({"fields": ["StudyComments"] * 2}, "dicom.peers[1].routing.fields", "lists a keyword"),
        (
            {"field": "StudyComments", "fields": ["PatientComments"]},
            "dicom.peers[1].routing",
            "field and fields are both set",
        ),
        (
            {"unknown_group": "triage"},
            "dicom.peers[1].routing.unknown_group",
            "set for the whole site only",
        ),
        (
            {"unsorted_project": "Inbox"},
            "dicom.peers[1].routing.unsorted_project",
            "set for the whole site only",
        ),
        ({"feilds": ["StudyComments"]}, "dicom.peers[1].routing.feilds", "did you mean 'fields'"),
        ("StudyComments", "dicom.peers[1].routing", "not a mapping"),
    ],
)
def test_a_bad_scanner_routing_block_is_refused_naming_its_key(
    peer_routing: object, key: str, why: str
) -> None:
    document = {
        "dicom": {
            "peers": [
                {"ae_title": "MR1", "host": "h1"},
                {"ae_title": "CT1", "host": "h2", "routing": peer_routing},
            ]
        }
    }
    with pytest.raises(ConfigError) as refused:
        validate_site_config(document)

    [problem] = refused.value.problems
    assert problem.startswith(f"{key}: "), problem
    assert why in problem


def test_entries_of_one_ae_title_must_agree_on_routing() -> None:
    document = {
        "dicom": {
            "peers": [
                {"ae_title": "CT1", "host": "h1", "routing": {"fields": ["StudyComments"]}},
                {"ae_title": "CT1", "host": "h2"},
            ]
        }
    }
    with pytest.raises(ConfigError) as refused:
        validate_site_config(document)

    [problem] = refused.value.problems
    assert problem.startswith("dicom.peers[1].routing: differs from dicom.peers[0].routing")


@pytest.mark.parametrize(
    ("regex", "value", "metadata", "note"),
    [
        (
            "^(?P<protocol>\\w+) (?P<visit>V\\d)$",
            "BRAIN V2",
            {"protocol": "BRAIN", "visit": "V2"},
            None,
        ),
        # Labels and metadata from one pattern; DICOM padding is not part of a value.
        ("^(?P<session>V\\d) (?P<arm>.+)$", "V1 placebo ", {"arm": "placebo"}, None),
        # An empty group yields nothing.
        ("^(?P<protocol>\\w*)-(?P<arm>\\w+)$", "-placebo", {"arm": "placebo"}, None),
        # A value the store cannot keep is left out with a note that never quotes it.
        ("^(?P<protocol>.+)$", "x" * 1025, {}, "metadata pattern protocol is longer than 1024"),
        ("^(?P<protocol>.+)$", "   ", {}, "metadata pattern protocol is blank"),
        ("^(?P<protocol>.+)$", "a\u200bb", {}, "metadata pattern protocol holds a control"),
    ],
)
def test_patterns_keep_their_other_groups_as_session_metadata(
    regex: str, value: str, metadata: dict[str, str], note: str | None
) -> None:
    config = validate_site_config(
        {"metadata": {"patterns": [{"field": "StudyComments", "regex": regex}]}}
    )
    header = SeriesHeader(study_instance_uid="1.2.3", fields={"StudyComments": value})

    plan = plan_series(header, config)

    assert plan.target is not None
    assert dict(plan.target.metadata) == metadata
    notes = " ".join(plan.target.label_notes)
    if note is None:
        assert not [n for n in plan.target.label_notes if "metadata pattern" in n]
    else:
        assert note in notes
        assert not value.strip() or value.strip() not in notes


def test_metadata_comes_from_the_deidentified_header_when_one_is_given() -> None:
    config = validate_site_config(
        {"metadata": {"patterns": [{"field": "StudyComments", "regex": "^(?P<protocol>.+)$"}]}}
    )
    original = SeriesHeader(fields={"StudyComments": "BRAIN for DOE^JANE"})
    deidentified = SeriesHeader(fields={"StudyComments": "BRAIN"})

    assert plan_series(original, config, deidentified).target.metadata == {"protocol": "BRAIN"}  # type: ignore[union-attr]
    removed = SeriesHeader(fields={})
    assert plan_series(original, config, removed).target.metadata == {}  # type: ignore[union-attr]
