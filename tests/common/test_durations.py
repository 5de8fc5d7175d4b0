"""Durations: parsing, canonical formatting, and the pydantic `Duration` type."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from common.durations import Duration, format_duration, parse_duration

DURATION = TypeAdapter(Duration)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", dt.timedelta(seconds=30)),
        ("10m", dt.timedelta(minutes=10)),
        ("1h", dt.timedelta(hours=1)),
        ("7d", dt.timedelta(days=7)),
        ("1h30m", dt.timedelta(hours=1, minutes=30)),
        ("500ms", dt.timedelta(milliseconds=500)),
        ("1d2h3m4s5ms", dt.timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
        ("1.5h", dt.timedelta(minutes=90)),
        ("0.5ms", dt.timedelta(microseconds=500)),
        ("0s", dt.timedelta(0)),
        ("30", dt.timedelta(seconds=30)),
        ("1.25", dt.timedelta(seconds=1.25)),
        ("  45s  ", dt.timedelta(seconds=45)),
    ],
)
def test_parse_duration_accepts_units_compounds_and_bare_seconds(
    text: str, expected: dt.timedelta
) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "30 parsecs",
        "-5s",
        "10M",
        "1w",
        "h",
        "1h 30m",
        "30m1h",
        "1m1m",
        "1e3",
        "inf",
        "nan",
        ".5s",
        "5.s",
        "\uff11\uff10s",  # fullwidth digits
    ],
)
def test_parse_duration_refuses_text_that_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="use a number with s, m, h or d") as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)


def test_parse_duration_refuses_a_duration_too_long_for_timedelta() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration("9999999999d")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (dt.timedelta(0), "0s"),
        (dt.timedelta(seconds=30), "30s"),
        (dt.timedelta(seconds=60), "1m"),
        (dt.timedelta(minutes=90), "1h30m"),
        (dt.timedelta(days=7), "7d"),
        (dt.timedelta(milliseconds=500), "500ms"),
        (dt.timedelta(seconds=1, microseconds=500), "1s0.5ms"),
        (dt.timedelta(microseconds=1), "0.001ms"),
    ],
)
def test_format_duration_is_canonical(value: dt.timedelta, text: str) -> None:
    assert format_duration(value) == text


@given(st.timedeltas(min_value=dt.timedelta(0)))
def test_format_duration_round_trips_through_parse_duration(value: dt.timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


def test_format_duration_refuses_a_negative_duration() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(dt.timedelta(seconds=-1))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10m", dt.timedelta(minutes=10)),
        (90, dt.timedelta(seconds=90)),
        (0.5, dt.timedelta(milliseconds=500)),
        (dt.timedelta(hours=2), dt.timedelta(hours=2)),
    ],
)
def test_duration_type_accepts_text_numbers_and_timedeltas(
    value: object, expected: dt.timedelta
) -> None:
    assert DURATION.validate_python(value) == expected


@pytest.mark.parametrize(
    "value", [True, -1, float("nan"), float("inf"), dt.timedelta(seconds=-1), [30], None]
)
def test_duration_type_refuses_values_that_are_not_durations(value: object) -> None:
    with pytest.raises(ValidationError, match=r"duration|negative"):
        DURATION.validate_python(value)


def test_duration_type_serialises_to_canonical_text_in_json_and_timedelta_in_python() -> None:
    value = dt.timedelta(hours=1, minutes=30)
    assert DURATION.dump_python(value, mode="json") == "1h30m"
    assert DURATION.dump_python(value) == value
