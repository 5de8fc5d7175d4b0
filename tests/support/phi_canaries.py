"""Instances full of canaries: a distinct, searchable value in every attribute of PS3.15 Table
E.1-1 that can hold text, a date, a time or a UID, plus nested sequences and private elements.

After de-identification, a canary found anywhere in the output bytes is PHI that survived.
Built from the committed table (`common.deid.table`), so a row added to the table is covered
without touching this module. Rows skipped: group 0000 and 0002 (command and file meta
elements cannot sit in a data set), tags pydicom's dictionary does not know, and binary VRs.

Where canaries sit:

- top level: one per table row (`Canary.row` names it);
- in each table sequence's item and in Procedure Code Sequence (not in the table, so kept and
  descended into): a Patient ID canary, a private element, and in Referenced Image Sequence a
  Referenced SOP Instance UID and a nested sequence one level deeper;
- private elements (group 0009) at the top level, creator included;
- the file meta: source and sending AE titles, private information and its creator UID.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from common.deid.table import TableRow, table_rows
from tests.support.dicom_factory import make_instance

__all__ = ["Canary", "CanaryInstance", "canary_instance", "canary_series", "canary_uid"]

_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_CANARY_VRS = _TEXT_VRS | {"AS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"}
_UID_ROOT = "1.2.826.0.1.3680043.10.543"
_FIRST_DATE = dt.date(2100, 1, 1)
# Dates further apart than the largest site offset (3650 days): a shifted canary date can
# never land on another canary.
_DATE_STEP = dt.timedelta(days=3651)


@dataclass(frozen=True, slots=True)
class Canary:
    """One planted value: where it is, and the table row it belongs to (None when nested)."""

    value: str
    where: str
    vr: str
    row: TableRow | None


@dataclass(frozen=True, slots=True)
class CanaryInstance:
    """A canary-laden instance and every canary in it."""

    dataset: Dataset
    canaries: tuple[Canary, ...]

    def found_in(self, data: bytes) -> list[Canary]:
        """The canaries whose value appears anywhere in `data`."""
        return [canary for canary in self.canaries if canary.value.encode() in data]


def canary_uid(number: int) -> str:
    """A UID no other canary UID is a prefix of (all have the same length)."""
    return f"{_UID_ROOT}.{100000 + number}"


def canary_instance(
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    instance_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> CanaryInstance:
    """An MR image (~130 KB of pixels) carrying a canary in every attribute it can.

    The three instance UIDs are the caller's (so a series can be built); they count as
    canaries too.
    """
    ds = make_instance(
        patient_id="CANARYPID",
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        series_description="CANARY SERIES",
        study_description="CANARY STUDY",
        instance_number=instance_number,
        transfer_syntax=transfer_syntax,
    )
    planted: list[Canary] = []
    given = {0x0020000D: study_uid, 0x0020000E: series_uid, 0x00080018: sop_uid}
    for number, row in enumerate(table_rows()):
        tag = _plantable_tag(row)
        if tag is None:
            continue
        vr = dictionary_VR(tag)
        where = f"{_tag_text(tag)} {row.name}"
        if vr == "SQ":
            ds.add_new(tag, "SQ", DicomSequence([_nested_item(number, where, planted)]))
            continue
        value = given.get(tag) or _value(vr, number)
        ds.add_new(tag, vr, value)
        planted.append(Canary(value, where, vr, row))
    _add_private(ds, 0x0009, "CANARYPRIVATE", planted, "top-level")
    _add_file_meta(ds, planted)
    procedure = Dataset()
    _fill_nested(procedure, 9001, "(0008,1032) Procedure Code Sequence[0]", planted)
    ds.ProcedureCodeSequence = DicomSequence([procedure])
    _deepen_references(ds, planted)
    return CanaryInstance(ds, tuple(planted))


def canary_series(
    count: int, *, study_uid: str, series_uid: str, transfer_syntax: str = ExplicitVRLittleEndian
) -> list[CanaryInstance]:
    """`count` canary instances of one series, SOP Instance UIDs ``series_uid.1``, ``.2``…"""
    return [
        canary_instance(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=f"{series_uid}.{number}",
            instance_number=number,
            transfer_syntax=transfer_syntax,
        )
        for number in range(1, count + 1)
    ]


def _plantable_tag(row: TableRow) -> int | None:
    if row.tag is None:
        return None
    # One concrete tag for repeating-group rows such as (60XX,4000): group 6000.
    tag = row.tag.value
    if tag >> 16 in (0x0000, 0x0002, 0xFFFA, 0xFFFC):
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return tag if vr in _CANARY_VRS or vr == "SQ" else None


def _value(vr: str, number: int) -> str:
    if vr == "DA":
        return (_FIRST_DATE + number * _DATE_STEP).strftime("%Y%m%d")
    if vr == "DT":
        return (_FIRST_DATE + number * _DATE_STEP).strftime("%Y%m%d") + "111213"
    if vr == "TM":
        return (
            f"{number // 3600 % 24:02d}{number // 60 % 60:02d}{number % 60:02d}.{900000 + number}"
        )
    if vr == "UI":
        return canary_uid(number)
    if vr == "AS":
        return f"{number % 1000:03d}D"
    if vr == "DS":
        return f"98{number:04d}.5"
    if vr == "IS":
        return f"97{number:04d}"
    if vr == "UR":
        return f"http://canary{number:04d}.example"
    return f"CANARY{number:04d}"


def _nested_item(number: int, where: str, planted: list[Canary]) -> Dataset:
    item = Dataset()
    _fill_nested(item, number, f"{where}[0]", planted)
    return item


def _fill_nested(item: Dataset, number: int, where: str, planted: list[Canary]) -> None:
    value = f"NESTEDPID{number:04d}"
    item.PatientID = value
    planted.append(Canary(value, f"{where}.(0010,0020) Patient ID", "LO", None))
    _add_private(item, 0x0011, f"NESTEDPRIV{number:04d}", planted, where)


def _add_private(ds: Dataset, group: int, value: str, planted: list[Canary], where: str) -> None:
    creator = f"{value}CREATOR"
    ds.add_new((group << 16) | 0x0010, "LO", creator)
    ds.add_new((group << 16) | 0x1001, "LO", value)
    planted.append(Canary(creator, f"{where} private creator ({group:04X},0010)", "LO", None))
    planted.append(Canary(value, f"{where} private ({group:04X},1001)", "LO", None))


def _add_file_meta(ds: Dataset, planted: list[Canary]) -> None:
    """File meta elements that name the sender, and vendor private information."""
    for keyword, value in (
        ("SourceApplicationEntityTitle", "CANARYSRCAE"),
        ("SendingApplicationEntityTitle", "CANARYSENDAE"),
        ("PrivateInformationCreatorUID", canary_uid(9200)),
    ):
        setattr(ds.file_meta, keyword, value)
        planted.append(Canary(value, f"file meta {keyword}", "AE", None))
    ds.file_meta.PrivateInformation = b"CANARYMETAPRIVATE"
    planted.append(Canary("CANARYMETAPRIVATE", "file meta PrivateInformation", "OB", None))


def _deepen_references(ds: Dataset, planted: list[Canary]) -> None:
    """Referenced Image Sequence: a referenced UID and one more level of nesting."""
    item = ds.ReferencedImageSequence[0]
    item.ReferencedSOPClassUID = ds.SOPClassUID
    uid = canary_uid(9100)
    item.ReferencedSOPInstanceUID = uid
    where = "(0008,1140) Referenced Image Sequence[0]"
    row = next(row for row in table_rows() if row.tag and row.tag.value == 0x00081155)
    planted.append(Canary(uid, f"{where}.(0008,1155) Referenced SOP Instance UID", "UI", row))
    deeper = Dataset()
    _fill_nested(deeper, 9101, f"{where}.(0008,1032)[0]", planted)
    item.ProcedureCodeSequence = DicomSequence([deeper])


def _tag_text(tag: int) -> str:
    keyword = keyword_for_tag(tag) or "?"
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"
