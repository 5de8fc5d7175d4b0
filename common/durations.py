"""Durations ("30s", "1h30m") and the working-hours window ("18:00-06:00") of a site config.

Also provides the pydantic annotated types `Duration` and `WorkingHoursField` that the config
model uses. Pure stdlib + pydantic: must not import any web, database or DICOM library.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "Duration",
    "WorkingHours",
    "WorkingHoursField",
    "format_duration",
    "parse_duration",
]

_MICROSECONDS_PER_UNIT: dict[str, int] = {
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
}
_UNIT_ORDER = tuple(_MICROSECONDS_PER_UNIT)
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_BARE_SECONDS = re.compile(rf"{_NUMBER}")
_PART = re.compile(rf"({_NUMBER})(ms|d|h|m|s)")
_COMPOUND = re.compile(rf"(?:{_NUMBER}(?:ms|d|h|m|s))+")
_DURATION_HELP = "use a number with s, m, h or d (e.g. 30s, 10m, 7d)"
DURATION_PATTERN = rf"^\s*(?:{_NUMBER}|(?:{_NUMBER}(?:ms|d|h|m|s))+)\s*$"


def parse_duration(text: str) -> dt.timedelta:
    """Parse a duration such as ``"30s"``, ``"10m"``, ``"1h30m"``, ``"7d"``, ``"500ms"``.

    A bare non-negative number (``"30"``, ``"1.5"``) means seconds. Compound durations list
    their units from largest to smallest, each unit at most once, so ``"30m1h"`` and
    ``"1m1m"`` are refused rather than guessed at. Units are lowercase: ``"10M"`` could be
    read as months, so it is refused too.

    Raises:
        ValueError: naming the bad text and what is allowed.
    """
    stripped = text.strip()
    if _BARE_SECONDS.fullmatch(stripped):
        return _to_timedelta(text, Decimal(stripped) * _MICROSECONDS_PER_UNIT["s"])
    if not _COMPOUND.fullmatch(stripped):
        raise ValueError(f"{text!r} is not a duration; {_DURATION_HELP}")
    total = Decimal(0)
    previous_rank = -1
    for number, unit in _PART.findall(stripped):
        rank = _UNIT_ORDER.index(unit)
        if rank <= previous_rank:
            raise ValueError(
                f"{text!r} is not a duration: list each unit once, from days down to "
                f"milliseconds (e.g. 1h30m); {_DURATION_HELP}"
            )
        previous_rank = rank
        total += Decimal(number) * _MICROSECONDS_PER_UNIT[unit]
    return _to_timedelta(text, total)


def _to_timedelta(text: str, microseconds: Decimal) -> dt.timedelta:
    try:
        return dt.timedelta(microseconds=int(microseconds.to_integral_value()))
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration; the maximum is 999999999d") from None


def format_duration(value: dt.timedelta) -> str:
    """Return the canonical text of a duration: ``"1h30m"``, ``"7d"``, ``"0s"``, ``"1.5ms"``.

    ``parse_duration(format_duration(td)) == td`` for every non-negative timedelta.

    Raises:
        ValueError: for a negative duration, which no config value can hold.
    """
    if value < dt.timedelta(0):
        raise ValueError(f"{value!r} is negative; durations are zero or more")
    remaining = value // dt.timedelta(microseconds=1)
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit in ("d", "h", "m", "s"):
        count, remaining = divmod(remaining, _MICROSECONDS_PER_UNIT[unit])
        if count:
            parts.append(f"{count}{unit}")
    if remaining:
        whole_ms, sub_ms = divmod(remaining, _MICROSECONDS_PER_UNIT["ms"])
        fraction = f".{sub_ms:03d}".rstrip("0") if sub_ms else ""
        parts.append(f"{whole_ms}{fraction}ms")
    return "".join(parts)


def _validate_duration(value: Any) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        if value < dt.timedelta(0):
            raise _duration_error(f"'-{format_duration(-value)}' is negative; {_DURATION_HELP}")
        return value
    if isinstance(value, bool):
        raise _duration_error(f"{value!r} is not a duration; {_DURATION_HELP}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise _duration_error(
                f"{value!r} is not a duration; a bare number is seconds and must be zero or "
                f"more, or {_DURATION_HELP}"
            )
        try:
            return dt.timedelta(seconds=value)
        except OverflowError:
            raise _duration_error(f"{value!r} seconds is too long a duration") from None
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise _duration_error(str(exc)) from None
    raise _duration_error(f"{value!r} is not a duration; {_DURATION_HELP}")


def _duration_error(message: str) -> PydanticCustomError:
    # The message goes in as context so braces in a user's value are never read as a template.
    return PydanticCustomError("invalid_duration", "{reason}", {"reason": message})


Duration = Annotated[
    dt.timedelta,
    PlainValidator(_validate_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: 30s, 10m, 1h30m, 7d, 500ms; a bare number is seconds.",
        }
    ),
]
"""A non-negative `timedelta` read from "30s"-style text or a number of seconds."""


_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_WORKING_HOURS_HELP = 'use "HH:MM-HH:MM" in 24-hour time, e.g. "18:00-06:00"'


@dataclass(frozen=True)
class WorkingHours:
    """A daily window, in the site's local time, during which uploads may run.

    The window includes its start minute and excludes its end minute. A start later than the
    end is an overnight window (``18:00-06:00`` is open from 18:00 until 06:00 the next
    morning). A window whose start equals its end is refused: it could mean "never" or
    "always", and "always" is written as no window at all (``working_hours: null``).
    """

    start: dt.time
    end: dt.time

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if value.second or value.microsecond or value.tzinfo is not None:
                raise ValueError(
                    f"working hours {name} {value.isoformat()!r} must be a whole minute "
                    "without a timezone (the site's timezone applies)"
                )
        if self.start == self.end:
            raise ValueError(
                f"working hours {self!s} start and end at the same minute; "
                "use null for always, or a window such as 18:00-06:00"
            )

    @classmethod
    def parse(cls, text: str) -> WorkingHours:
        """Parse ``"HH:MM-HH:MM"`` (24-hour clock; overnight windows allowed).

        Raises:
            ValueError: naming the bad text and the accepted form.
        """
        start_text, separator, end_text = text.strip().partition("-")
        start_match = _CLOCK.fullmatch(start_text.strip())
        end_match = _CLOCK.fullmatch(end_text.strip())
        if not separator or start_match is None or end_match is None:
            raise ValueError(f"{text!r} is not a working-hours window; {_WORKING_HOURS_HELP}")
        start = dt.time(int(start_match[1]), int(start_match[2]))
        end = dt.time(int(end_match[1]), int(end_match[2]))
        if start == end:
            raise ValueError(
                f"{text!r} starts and ends at the same minute; use null for always, "
                "or a window such as 18:00-06:00"
            )
        return cls(start, end)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    @property
    def overnight(self) -> bool:
        """True when the window runs past midnight (start later than end)."""
        return self.start > self.end

    def contains(self, local: dt.time) -> bool:
        """Whether the local wall-clock time ``local`` lies inside the window.

        Any ``tzinfo`` on ``local`` is ignored: the caller passes the site's wall-clock time.
        """
        moment = local.replace(tzinfo=None)
        if self.overnight:
            return moment >= self.start or moment < self.end
        return self.start <= moment < self.end

    def next_open(self, now: dt.datetime, tz: dt.tzinfo | None = None) -> dt.datetime:
        """The earliest instant at or after ``now`` when the window is open.

        Returns ``now`` itself (converted to the site's timezone) while the window is open.
        ``now`` must be timezone-aware; ``tz`` is the site's timezone (a ``ZoneInfo``) and
        defaults to ``now.tzinfo``. Daylight-saving changes are followed: a start time skipped
        by a spring-forward jump opens at the jump, and a start time that occurs twice in the
        autumn opens at its first occurrence still ahead of ``now``.

        Raises:
            ValueError: when ``now`` is naive.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(
                "next_open needs a timezone-aware datetime; pass the current time with its "
                "timezone (e.g. datetime.now(ZoneInfo('Europe/Berlin')))"
            )
        zone = tz if tz is not None else now.tzinfo
        local_now = now.astimezone(zone)
        if self.contains(local_now.time()):
            return local_now
        # Compared in UTC: aware datetimes sharing a tzinfo compare by wall clock, ignoring
        # fold, which would confuse the two 01:30s of an autumn night.
        now_utc = local_now.astimezone(dt.UTC)
        openings = [
            opening
            for day in (0, 1, 2)
            for opening in _openings_utc(
                local_now.date() + dt.timedelta(days=day), self.start, zone
            )
            if opening >= now_utc
        ]
        return min(openings).astimezone(zone)


def _openings_utc(day: dt.date, wall: dt.time, zone: dt.tzinfo) -> list[dt.datetime]:
    """The instants (in UTC) at which the wall clock of ``zone`` reaches ``wall`` on ``day``.

    Usually one; two when ``wall`` repeats as clocks fall back; for a ``wall`` time skipped by
    a spring-forward jump, the instant of the jump (the first moment the clock is past it).
    """
    naive = dt.datetime.combine(day, wall)
    instants = []
    for fold in (0, 1):
        candidate = naive.replace(tzinfo=zone, fold=fold)
        if _wall_clock(candidate, zone) == naive:
            instants.append(candidate.astimezone(dt.UTC))
    if instants:
        return instants
    return [_end_of_gap(naive, zone)]


def _wall_clock(moment: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """The naive wall-clock reading in ``zone`` of an aware datetime, via a round trip to UTC."""
    return moment.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None)


def _end_of_gap(naive: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    # zoneinfo exposes no transition list, so bisect between the two readings of the skipped
    # time (fold=1 lands before the jump, fold=0 after it) for the first second past the jump.
    low = naive.replace(tzinfo=zone, fold=1).astimezone(dt.UTC)
    high = naive.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)
    if low > high:
        low, high = high, low
    while high - low > dt.timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= naive:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def _validate_working_hours(value: Any) -> WorkingHours:
    if isinstance(value, WorkingHours):
        return value
    if isinstance(value, str):
        try:
            return WorkingHours.parse(value)
        except ValueError as exc:
            raise PydanticCustomError(
                "invalid_working_hours", "{reason}", {"reason": str(exc)}
            ) from None
    raise PydanticCustomError(
        "invalid_working_hours",
        "{reason}",
        {"reason": f"{value!r} is not a working-hours window; {_WORKING_HOURS_HELP}"},
    )


WorkingHoursField = Annotated[
    WorkingHours,
    PlainValidator(_validate_working_hours),
    # Always text: a dataclass would be dumped as a dict of times that no longer validates.
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*([01][0-9]|2[0-3]):[0-5][0-9]\s*-\s*([01][0-9]|2[0-3]):[0-5][0-9]\s*$",
            "description": "Upload window in the site's local time, HH:MM-HH:MM; "
            "overnight windows such as 18:00-06:00 are allowed.",
        }
    ),
]
"""A `WorkingHours` read from "HH:MM-HH:MM" text."""
