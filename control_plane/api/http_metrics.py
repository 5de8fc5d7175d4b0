"""ASGI middleware counting every HTTP request by method, route template and status.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which buffers streamed bodies and does
not see websockets; the link's websocket is not an HTTP request and is not counted here.
The route template comes from the route FastAPI matched (`route_template`); a request that
matched none is counted as `unmatched`, so a scan of random paths adds one series, not many.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.metrics import HttpMetrics

UNMATCHED = "unmatched"


class HttpMetricsMiddleware:
    """Counts each answered HTTP request in `metrics`."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe(
                scope["method"], route_template(scope), status, time.perf_counter() - started
            )


def route_template(scope: Scope) -> str:
    """The matched route's whole path template (`/api/v1/sites/{site}/metrics`).

    FastAPI 0.16x no longer copies included routes: `scope["route"]` holds the path inside
    its router, and the whole template is in FastAPI's effective route context.
    """
    context = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(context, "path_format", None)
    if template is None:
        template = getattr(scope.get("route"), "path_format", None)
    return str(template) if template else UNMATCHED
