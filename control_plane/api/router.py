"""The `/api/v1` router: every resource router under one prefix."""

from fastapi import APIRouter

from control_plane.api.routes import (
    acquisitions,
    agent_config,
    agents,
    files,
    groups,
    ingest,
    sites,
)

api_router = APIRouter(prefix="/api/v1")
for _module in (groups, acquisitions, files, sites, agents, agent_config, ingest):
    api_router.include_router(_module.router)
