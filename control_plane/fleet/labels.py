"""Site labels: `key: value` pairs (`region: eu`, `scanner: mr`) that fleet views filter by and
rollouts select sites with. Validation and selector parsing; pure. Must not import FastAPI.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from control_plane.errors import ControlPlaneError

MAX_LABELS = 32
# Like Kubernetes label keys and values: short, and safe in a URL query and a shell.
_KEY = re.compile(r"[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?")
_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
KEY_RULE = (
    "a label key is 1-63 lowercase letters, digits, '.', '_', '-' or '/', starting and ending"
    " with a letter or digit"
)
VALUE_RULE = (
    "a label value is 1-63 letters, digits, '.', '_' or '-', starting and ending with a"
    " letter or digit"
)


class LabelError(ControlPlaneError):
    """A label key, value or selector that is not valid (422)."""

    http_status = 422


def key_problem(key: str) -> str | None:
    """What is wrong with `key` as a label key (None: nothing)."""
    return None if _KEY.fullmatch(key) else f"label key {key!r}: {KEY_RULE}"


def value_problem(key: str, value: object) -> str | None:
    """What is wrong with `value` as the value of label `key` (None: nothing)."""
    if not isinstance(value, str) or not _VALUE.fullmatch(value):
        return f"label {key}={value!r}: {VALUE_RULE}"
    return None


def label_problems(labels: Mapping[str, object]) -> list[str]:
    """Every problem of a whole label set (empty: valid)."""
    problems = [
        problem
        for key, value in labels.items()
        for problem in (key_problem(key), value_problem(key, value))
        if problem is not None
    ]
    if len(labels) > MAX_LABELS:
        problems.append(f"a site has at most {MAX_LABELS} labels, not {len(labels)}")
    return problems


def checked_labels(labels: Mapping[str, object]) -> dict[str, str]:
    """`labels` as a plain dict when valid; `LabelError` naming every problem otherwise."""
    problems = label_problems(labels)
    if problems:
        raise LabelError("; ".join(problems))
    return {key: str(value) for key, value in sorted(labels.items())}


def parse_selector(terms: Iterable[str]) -> dict[str, str]:
    """`["region=eu", "scanner=mr"]` (query parameters `label=`) as `{"region": "eu", ...}`;
    `LabelError` for a term without `=` or with an invalid key or value."""
    selector: dict[str, str] = {}
    for term in terms:
        key, separator, value = term.partition("=")
        if not separator:
            raise LabelError(f"label selector {term!r} is not KEY=VALUE (e.g. label=region=eu)")
        problem = key_problem(key) or value_problem(key, value)
        if problem is not None:
            raise LabelError(f"label selector {term!r}: {problem}")
        if selector.get(key, value) != value:
            raise LabelError(f"label selector names {key} twice with different values")
        selector[key] = value
    return selector


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Whether a site with `labels` has every `key=value` of `selector` (an empty one: all)."""
    return all(labels.get(key) == value for key, value in selector.items())
