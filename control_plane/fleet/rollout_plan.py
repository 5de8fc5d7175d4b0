"""The pure logic of rollouts: JSON merge patches, which sites each stage holds, and which
state changes are allowed. No I/O; `control_plane.fleet.rollouts` and the driver use these.

Stages are cumulative percentages of the target's agents. A config revision belongs to a whole
site (every agent of a site runs the same revision), so a stage is a set of whole sites: stage
*i* holds the sites, in name order, that bring the count of agents covered up to
ceil(percent_i x agents / 100). A stage the previous one already covers is empty and passes at
once. Sites without agents go in the last stage: nothing can prove a change on them, so they
get it only once it has been proven everywhere else (docs/rollouts.md).
Must not import FastAPI or the database layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from control_plane.errors import ConflictError


class RolloutState(StrEnum):
    """What the API shows of a rollout (contract)."""

    running = "running"
    paused = "paused"
    completed = "completed"
    rolled_back = "rolled_back"
    aborted = "aborted"

    @property
    def ended(self) -> bool:
        """Whether nothing more will be pushed (a rollback may still be finishing)."""
        return self in (RolloutState.completed, RolloutState.rolled_back, RolloutState.aborted)


class RolloutAction(StrEnum):
    """What a person may ask of a rollout."""

    pause = "pause"
    resume = "resume"
    abort = "abort"


_TRANSITIONS = {
    (RolloutState.running, RolloutAction.pause): RolloutState.paused,
    (RolloutState.paused, RolloutAction.resume): RolloutState.running,
    (RolloutState.running, RolloutAction.abort): RolloutState.aborted,
    (RolloutState.paused, RolloutAction.abort): RolloutState.aborted,
}


class RolloutStateError(ConflictError):
    """An action the rollout's state does not allow (409)."""


def next_state(state: RolloutState, action: RolloutAction) -> RolloutState:
    """The state after `action`; `RolloutStateError` saying why when not allowed."""
    target = _TRANSITIONS.get((state, action))
    if target is None:
        if state.ended:
            raise RolloutStateError(f"the rollout is {state.value}; it cannot {action.value} now")
        raise RolloutStateError(
            f"a {state.value} rollout cannot {action.value}"
            + ("; resume it or abort it" if state is RolloutState.paused else "")
        )
    return target


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch of `target` by `patch` (neither is changed).

    An object patch merges key by key, a `null` value removes the key, anything else (arrays
    included) replaces the value whole.
    """
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def stage_problems(stages: Sequence[int]) -> list[str]:
    """What is wrong with a list of cumulative stage percentages (empty: valid)."""
    if not stages:
        return ["stages: give at least one stage, e.g. [100] or [10, 50, 100]"]
    problems = [
        f"stages[{index}]: {percent} is not a percentage from 1 to 100"
        for index, percent in enumerate(stages)
        if not 1 <= percent <= 100
    ]
    problems += [
        f"stages[{index}]: {stages[index]} does not grow on {stages[index - 1]}; stages are"
        " cumulative percentages, each larger than the one before"
        for index in range(1, len(stages))
        if stages[index] <= stages[index - 1]
    ]
    if stages[-1] != 100:
        problems.append(f"stages: the last stage must be 100 (every agent), not {stages[-1]}")
    return problems


def plan_stages(agents_by_site: Sequence[tuple[str, int]], stages: Sequence[int]) -> list[int]:
    """The stage (index into `stages`) of each site of `agents_by_site` (name, agent count),
    in the order given: see the module docstring."""
    total = sum(count for _, count in agents_by_site)
    last = len(stages) - 1
    ordered = sorted(range(len(agents_by_site)), key=lambda index: agents_by_site[index][0])
    planned = [last] * len(agents_by_site)
    covered, stage = 0, 0
    for index in ordered:
        count = agents_by_site[index][1]
        if count == 0:
            continue
        # The first stage whose goal is not yet met takes the next site.
        while stage < last and covered >= math.ceil(stages[stage] * total / 100):
            stage += 1
        planned[index] = stage
        covered += count
    return planned
