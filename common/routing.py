"""The routing-string grammar: ``fw://GROUP/PROJECT[/SUBJECT[/SESSION]]`` found in a DICOM field.

Parsing is pure and total: any text gives a `RoutingDecision` with a reason, never an
exception. Labels that could escape a path or hold control characters are refused (reason
``invalid_label``), never rewritten into something else. Stdlib only: must not import pydantic,
web, database or DICOM libraries.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "GROUP_ID_PATTERN",
    "LABEL_MAX_LENGTH",
    "RAW_MAX_LENGTH",
    "RoutingDecision",
    "RoutingReason",
    "RoutingString",
    "contains_control_characters",
    "group_id_problem",
    "label_problem",
    "parse_routing",
]


class RoutingReason(StrEnum):
    """Why data went where it went; recorded with every routing decision."""

    routed = "routed"
    no_routing_string = "no_routing_string"
    unknown_group = "unknown_group"
    unknown_project = "unknown_project"
    invalid_label = "invalid_label"


@dataclass(frozen=True)
class RoutingString:
    """A valid routing string, split into its labels.

    ``group`` is lowercase (group ids are case-insensitive); the other labels are
    NFC-normalised and otherwise exactly as typed. ``raw`` is the text as found in the field.
    """

    group: str
    project: str
    subject: str | None
    session: str | None
    raw: str


@dataclass(frozen=True)
class RoutingDecision:
    """The outcome of looking for a routing string in one field value.

    ``route`` is set only when ``reason`` is ``routed``. ``raw`` is the candidate found (even an
    invalid one, so support can see what the operator typed), or None when there was none.
    """

    route: RoutingString | None
    reason: RoutingReason
    raw: str | None


GROUP_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
LABEL_MAX_LENGTH = 64
RAW_MAX_LENGTH = 512
"""Invalid candidates longer than this are cut (ending in "…") so they stay storable."""

_GROUP_ID = re.compile(GROUP_ID_PATTERN.removeprefix("^").removesuffix("$"))
_PREFIX = re.compile(r"fw://", re.IGNORECASE)
_CANDIDATE_END = re.compile(r"\s")
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# DICOM pads text values to an even length with a trailing space (NUL for some VRs): that
# padding is not part of the value, so it does not make a routing string invalid.
_DICOM_PADDING = " \x00"


def parse_routing(field_value: str | None) -> RoutingDecision:
    """Find and parse the routing string in a DICOM field value.

    The candidate starts at the first ``fw://`` (any letter case) anywhere in the field and ends
    at the next whitespace (any Unicode whitespace: space, tab, newline, line separator) or at
    the end of the field. When a field holds two routing strings
    the first one decides, even if it is invalid: a later one is never used as a fallback, so
    what the operator typed first is what support sees. A single trailing slash is accepted
    (``fw://g/p/`` is ``fw://g/p``).

    Returns ``no_routing_string`` when the field is empty or has no ``fw://``,
    ``invalid_label`` when the candidate does not follow the grammar or holds an unsafe label,
    and ``routed`` with the parsed `RoutingString` otherwise.
    """
    if field_value is None:
        return RoutingDecision(route=None, reason=RoutingReason.no_routing_string, raw=None)
    value = field_value.rstrip(_DICOM_PADDING)
    prefix = _PREFIX.search(value)
    if prefix is None:
        return RoutingDecision(route=None, reason=RoutingReason.no_routing_string, raw=None)
    end = _CANDIDATE_END.search(value, prefix.start())
    raw = value[prefix.start() : end.start() if end else len(value)]
    route = _parse_candidate(raw)
    if route is None:
        return RoutingDecision(route=None, reason=RoutingReason.invalid_label, raw=_shorten(raw))
    return RoutingDecision(route=route, reason=RoutingReason.routed, raw=raw)


def _parse_candidate(raw: str) -> RoutingString | None:
    body = raw[len("fw://") :]
    if body.endswith("/") and not body.endswith("//"):
        body = body[:-1]
    parts = body.split("/")
    if not 2 <= len(parts) <= 4:
        return None
    group = parts[0].lower()
    if group_id_problem(group) is not None:
        return None
    labels = [unicodedata.normalize("NFC", part) for part in parts[1:]]
    if any(label_problem(label) is not None for label in labels):
        return None
    return RoutingString(
        group=group,
        project=labels[0],
        subject=labels[1] if len(labels) > 1 else None,
        session=labels[2] if len(labels) > 2 else None,
        raw=raw,
    )


def _shorten(raw: str) -> str:
    if len(raw) <= RAW_MAX_LENGTH:
        return raw
    return raw[: RAW_MAX_LENGTH - 1] + "…"


def group_id_problem(group_id: str) -> str | None:
    """Why ``group_id`` is not a valid group id, or None when it is.

    A group id is 1-64 characters of lowercase ASCII letters, digits, ``_`` and ``-``,
    starting with a letter or digit. Like `label_problem`, the message is a phrase that
    follows the value in the caller's sentence and does not repeat it.
    """
    if _GROUP_ID.fullmatch(group_id):
        return None
    return (
        "is not a group id; use 1-64 lowercase letters, digits, '_' or '-', "
        "starting with a letter or digit"
    )


def contains_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control, format, surrogate or line/paragraph-separator character.

    These are the Unicode categories Cc, Cf, Cs, Zl and Zp: invisible characters that can hide
    a difference between two labels that look the same, or break a log line or a path.
    """
    return any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in text)


def label_problem(label: str, max_length: int = LABEL_MAX_LENGTH) -> str | None:
    """Why ``label`` is unsafe as a hierarchy label, or None when it is safe.

    Unsafe: empty, ``.`` or ``..``, containing ``/`` or ``\\``, containing a control, format,
    surrogate or line/paragraph-separator character (Unicode categories Cc, Cf, Cs, Zl, Zp),
    or longer than ``max_length`` characters. The message never repeats the label, which may
    hold patient data; it says what rule was broken.
    """
    if not label:
        return "is empty"
    if label in {".", ".."}:
        return f"is {label!r}, which would name a directory"
    if "/" in label or "\\" in label:
        return "contains a path separator ('/' or '\\')"
    if contains_control_characters(label):
        return "contains a control or invisible formatting character"
    if len(label) > max_length:
        return f"is longer than {max_length} characters"
    return None
