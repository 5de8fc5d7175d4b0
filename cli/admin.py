"""`dicom-connector admin`: a terminal client of the HTTP API for site admins and support staff.

Only HTTP: it works the same against an all-in-one on this machine and a remote control plane.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx2
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

admin_app = typer.Typer(help="Inspect and change a control plane over its HTTP API.")
groups_app = typer.Typer(help="Groups of the hierarchy store.")
projects_app = typer.Typer(help="Projects of a group.")
sites_app = typer.Typer(help="Sites of the fleet.")
agents_app = typer.Typer(help="Agents of a site.")
config_app = typer.Typer(help="Versioned site configuration.")
tokens_app = typer.Typer(help="API tokens for people and automation (support only).")
for sub, name in (
    (groups_app, "groups"),
    (projects_app, "projects"),
    (sites_app, "sites"),
    (agents_app, "agents"),
    (config_app, "config"),
    (tokens_app, "tokens"),
):
    admin_app.add_typer(sub, name=name)

# Rich falls back to 80 columns when it cannot ask a terminal, cutting table cells short with
# an ellipsis: output piped into grep, a file or a support ticket keeps whole values instead.
PIPED_WIDTH = 200
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH)


@dataclass(frozen=True)
class Connection:
    """Where the API is and how to authenticate to it."""

    url: str
    token: str


@admin_app.callback()
def connect(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option("--url", envvar="DICOM_CONNECTOR_URL", help="Control-plane base URL.")
    ] = "http://127.0.0.1:8080",
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="DICOM_CONNECTOR_ADMIN_TOKEN",
            help="Bearer token: the admin token or an API token (support, site-admin, read-only).",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File holding the token (e.g. DATA_DIR/admin-token)."),
    ] = None,
) -> None:
    """Connect to a control plane."""
    if token is None and token_file is not None:
        token = token_file.read_text(encoding="utf-8").strip()
    if not token:
        raise typer.BadParameter(
            "no token: pass --token, --token-file or set DICOM_CONNECTOR_ADMIN_TOKEN"
        )
    ctx.obj = Connection(url=url.rstrip("/"), token=token)


@contextmanager
def _client(ctx: typer.Context) -> Iterator[httpx2.Client]:
    conn: Connection = ctx.obj
    headers = {"Authorization": f"Bearer {conn.token}"}
    try:
        with httpx2.Client(base_url=conn.url, headers=headers, timeout=30.0) as client:
            yield client
    except httpx2.TransportError as exc:
        console.print(f"[red]cannot reach {conn.url}: {exc}[/red]")
        raise typer.Exit(1) from None


def _call(ctx: typer.Context, method: str, path: str, **kwargs: Any) -> Any:
    with _client(ctx) as client:
        response = client.request(method, path, **kwargs)
    if response.is_success:
        return response.json() if response.content else None
    try:
        detail: Any = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, dict):
        problems = detail.get("problems") or []
        detail = "\n  ".join([str(detail.get("message", "")), *map(str, problems)])
    console.print(f"[red]{method} {path}: HTTP {response.status_code}: {detail}[/red]")
    raise typer.Exit(1)


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    console.print(table)


@groups_app.command("list")
def groups_list(ctx: typer.Context) -> None:
    """List groups."""
    items = _call(ctx, "GET", "/api/v1/groups")["items"]
    _table("groups", ["id", "label"], [(g["id"], g["label"]) for g in items])


@groups_app.command("create")
def groups_create(ctx: typer.Context, group_id: str, label: str) -> None:
    """Create a group (the GROUP of fw://GROUP/PROJECT)."""
    _call(ctx, "POST", "/api/v1/groups", json={"id": group_id, "label": label})
    console.print(f"created group {group_id}")


@projects_app.command("list")
def projects_list(ctx: typer.Context, group: str) -> None:
    """List the projects of a group."""
    items = _call(ctx, "GET", f"/api/v1/groups/{group}/projects")["items"]
    _table(f"projects of {group}", ["label"], [(p["label"],) for p in items])


@projects_app.command("create")
def projects_create(ctx: typer.Context, group: str, label: str) -> None:
    """Create a project in a group."""
    _call(ctx, "POST", f"/api/v1/groups/{group}/projects", json={"label": label})
    console.print(f"created project {group}/{label}")


@admin_app.command("acquisitions")
def acquisitions(
    ctx: typer.Context,
    group: Annotated[str | None, typer.Option(help="Filter by group id.")] = None,
    project: Annotated[str | None, typer.Option(help="Filter by project label.")] = None,
    subject: Annotated[str | None, typer.Option(help="Filter by subject label.")] = None,
    session: Annotated[str | None, typer.Option(help="Filter by session label.")] = None,
) -> None:
    """Where did my data land? Acquisitions with their place in the hierarchy and routing reason."""
    params = {
        k: v
        for k, v in {
            "group": group,
            "project": project,
            "subject": subject,
            "session": session,
        }.items()
        if v is not None
    }
    items = _call(ctx, "GET", "/api/v1/acquisitions", params=params)["items"]
    _table(
        "acquisitions",
        ["group", "project", "subject", "session", "acquisition", "files", "routing"],
        [
            (
                a["group"],
                a["project"],
                a["subject"],
                a["session"],
                a["label"],
                len(a["files"]),
                a.get("routing_reason"),
            )
            for a in items
        ],
    )


@sites_app.command("list")
def sites_list(
    ctx: typer.Context,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE; only sites carrying all.")
    ] = None,
) -> None:
    """List sites with their labels."""
    params = [("label", term) for term in label or []]
    items = _call(ctx, "GET", "/api/v1/sites", params=params)["items"]
    _table(
        "sites",
        ["name", "timezone", "labels"],
        [
            (
                s["name"],
                s["timezone"],
                escape(", ".join(f"{k}={v}" for k, v in s.get("labels", {}).items())),
            )
            for s in items
        ],
    )


@sites_app.command("create")
def sites_create(
    ctx: typer.Context,
    name: str,
    timezone: Annotated[str, typer.Option(help="IANA timezone of the site.")] = "UTC",
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE label; repeat for more.")
    ] = None,
) -> None:
    """Create a site."""
    labels: dict[str, str] = {}
    for term in label or []:
        key, separator, value = term.partition("=")
        if not separator:
            raise typer.BadParameter(f"--label {term!r} is not KEY=VALUE (e.g. region=eu)")
        labels[key] = value
    _call(ctx, "POST", "/api/v1/sites", json={"name": name, "timezone": timezone, "labels": labels})
    console.print(f"created site {name}")


@agents_app.command("list")
def agents_list(ctx: typer.Context, site: str) -> None:
    """List a site's agents with their link state and health."""
    items = _call(ctx, "GET", f"/api/v1/sites/{site}/agents")["items"]
    _table(
        f"agents of {site}",
        ["id", "name", "deployment", "connected", "config revision", "version", "status"],
        [
            (
                a["id"],
                a.get("name"),
                a.get("deployment"),
                a["connected"],
                a["config_revision"],
                escape(a["health"].get("agent_version") or ""),
                _status(a["health"].get("status", "never connected")),
            )
            for a in items
        ],
    )


@agents_app.command("create")
def agents_create(
    ctx: typer.Context,
    site: str,
    name: str,
    deployment: Annotated[str, typer.Option(help="edge or in-cluster.")] = "edge",
) -> None:
    """Register an agent; its token is printed once."""
    created = _call(
        ctx, "POST", f"/api/v1/sites/{site}/agents", json={"name": name, "deployment": deployment}
    )
    console.print(f"agent id: {created['id']}")
    console.print(f"token (shown once, store it now): {created['token']}")


@config_app.command("show")
def config_show(ctx: typer.Context, site: str) -> None:
    """Print the current config revision of a site."""
    current = _call(ctx, "GET", f"/api/v1/sites/{site}/config")
    console.print(f"revision {current['revision']}")
    console.print_json(json.dumps(current["config"]))


@config_app.command("set")
def config_set(ctx: typer.Context, site: str, file: Path) -> None:
    """Store FILE (YAML or JSON) as the site's next config revision."""
    answer = _call(
        ctx,
        "PUT",
        f"/api/v1/sites/{site}/config",
        content=file.read_bytes(),
        headers={"Content-Type": "application/yaml"},
    )
    console.print(f"revision {answer['revision']}")


@config_app.command("revisions")
def config_revisions(ctx: typer.Context, site: str) -> None:
    """List a site's config revisions with who changed what."""
    items = _call(ctx, "GET", f"/api/v1/sites/{site}/config/revisions")["items"]
    _table(
        f"config revisions of {site}",
        ["revision", "created at", "by", "rollout", "changed keys"],
        [
            (
                r["revision"],
                r.get("created_at"),
                r.get("created_by"),
                f"{r['rollout_action']} {r['rollout_id']}" if r.get("rollout_id") else "",
                ", ".join(change.get("key", "") for change in r.get("diff") or []),
            )
            for r in items
        ],
    )


@agents_app.command("token-rotate")
def agents_token_rotate(ctx: typer.Context, agent_id: str) -> None:
    """Issue a new token for an agent; the old one stops working and its link is closed."""
    answer = _call(ctx, "POST", f"/api/v1/agents/{agent_id}/token")
    console.print(f"new token (shown once, install it on the agent now): {answer['token']}")


@agents_app.command("token-revoke")
def agents_token_revoke(ctx: typer.Context, agent_id: str) -> None:
    """Revoke an agent's token; its link is closed and it is refused until a token-rotate."""
    _call(ctx, "DELETE", f"/api/v1/agents/{agent_id}/token")
    console.print(f"token of agent {agent_id} revoked; its link is closed")


@admin_app.command("health")
def health(ctx: typer.Context, site: str) -> None:
    """Health of a site: each agent's status and why."""
    answer = _call(ctx, "GET", f"/api/v1/sites/{site}/health")
    console.print(
        f"site {answer['site']}: {_status(answer['status'])}"
        f" (config revision {answer['config_revision']})"
    )
    if not answer["agents"]:
        for reason in answer["reasons"]:
            console.print(f"  {escape(reason)}")
        return
    _table(
        f"agents of {site}",
        ["name", "status", "connected", "config revision", "version", "last seen", "reasons"],
        [
            (
                a["name"],
                _status(a["status"]),
                a["connected"],
                a["config_revision"],
                escape(a["agent_version"] or ""),
                a["last_seen_at"],
                escape("\n".join(a["reasons"])),
            )
            for a in answer["agents"]
        ],
    )
    reports = [
        (
            summary["name"],
            (_call(ctx, "GET", f"/api/v1/agents/{summary['id']}").get("health") or {}).get("report")
            or {},
        )
        for summary in answer["agents"]
    ]
    _dicom_security(reports)
    _skipped_series(reports)


def _skipped_series(reports: list[tuple[str, dict[str, Any]]]) -> None:
    """Series each agent's upload policy declined, per reason: the admin guide asks sites to
    confirm operators type the opt-in string (a growing not_opted_in count says they do not)."""
    rows = [
        (name, reason, count)
        for name, report in reports
        for reason, count in sorted((report.get("skipped_series") or {}).items())
    ]
    if rows:
        _table("series skipped by the upload policy", ["agent", "reason", "series"], rows)


def _dicom_security(reports: list[tuple[str, dict[str, Any]]]) -> None:
    """Each agent's refused DICOM associations (by reason and source address) and its TLS
    certificate's expiry, from its latest health report: the admin guide asks sites to watch
    for unauthorised addresses."""
    refused: list[tuple[object, ...]] = []
    certificates: list[tuple[object, ...]] = []
    for name, report in reports:
        for row in report.get("dicom_rejections") or []:
            refused.append((name, row["reason"], row["source"], row["count"]))
        if report.get("tls_certificate_expires_at"):
            days = report.get("tls_certificate_days_left")
            certificates.append(
                (
                    name,
                    report["tls_certificate_expires_at"],
                    "" if days is None else f"{days:.0f}",
                )
            )
    if refused:
        _table(
            "refused DICOM associations (since each agent started)",
            ["agent", "reason", "source address", "count"],
            refused,
        )
    if certificates:
        _table("DICOM TLS certificates", ["agent", "expires at", "days left"], certificates)


@admin_app.command("fleet")
def fleet(
    ctx: typer.Context,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE; only sites carrying all.")
    ] = None,
) -> None:
    """The whole fleet: sites and agents per status, and the sites that need attention."""
    params = [("label", term) for term in label or []]
    answer = _call(ctx, "GET", "/api/v1/fleet/health", params=params)
    statuses = list(answer["sites"])
    _table(
        f"fleet: {answer['status']}",
        ["", *statuses],
        [
            ("sites", *(answer["sites"][status] for status in statuses)),
            ("agents", *(answer["agents"][status] for status in statuses)),
        ],
    )
    if not answer["attention"]:
        console.print("no site needs attention")
        return
    _table(
        "sites needing attention",
        ["site", "status", "reasons"],
        [
            (entry["site"], _status(entry["status"]), escape("\n".join(entry["reasons"])))
            for entry in answer["attention"]
        ],
    )


@admin_app.command("deid-preview")
def deid_preview(
    ctx: typer.Context,
    site: Annotated[str, typer.Option("--site", help="The site whose profile to apply.")],
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A DICOM Part-10 file.")
    ],
) -> None:
    """Show, attribute by attribute, what the site's de-identification profile would change in
    FILE (applied by the control plane with the site's salt; nothing is stored)."""
    answer = _call(
        ctx,
        "POST",
        f"/api/v1/sites/{site}/deid/preview",
        content=file.read_bytes(),
        headers={"Content-Type": "application/dicom"},
    )
    options = f" with {', '.join(answer['options'])}" if answer["options"] else ""
    console.print(
        f"site {answer['site']}: profile {answer['profile']}{options}"
        f" (config revision {answer['revision']})"
    )
    if not answer["changes"]:
        console.print("the profile changes nothing in this file")
        return
    _table(
        f"de-identification of {escape(file.name)}",
        ["attribute", "keyword", "VR", "action", "before", "after"],
        [
            (
                c["path"],
                c["keyword"],
                c["vr"],
                _ACTION_STYLES[c["action"]],
                escape(c["before"] if c["before"] is not None else ""),
                escape(c["after"] if c["after"] is not None else ""),
            )
            for c in answer["changes"]
        ],
    )


@tokens_app.command("create")
def tokens_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Who or what holds the token.")],
    role: Annotated[str, typer.Option(help="support, site-admin or read-only.")],
    site: Annotated[
        str | None,
        typer.Option(help="The one site of a site-admin (or of a read-only) token."),
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="Lifetime, e.g. 30d or 12h (default 90d).")
    ] = None,
) -> None:
    """Issue an API token; it is printed once and never shown again."""
    body = {"name": name, "role": role, "site": site, "expires_in": expires_in}
    created = _call(
        ctx, "POST", "/api/v1/tokens", json={k: v for k, v in body.items() if v is not None}
    )
    console.print(f"token id: {created['id']} ({created['role']}, expires {created['expires_at']})")
    console.print(f"token (shown once, store it now): {created['token']}")


@tokens_app.command("list")
def tokens_list(ctx: typer.Context) -> None:
    """List API tokens with their role, site and state (never the tokens themselves)."""
    items = _call(ctx, "GET", "/api/v1/tokens")["items"]
    _table(
        "API tokens",
        ["id", "name", "role", "site", "state", "expires at", "created by"],
        [
            (
                t["id"],
                escape(t["name"]),
                t["role"],
                t["site"],
                _status(t["state"]),
                t["expires_at"],
                escape(t["created_by"]),
            )
            for t in items
        ],
    )


_ACTION_STYLES = {
    "removed": "[red]removed[/red]",
    "replaced": "[yellow]replaced[/yellow]",
    "added": "[green]added[/green]",
}


@tokens_app.command("revoke")
def tokens_revoke(ctx: typer.Context, token_id: str) -> None:
    """Revoke an API token; it is refused from its next request on."""
    _call(ctx, "DELETE", f"/api/v1/tokens/{token_id}")
    console.print(f"token {token_id} revoked")


@admin_app.command("audit")
def audit(
    ctx: typer.Context,
    site: Annotated[str | None, typer.Option(help="Only changes of this site.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, e.g. config.update, token.create.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only changes from this time on (ISO 8601 with zone).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Entries per page.")] = 50,
    before: Annotated[
        int | None, typer.Option(help="Entries older than this id (the next page).")
    ] = None,
) -> None:
    """Who changed what and when, newest first."""
    params = {"site": site, "action": action, "since": since, "limit": limit, "before": before}
    page = _call(
        ctx, "GET", "/api/v1/audit", params={k: v for k, v in params.items() if v is not None}
    )
    _table(
        "audit log",
        ["id", "at", "actor", "role", "action", "target", "site", "changes"],
        [
            (
                e["id"],
                e["at"],
                escape(e["actor"]["name"]),
                e["actor"]["role"],
                e["action"],
                escape(e["target"]),
                e["site"],
                escape(_changes(e["changes"])),
            )
            for e in page["items"]
        ],
    )
    if page["next"] is not None:
        console.print(f"more: --before {page['next']}")


def _changes(changes: dict[str, Any]) -> str:
    diff = changes.get("diff")
    if isinstance(diff, list):
        lines = [f"revision {changes.get('revision')}"]
        lines += [f"{c.get('key')}: {c.get('old')!r} -> {c.get('new')!r}" for c in diff]
        return "\n".join(lines)
    return ", ".join(f"{key}={value}" for key, value in changes.items())


_STATUS_STYLES = {
    "ok": "green",
    "active": "green",
    "degraded": "yellow",
    "unhealthy": "red",
    "missing": "red",
    "expired": "red",
    "revoked": "red",
}


def _status(status: str) -> str:
    style = _STATUS_STYLES.get(status)
    return f"[{style}]{status}[/{style}]" if style else status
