"""The upload-policy decision: opt-out (upload unless told not to) or opt-in (only when told to).

Pure logic over one field value. Imports stdlib and `common.config` only: never web, database
or DICOM libraries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from common.config import UploadPolicyConfig

__all__ = ["PolicyDecision", "PolicyReason", "decide_upload", "policy_string_found"]


class PolicyReason(StrEnum):
    """Why an instance was (or was not) uploaded."""

    opted_out = "opted_out"
    not_opted_out = "not_opted_out"
    opted_in = "opted_in"
    not_opted_in = "not_opted_in"


@dataclass(frozen=True)
class PolicyDecision:
    """Whether to upload, and the reason recorded with the decision."""

    upload: bool
    reason: PolicyReason


def decide_upload(policy: UploadPolicyConfig, field_value: str | None) -> PolicyDecision:
    """Decide whether a series is uploaded under ``policy``, given its policy field's value.

    A missing or empty field holds no policy string: it is uploaded under opt-out and not
    uploaded under opt-in. See `policy_string_found` for how strings are matched.
    """
    found = policy_string_found(policy.strings, field_value)
    if policy.mode == "opt-out":
        if found:
            return PolicyDecision(upload=False, reason=PolicyReason.opted_out)
        return PolicyDecision(upload=True, reason=PolicyReason.not_opted_out)
    if found:
        return PolicyDecision(upload=True, reason=PolicyReason.opted_in)
    return PolicyDecision(upload=False, reason=PolicyReason.not_opted_in)


def policy_string_found(strings: list[str], field_value: str | None) -> bool:
    """Whether any of ``strings`` appears in ``field_value`` as a whole word, in any case.

    "Whole word" means the match is not directly preceded or followed by a letter, a digit,
    ``_`` or ``-``: ``NOFW`` matches ``"research NOFW please"``, ``"NOFW."`` and
    ``"fw://g/p NOFW"``, but not ``"NOFWX"``. The hyphen counts as part of a word so that an
    opt-in string ``UPLOAD`` does not match an operator's ``NO-UPLOAD``.
    """
    if not field_value or not strings:
        return False
    return _pattern(tuple(strings)).search(field_value) is not None


@lru_cache(maxsize=32)
def _pattern(strings: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(string) for string in strings)
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE)
