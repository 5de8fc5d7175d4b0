"""The dashboard's pages under `/ui/` (see `control_plane.ui`).

Log in with a token (the admin token or an API token: support, site-admin, read-only); it is
kept in an HttpOnly, SameSite=Strict cookie scoped to `/ui` (Secure over HTTPS) and sent to
the API as the bearer token of every call a page makes. The changing actions, retrying a failed
series and pausing, resuming or aborting a rollout, are POSTs that must also carry htmx's
`HX-Request` header, which a form posted from another site cannot set (with the SameSite
cookie, a second guard against CSRF).
"""

from __future__ import annotations

import datetime as dt
import itertools
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from control_plane.ui.api import Api, ApiError
from control_plane.ui.plots import line_plot

router = APIRouter(prefix="/ui", include_in_schema=False)

COOKIE = "dicom_connector_ui"
COOKIE_MAX_AGE_S = 8 * 3600
HISTORY = 120
STATIC_DIR = Path(__file__).parent / "static"
_SEVERITY = {"ok": 0, "degraded": 1, "unhealthy": 2, "missing": 3}

_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_TEMPLATES.get_template(name).render(**context), status_code=status_code)


def _token(request: Request) -> str | None:
    return request.cookies.get(COOKIE) or None


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)


def _failed(request: Request, error: ApiError) -> Response:
    if error.status == 401:
        response = _to_login(request)
        response.delete_cookie(COOKIE, path="/ui")
        return response
    return _page("error.html.j2", error.status if error.status >= 400 else 502, error=error)


@router.get("/login")
async def login_form(next: str = "/ui/") -> HTMLResponse:
    """The login form."""
    return _page("login.html.j2", next=_safe_next(next), message=None)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the token against the API; keep it in the cookie when it works."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or ["/ui/"])[0])
    try:
        async with Api(request.app, token) as api:
            await api.get("/api/v1/sites")
    except ApiError as error:
        return _page("login.html.j2", 401, next=target, message=error.detail)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=COOKIE_MAX_AGE_S,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout() -> Response:
    """Forget the token."""
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.get("/")
async def fleet(request: Request) -> Response:
    """The fleet at a glance: sites by status, with reasons."""
    token = _token(request)
    if token is None:
        return _to_login(request)
    try:
        async with Api(request.app, token) as api:
            listed = (await api.get("/api/v1/sites"))["items"]
            try:
                summary = await api.get("/api/v1/fleet/health")
                attention = {entry["site"]: entry for entry in summary["attention"]}
                rows = [
                    attention.get(site["name"])
                    or {"site": site["name"], "status": "ok", "reasons": []}
                    for site in listed
                ]
            except ApiError as error:
                if error.status != 403:
                    raise
                # A site-admin sees its own site: its health says the same.
                rows = [await api.get(f"/api/v1/sites/{site['name']}/health") for site in listed]
    except ApiError as error:
        return _failed(request, error)
    rows.sort(key=lambda row: (-_SEVERITY[row["status"]], row["site"]))
    counts = {status: sum(1 for row in rows if row["status"] == status) for status in _SEVERITY}
    return _page("fleet.html.j2", rows=rows, counts=counts)


@router.get("/sites/{site}")
async def site_page(request: Request, site: str) -> Response:
    """A site: agents, config revisions and their changes, health history, throughput and
    deferred queue plotted, failed series with retry buttons, the figures of the last day."""
    token = _token(request)
    if token is None:
        return _to_login(request)
    try:
        async with Api(request.app, token) as api:
            health = await api.get(f"/api/v1/sites/{site}/health")
            revisions = (await api.get(f"/api/v1/sites/{site}/config/revisions"))["items"]
            failed = (await api.get(f"/api/v1/sites/{site}/series", state="failed"))["items"]
            figures = await api.get(f"/api/v1/sites/{site}/metrics")
            agents = []
            for agent in health["agents"]:
                history = await api.get(
                    f"/api/v1/agents/{agent['id']}/health/history", limit=HISTORY
                )
                agents.append({**agent, **_plots(list(reversed(history["items"])))})
    except ApiError as error:
        return _failed(request, error)
    return _page(
        "site.html.j2",
        health=health,
        agents=agents,
        revisions=list(reversed(revisions))[:5],
        failed=failed,
        figures=figures["figures"],
    )


def _plots(history: list[dict[str, Any]]) -> dict[str, Any]:
    statuses = [float(_SEVERITY[entry["status"]]) for entry in history]
    uploads = [entry["report"]["uploads_succeeded"] for entry in history]
    # Uploads between two reports; a restart resets the counter, so its first value counts.
    throughput = [
        float(now - before if now >= before else now) for before, now in itertools.pairwise(uploads)
    ]
    deferred = [float(entry["report"]["deferred_uploads"]) for entry in history]
    first = history[0]["received_at"] if history else None
    last = history[-1]["received_at"] if history else None
    return {
        "status_plot": line_plot(statuses),
        "throughput_plot": line_plot(throughput),
        "deferred_plot": line_plot(deferred),
        "history_from": first,
        "history_to": last,
    }


@router.post("/sites/{site}/series/{series_key}/retry")
async def retry(request: Request, site: str, series_key: str) -> Response:
    """Retry a failed series (an htmx request; answers the fragment that replaces the button)."""
    token = _token(request)
    if token is None or request.headers.get("HX-Request") != "true":
        return HTMLResponse("refused: log in and use the dashboard's button", status_code=403)
    try:
        async with Api(request.app, token) as api:
            answer = await api.post(f"/api/v1/sites/{site}/series/{series_key}/retry")
    except ApiError as error:
        return _page("retry_result.html.j2", results=None, error=error.detail)
    return _page("retry_result.html.j2", results=answer["results"], error=None)


_ACTIONS = {"running": ("pause", "abort"), "paused": ("resume", "abort")}
_ENDED = ("completed", "rolled_back", "aborted")


@router.get("/rollouts")
async def rollouts(request: Request) -> Response:
    """Rollouts, newest first, with their state and stage."""
    token = _token(request)
    if token is None:
        return _to_login(request)
    try:
        async with Api(request.app, token) as api:
            items = (await api.get("/api/v1/rollouts"))["items"]
    except ApiError as error:
        return _failed(request, error)
    return _page("rollouts.html.j2", items=items)


@router.get("/rollouts/{rollout_id}")
async def rollout_page(request: Request, rollout_id: str) -> Response:
    """One rollout: its stages and sites, refreshed every 2 s while it runs, and the pause,
    resume and abort buttons its state allows."""
    token = _token(request)
    if token is None:
        return _to_login(request)
    try:
        async with Api(request.app, token) as api:
            rollout = await api.get(f"/api/v1/rollouts/{quote(rollout_id)}")
    except ApiError as error:
        return _failed(request, error)
    return _page("rollout.html.j2", **_rollout_context(rollout, None))


@router.get("/rollouts/{rollout_id}/part")
async def rollout_part(request: Request, rollout_id: str) -> Response:
    """The live part of a rollout's page (htmx polls it)."""
    token = _token(request)
    if token is None:
        return HTMLResponse("log in again", status_code=401)
    try:
        async with Api(request.app, token) as api:
            rollout = await api.get(f"/api/v1/rollouts/{quote(rollout_id)}")
    except ApiError as error:
        return HTMLResponse(f'<div id="rollout">{escape(error.detail)}</div>', error.status)
    return _page("rollout_part.html.j2", **_rollout_context(rollout, None))


@router.post("/rollouts/{rollout_id}/{action}")
async def rollout_action(request: Request, rollout_id: str, action: str) -> Response:
    """Pause, resume or abort (an htmx request; answers the refreshed live part)."""
    token = _token(request)
    if token is None or request.headers.get("HX-Request") != "true":
        return HTMLResponse("refused: log in and use the dashboard's buttons", status_code=403)
    if action not in ("pause", "resume", "abort"):
        return HTMLResponse(f"no such action: {escape(action)}", status_code=404)
    message = None
    try:
        async with Api(request.app, token) as api:
            try:
                await api.post(f"/api/v1/rollouts/{quote(rollout_id)}/{action}")
            except ApiError as error:
                if error.status >= 500:
                    raise
                message = error.detail
            rollout = await api.get(f"/api/v1/rollouts/{quote(rollout_id)}")
    except ApiError as error:
        return HTMLResponse(f'<div id="rollout">{escape(error.detail)}</div>', error.status)
    return _page("rollout_part.html.j2", **_rollout_context(rollout, message))


def _rollout_context(rollout: dict[str, Any], message: str | None) -> dict[str, Any]:
    live = rollout["state"] not in _ENDED or rollout["rollback_pending"]
    return {
        "rollout": rollout,
        "live": live,
        "actions": _ACTIONS.get(rollout["state"], ()),
        "message": message,
    }


@router.get("/search")
async def search(
    request: Request, group: str = "", project: str = "", subject: str = "", session: str = ""
) -> Response:
    """Where is my data: acquisitions by group, project, subject and session."""
    token = _token(request)
    if token is None:
        return _to_login(request)
    filters = {"group": group, "project": project, "subject": subject, "session": session}
    items: list[dict[str, Any]] | None = None
    if any(filters.values()):
        try:
            async with Api(request.app, token) as api:
                items = (await api.get("/api/v1/acquisitions", **filters))["items"]
        except ApiError as error:
            return _failed(request, error)
    return _page("search.html.j2", filters=filters, items=items)


@router.get("/sites/{site}/card")
async def card(request: Request, site: str) -> Response:
    """The site's quick-reference card (one printable page)."""
    token = _token(request)
    if token is None:
        return _to_login(request)
    try:
        async with Api(request.app, token) as api:
            return HTMLResponse(await api.text(f"/api/v1/sites/{site}/card"))
    except ApiError as error:
        return _failed(request, error)


def _safe_next(target: str) -> str:
    # Only a dashboard path: never an open redirect to another site.
    if target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/"


def when(value: str | None) -> str:
    """An API timestamp as the pages show it."""
    if not value:
        return "-"
    return dt.datetime.fromisoformat(value).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_TEMPLATES.filters["when"] = when
