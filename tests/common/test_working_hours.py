"""WorkingHours: parsing, overnight windows, and the next opening across DST changes."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from common.durations import WorkingHours, WorkingHoursField

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC


def at(text: str, zone: dt.tzinfo = NEW_YORK, fold: int = 0) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone, fold=fold)


def test_parse_reads_start_and_end_and_str_gives_them_back() -> None:
    hours = WorkingHours.parse("18:00-06:00")
    assert (hours.start, hours.end) == (dt.time(18), dt.time(6))
    assert hours.overnight
    assert str(hours) == "18:00-06:00"
    assert str(WorkingHours.parse(" 08:30 - 17:45 ")) == "08:30-17:45"


@pytest.mark.parametrize(
    "text", ["", "18:00", "18-06", "6:00-18:00", "24:00-06:00", "18:60-06:00", "18:00/06:00", "x"]
)
def test_parse_refuses_text_that_is_not_a_window(text: str) -> None:
    with pytest.raises(ValueError, match=r"HH:MM-HH:MM"):
        WorkingHours.parse(text)


def test_parse_refuses_equal_start_and_end_and_says_to_use_null_for_always() -> None:
    with pytest.raises(ValueError, match="use null for always"):
        WorkingHours.parse("06:00-06:00")
    with pytest.raises(ValueError, match="use null for always"):
        WorkingHours(dt.time(6), dt.time(6))


def test_constructor_refuses_times_with_seconds_or_a_timezone() -> None:
    with pytest.raises(ValueError, match="whole minute"):
        WorkingHours(dt.time(6, 0, 30), dt.time(7))
    with pytest.raises(ValueError, match="without a timezone"):
        WorkingHours(dt.time(6, tzinfo=UTC), dt.time(7))


@pytest.mark.parametrize(
    ("moment", "inside"),
    [
        (dt.time(8, 59), False),
        (dt.time(9, 0), True),
        (dt.time(12, 0), True),
        (dt.time(16, 59, 59), True),
        (dt.time(17, 0), False),
        (dt.time(23, 0), False),
    ],
)
def test_contains_includes_start_and_excludes_end_for_a_daytime_window(
    moment: dt.time, inside: bool
) -> None:
    assert WorkingHours.parse("09:00-17:00").contains(moment) is inside


@pytest.mark.parametrize(
    ("moment", "inside"),
    [
        (dt.time(17, 59), False),
        (dt.time(18, 0), True),
        (dt.time(23, 59), True),
        (dt.time(0, 0), True),
        (dt.time(5, 59), True),
        (dt.time(6, 0), False),
        (dt.time(12, 0), False),
    ],
)
def test_contains_spans_midnight_for_an_overnight_window(moment: dt.time, inside: bool) -> None:
    assert WorkingHours.parse("18:00-06:00").contains(moment) is inside


def test_next_open_returns_now_while_the_window_is_open() -> None:
    now = at("2024-06-01T23:15:00")
    assert WorkingHours.parse("18:00-06:00").next_open(now) == now


def test_next_open_returns_todays_start_before_the_window() -> None:
    opening = WorkingHours.parse("18:00-06:00").next_open(at("2024-06-01T12:00:00"))
    assert opening == at("2024-06-01T18:00:00")


def test_next_open_returns_tomorrows_start_after_a_daytime_window() -> None:
    opening = WorkingHours.parse("09:00-17:00").next_open(at("2024-06-01T17:00:00"))
    assert opening == at("2024-06-02T09:00:00")


def test_next_open_reads_the_window_in_the_site_timezone_given() -> None:
    now_utc = dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC)  # 14:00 in Berlin
    opening = WorkingHours.parse("18:00-06:00").next_open(now_utc, BERLIN)
    assert opening == dt.datetime(2024, 6, 1, 18, 0, tzinfo=BERLIN)
    assert opening.tzinfo is BERLIN


def test_next_open_opens_at_the_jump_when_spring_forward_skips_the_start() -> None:
    # 2024-03-10: New York clocks jump from 02:00 EST to 03:00 EDT (07:00 UTC).
    opening = WorkingHours.parse("02:30-06:00").next_open(at("2024-03-10T01:00:00"))
    assert opening.astimezone(UTC) == dt.datetime(2024, 3, 10, 7, 0, tzinfo=UTC)


def test_next_open_uses_the_second_occurrence_of_a_start_repeated_in_autumn() -> None:
    # 2024-11-03: New York clocks fall back from 02:00 EDT to 01:00 EST; 01:30 happens twice.
    hours = WorkingHours.parse("01:30-01:45")
    before_both = hours.next_open(at("2024-11-03T01:00:00", fold=0))
    between = hours.next_open(at("2024-11-03T01:10:00", fold=1))
    assert before_both.astimezone(UTC) == dt.datetime(2024, 11, 3, 5, 30, tzinfo=UTC)
    assert between.astimezone(UTC) == dt.datetime(2024, 11, 3, 6, 30, tzinfo=UTC)


def test_next_open_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        WorkingHours.parse("18:00-06:00").next_open(dt.datetime(2024, 6, 1, 12))


minutes_of_day = st.integers(min_value=0, max_value=24 * 60 - 1)


@settings(max_examples=150, deadline=None)
@given(
    start=minutes_of_day,
    end=minutes_of_day,
    now=st.datetimes(
        min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2040, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from([NEW_YORK, BERLIN, ZoneInfo("Australia/Lord_Howe"), UTC]),
)
def test_next_open_is_the_first_open_minute_at_or_after_now(
    start: int, end: int, now: dt.datetime, zone: ZoneInfo
) -> None:
    if start == end:
        return
    hours = WorkingHours(dt.time(*divmod(start, 60)), dt.time(*divmod(end, 60)))
    opening = hours.next_open(now, zone)
    assert opening >= now
    assert hours.contains(opening.astimezone(zone).time())
    probe = now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    while probe < opening:
        assert not hours.contains(probe.astimezone(zone).time()), probe
        probe += dt.timedelta(minutes=1)


def test_working_hours_field_reads_text_and_serialises_back_to_it() -> None:
    adapter = TypeAdapter(WorkingHoursField)
    hours = adapter.validate_python("18:00-06:00")
    assert hours == WorkingHours(dt.time(18), dt.time(6))
    assert adapter.validate_python(hours) is hours
    assert adapter.dump_python(hours, mode="json") == "18:00-06:00"
    assert adapter.dump_python(hours) == "18:00-06:00"
    with pytest.raises(ValidationError, match="not a working-hours window"):
        adapter.validate_python(1800)
