"""Flywheel-format de-identification profiles (``version: 1``, ``dicom: {...}``) and fw-file-rs.

A site brings the profile it already uses; fw-file-rs (Flywheel's engine, pinned in
pyproject.toml) validates and applies it. This module checks a profile when the config is
saved (`profile_problems`) and builds the engine for one profile and one salt
(`FlywheelRules`). It imports no pydicom, so `common.config` can use it; fw-file-rs itself is
imported only when a profile is checked or built.

Keys we refuse, and why (each would otherwise be accepted and not do what it says):

- ``dicom.salt``: the control plane keeps the site's salt and it is always the one used;
  a salt written in a config document would be shown to everyone who can read the config.
- ``dicom.filenames``, ``dicom.file-filter``, ``dicom.stop-tags``, ``json``: they rename or
  select files, or stop reading the header early; the connector de-identifies whole instances.
- engine warnings (for example an ``encrypt`` action of another tool): accepted by fw-file-rs
  as a no-op, so refused here.

``recurse-sequence: true`` is carried out here, not by fw-file-rs: fw-file-rs 0.9.1 applies
every top-level rule twice when it recurses (a date shifted twice, a hash hashed again) and
refuses regex selectors with it, so the profile runs without it at the top level and then once
on each sequence item, at every depth (`item_rules`).

UIDs that ``hashuid`` rules replace are replaced everywhere else too (file meta, references in
sequences, see `engine.py`); a reference to an instance (Referenced SOP Instance UID) follows
the instance when SOP Instance UID is hashed.

``uid-suffix-fields`` defaults to 0 here (fw-file-rs keeps the original UID's last component
by default, which would carry part of the original UID out of the site).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import yaml

__all__ = ["FlywheelRules", "engine_reason", "profile_problems"]

_REFUSED_DICOM_KEYS = {
    "salt": "the site's salt is kept by the control plane and always used for hashing; "
    "remove salt from the profile",
    "filenames": "file renaming does not apply to the connector, which uploads instances; "
    "remove it",
    "file-filter": "file filters do not apply to the connector, which de-identifies every "
    "instance it uploads; remove it",
    "stop-tags": "the connector de-identifies the whole header; remove it",
}
_UID_SETTINGS = ("salt", "uid-prefix-fields", "uid-suffix-fields", "uid-numeric-name")
_PARSE_ERROR = re.compile(
    r"^YAML parse error: \d+:\d+: ([A-Za-z0-9_.\-\[\]]+): (.*?)(?: at line \d+ column \d+)?$"
)
_PATH = re.compile(r"^[A-Za-z0-9_.\-\[\]]+$")
_ACTION = re.compile(r"Failed to apply ([a-z-]+) action")
_TAG = re.compile(r"\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)")
# Engine phrases that describe a problem without quoting a value: only these reach a reason.
_SAFE_PHRASES = (
    "UID is too short to be hashed",
    "Unable to parse date field",
    "Unable to parse datetime field",
    "input contains invalid characters",
    "premature end of input",
)


def profile_problems(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem of a Flywheel-format profile as ``(path inside the profile, message)``.

    An empty list means fw-file-rs accepts the profile and nothing in it is refused here.
    """
    from fw_file_rs.dcm import DeidProfile

    problems: list[tuple[str, str]] = []
    dicom = document.get("dicom")
    if not isinstance(dicom, Mapping) or not dicom:
        problems.append(("dicom", "missing; a profile needs a dicom section with its fields"))
    else:
        problems += [
            (f"dicom.{key}", reason) for key, reason in _REFUSED_DICOM_KEYS.items() if key in dicom
        ]
    if document.get("json") is not None:
        problems.append(("json", "the connector de-identifies DICOM only; remove the section"))
    try:
        text = yaml.safe_dump(_plain(document), sort_keys=False)
    except yaml.YAMLError:
        return [*problems, ("", "cannot be written as YAML; use plain mappings, lists and text")]
    result = DeidProfile.validate_yaml(text)
    for message in (*result["errors"], *result["warnings"]):
        problems.append(_located(str(message), document, DeidProfile))
    return problems


def _located(message: str, document: Mapping[str, Any], profile_class: Any) -> tuple[str, str]:
    parse_error = _PARSE_ERROR.match(message)
    if parse_error:
        # A parse error points at a line of the YAML we wrote; find the field it is about.
        path, rest = parse_error.group(1), parse_error.group(2)
        dicom = document.get("dicom")
        fields = dicom.get("fields") if isinstance(dicom, Mapping) else None
        if path == "dicom.fields" and isinstance(fields, list):
            for index, rule in enumerate(fields):
                alone = yaml.safe_dump({"version": 1, "dicom": {"fields": [rule]}})
                if profile_class.validate_yaml(alone)["errors"]:
                    return f"dicom.fields[{index}]", rest
        return path, rest
    path, separator, rest = message.partition(": ")
    if separator and _PATH.match(path):
        return path, rest
    return "", message


class FlywheelRules:
    """fw-file-rs built once for one profile and one site salt; safe to share between threads."""

    def __init__(self, document: Mapping[str, Any], salt: str) -> None:
        from fw_file_rs.dcm import Context

        profile = copy.deepcopy(_plain(document))
        dicom = dict(profile.get("dicom") or {})
        dicom["salt"] = salt
        dicom.setdefault("uid-suffix-fields", 0)
        self.recurse = bool(dicom.pop("recurse-sequence", False))
        profile["dicom"] = dicom
        fields = list(dicom.get("fields") or [])
        hashed = {
            rule.get("name") for rule in fields if isinstance(rule, Mapping) and "hashuid" in rule
        }
        if "SOPInstanceUID" in hashed and not hashed & {
            "MediaStorageSOPInstanceUID",
            "(0002,0003)",
        }:
            # The file meta repeats the SOP Instance UID; fw-file-rs remaps it the same way
            # when asked to, which spares a second pass over the instance.
            fields.append({"name": "MediaStorageSOPInstanceUID", "hashuid": True})
            dicom["fields"] = fields
        self.hashes_uids = bool(hashed)
        names = {str(name) for name in hashed if name}
        if "SOPInstanceUID" in names:
            # A reference to an instance must follow the instance's new UID.
            names |= {"ReferencedSOPInstanceUID", "ReferencedSOPInstanceUIDInFile"}
        self.hashed_names = frozenset(names)
        # Inside sequences, a recursing profile hashes what it names itself; only the
        # references that follow SOP Instance UID are left to the connector.
        self.nested_hash_names = (
            self.hashed_names - {str(name) for name in hashed if name}
            if self.recurse
            else self.hashed_names
        )
        self._context = Context().deid_profile(yaml.safe_dump(profile, sort_keys=False))
        # The same hashuid settings on a one-attribute instance: how fw-file-rs would hash
        # any UID, for the references inside sequences that it does not reach itself.
        uid_only = {key: dicom[key] for key in _UID_SETTINGS if key in dicom}
        uid_only["fields"] = [{"name": "SOPInstanceUID", "hashuid": True}]
        self._uid_context = Context().deid_profile(
            yaml.safe_dump({"version": 1, "dicom": uid_only}, sort_keys=False)
        )

    def hash_uid(self, uid: str) -> str:
        """The UID fw-file-rs's hashuid gives `uid` under this profile and salt."""
        from fw_file_rs.dcm import create_dcm_as_bytes

        _, report = self._uid_context.deid_header_with_report(
            create_dcm_as_bytes({"SOPInstanceUID": uid})
        )
        for entry in report:
            if entry.get("action") == "hash-uid" and entry.get("value_after"):
                return str(entry["value_after"])
        raise ValueError("fw-file-rs did not hash the UID")

    def item_rules(self, part10: bytes) -> bytes:
        """The profile applied to one sequence item, sent as a small Part-10 instance.

        Raises:
            ValueError: from fw-file-rs; its message may quote values, see `engine_reason`.
        """
        return bytes(self._context.deid_header(part10))

    def apply(self, part10: bytes) -> tuple[bytes, dict[str, str], dict[str, str]]:
        """The de-identified bytes, the UIDs the profile replaced (original → new) and the new
        UID of each top-level attribute it replaced (keyword → new UID).

        Raises:
            ValueError: from fw-file-rs; its message may quote values, see `engine_reason`.
        """
        if not self.hashes_uids:
            return bytes(self._context.deid_header(part10)), {}, {}
        data, report = self._context.deid_header_with_report(part10)
        hashed = [
            entry
            for entry in report
            if entry.get("action") == "hash-uid"
            and entry.get("value_before")
            and entry.get("value_after")
        ]
        replaced = {str(entry["value_before"]): str(entry["value_after"]) for entry in hashed}
        by_path = {str(entry.get("path")): str(entry["value_after"]) for entry in hashed}
        return bytes(data), replaced, by_path


def engine_reason(message: str) -> str:
    """A reason for an fw-file-rs failure that keeps only what cannot be a DICOM value."""
    action = _ACTION.search(message)
    reason = (
        f"the profile's {action.group(1)} rule cannot be applied to this instance"
        if action
        else "the de-identification profile cannot be applied to this instance"
    )
    tag = _TAG.search(message)
    if tag:
        reason += f" at {tag.group(0)}"
    phrase = next((phrase for phrase in _SAFE_PHRASES if phrase in message), None)
    if phrase:
        reason += f" ({phrase})"
    return reason


def _plain(document: Mapping[str, Any]) -> dict[str, Any]:
    # A config may arrive as any mapping (a frozen or ordered one, a JSON column's); YAML and
    # fw-file-rs take plain dicts and lists only, at every depth.
    return {str(key): _plain_value(value) for key, value in document.items()}


def _plain_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _plain(value)
    if isinstance(value, list | tuple):
        return [_plain_value(item) for item in value]
    return value
