"""SiteConfig: defaults, loading YAML/JSON, readable errors, and the published JSON Schema."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError

from common.config import (
    ConfigError,
    DicomPeer,
    PullSource,
    SiteConfig,
    load_site_config,
    site_config_json_schema,
    validate_site_config,
)
from common.durations import WorkingHours, parse_duration

DESIGN_EXAMPLE = """\
mode: push                      # push | pull
dicom:
  ae_title: CONNECTOR
  port: 11112
  peers: []                     # allowlist [{ae_title, host}]; empty list = accept any peer
pull:
  sources: []                   # [{ae_title, host, port}]
routing:
  field: PatientComments
  unknown_group: unknown
  unsorted_project: Unsorted
upload_policy:
  mode: opt-out                 # opt-out | opt-in
  strings: [NOFW]               # the opt-out (or opt-in) strings
  field: PatientComments
timing:
  working_hours: null           # e.g. "18:00-06:00", in the site's timezone
  acquisition_delay: 30s
  grace_period: 7d
  sleep_time: 60s
  query_time_threshold: 10m
  reap_time_threshold: 1h
hierarchy:
  acquisition_grouping: series_instance_uid   # or series_description
deid:
  profile: none                 # none | basic | a profile document
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_site_config(text)
    return caught.value.problems


def test_every_default_matches_the_design() -> None:
    config = SiteConfig()
    assert config.mode == "push"
    assert config.dicom.ae_title == "CONNECTOR"
    assert config.dicom.port == 11112
    assert config.dicom.peers == []
    assert config.pull.sources == []
    assert config.routing.fields == ["PatientComments"]
    assert config.routing.unknown_group == "unknown"
    assert config.routing.unsorted_project == "Unsorted"
    assert config.upload_policy.mode == "opt-out"
    assert config.upload_policy.strings == ["NOFW"]
    assert config.upload_policy.field == "PatientComments"
    assert config.timing.working_hours is None
    assert config.timing.acquisition_delay == dt.timedelta(seconds=30)
    assert config.timing.grace_period == dt.timedelta(days=7)
    assert config.timing.sleep_time == dt.timedelta(seconds=60)
    assert config.timing.query_time_threshold == dt.timedelta(minutes=10)
    assert config.timing.reap_time_threshold == dt.timedelta(hours=1)
    assert config.hierarchy.acquisition_grouping == "series_instance_uid"
    assert config.deid.profile == "none"


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "{}", "---\n", "null"])
def test_an_empty_document_gives_every_default(text: str) -> None:
    assert load_site_config(text) == SiteConfig()


def test_the_design_example_loads_as_the_defaults() -> None:
    assert load_site_config(DESIGN_EXAMPLE) == SiteConfig()


def test_a_full_pull_config_loads_from_yaml() -> None:
    config = load_site_config(
        """
        mode: pull
        dicom: {ae_title: FW-EDGE, port: 104, peers: [{ae_title: MR1, host: 10.0.0.5}]}
        pull:
          sources:
            - {ae_title: PACS, host: pacs.example.org, port: 4242}
        upload_policy: {mode: opt-in, strings: [UPLOAD, FW-YES], field: StudyComments}
        timing: {working_hours: "18:00-06:00", acquisition_delay: 2m, sleep_time: 30}
        hierarchy: {acquisition_grouping: series_description}
        deid: {profile: {version: 1, dicom: {fields: [{name: PatientName, remove: true}]}}}
        """
    )
    assert config.mode == "pull"
    assert config.dicom.peers == [DicomPeer(ae_title="MR1", host="10.0.0.5")]
    assert config.pull.sources == [PullSource(ae_title="PACS", host="pacs.example.org", port=4242)]
    assert config.upload_policy.strings == ["UPLOAD", "FW-YES"]
    assert config.timing.working_hours == WorkingHours.parse("18:00-06:00")
    assert config.timing.acquisition_delay == dt.timedelta(minutes=2)
    assert config.timing.sleep_time == dt.timedelta(seconds=30)
    assert config.hierarchy.acquisition_grouping == "series_description"
    assert isinstance(config.deid.profile, dict)


def test_json_text_loads_like_yaml() -> None:
    document = {"mode": "push", "timing": {"grace_period": "3d"}, "dicom": {"port": 4242}}
    config = load_site_config(json.dumps(document))
    assert config.timing.grace_period == dt.timedelta(days=3)
    assert config.dicom.port == 4242


def test_json_dump_round_trips_through_model_validate_and_load() -> None:
    config = load_site_config(
        "timing: {working_hours: '18:00-06:00', acquisition_delay: 1h30m}\n"
        "dicom: {peers: [{ae_title: MR1, host: mr1.local}]}\n"
    )
    dumped = config.model_dump(mode="json")
    assert dumped["timing"]["working_hours"] == "18:00-06:00"
    assert dumped["timing"]["acquisition_delay"] == "1h30m"
    assert SiteConfig.model_validate(dumped) == config
    assert load_site_config(json.dumps(dumped)) == config
    assert SiteConfig.model_validate(config.model_dump()) == config


def test_a_config_is_immutable() -> None:
    config = SiteConfig()
    with pytest.raises(ValidationError, match="frozen"):
        config.dicom.port = 4242  # type: ignore[misc]
    assert config.model_copy(update={"mode": "pull"}).mode == "pull"


def test_a_bad_duration_names_the_key_the_value_and_what_is_allowed() -> None:
    assert problems_of("timing:\n  acquisition_delay: 30 parsecs\n") == [
        "timing.acquisition_delay: '30 parsecs' is not a duration; "
        "use a number with s, m, h or d (e.g. 30s, 10m, 7d)"
    ]


def test_every_problem_is_listed_in_one_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_site_config(
            "mode: pul\n"
            "dicom: {port: 70000}\n"
            "timing: {sleep_time: soon, working_hours: '06:00-06:00'}\n"
            "hierarchy: {acquisition_grouping: study}\n"
        )
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.problems == [
        "mode: 'pul' is not allowed; use 'push' or 'pull'",
        "dicom.port: 70000 is too large; use at most 65535",
        "timing.working_hours: '06:00-06:00' starts and ends at the same minute; "
        "use null for always, or a window such as 18:00-06:00",
        "timing.sleep_time: 'soon' is not a duration; "
        "use a number with s, m, h or d (e.g. 30s, 10m, 7d)",
        "hierarchy.acquisition_grouping: 'study' is not allowed; "
        "use 'series_instance_uid', 'series_description' or "
        "'series_number_acquisition_number'",
    ]
    text = str(error)
    assert text.startswith("invalid site config (5 problems):\n")
    assert all(problem in text for problem in error.problems)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "timing: {acquisiton_delay: 30s}",
            "timing.acquisiton_delay: unknown key (did you mean 'acquisition_delay'?); "
            "allowed keys here: working_hours, acquisition_delay, grace_period, sleep_time, "
            "query_time_threshold, reap_time_threshold, upload_failure_threshold, "
            "spool_age_threshold",
        ),
        (
            "routnig: {}",
            "routnig: unknown key (did you mean 'routing'?); allowed keys here: mode, dicom, "
            "pull, routing, upload_policy, timing, metadata, hierarchy, deid, destination, "
            "destination_by_group, upload",
        ),
        (
            "dicom: {peers: [{ae_title: MR1, host: h, port: 104}]}",
            "dicom.peers[0].port: unknown key; allowed keys here: ae_title, host, routing",
        ),
    ],
)
def test_an_unknown_key_is_refused_with_the_allowed_keys(text: str, problem: str) -> None:
    assert problems_of(text) == [problem]


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("dicom: {port: 0}", "dicom.port", "0 is too small; use at least 1"),
        ("dicom: {port: http}", "dicom.port", "'http' is not a whole number"),
        ("dicom: {ae_title: ''}", "dicom.ae_title", "is not a DICOM AE title"),
        ("dicom: {ae_title: '    '}", "dicom.ae_title", "not all spaces"),
        ("dicom: {ae_title: SEVENTEEN_LETTERS}", "dicom.ae_title", "1-16 printable ASCII"),
        ("dicom: {ae_title: 'A\\\\B'}", "dicom.ae_title", "without backslash"),
        ("dicom: {ae_title: 1234}", "dicom.ae_title", "1234 is not text; put it in quotes"),
        ("dicom: {peers: [{ae_title: MR1}]}", "dicom.peers[0].host", "required key is missing"),
        ("dicom: {peers: [{ae_title: MR1, host: 'a b'}]}", "dicom.peers[0].host", "not a host"),
        ("dicom: {peers: MR1}", "dicom.peers", "'MR1' is not a list"),
        ("routing: {field: Patient Comments}", "routing.field", "is not a DICOM keyword"),
        ("routing: {field: '(0010,4000)'}", "routing.field", "is not a DICOM keyword"),
        ("routing: {unknown_group: Unknown}", "routing.unknown_group", "is not a group id"),
        ("routing: {unsorted_project: '..'}", "routing.unsorted_project", "name a directory"),
        ("upload_policy: {mode: maybe}", "upload_policy.mode", "use 'opt-out' or 'opt-in'"),
        ("upload_policy: {strings: ['']}", "upload_policy.strings[0]", "upload-policy string"),
        ("upload_policy: {field: '1abc'}", "upload_policy.field", "is not a DICOM keyword"),
        ("timing: {grace_period: -1}", "timing.grace_period", "must be zero or more"),
        ("timing: {reap_time_threshold: 0s}", "timing.reap_time_threshold", "too short"),
        ("timing: {working_hours: always}", "timing.working_hours", "HH:MM-HH:MM"),
        ("timing: {acquisition_delay: '1:30'}", "timing.acquisition_delay", "not a duration"),
        ("timing: 5", "timing", "5 is not a mapping; use a mapping with the keys working_hours"),
        ("deid: {profile: strict}", "deid.profile", "none, basic, or a profile document"),
        ("deid: {profile: {}}", "deid.profile", "not a de-identification profile"),
    ],
)
def test_a_bad_value_is_refused_naming_key_value_and_rule(
    text: str, key: str, fragment: str
) -> None:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: ")
    assert fragment in problems[0]


def test_opt_in_without_its_own_strings_is_refused() -> None:
    (problem,) = problems_of("upload_policy: {mode: opt-in}")
    assert problem.startswith("upload_policy: mode opt-in needs its own opt-in strings")


def test_opt_in_with_an_empty_string_list_is_refused() -> None:
    (problem,) = problems_of("upload_policy: {mode: opt-in, strings: []}")
    assert "opt-in would never upload anything" in problem


def test_opt_out_with_no_strings_is_allowed() -> None:
    assert load_site_config("upload_policy: {strings: []}").upload_policy.strings == []


def test_pull_mode_without_sources_is_refused() -> None:
    (problem,) = problems_of("mode: pull")
    assert problem.startswith("pull.sources is empty but mode is pull")


def test_ae_title_padding_spaces_are_not_significant() -> None:
    assert load_site_config("dicom: {ae_title: ' MR1 '}").dicom.ae_title == "MR1"


@pytest.mark.parametrize("word", ["no", "NO", "on", "off", "yes", "y", "n"])
def test_yaml_words_like_no_stay_text(word: str) -> None:
    config = load_site_config(f"dicom: {{ae_title: {word}}}\nupload_policy: {{strings: [{word}]}}")
    assert config.dicom.ae_title == word
    assert config.upload_policy.strings == [word]


def test_a_duplicate_yaml_key_is_refused() -> None:
    assert problems_of("mode: push\ndicom: {}\nmode: pull\n") == [
        "key 'mode' appears twice (line 3); keep one"
    ]


def test_a_duplicate_json_key_is_refused() -> None:
    assert problems_of('{"dicom": {"port": 1, "port": 2}}') == [
        "key 'port' appears twice in one object; keep one"
    ]


def test_unreadable_text_names_the_line_and_column() -> None:
    (problem,) = problems_of("dicom:\n  port: [1, 2\n")
    assert problem.startswith("not valid YAML or JSON at line ")


@pytest.mark.parametrize("text", ["[1, 2]", "just text", "42"])
def test_a_document_that_is_not_a_mapping_is_refused(text: str) -> None:
    (problem,) = problems_of(text)
    assert problem.startswith("the site config must be a mapping with the keys mode, dicom")


def test_validate_site_config_raises_config_error_for_a_parsed_document() -> None:
    with pytest.raises(ConfigError, match=r"dicom\.port: 'x' is not a whole number"):
        validate_site_config({"dicom": {"port": "x"}})


def test_model_validate_raises_validation_error_that_converts_to_config_error() -> None:
    with pytest.raises(ValidationError) as caught:
        SiteConfig.model_validate({"timing": {"sleep_time": "later"}})
    problems = ConfigError.from_validation_error(caught.value).problems
    assert problems == [
        "timing.sleep_time: 'later' is not a duration; "
        "use a number with s, m, h or d (e.g. 30s, 10m, 7d)"
    ]


def test_braces_in_a_bad_value_are_reported_verbatim() -> None:
    (problem,) = problems_of("timing: {sleep_time: '{reason}'}")
    assert "'{reason}' is not a duration" in problem


def _objects(schema: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            found.append(schema)
        for value in schema.values():
            found += _objects(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _objects(value)
    return found


def test_json_schema_describes_every_key_and_refuses_unknown_ones() -> None:
    schema = site_config_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert list(schema["properties"]) == [
        "mode",
        "dicom",
        "pull",
        "routing",
        "upload_policy",
        "timing",
        "metadata",
        "hierarchy",
        "deid",
        "destination",
        "destination_by_group",
        "upload",
    ]
    objects = _objects(schema)
    # The document itself and every section and list-item model below it.
    assert len(objects) == 1 + len(schema["$defs"])
    assert all(obj.get("additionalProperties") is False for obj in objects)
    json.dumps(schema)


def test_json_schema_states_duration_defaults_as_config_text() -> None:
    timing = site_config_json_schema()["$defs"]["TimingConfig"]["properties"]
    defaults = SiteConfig().timing
    for key in ("acquisition_delay", "grace_period", "sleep_time"):
        assert parse_duration(timing[key]["default"]) == getattr(defaults, key)
    for key in ("query_time_threshold", "reap_time_threshold"):
        assert parse_duration(timing[key]["default"]) == getattr(defaults, key)


def test_pull_tuning_has_gentle_defaults() -> None:
    config = SiteConfig()
    assert config.pull.lookback == dt.timedelta(days=3)
    assert config.pull.max_concurrent_retrievals == 4
    source = PullSource(ae_title="PACS", host="pacs.example.org", port=104)
    assert (source.retrieve, source.timeout) == ("move", dt.timedelta(seconds=30))


def test_pull_tuning_loads_per_source_retrieve_mode_and_timeout() -> None:
    config = load_site_config(
        """
        mode: pull
        pull:
          lookback: 1d
          max_concurrent_retrievals: 2
          sources:
            - {ae_title: PACS, host: pacs.example.org, port: 104, retrieve: get, timeout: 5s}
        """
    )
    (source,) = config.pull.sources
    assert (source.retrieve, source.timeout) == ("get", dt.timedelta(seconds=5))
    assert (config.pull.lookback, config.pull.max_concurrent_retrievals) == (
        dt.timedelta(days=1),
        2,
    )


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (
            "pull: {sources: [{ae_title: P, host: h, port: 1, retrieve: send}]}",
            "pull.sources[0].retrieve",
            "use 'move' or 'get'",
        ),
        (
            "pull: {sources: [{ae_title: P, host: h, port: 1, timeout: 0s}]}",
            "pull.sources[0].timeout",
            "too short",
        ),
        ("pull: {lookback: 0s}", "pull.lookback", "too short"),
        ("pull: {max_concurrent_retrievals: 0}", "pull.max_concurrent_retrievals", "at least 1"),
        (
            "pull: {sources: [{ae_title: P, host: h, port: 1}, {ae_title: P, host: h, port: 1}]}",
            "pull.sources",
            "P@h:1 is listed twice",
        ),
    ],
)
def test_a_bad_pull_setting_is_refused_naming_key_value_and_rule(
    text: str, key: str, fragment: str
) -> None:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: ")
    assert fragment in problems[0]


def test_json_schema_states_pull_duration_defaults_as_config_text() -> None:
    definitions = site_config_json_schema()["$defs"]
    assert definitions["PullConfig"]["properties"]["lookback"]["default"] == "3d"
    assert definitions["PullSource"]["properties"]["timeout"]["default"] == "30s"
