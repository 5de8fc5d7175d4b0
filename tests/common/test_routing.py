"""The routing-string grammar: a table of real-world inputs and properties over any text."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.routing import (
    RAW_MAX_LENGTH,
    RoutingDecision,
    RoutingReason,
    RoutingString,
    parse_routing,
)

ROUTED = RoutingReason.routed
NONE = RoutingReason.no_routing_string
INVALID = RoutingReason.invalid_label

# (field value, expected reason, expected (group, project, subject, session) when routed)
TABLE: list[tuple[str | None, RoutingReason, tuple[str, str, str | None, str | None] | None]] = [
    ("fw://neuro/study-parkinsons-2024", ROUTED, ("neuro", "study-parkinsons-2024", None, None)),
    ("fw://neuro/p/sub-001", ROUTED, ("neuro", "p", "sub-001", None)),
    ("fw://neuro/p/sub-001/ses-baseline", ROUTED, ("neuro", "p", "sub-001", "ses-baseline")),
    ("FW://neuro/p", ROUTED, ("neuro", "p", None, None)),
    ("Fw://neuro/p", ROUTED, ("neuro", "p", None, None)),
    ("fW://neuro/p", ROUTED, ("neuro", "p", None, None)),
    ("fw://NEURO/Project-A", ROUTED, ("neuro", "Project-A", None, None)),
    ("fw://neuro/p/", ROUTED, ("neuro", "p", None, None)),
    ("fw://neuro/p/s/e/", ROUTED, ("neuro", "p", "s", "e")),
    ("please route fw://neuro/p/s thanks", ROUTED, ("neuro", "p", "s", None)),
    ("fw://neuro/p\tNOFW", ROUTED, ("neuro", "p", None, None)),
    ("fw://neuro/p\nsecond line", ROUTED, ("neuro", "p", None, None)),
    ("fw://neuro/p\u2028q", ROUTED, ("neuro", "p", None, None)),  # Unicode line separator
    ("fw://neuro/p fw://other/q", ROUTED, ("neuro", "p", None, None)),
    ("fw://neuro/Étude/Sujet-é", ROUTED, ("neuro", "Étude", "Sujet-é", None)),
    ("fw://neuro/Cafe\u0301", ROUTED, ("neuro", "Café", None, None)),
    ("fw://neuro/研究/被験者", ROUTED, ("neuro", "研究", "被験者", None)),
    ("fw://neuro/p ", ROUTED, ("neuro", "p", None, None)),
    ("fw://neuro/p\x00", ROUTED, ("neuro", "p", None, None)),
    ("fw://n_1-x/p.v2/sub.01", ROUTED, ("n_1-x", "p.v2", "sub.01", None)),
    ("fw://neuro/" + "p" * 64, ROUTED, ("neuro", "p" * 64, None, None)),
    (None, NONE, None),
    ("", NONE, None),
    ("research scan, no routing", NONE, None),
    ("fw:/neuro/p", NONE, None),
    ("fw:neuro/p", NONE, None),
    ("fw//neuro/p", NONE, None),
    ("fw:\\\\neuro\\p", NONE, None),
    ("fw://", INVALID, None),
    ("fw:///", INVALID, None),
    ("fw://neuro", INVALID, None),
    ("fw://neuro/", INVALID, None),
    ("fw:///p", INVALID, None),
    ("fw://neuro//s", INVALID, None),
    ("fw://neuro/p//", INVALID, None),
    ("fw://neuro/p/s/e/extra", INVALID, None),
    ("fw://neuro/../etc", INVALID, None),
    ("fw://neuro/./p", INVALID, None),
    ("fw://neuro/p/..", INVALID, None),
    ("fw://neuro/p\\q", INVALID, None),
    ("fw://neuro/p\x00q", INVALID, None),
    ("fw://neuro/p\x07", INVALID, None),
    ("fw://neuro/p\u200bq", INVALID, None),
    ("fw://ne uro/p", INVALID, None),
    ("fw://neuro.lab/p", INVALID, None),
    ("fw://_neuro/p", INVALID, None),
    ("fw://nëuro/p", INVALID, None),
    ("fw://neuro/" + "p" * 65, INVALID, None),
    ("fw://" + "g" * 65 + "/p", INVALID, None),
    ("fw://bad//x fw://neuro/p", INVALID, None),
]


@pytest.mark.parametrize(("value", "reason", "labels"), TABLE)
def test_parse_routing_table(
    value: str | None,
    reason: RoutingReason,
    labels: tuple[str, str, str | None, str | None] | None,
) -> None:
    decision = parse_routing(value)
    assert decision.reason is reason
    if labels is None:
        assert decision.route is None
        return
    assert decision.route is not None
    route = decision.route
    assert (route.group, route.project, route.subject, route.session) == labels


def test_the_table_covers_at_least_thirty_routing_strings() -> None:
    assert len(TABLE) >= 30


def test_a_routed_decision_keeps_the_raw_string_as_found() -> None:
    decision = parse_routing("MR brain  FW://Neuro/P/s/ ok")
    assert decision.raw == "FW://Neuro/P/s/"
    assert decision.route == RoutingString(
        group="neuro", project="P", subject="s", session=None, raw="FW://Neuro/P/s/"
    )


def test_an_invalid_candidate_is_kept_raw_for_support() -> None:
    assert parse_routing("see fw://neuro//s here") == RoutingDecision(
        route=None, reason=INVALID, raw="fw://neuro//s"
    )


def test_no_routing_string_has_no_raw() -> None:
    assert parse_routing("fw:/neuro/p").raw is None


def test_the_first_routing_string_wins_even_when_invalid() -> None:
    decision = parse_routing("fw://neuro/../x fw://neuro/p")
    assert decision.reason is INVALID
    assert decision.raw == "fw://neuro/../x"


def test_a_very_long_candidate_is_refused_and_its_raw_text_is_cut() -> None:
    decision = parse_routing("fw://neuro/" + "x" * 10_000)
    assert decision.reason is INVALID
    assert decision.raw is not None
    assert len(decision.raw) == RAW_MAX_LENGTH
    assert decision.raw.endswith("…")


def test_a_long_field_with_a_short_routing_string_routes() -> None:
    decision = parse_routing("x" * 10_000 + " fw://neuro/p " + "y" * 10_000)
    assert decision.reason is ROUTED


FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def _assert_safe(label: str) -> None:
    assert label not in {"", ".", ".."}
    assert "/" not in label
    assert "\\" not in label
    assert not any(unicodedata.category(char) in FORBIDDEN_CATEGORIES for char in label)


near_routing_text = st.lists(
    st.one_of(
        st.sampled_from(["fw://", "FW://", "/", "//", "\\", ".", "..", " ", "\t", "\x00", "é"]),
        st.text(min_size=0, max_size=8),
    ),
    max_size=12,
).map("".join)


@settings(max_examples=500)
@given(st.one_of(st.text(), near_routing_text, st.none()))
def test_parse_routing_never_raises_and_only_returns_safe_labels(value: str | None) -> None:
    decision = parse_routing(value)
    if decision.reason is ROUTED:
        assert decision.route is not None
        route = decision.route
        assert route.raw == decision.raw
        assert value is not None
        assert route.raw in value
        for label in (route.group, route.project, route.subject, route.session):
            if label is not None:
                _assert_safe(label)
    else:
        assert decision.route is None
        assert decision.reason in {NONE, INVALID}


safe_label = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Zs"),
        blacklist_characters="/\\",
    ),
    min_size=1,
    max_size=20,
).filter(lambda label: label not in {".", ".."} and not any(c.isspace() for c in label))
group_id = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


@given(
    group=group_id,
    labels=st.lists(safe_label, min_size=1, max_size=3),
    before=st.sampled_from(["", "note ", "MR\n"]),
    after=st.sampled_from(["", " NOFW", "\tend"]),
)
def test_a_well_formed_routing_string_round_trips(
    group: str, labels: list[str], before: str, after: str
) -> None:
    text = "fw://" + "/".join([group, *labels])
    decision = parse_routing(before + text + after)
    assert decision.reason is ROUTED
    assert decision.route is not None
    normalised = [unicodedata.normalize("NFC", label) for label in labels]
    padded = [*normalised, None, None][:3]
    assert decision.route.group == group
    assert [decision.route.project, decision.route.subject, decision.route.session] == padded
