"""Rollouts: one config change over many sites in stages, rolled back when an agent fails.

Support creates, pauses, resumes and aborts them; every token that sees the whole fleet reads
them. A site-admin token sees neither (a rollout spans sites): its site's revision history
names the rollout that wrote each revision.
"""

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from control_plane.deps import (
    FleetReaderDep,
    HealthContextDep,
    ReadSessionDep,
    ResourcesDep,
    RolloutDriverDep,
    SessionDep,
    SupportDep,
)
from control_plane.fleet import rollouts
from control_plane.fleet.rollout_plan import RolloutAction, RolloutState
from control_plane.fleet.rollout_schemas import (
    RolloutCreate,
    RolloutCreated,
    RolloutPublic,
    RolloutSummary,
)
from control_plane.schemas import ItemList

router = APIRouter(tags=["rollouts"])


@router.post(
    "/rollouts",
    status_code=status.HTTP_201_CREATED,
    responses={
        422: {
            "description": "An invalid request, no site selected, or a config that would be"
            " invalid on a site (`detail.problems` name the site and key).",
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/HTTPValidationError"},
                            {"$ref": "#/components/schemas/InvalidConfigAnswer"},
                        ]
                    }
                }
            },
        },
        409: {"description": "A target site is in a rollout that has not ended."},
    },
)
async def create_rollout(
    body: RolloutCreate,
    principal: SupportDep,
    session: SessionDep,
    resources: ResourcesDep,
    driver: RolloutDriverDep,
) -> RolloutCreated:
    """Plan and start a rollout; this control plane drives it from now on."""
    created = await rollouts.create_rollout(
        session,
        body,
        principal,
        driver_id=driver.driver_id,
        now=resources.clock(),
        lease=driver.lease,
    )
    driver.wake()
    return created


@router.get("/rollouts")
async def list_rollouts(
    _: FleetReaderDep,
    session: ReadSessionDep,
    state: Annotated[RolloutState | None, Query(description="Only rollouts in this state.")] = None,
) -> ItemList[RolloutSummary]:
    """Every rollout, newest first."""
    return ItemList(items=await rollouts.list_rollouts(session, state))


@router.get("/rollouts/{rollout_id}")
async def get_rollout(
    rollout_id: uuid.UUID, _: FleetReaderDep, session: ReadSessionDep, context: HealthContextDep
) -> RolloutPublic:
    """The rollout's state, stages and per-site results, each agent judged now."""
    return await rollouts.show_rollout(session, rollout_id, context)


async def _act(
    rollout_id: uuid.UUID,
    action: RolloutAction,
    principal: SupportDep,
    session: SessionDep,
    now: dt.datetime,
    context: HealthContextDep,
    driver: RolloutDriverDep,
) -> RolloutPublic:
    await rollouts.act(session, rollout_id, action, principal, now)
    driver.wake()
    return await rollouts.show_rollout(session, rollout_id, context)


@router.post("/rollouts/{rollout_id}/pause")
async def pause_rollout(
    rollout_id: uuid.UUID,
    principal: SupportDep,
    session: SessionDep,
    context: HealthContextDep,
    driver: RolloutDriverDep,
) -> RolloutPublic:
    """Start no further stage; the stage under way stops being watched until resumed."""
    return await _act(
        rollout_id, RolloutAction.pause, principal, session, context.now, context, driver
    )


@router.post("/rollouts/{rollout_id}/resume")
async def resume_rollout(
    rollout_id: uuid.UUID,
    principal: SupportDep,
    session: SessionDep,
    context: HealthContextDep,
    driver: RolloutDriverDep,
) -> RolloutPublic:
    """Go on; a stage that was soaking soaks again for the whole soak."""
    return await _act(
        rollout_id, RolloutAction.resume, principal, session, context.now, context, driver
    )


@router.post("/rollouts/{rollout_id}/abort")
async def abort_rollout(
    rollout_id: uuid.UUID,
    principal: SupportDep,
    session: SessionDep,
    context: HealthContextDep,
    driver: RolloutDriverDep,
) -> RolloutPublic:
    """Stop, and give every site the rollout changed its previous revision back."""
    return await _act(
        rollout_id, RolloutAction.abort, principal, session, context.now, context, driver
    )
