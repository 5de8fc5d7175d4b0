"""Upload policy: opt-out and opt-in decisions over a field value."""

from __future__ import annotations

import pytest

from common.config import UploadPolicyConfig
from common.policy import PolicyDecision, PolicyReason, decide_upload

OPT_OUT = UploadPolicyConfig()
OPT_IN = UploadPolicyConfig(mode="opt-in", strings=["UPLOAD", "FW-YES"])


@pytest.mark.parametrize(
    ("value", "upload", "reason"),
    [
        (None, True, PolicyReason.not_opted_out),
        ("", True, PolicyReason.not_opted_out),
        ("NOFW", False, PolicyReason.opted_out),
        ("nofw", False, PolicyReason.opted_out),
        ("research NOFW please", False, PolicyReason.opted_out),
        ("NOFW.", False, PolicyReason.opted_out),
        ("(NOFW)", False, PolicyReason.opted_out),
        ("fw://neuro/p NOFW", False, PolicyReason.opted_out),
        ("fw://neuro/p\nNoFw", False, PolicyReason.opted_out),
        ("NOFWX", True, PolicyReason.not_opted_out),
        ("XNOFW", True, PolicyReason.not_opted_out),
        ("NOFW_1", True, PolicyReason.not_opted_out),
        ("NOFW-please", True, PolicyReason.not_opted_out),
        ("fw://neuro/p", True, PolicyReason.not_opted_out),
    ],
)
def test_opt_out_uploads_unless_an_opt_out_string_is_a_whole_word(
    value: str | None, upload: bool, reason: PolicyReason
) -> None:
    assert decide_upload(OPT_OUT, value) == PolicyDecision(upload=upload, reason=reason)


@pytest.mark.parametrize(
    ("value", "upload", "reason"),
    [
        (None, False, PolicyReason.not_opted_in),
        ("", False, PolicyReason.not_opted_in),
        ("UPLOAD", True, PolicyReason.opted_in),
        ("please upload", True, PolicyReason.opted_in),
        ("fw-yes", True, PolicyReason.opted_in),
        ("NO-UPLOAD", False, PolicyReason.not_opted_in),
        ("UPLOADED", False, PolicyReason.not_opted_in),
        ("fw://neuro/p", False, PolicyReason.not_opted_in),
    ],
)
def test_opt_in_uploads_only_when_an_opt_in_string_is_a_whole_word(
    value: str | None, upload: bool, reason: PolicyReason
) -> None:
    assert decide_upload(OPT_IN, value) == PolicyDecision(upload=upload, reason=reason)


def test_policy_strings_with_regex_characters_match_literally() -> None:
    policy = UploadPolicyConfig(strings=["NO.FW", "[skip]"])
    assert decide_upload(policy, "NOXFW").reason is PolicyReason.not_opted_out
    assert decide_upload(policy, "note NO.FW").reason is PolicyReason.opted_out
    assert decide_upload(policy, "[skip] this").reason is PolicyReason.opted_out


def test_opt_out_with_no_strings_uploads_everything() -> None:
    assert decide_upload(UploadPolicyConfig(strings=[]), "NOFW").upload


def test_a_reason_compares_equal_to_its_text() -> None:
    assert decide_upload(OPT_OUT, "NOFW").reason == "opted_out"
