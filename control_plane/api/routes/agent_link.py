"""`GET /api/v1/agent/link`: the websocket every agent dials out to (agent tokens only).

The token is checked on the upgrade request, before the websocket opens: a missing, unknown,
rotated or revoked token (or the admin token, which belongs to no site) is answered with HTTP
401 — or, on a server without the websocket denial-response extension, a close with 4401
before accept. The conversation lives in `control_plane.link`; this module only adapts
Starlette's websocket to it.
"""

from collections.abc import AsyncIterator

import structlog
from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected, WebSocketState

from common.messages import CLOSE_UNAUTHORIZED
from control_plane.fleet.agents import authenticate_link
from control_plane.link import LinkClosedError
from control_plane.resources import Resources

router = APIRouter(tags=["agent"])
logger = structlog.get_logger(__name__)

LINK_PATH = "/agent/link"
_DENIAL_EXTENSION = "websocket.http.response"
_REFUSAL = (
    "the agent link needs `Authorization: Bearer AGENT_TOKEN` with a current agent token;"
    " a rotated or revoked token is refused: install the token from POST /api/v1/agents/{id}/token"
)
_CLOSE_INTERNAL_ERROR = 1011


@router.websocket(LINK_PATH)
async def agent_link(websocket: WebSocket) -> None:
    """Authenticate the agent, then run its link until either side closes it."""
    resources: Resources = websocket.app.state.resources
    token = _bearer_token(websocket.headers.get("authorization"))
    agent = None
    if token is not None:
        async with resources.read_sessionmaker() as session:
            agent = await authenticate_link(session, token)
    if agent is None:
        await _refuse(websocket)
        return
    await websocket.accept()
    try:
        await resources.hub.serve(agent, _StarletteTransport(websocket), _frames(websocket))
    except (SQLAlchemyError, OSError) as exc:
        # The agent reconnects with backoff; only the class is logged, database messages can
        # quote values.
        logger.error("agent link failed", agent_id=str(agent.agent_id), error=type(exc).__name__)
        if websocket.application_state is WebSocketState.CONNECTED:
            await websocket.close(_CLOSE_INTERNAL_ERROR, "control plane error; reconnect later")


class _StarletteTransport:
    """`control_plane.link.LinkTransport` over a Starlette websocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    async def send_text(self, text: str) -> None:
        try:
            await self._websocket.send_text(text)
        except (WebSocketDisconnect, WebSocketDisconnected) as exc:
            raise LinkClosedError("the agent went away") from exc

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._websocket.close(code, reason)
        except (WebSocketDisconnect, WebSocketDisconnected) as exc:
            raise LinkClosedError("the agent went away") from exc


async def _frames(websocket: WebSocket) -> AsyncIterator[str | bytes]:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None:
            yield text
            continue
        data = message.get("bytes")
        if data is not None:
            yield data


def _bearer_token(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _refuse(websocket: WebSocket) -> None:
    if _DENIAL_EXTENSION in (websocket.scope.get("extensions") or {}):
        await websocket.send_denial_response(
            JSONResponse(
                {"detail": _REFUSAL}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        )
    else:
        await websocket.close(CLOSE_UNAUTHORIZED, "unknown or revoked agent token")
