"""The DICOM PS3.15 Basic Application Level Confidentiality Profile, built from Table E.1-1.

`build_basic_plan(options)` turns every row of the committed table (`table.py`) into one
`Action`; nothing here names a tag by hand. How a code becomes an action:

- an enabled option that says K for the row keeps it; else one that says C cleans it (dates
  under ``retain_longitudinal_modified_dates`` are shifted, text is scrubbed, see `rewrite.py`);
- X removes; Z empties; D replaces with a dummy of the element's VR; U replaces the UID with
  the salted remap of `uids.py`;
- codes that leave the choice to the IOD's type take the one valid for every type without
  knowing the IOD: X/Z empties, X/D, Z/D and X/Z/D put a dummy, X/Z/U* keeps the sequence and
  de-identifies its items (their UIDs are remapped by their own rows).

Attributes the table does not list are kept, and sequences among them are de-identified item
by item. Stdlib only.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass

from common.deid.table import BASIC_OPTIONS, BasicOption, TableRow, TagPattern, table_rows

__all__ = ["Action", "BasicPlan", "build_basic_plan"]


class Action(enum.StrEnum):
    """What the Basic Profile does to one attribute."""

    REMOVE = "remove"
    EMPTY = "empty"
    DUMMY = "dummy"
    KEEP = "keep"
    UID = "uid"
    SHIFT_DATE = "shift_date"
    CLEAN = "clean"
    ITEMS = "items"  # keep the sequence, de-identify each item


_BASIC_ACTIONS = {
    "X": Action.REMOVE,
    "Z": Action.EMPTY,
    "D": Action.DUMMY,
    "U": Action.UID,
    "X/Z": Action.EMPTY,
    "X/D": Action.DUMMY,
    "Z/D": Action.DUMMY,
    "X/Z/D": Action.DUMMY,
    "X/Z/U*": Action.ITEMS,
}


@dataclass(frozen=True, slots=True)
class BasicPlan:
    """The Basic Profile with a set of options: an action per tag of Table E.1-1."""

    options: frozenset[BasicOption]
    exact: dict[int, Action]
    patterns: tuple[tuple[TagPattern, Action], ...]
    remove_private: bool

    def action_for(self, tag: int) -> Action | None:
        """The action for `tag`, or None when the table does not list it."""
        action = self.exact.get(tag)
        if action is not None:
            return action
        for pattern, patterned in self.patterns:
            if pattern.matches(tag):
                return patterned
        return None


def build_basic_plan(options: Iterable[BasicOption]) -> BasicPlan:
    """The plan for the Basic Profile with `options` switched on (order does not matter)."""
    return _build(frozenset(options))


@functools.cache
def _build(options: frozenset[BasicOption]) -> BasicPlan:
    unknown = options - set(BASIC_OPTIONS)
    if unknown:
        raise ValueError(f"unknown Basic Profile options: {sorted(unknown)}")
    exact: dict[int, Action] = {}
    patterns: list[tuple[TagPattern, Action]] = []
    remove_private = True
    for row in table_rows():
        action = _row_action(row, options)
        if row.tag is None:
            remove_private = action is not Action.KEEP
        elif row.tag.is_exact:
            exact[row.tag.value] = action
        else:
            patterns.append((row.tag, action))
    return BasicPlan(options, exact, tuple(patterns), remove_private)


def _row_action(row: TableRow, options: frozenset[BasicOption]) -> Action:
    enabled = {option: code for option, code in row.options.items() if option in options}
    if "K" in enabled.values():
        return Action.KEEP
    cleaning = [option for option, code in enabled.items() if code == "C"]
    if "retain_longitudinal_modified_dates" in cleaning:
        return Action.SHIFT_DATE
    if cleaning:
        return Action.CLEAN
    if "X" in enabled.values():
        return Action.REMOVE
    return _BASIC_ACTIONS[row.basic]
