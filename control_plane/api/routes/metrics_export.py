"""`GET /metrics`: the Prometheus exposition (`control_plane.metrics`).

Outside `/api/v1`, like `/healthz`: Prometheus scrapes it without an API token. When
`metrics_token` is set, a scrape must send it as a bearer token (Prometheus'
`authorization` scrape option); a wrong or missing one is answered 401.
"""

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from control_plane.deps import HealthContextDep, ReadSessionDep, ResourcesDep
from control_plane.metrics import HttpMetrics, exposition, read_scrape

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(
    request: Request,
    resources: ResourcesDep,
    session: ReadSessionDep,
    context: HealthContextDep,
) -> Response:
    """Prometheus text format: HTTP, agent links, health states, operational figures."""
    expected = resources.settings.metrics_token
    if expected is not None:
        sent = request.headers.get("Authorization", "")
        wanted = f"Bearer {expected.get_secret_value()}"
        if not hmac.compare_digest(sent.encode(), wanted.encode()):
            return Response(
                status_code=401,
                content=b'{"detail":"a valid metrics token is required"}',
                media_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )
    http: HttpMetrics = request.app.state.http_metrics
    statuses = resources.hub.view.site_statuses(context)
    scrape = await read_scrape(
        session, statuses, context.now, resources.alerter, resources.replica_bus
    )
    return Response(exposition(http, scrape), media_type=CONTENT_TYPE_LATEST)
