"""Applying a `BasicPlan` to a pydicom dataset, at every depth and in the file meta.

One walk over the dataset: an element the plan does not name is left as read (pydicom keeps
it raw, so it is neither parsed nor re-encoded); sequences are descended into wherever they
are; private elements go (the table's private-attributes row) at every depth. What each
action does to a value:

- ``dummy``: a fixed value valid for the element's VR (``_DUMMIES``); a sequence becomes empty,
  because a dummy item could only be made of the original's attributes;
- ``empty``: zero length (an empty sequence for SQ);
- ``uid``: each value replaced by `uids.remap_uid` (same input, same salt, same output);
- ``shift_date``: DA and DT moved back by the site's offset, times kept (a whole-day shift
  leaves them unchanged), other VRs kept;
- ``clean``: text kept after every occurrence of the instance's own identifying values (names,
  IDs, birth date, accession number: ``_IDENTIFYING``) is replaced by ``*``; sequences are
  de-identified item by item. The standard leaves "clean" to the implementation: we cannot
  understand free text, so we remove what we know identifies this patient and keep the rest.

The file meta keeps only what Part-10 needs (`fast_rewrite.META_KEPT`): source, sending and
receiving AE titles and addresses and private information name the site's devices or carry
vendor data. Retired group lengths go, since the groups change. The dataset is then marked as
the standard asks (Patient Identity Removed, De-identification
Method and its code sequence, Longitudinal Temporal Information Modified).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from common.deid.basic import Action, BasicPlan
from common.deid.errors import DeidError
from common.deid.fast_rewrite import META_KEPT
from common.deid.uids import date_offset_days, remap_uid, shift_date, shift_datetime

__all__ = ["apply_basic_plan", "marker_elements"]

_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST"})
_TEXT_VRS |= {"TM", "UC", "UI", "UR", "UT"}
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_DUMMIES: dict[str, object] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UR": "",
    "UT": "ANONYMIZED",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "UL": 0,
    "US": 0,
    "SV": 0,
    "UV": 0,
}
# Values of these attributes are searched for and scrubbed from text kept by "clean".
_IDENTIFYING = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MedicalRecordLocator",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
)
_MIN_TOKEN = 3
_METHOD = "DICOM PS3.15 E.1-1 Basic Application Confidentiality Profile"
# DICOM CID 7050 "De-identification Method": the profile and each option.
_METHOD_CODES = {
    None: ("113100", "Basic Application Confidentiality Profile"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
}


@dataclass(slots=True)
class _Walk:
    plan: BasicPlan
    salt: str
    offset_days: int
    scrub: re.Pattern[str] | None = None
    path: list[str] = field(default_factory=list)


def apply_basic_plan(ds: Dataset, plan: BasicPlan, salt: str) -> None:
    """De-identify `ds` (and its file meta) in place under `plan`.

    Raises:
        DeidError: a value the plan must change cannot be read (the reason names the tag).
    """
    walk = _Walk(plan, salt, date_offset_days(salt))
    if Action.CLEAN in plan.exact.values():
        walk.scrub = _scrub_pattern(ds)
    _walk(ds, walk)
    if "file_meta" in ds.__dict__:
        _walk(ds.file_meta, walk)
        for tag in list(ds.file_meta.keys()):
            if tag not in META_KEPT and tag != 0x00020000:
                del ds.file_meta[tag]
    _mark(ds, plan)


def _walk(ds: Dataset, walk: _Walk) -> None:
    for tag in list(ds.keys()):
        if tag.element == 0 and tag.group != 0x0002:
            del ds[tag]  # a retired group length would no longer match its group
            continue
        if tag.is_private:
            if walk.plan.remove_private:
                del ds[tag]
            continue
        action = walk.plan.action_for(tag)
        if action is None or action is Action.KEEP:
            if _vr(ds, tag) == "SQ":
                _walk_items(ds[tag].value, walk)
            continue
        if action is Action.REMOVE:
            del ds[tag]
            continue
        try:
            _apply(ds[tag], action, walk)
        except (ValueError, TypeError, OverflowError):
            raise DeidError(
                f"{_tag_text(tag)} holds a value that the Basic Profile's {action} rule "
                "cannot process; the instance was not de-identified"
            ) from None


def _walk_items(items: Iterable[Dataset], walk: _Walk) -> None:
    for item in items:
        _walk(item, walk)


def _apply(elem: DataElement, action: Action, walk: _Walk) -> None:
    vr = elem.VR
    if vr == "SQ":
        if action in (Action.ITEMS, Action.CLEAN, Action.UID, Action.SHIFT_DATE):
            _walk_items(elem.value, walk)
        else:
            elem.value = DicomSequence()
        return
    if action in (Action.EMPTY, Action.ITEMS):
        elem.value = _empty(vr)
    elif action is Action.DUMMY:
        elem.value = _DUMMIES.get(vr, _empty(vr)) if vr != "UI" else _map_values(elem, walk)
    elif action is Action.UID:
        elem.value = _map_values(elem, walk) if vr == "UI" else _empty(vr)
    elif action is Action.SHIFT_DATE:
        if vr in ("DA", "DT"):
            shift = shift_date if vr == "DA" else shift_datetime
            elem.value = _each(elem.value, lambda text: shift(text, walk.offset_days))
    elif action is Action.CLEAN and vr in _TEXT_VRS and walk.scrub is not None:
        scrub = walk.scrub
        elem.value = _each(elem.value, lambda text: scrub.sub("*", text))


def _map_values(elem: DataElement, walk: _Walk) -> object:
    return _each(elem.value, lambda uid: remap_uid(walk.salt, uid) if uid else uid)


def _each(value: object, change: Callable[[str], str]) -> object:
    if value is None or value == "":
        return value
    if isinstance(value, MultiValue | list):
        return [change(str(item)) for item in value]
    return change(str(value))


def _empty(vr: str) -> object:
    if vr in _BYTES_VRS:
        return b""
    if vr in _TEXT_VRS:
        return ""
    return None


def _vr(ds: Dataset, tag: BaseTag) -> str | None:
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _scrub_pattern(ds: Dataset) -> re.Pattern[str] | None:
    tokens: set[str] = set()
    for keyword in _IDENTIFYING:
        value = ds.get(keyword)
        if value is None:
            continue
        values = value if isinstance(value, MultiValue | list) else [value]
        for one in values:
            text = str(one).strip()
            tokens.add(text)
            tokens.update(re.split(r"[\^= ,]+", text))
    usable = sorted((token for token in tokens if len(token) >= _MIN_TOKEN), key=len, reverse=True)
    if not usable:
        return None
    return re.compile("|".join(re.escape(token) for token in usable), re.IGNORECASE)


def marker_elements(plan: BasicPlan) -> bytes:
    """The marker elements `apply_basic_plan` adds, encoded in explicit VR little endian."""
    ds = Dataset()
    _mark(ds, plan)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def _mark(ds: Dataset, plan: BasicPlan) -> None:
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [_METHOD, *sorted(plan.options)]
    codes = []
    for option in (None, *sorted(plan.options)):
        value, meaning = _METHOD_CODES[option]
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
    modified = "retain_longitudinal_modified_dates" in plan.options
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if modified else "REMOVED"


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
