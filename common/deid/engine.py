"""`Deidentifier`: the one entry point of de-identification, for the agent and the preview.

Built once per config revision (`Deidentifier.from_config`), immutable afterwards, so worker
threads may share it. Two kinds of profile, one contract:

- ``basic``: the Basic Profile plan of `basic.py` (built from Table E.1-1) applied by
  `rewrite.py` at every depth and in the file meta. fw-file-rs cannot express it faithfully:
  its sequence recursion applies top-level rules twice, refuses regex selectors, skips the
  file meta and repeating groups such as (50xx,xxxx) are not selectable.
- a Flywheel-format profile: applied by fw-file-rs (`flywheel.py`) with the site's salt. The
  UIDs its ``hashuid`` rules replaced are then replaced wherever else they occur (file meta,
  references in sequences), so an instance never refers to its own original UIDs. That
  second pass parses the instance only when an original UID is still present in the bytes.

Every failure is a `DeidError` whose reason quotes no DICOM value.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Literal

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian

from common.config import DeidConfig
from common.deid.basic import BasicPlan, build_basic_plan
from common.deid.errors import DeidError
from common.deid.fast_rewrite import (
    FastPathUnsupported,
    apply_basic_plan_fast,
    reduce_file_meta,
)
from common.deid.flywheel import FlywheelRules, engine_reason
from common.deid.preview import AttributeChange, dataset_changes
from common.deid.rewrite import apply_basic_plan, marker_elements

__all__ = ["AttributeChange", "DeidError", "DeidentifiedInstance", "Deidentifier"]

_INSTANCE_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
_UID_TAGS = (
    ("SOPInstanceUID", 0x00080018),
    ("SeriesInstanceUID", 0x0020000E),
    ("StudyInstanceUID", 0x0020000D),
)
# A sequence item goes through fw-file-rs as a small instance of its own; these identify the
# carrier, not any real instance (the UID has enough components for hashuid on the file meta).
_CARRIER_CLASS = UID("1.2.840.10008.5.1.4.1.1.7")
_CARRIER_INSTANCE = UID("2.25.1.2.3.4.5.6.7.8.9")
_PYDICOM_SETTINGS = threading.Lock()
_UNPARSABLE = "the instance cannot be parsed as DICOM"
_PARSE_ERRORS = (ValueError, TypeError, OSError, KeyError, EOFError, struct.error)
_NOT_PART10 = "not a DICOM Part-10 instance (no preamble and file meta)"
_UID_CHARS = frozenset(bytes([byte]) for byte in b"0123456789.")


@dataclass(frozen=True, slots=True)
class DeidentifiedInstance:
    """The de-identified Part-10 bytes and the (new) UIDs the upload needs."""

    data: bytes
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str


class Deidentifier:
    """Applies one site's de-identification profile; cheap to call from any thread."""

    def __init__(self, *, kind: Literal["basic", "flywheel"], salt: str, plan: BasicPlan | None,
                 rules: FlywheelRules | None) -> None:  # fmt: skip
        self.kind = kind
        self._salt = salt
        self._plan = plan
        self._rules = rules
        self._marks = marker_elements(plan) if plan is not None else b""
        # The explicit-VR-LE header of each attribute hashuid names: tag and "UI".
        self._uid_patterns = [
            (keyword, struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"UI")
            for keyword, tag in _tags(rules.hashed_names if rules else frozenset())
        ]

    @classmethod
    def from_config(cls, deid: DeidConfig, salt: str) -> Deidentifier | None:
        """The de-identifier for a validated config, or None for profile ``none``.

        Raises:
            ValueError: for an empty salt (every hash and UID would be guessable).
        """
        if deid.profile == "none":
            return None
        if not salt:
            raise ValueError("a de-identification salt is required; the site has none")
        if deid.profile == "basic":
            return cls(kind="basic", salt=salt, plan=build_basic_plan(deid.options), rules=None)
        return cls(kind="flywheel", salt=salt, plan=None, rules=FlywheelRules(deid.profile, salt))

    def __repr__(self) -> str:
        # The salt must never show up in a log line or a traceback.
        return f"Deidentifier(kind={self.kind!r})"

    def deidentify(self, part10: bytes) -> DeidentifiedInstance:
        """De-identify one Part-10 instance (pixel data included, unchanged).

        Raises:
            DeidError: the instance cannot be read or the profile cannot apply to it.
        """
        if self._plan is not None:
            try:
                fast = apply_basic_plan_fast(part10, self._plan, self._salt, self._marks)
            except FastPathUnsupported:
                with _quiet_pydicom():
                    ds = _read(part10)
                    try:
                        apply_basic_plan(ds, self._plan, self._salt)
                    except _PARSE_ERRORS:
                        # pydicom parses sequences when they are first touched.
                        raise DeidError(_UNPARSABLE) from None
                    return _instance(_write(ds), ds)
            return _checked(fast.data, {kw: fast.uids.get(tag, "") for kw, tag in _UID_TAGS})
        assert self._rules is not None
        if part10[128:132] != b"DICM":
            raise DeidError(_NOT_PART10)
        try:
            data, replaced, new_at_top = self._rules.apply(part10)
        except ValueError as exc:
            _read(part10)  # an unreadable instance is named as such
            raise DeidError(engine_reason(str(exc))) from None
        try:
            data = reduce_file_meta(data)
        except FastPathUnsupported:
            raise DeidError("the de-identified instance has no readable file meta") from None
        recurse = self._rules.recurse and _may_hold_sequences(data)
        if recurse or (replaced and self._uids_left_behind(data, replaced, new_at_top)):
            with _quiet_pydicom():
                ds = _read(data)
                try:
                    if recurse:
                        _apply_to_items(ds, self._rules)
                    _replace_uids(ds, replaced, self._rules)
                except ValueError as exc:
                    raise DeidError(engine_reason(str(exc))) from None
                except _PARSE_ERRORS:
                    raise DeidError(_UNPARSABLE) from None
                return _instance(_write(ds), ds)
        uids = {keyword: new_at_top.get(keyword, "") for keyword in _INSTANCE_UIDS}
        if not all(uids.values()):
            # Instance UIDs the profile keeps are read back from the output.
            with _quiet_pydicom():
                header = _read(data, stop_before_pixels=True)
                uids = {kw: uids[kw] or str(header.get(kw) or "") for kw in uids}
        return _checked(data, uids)

    def _uids_left_behind(
        self, data: bytes, replaced: dict[str, str], new_at_top: dict[str, str]
    ) -> bool:
        """Whether a UID the profile hashes may still sit somewhere fw-file-rs did not reach.

        Decided on the bytes, so the common case costs no parse: an original UID still
        present, or a hashuid-named attribute occurring more often than fw-file-rs hashed it
        at the top level (so it also occurs inside a sequence). Syntaxes other than explicit
        VR little endian always get the full pass.
        """
        if b"1.2.840.10008.1.2\x00" in data[:1024] or b"1.2.840.10008.1.2.2\x00" in data[:1024]:
            return True
        header = _before_pixel_data(data)
        if any(_contains_uid(header, uid) for uid in replaced):
            return True
        return any(
            header.count(pattern) > (keyword in new_at_top)
            for keyword, pattern in self._uid_patterns
        )

    def preview(self, part10: bytes) -> list[AttributeChange]:
        """What `deidentify` changes in this instance, attribute by attribute.

        Raises:
            DeidError: as `deidentify`.
        """
        after_bytes = self.deidentify(part10).data
        with _quiet_pydicom():
            before = _read(part10, stop_before_pixels=True)
            after = _read(after_bytes, stop_before_pixels=True)
            try:
                return dataset_changes(before, after)
            except _PARSE_ERRORS:
                raise DeidError(_UNPARSABLE) from None


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom without value validation while this module reads and converts elements.

    pydicom logs an invalid value it meets while converting an element, quoting the value
    (a truncated UID, a malformed date): patient data in a log line. Its switch is
    process-wide, so it is flipped under a lock and restored; other pydicom users in the
    process at most miss warnings meanwhile.
    """
    with _PYDICOM_SETTINGS:
        previous = pydicom_config.settings.reading_validation_mode
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        try:
            yield
        finally:
            pydicom_config.settings.reading_validation_mode = previous


def _read(data: bytes, *, stop_before_pixels: bool = False) -> Dataset:
    try:
        return dcmread(BytesIO(data), stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError):
        raise DeidError(_NOT_PART10) from None
    except _PARSE_ERRORS:
        raise DeidError(_UNPARSABLE) from None


def _write(ds: Dataset) -> bytes:
    buffer = BytesIO()
    try:
        dcmwrite(buffer, ds, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, OverflowError):
        raise DeidError("the de-identified instance cannot be encoded") from None
    return buffer.getvalue()


def _instance(data: bytes, ds: Dataset) -> DeidentifiedInstance:
    return _checked(data, {keyword: str(ds.get(keyword) or "") for keyword in _INSTANCE_UIDS})


def _checked(data: bytes, uids: dict[str, str]) -> DeidentifiedInstance:
    for keyword in _INSTANCE_UIDS:
        if not uids.get(keyword):
            raise DeidError(f"the de-identified instance has no {keyword}")
    return DeidentifiedInstance(
        data=data,
        sop_instance_uid=uids["SOPInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
    )


def _may_hold_sequences(data: bytes) -> bool:
    # Explicit VR marks a sequence with "SQ" and two reserved zero bytes; other syntaxes
    # cannot be told without parsing.
    header = _before_pixel_data(data)
    return b"SQ\x00\x00" in header or b"1.2.840.10008.1.2.1\x00" not in data[:1024]


def _apply_to_items(ds: Dataset, rules: FlywheelRules) -> None:
    """Run the profile on every sequence item, at every depth, each item once."""
    for tag in list(ds.keys()):
        if _raw_vr(ds, tag) not in ("SQ", None):
            continue
        elem = ds[tag]
        if elem.VR != "SQ":
            continue
        for index, item in enumerate(elem.value):
            done = _item_through_rules(item, rules)
            elem.value[index] = done
            _apply_to_items(done, rules)


def _raw_vr(ds: Dataset, tag: BaseTag) -> str | None:
    """The VR as read (None when the syntax does not say), without converting the value.

    Converting an element makes pydicom validate it, and pydicom logs an invalid value with
    the value itself: only the elements this module changes are converted.
    """
    vr = getattr(ds.get_item(tag), "VR", None)
    return str(vr) if vr else None


def _item_through_rules(item: Dataset, rules: FlywheelRules) -> Dataset:
    carrier = Dataset()
    for elem in item:
        carrier.add(elem)
    carrier.file_meta = FileMetaDataset()
    carrier.file_meta.MediaStorageSOPClassUID = _CARRIER_CLASS
    carrier.file_meta.MediaStorageSOPInstanceUID = _CARRIER_INSTANCE
    carrier.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    result = _read(rules.item_rules(_write(carrier)))
    done = Dataset()
    for elem in result:
        done.add(elem)
    return done


def _before_pixel_data(data: bytes) -> bytes:
    """The bytes before the top-level Pixel Data element (all of them when there is none).

    Searching pixel values for a tag is slow (they are full of partial matches) and pointless:
    what follows Pixel Data at the top level is only padding and signatures.
    """
    starts = [data.find(b"\xe0\x7f\x10\x00" + vr) for vr in (b"OB", b"OW")]
    found = [start for start in starts if start > 0]
    return data[: min(found)] if found else data


def _contains_uid(data: bytes, uid: str) -> bool:
    # A UID followed by a digit or a dot is only the start of a longer UID.
    needle = uid.encode()
    start = data.find(needle)
    while start >= 0:
        end = start + len(needle)
        if end == len(data) or data[end : end + 1] not in _UID_CHARS:
            return True
        start = data.find(needle, start + 1)
    return False


def _tags(names: frozenset[str]) -> list[tuple[str, int]]:
    """(keyword, tag) for attribute names given as keywords or as (gggg,eeee)."""
    found = []
    for name in sorted(names):
        if name.startswith("("):
            tag = int(name.strip("()").replace(",", ""), 16)
            found.append((keyword_for_tag(tag) or name, tag))
        else:
            known = tag_for_keyword(name)
            if known is not None:
                found.append((name, known))
    return found


def _replace_uids(ds: Dataset, replaced: dict[str, str], rules: FlywheelRules) -> None:
    """Give every occurrence of a UID the profile replaced its new value, and hash the UIDs
    of hashuid-named attributes inside sequences (fw-file-rs reaches the top level only)."""

    def new_uid(elem: DataElement, uid: str, nested: bool) -> str:
        if uid in replaced:
            return replaced[uid]
        if nested and (
            elem.keyword in rules.nested_hash_names
            or _tag_text(elem.tag) in rules.nested_hash_names
        ):
            replaced[uid] = rules.hash_uid(uid)
            return replaced[uid]
        return uid

    def visit(dataset: Dataset, nested: bool) -> None:
        for tag in list(dataset.keys()):
            if _raw_vr(dataset, tag) not in ("SQ", "UI", None):
                continue
            elem = dataset[tag]
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item, True)
            elif elem.VR == "UI" and elem.value:
                if elem.VM > 1:
                    elem.value = [new_uid(elem, str(uid), nested) for uid in elem.value]
                else:
                    elem.value = new_uid(elem, str(elem.value), nested)

    visit(ds, False)
    if "file_meta" in ds.__dict__:
        visit(ds.file_meta, False)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
