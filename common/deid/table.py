"""Reading the committed copy of DICOM PS3.15 Table E.1-1 (``data/ps3.15_table_e1-1.tsv``).

The table is data, not code: `basic.py` builds the Basic Profile from these rows, so the
profile follows the standard row for row rather than a hand-picked list of tags. Stdlib only.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Literal

__all__ = ["BASIC_OPTIONS", "BasicOption", "TableRow", "TagPattern", "table_rows"]

BasicOption = Literal[
    "retain_uids",
    "retain_device_identity",
    "retain_patient_characteristics",
    "retain_longitudinal_modified_dates",
    "clean_descriptors",
]
BASIC_OPTIONS: tuple[BasicOption, ...] = (
    "retain_uids",
    "retain_device_identity",
    "retain_patient_characteristics",
    "retain_longitudinal_modified_dates",
    "clean_descriptors",
)
_TABLE_FILE = "ps3.15_table_e1-1.tsv"
_BASIC_CODES = {"D", "Z", "X", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
_OPTION_CODES = {"", "K", "C", "X"}
PRIVATE_ROW_TAG = "(GGGG,EEEE) WHERE GGGG IS ODD"


@dataclass(frozen=True, slots=True)
class TagPattern:
    """A tag of the table, possibly with a repeating group such as ``(50XX,XXXX)``.

    A tag matches when ``tag & mask == value``; a plain tag has the full mask.
    """

    value: int
    mask: int

    @classmethod
    def parse(cls, text: str) -> TagPattern:
        """Read ``(gggg,eeee)`` where any hex digit may be ``X`` (any digit)."""
        digits = text.strip("()").replace(",", "")
        if len(digits) != 8:
            raise ValueError(f"{text!r} is not a tag (gggg,eeee)")
        value = mask = 0
        for char in digits:
            value <<= 4
            mask <<= 4
            if char in "xX":
                continue
            value |= int(char, 16)
            mask |= 0xF
        return cls(value, mask)

    @property
    def is_exact(self) -> bool:
        """Whether the pattern names exactly one tag."""
        return self.mask == 0xFFFFFFFF

    def matches(self, tag: int) -> bool:
        """Whether `tag` is one of the tags this pattern names."""
        return tag & self.mask == self.value


@dataclass(frozen=True, slots=True)
class TableRow:
    """One attribute of Table E.1-1 with its Basic Profile code and option codes."""

    tag: TagPattern | None  # None for the private-attributes row
    name: str
    basic: str
    options: dict[BasicOption, str]


@functools.cache
def table_rows() -> tuple[TableRow, ...]:
    """Every row of the committed table, checked for codes the builder understands."""
    text = resources.files("common.deid").joinpath("data", _TABLE_FILE).read_text("utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    rows: list[TableRow] = []
    for record in reader:
        basic = record["basic"]
        if basic not in _BASIC_CODES:
            raise ValueError(f"table row {record['name']!r}: unknown basic code {basic!r}")
        options: dict[BasicOption, str] = {}
        for option in BASIC_OPTIONS:
            code = record[option]
            if code not in _OPTION_CODES:
                raise ValueError(f"table row {record['name']!r}: unknown {option} code {code!r}")
            if code:
                options[option] = code
        tag = None if record["tag"] == PRIVATE_ROW_TAG else TagPattern.parse(record["tag"])
        rows.append(TableRow(tag=tag, name=record["name"], basic=basic, options=options))
    return tuple(rows)
