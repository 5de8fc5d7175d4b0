"""What de-identification changed: a comparison of the dataset before and after.

The preview compares what really came out of the engine with what went in, rather than
trusting a report of what the engine meant to do. Values are shown to the caller who sent the
instance (the preview's purpose); pixel data is not compared (the preview reads the header).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

__all__ = ["AttributeChange", "dataset_changes"]

_SHOWN = 120


@dataclass(frozen=True, slots=True)
class AttributeChange:
    """One attribute that de-identification removed, replaced or added.

    ``path`` locates it: ``(0008,1140)[0].(0008,1155)`` is the Referenced SOP Instance UID
    of the first item of the Referenced Image Sequence. ``before``/``after`` are the values
    as text (None when absent), ``<N bytes>`` for binary values.
    """

    path: str
    tag: str
    keyword: str
    vr: str
    action: Literal["removed", "replaced", "added"]
    before: str | None
    after: str | None


def dataset_changes(before: Dataset, after: Dataset) -> list[AttributeChange]:
    """Every attribute that differs, file meta first, in tag order, nested items included."""
    changes: list[AttributeChange] = []
    before_meta = before.__dict__.get("file_meta") or Dataset()
    after_meta = after.__dict__.get("file_meta") or Dataset()
    _compare(before_meta, after_meta, "", changes)
    _compare(before, after, "", changes)
    return changes


def _compare(before: Dataset, after: Dataset, prefix: str, out: list[AttributeChange]) -> None:
    for tag in sorted(set(before.keys()) | set(after.keys())):
        if tag == 0x00020000:
            continue  # the file meta's group length follows whatever else changed
        old = before.get(tag)
        new = after.get(tag)
        path = prefix + _tag_text(tag)
        if old is not None and new is not None and old.VR == "SQ" and new.VR == "SQ":
            old_items, new_items = list(old.value), list(new.value)
            for index in range(max(len(old_items), len(new_items))):
                old_item = old_items[index] if index < len(old_items) else Dataset()
                new_item = new_items[index] if index < len(new_items) else Dataset()
                _compare(old_item, new_item, f"{path}[{index}].", out)
            continue
        old_text, new_text = _text(old), _text(new)
        if old is not None and new is not None and old_text == new_text:
            continue
        action: Literal["removed", "replaced", "added"] = (
            "removed" if new is None else "added" if old is None else "replaced"
        )
        elem = new if new is not None else old
        assert elem is not None
        out.append(
            AttributeChange(
                path=path,
                tag=_tag_text(tag),
                keyword=keyword_for_tag(tag) or "",
                vr=str(elem.VR),
                action=action,
                before=old_text,
                after=new_text,
            )
        )


def _text(elem: DataElement | None) -> str | None:
    if elem is None:
        return None
    value = elem.value
    if elem.VR == "SQ":
        return f"<{len(value)} items>"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    text = "" if value is None else str(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
