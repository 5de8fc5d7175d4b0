"""The `/api/v1` router: every resource router under one prefix."""

from fastapi import APIRouter

from control_plane.api.routes import (
    acquisitions,
    agent_config,
    agent_link,
    agents,
    audit,
    card,
    deid,
    files,
    fleet_health,
    groups,
    ingest,
    metrics,
    rollouts,
    routing_check,
    series,
    sessions,
    sites,
    tokens,
)

api_router = APIRouter(prefix="/api/v1")
for _module in (
    groups,
    routing_check,
    acquisitions,
    sessions,
    files,
    sites,
    series,
    deid,
    agents,
    fleet_health,
    metrics,
    card,
    agent_config,
    agent_link,
    ingest,
    tokens,
    audit,
    rollouts,
):
    api_router.include_router(_module.router)
