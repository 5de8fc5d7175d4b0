"""The rollout mode of bench/fleet.py (`--rollout 1,10,100`): simulated agents, one per site,
and one rollout over all the sites, timed stage by stage from the API's own timestamps.

The baseline, measured in the same run on the same agents: the same kind of change written by
hand, `PUT /api/v1/sites/{site}/config` to every site (16 in flight), until every agent has it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx2

from common.durations import parse_duration

SITE_PREFIX = "bench-"
REGISTER_CONCURRENCY = 16
# The stage times come from the rollout's own timestamps, so polling only says when it ended;
# a 1,000-site answer is work for the control plane, and polling it often slows the rollout.
POLL_S = 1.0


@dataclass(frozen=True)
class StageTiming:
    """One stage as the rollout's answer timed it."""

    stage: int
    percent: int
    sites: int
    agents: int
    apply_s: float
    """From the stage's start until every agent had applied (its soak began)."""
    beyond_soak_s: float
    """From the stage's start until it completed, less the soak."""


@dataclass(frozen=True)
class RolloutRun:
    """What the rollout mode measured."""

    stages: list[StageTiming]
    total_s: float
    soak_s: float
    baseline_s: float
    state: str


Agent = TypeVar("Agent")


async def register_sites(
    admin: httpx2.AsyncClient, count: int, make: Callable[[str, str], Agent]
) -> list[Agent]:
    """Create `count` sites with one agent each; `make(agent_id, token)` for each agent."""
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def one(index: int) -> Agent:
        site = f"{SITE_PREFIX}{index:05d}"
        async with gate:
            created = await admin.post("/api/v1/sites", json={"name": site, "timezone": "UTC"})
            created.raise_for_status()
            agent = await admin.post(
                f"/api/v1/sites/{site}/agents", json={"name": "agent", "deployment": "edge"}
            )
        agent.raise_for_status()
        body = agent.json()
        return make(body["id"], body["token"])

    return list(await asyncio.gather(*(one(index) for index in range(count))))


async def hand_push(
    admin: httpx2.AsyncClient, count: int, wait_all: Callable[[int], Awaitable[object]]
) -> float:
    """Seconds to PUT a new config to every site by hand until every agent had it."""
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)
    started = time.perf_counter()

    async def one(index: int) -> int:
        async with gate:
            response = await admin.put(
                f"/api/v1/sites/{SITE_PREFIX}{index:05d}/config",
                json={"timing": {"sleep_time": "61s"}},
            )
        response.raise_for_status()
        revision: int = response.json()["revision"]
        return revision

    revisions = set(await asyncio.gather(*(one(index) for index in range(count))))
    assert revisions == {1}, revisions
    await wait_all(1)
    return time.perf_counter() - started


async def run_rollout(
    admin: httpx2.AsyncClient, stages: list[int], soak: str, progress: Callable[[str], None]
) -> RolloutRun:
    """Roll `timing.sleep_time` out to every site in `stages`; time it from the answers."""
    started = time.perf_counter()
    created = await admin.post(
        "/api/v1/rollouts",
        json={
            "sites": "all",
            "config": {"timing": {"sleep_time": "62s"}},
            "stages": stages,
            "soak": soak,
        },
    )
    created.raise_for_status()
    rollout_id = created.json()["id"]
    seen = 0
    while True:
        answer = (await admin.get(f"/api/v1/rollouts/{rollout_id}")).json()
        done = [stage for stage in answer["stages"] if stage["completed_at"] is not None]
        if len(done) > seen:
            seen = len(done)
            progress(f"rollout stage {seen} of {len(stages)} completed")
        if answer["state"] != "running":
            break
        await asyncio.sleep(POLL_S)
    total = time.perf_counter() - started
    soak_s = _seconds(answer["soak"])
    timings = []
    for stage in answer["stages"]:
        if stage["started_at"] is None or stage["completed_at"] is None:
            continue
        begun = dt.datetime.fromisoformat(stage["started_at"])
        soaked = dt.datetime.fromisoformat(stage["soak_started_at"])
        ended = dt.datetime.fromisoformat(stage["completed_at"])
        timings.append(
            StageTiming(
                stage=stage["stage"],
                percent=stage["percent"],
                sites=len(stage["sites"]),
                agents=stage["agents"],
                apply_s=(soaked - begun).total_seconds(),
                beyond_soak_s=(ended - begun).total_seconds() - (soak_s if stage["agents"] else 0),
            )
        )
    return RolloutRun(timings, total, soak_s, 0.0, answer["state"])


def _seconds(text: str) -> float:
    return parse_duration(text).total_seconds()


def report(run: RolloutRun, agents: int, tick_s: float) -> list[str]:
    """The rollout mode's Markdown lines."""
    beyond = sum(stage.beyond_soak_s for stage in run.stages)
    lines = [
        f"- rollout over {agents} sites of one agent each ended `{run.state}` in"
        f" {run.total_s:.1f} s (soak {run.soak_s:g} s per stage, driver tick {tick_s:g} s)",
        f"- baseline, the same change by hand (PUT to every site, 16 in flight, until every"
        f" agent had it): {run.baseline_s:.2f} s; the rollout's time beyond its soaks is"
        f" {beyond:.2f} s, {beyond / run.baseline_s:.2f}x the baseline",
        "",
        "| stage | % | sites | agents | push + every agent applied (s) | stage beyond soak (s) |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {stage.stage} | {stage.percent} | {stage.sites} | {stage.agents} |"
            f" {stage.apply_s:.2f} | {stage.beyond_soak_s:.2f} |"
            for stage in run.stages
        ),
    ]
    return lines
