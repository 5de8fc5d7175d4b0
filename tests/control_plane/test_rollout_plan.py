"""The pure logic of rollouts: merge patches (RFC 7396), stage membership, state changes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.fleet.rollout_plan import (
    RolloutAction,
    RolloutState,
    RolloutStateError,
    merge_patch,
    next_state,
    plan_stages,
    stage_problems,
)

# The examples of RFC 7396, appendix A.
RFC_7396_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_7396_EXAMPLES)
def test_merge_patch_gives_the_results_of_rfc_7396(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_merge_patch_changes_neither_of_its_arguments() -> None:
    target = {"timing": {"sleep_time": "1m", "grace_period": "7d"}}
    patch = {"timing": {"sleep_time": None}}

    merge_patch(target, patch)

    assert target == {"timing": {"sleep_time": "1m", "grace_period": "7d"}}
    assert patch == {"timing": {"sleep_time": None}}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=2), children, max_size=3)
    ),
    max_leaves=10,
)


@given(target=json_values, patch=json_values)
def test_applying_a_merge_patch_twice_is_applying_it_once(target: Any, patch: Any) -> None:
    once = merge_patch(target, patch)

    assert merge_patch(once, patch) == once


def test_one_agent_per_site_over_three_sites_gives_one_site_per_stage() -> None:
    sites = [("site-c", 1), ("site-a", 1), ("site-b", 1)]

    assert plan_stages(sites, [10, 50, 100]) == [2, 0, 1]


def test_stages_count_agents_not_sites() -> None:
    sites = [("a", 8), ("b", 1), ("c", 1)]

    # a alone is 80 %: it covers the 10 % and 50 % goals, so stage 2 (50 %) has nothing left.
    assert plan_stages(sites, [10, 50, 100]) == [0, 2, 2]


def test_sites_without_agents_wait_for_the_last_stage() -> None:
    sites = [("a", 0), ("b", 2), ("c", 0), ("d", 2)]

    assert plan_stages(sites, [50, 100]) == [1, 0, 1, 1]


def test_a_thousand_single_agent_sites_split_as_the_percentages_say() -> None:
    sites = [(f"site-{index:04d}", 1) for index in range(1000)]

    planned = plan_stages(sites, [1, 10, 100])

    assert [planned.count(stage) for stage in range(3)] == [10, 90, 900]


@given(
    counts=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=30),
    raw=st.lists(st.integers(min_value=1, max_value=99), max_size=4, unique=True),
)
def test_every_stage_covers_at_least_its_share_of_agents(counts: list[int], raw: list[int]) -> None:
    stages = [*sorted(raw), 100]
    sites = [(f"s{index:02d}", count) for index, count in enumerate(counts)]
    planned = plan_stages(sites, stages)
    total = sum(counts)

    for stage, percent in enumerate(stages):
        covered = sum(count for (_, count), at in zip(sites, planned, strict=True) if at <= stage)
        assert covered * 100 >= percent * total
    assert all(0 <= at < len(stages) for at in planned)


@pytest.mark.parametrize(
    ("stages", "fragment"),
    [
        ([], "at least one stage"),
        ([10, 10, 100], "does not grow"),
        ([50, 20, 100], "does not grow"),
        ([10, 50], "must be 100"),
        ([0, 100], "from 1 to 100"),
        ([10, 101], "from 1 to 100"),
    ],
)
def test_invalid_stages_are_named(stages: list[int], fragment: str) -> None:
    assert any(fragment in problem for problem in stage_problems(stages))


def test_valid_stages_have_no_problem() -> None:
    assert stage_problems([1, 10, 100]) == []
    assert stage_problems([100]) == []


@pytest.mark.parametrize(
    ("state", "action", "after"),
    [
        (RolloutState.running, RolloutAction.pause, RolloutState.paused),
        (RolloutState.paused, RolloutAction.resume, RolloutState.running),
        (RolloutState.running, RolloutAction.abort, RolloutState.aborted),
        (RolloutState.paused, RolloutAction.abort, RolloutState.aborted),
    ],
)
def test_allowed_state_changes(
    state: RolloutState, action: RolloutAction, after: RolloutState
) -> None:
    assert next_state(state, action) is after


@pytest.mark.parametrize("state", [s for s in RolloutState if s.ended])
@pytest.mark.parametrize("action", list(RolloutAction))
def test_an_ended_rollout_refuses_every_action(state: RolloutState, action: RolloutAction) -> None:
    with pytest.raises(RolloutStateError, match=state.value):
        next_state(state, action)


def test_pausing_a_paused_rollout_or_resuming_a_running_one_is_refused() -> None:
    with pytest.raises(RolloutStateError, match="resume it or abort it"):
        next_state(RolloutState.paused, RolloutAction.pause)
    with pytest.raises(RolloutStateError):
        next_state(RolloutState.running, RolloutAction.resume)
