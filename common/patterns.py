"""Metadata extraction patterns and acquisition-label templates: checking and applying them.

A pattern is a regular expression with named groups, run over one attribute's value; the
groups named after hierarchy levels (`LABEL_GROUPS`) fill those labels, any other named group
is kept as session metadata. Patterns come from site admins, so they are checked when the
config is saved (`check_pattern`, `vr_problem`) and run with a time limit (`apply_patterns`):
a catastrophic regex is cut off and reported, never allowed to stall the reaper.

Runs on the `regex` module, which takes a timeout per match; the syntax is Python's. Imports
`regex`, stdlib and `common.routing` only: the VR of a keyword is looked up by the caller (the
agent and the control plane pass pydicom's dictionary), so this module needs no DICOM library.
"""

from __future__ import annotations

import difflib
import functools
import re as stdlib_re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import regex

from common.routing import contains_control_characters

__all__ = [
    "LABEL_GROUPS",
    "MATCH_TIMEOUT_SECONDS",
    "METADATA_VALUE_MAX_LENGTH",
    "PatternOutcome",
    "apply_patterns",
    "check_pattern",
    "metadata_value_problem",
    "render_template",
    "template_keywords",
    "vr_problem",
]

LABEL_GROUPS = ("group", "project", "subject", "session", "acquisition")
# A match over one header value, which is at most a few kilobytes: anything slower is a
# catastrophic pattern, not a slow one.
MATCH_TIMEOUT_SECONDS = 0.05
MAX_PATTERN_LENGTH = 512
# What the store keeps of one session metadata value (common.ingest): longer values, or ones
# holding control characters, are passed over with a note rather than cut.
METADATA_VALUE_MAX_LENGTH = 1024
_GROUP_NAME = stdlib_re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

# Characters a value of each VR can hold (PS3.5 6.2). A pattern that requires any other
# character can never match an attribute of that VR. VRs that hold free text are absent.
_VR_ALPHABETS: dict[str, str] = {
    "AE": string.printable.replace("\\", ""),
    "AS": string.digits + "DWMY",
    "CS": string.ascii_uppercase + string.digits + " _",
    "DA": string.digits + "-",  # the hyphen: a range in a query
    "DS": string.digits + "+-.eE ",
    "DT": string.digits + "+-. ",
    "IS": string.digits + "+- ",
    "TM": string.digits + ".: -",
    "UI": string.digits + ".",
}


def check_pattern(pattern: str) -> str:
    """Return `pattern` if it is usable; raise `ValueError` saying why it is not.

    Usable: at most 512 characters, compiles, has at least one named group, and names no
    group one typo away from a label group (``subjet`` would silently become metadata). Any
    other named group is session metadata.
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"is longer than {MAX_PATTERN_LENGTH} characters")
    try:
        compiled = _compile(pattern)
    except regex.error as exc:
        raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
    if not compiled.groupindex:
        raise ValueError(
            f"{pattern!r} has no named group, so it would extract nothing; name what it "
            "captures, e.g. (?P<subject>\\w+)"
        )
    for name in compiled.groupindex:
        close = difflib.get_close_matches(name.lower(), LABEL_GROUPS, n=1, cutoff=0.75)
        if close and name not in LABEL_GROUPS:
            raise ValueError(
                f"names a group {name!r}: did you mean {close[0]!r}? Groups named "
                f"{', '.join(LABEL_GROUPS)} fill those labels"
            )
    return pattern


def metadata_value_problem(value: str) -> str | None:
    """Why a metadata value extracted by a pattern cannot be kept as it is, or None.

    Never quotes the value (it comes from a DICOM header).
    """
    if len(value) > METADATA_VALUE_MAX_LENGTH:
        return f"is longer than {METADATA_VALUE_MAX_LENGTH} characters"
    if contains_control_characters(value):
        return "holds a control or invisible formatting character"
    return None


def vr_problem(pattern: str, vr: str | None) -> str | None:
    """Why `pattern` can never match a value of `vr`, or None when it might.

    Looks at what the pattern requires outside any alternative or optional part: a literal
    character, or a character class, that no value of the VR can hold makes a match
    impossible.
    """
    alphabet = _VR_ALPHABETS.get(vr or "")
    if alphabet is None:
        return None
    for required in _required_characters(pattern):
        if not any(required(char) for char in alphabet):
            return (
                f"requires {required.description}, which a {vr} value never holds, so it "
                "can never match"
            )
    return None


@dataclass(frozen=True)
class PatternOutcome:
    """What the patterns extracted from one header: labels, extra metadata, problems.

    `problems` are PHI-free sentences (a pattern cut off by its time limit, say).
    """

    labels: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def apply_patterns(
    patterns: Sequence[tuple[str, str]], values: Mapping[str, str]
) -> PatternOutcome:
    """Run `(field, regex)` patterns in order over the header `values` (keyword → text).

    The first pattern that yields a value for a label or metadata name wins it; empty groups
    yield nothing. A pattern over an absent attribute is skipped; one that runs longer than
    `MATCH_TIMEOUT_SECONDS` is cut off and reported in `problems`.
    """
    labels: dict[str, str] = {}
    metadata: dict[str, str] = {}
    problems: list[str] = []
    for number, (keyword, pattern) in enumerate(patterns):
        value = values.get(keyword)
        if value is None:
            continue
        try:
            found = _compile(pattern).search(value, timeout=MATCH_TIMEOUT_SECONDS)
        except TimeoutError:
            problems.append(
                f"metadata.patterns[{number}] ran over its time limit on {keyword} and was "
                "cut off; simplify the regex (nested repeats backtrack without end)"
            )
            continue
        if found is None:
            continue
        for name, text in found.groupdict().items():
            if not text:
                continue
            target = labels if name in LABEL_GROUPS else metadata
            target.setdefault(name, text)
    return PatternOutcome(labels, metadata, tuple(problems))


def template_keywords(template: str) -> list[str]:
    """The keywords named in a label template (``{SeriesNumber} - {SeriesDescription}``).

    Raises `ValueError` for a template `str.format` cannot read, or one using indexing,
    attributes, conversions or format specs (only plain ``{Keyword}`` is allowed).
    """
    keywords: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if spec or conversion or not _GROUP_NAME.fullmatch(name):
            raise ValueError("use plain {Keyword} placeholders, without formats or indexes")
        keywords.append(name)
    return keywords


def render_template(template: str, values: Mapping[str, str]) -> str | None:
    """The template with each ``{Keyword}`` replaced by its value; None when one is missing."""
    keywords = template_keywords(template)
    if any(not values.get(keyword) for keyword in keywords):
        return None
    return template.format_map({keyword: values[keyword] for keyword in keywords}).strip()


@lru_cache(maxsize=256)
def _compile(pattern: str) -> regex.Pattern[str]:
    return regex.compile(pattern, regex.VERSION0)


@dataclass(frozen=True)
class _Required:
    """One character the pattern needs at a fixed place: a literal or a class."""

    accepts: Callable[[str], bool]
    description: str

    def __call__(self, char: str) -> bool:
        return self.accepts(char)


def _required_characters(pattern: str) -> list[_Required]:
    # The stdlib parser gives the pattern's top-level sequence; anything inside a branch or a
    # repeat that may run zero times is optional or a choice, so it is skipped.
    try:
        parsed = stdlib_re._parser.parse(pattern)  # type: ignore[attr-defined]
    except (stdlib_re.error, RecursionError):
        return []
    return list(_required_in(parsed))


def _required_in(items: Iterable[tuple[object, object]]) -> Iterable[_Required]:
    constants = stdlib_re._constants  # type: ignore[attr-defined]
    for op, argument in items:
        if op is constants.LITERAL and isinstance(argument, int):
            literal = chr(argument)
            yield _Required(literal.__eq__, repr(literal))
        elif op is constants.IN and isinstance(argument, list):
            yield _Required(functools.partial(_in_class, members=argument), "a character class")
        elif op is constants.SUBPATTERN and isinstance(argument, tuple):
            yield from _required_in(argument[-1])
        elif op in (constants.MAX_REPEAT, constants.MIN_REPEAT) and isinstance(argument, tuple):
            low, _, body = argument
            if low >= 1:
                yield from _required_in(body)


def _in_class(char: str, members: list[tuple[object, object]]) -> bool:
    constants = stdlib_re._constants  # type: ignore[attr-defined]
    categories: dict[object, Callable[[str], bool]] = {
        constants.CATEGORY_DIGIT: str.isdigit,
        constants.CATEGORY_NOT_DIGIT: lambda c: not c.isdigit(),
        constants.CATEGORY_SPACE: str.isspace,
        constants.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
        constants.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
        constants.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
    }
    negate = False
    found = False
    for op, argument in members:
        if op is constants.NEGATE:
            negate = True
        elif op is constants.LITERAL and isinstance(argument, int):
            found = found or char == chr(argument)
        elif op is constants.RANGE and isinstance(argument, tuple):
            low, high = argument
            found = found or low <= ord(char) <= high
        elif op is constants.CATEGORY:
            test = categories.get(argument)
            # A category this check does not know might hold the character.
            found = found or test is None or test(char)
        else:
            found = True
    return found != negate
