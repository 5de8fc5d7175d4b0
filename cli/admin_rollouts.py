"""`dicom-connector admin rollouts`: staged config changes over many sites (support), and
`admin sites labels`: the labels rollouts and fleet views select sites by."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cli.admin import _call as call_api
from cli.admin import _table as print_table
from cli.admin import console
from common.config import ConfigError, parse_document

rollouts_app = typer.Typer(help="Staged config rollouts over many sites, rolled back on failure.")
labels_app = typer.Typer(help="Labels of a site (region=eu, scanner=mr...).")

ENDED = ("completed", "rolled_back", "aborted")
_STATE_STYLES = {
    "running": "cyan",
    "paused": "yellow",
    "completed": "green",
    "rolled_back": "red",
    "aborted": "red",
}


def parse_labels(terms: list[str]) -> dict[str, str]:
    """`["region=eu", ...]` as a dict; a term without `=` is a usage error."""
    labels: dict[str, str] = {}
    for term in terms:
        key, separator, value = term.partition("=")
        if not separator:
            raise typer.BadParameter(f"{term!r} is not KEY=VALUE (e.g. region=eu)")
        labels[key] = value
    return labels


@labels_app.command("set")
def labels_set(ctx: typer.Context, site: str, labels: list[str]) -> None:
    """Set labels of SITE (KEY=VALUE ...), keeping its others."""
    answer: dict[str, Any] = {}
    for key, value in parse_labels(labels).items():
        answer = call_api(ctx, "PUT", f"/api/v1/sites/{site}/labels/{key}", json={"value": value})
    _print_labels(site, answer["labels"])


@labels_app.command("replace")
def labels_replace(
    ctx: typer.Context,
    site: str,
    labels: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE ...; none clears.")] = None,
) -> None:
    """Replace all labels of SITE with these (none: remove them all)."""
    answer = call_api(
        ctx, "PUT", f"/api/v1/sites/{site}/labels", json={"labels": parse_labels(labels or [])}
    )
    _print_labels(site, answer["labels"])


@labels_app.command("remove")
def labels_remove(ctx: typer.Context, site: str, keys: list[str]) -> None:
    """Remove labels (by KEY) from SITE."""
    answer: dict[str, Any] = {}
    for key in keys:
        answer = call_api(ctx, "DELETE", f"/api/v1/sites/{site}/labels/{key}")
    _print_labels(site, answer["labels"])


def _print_labels(site: str, labels: dict[str, str]) -> None:
    shown = ", ".join(f"{key}={value}" for key, value in labels.items()) or "no labels"
    console.print(f"{site}: {escape(shown)}")


def _read_config(file: Path) -> dict[str, Any]:
    try:
        document = parse_document(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ConfigError) as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc}") from None
    if not isinstance(document, dict):
        raise typer.BadParameter(f"{file} must hold a mapping of config keys")
    return document


@rollouts_app.command("create")
def rollouts_create(
    ctx: typer.Context,
    config: Annotated[
        Path, typer.Option("--config", help="YAML or JSON: a merge patch (null removes a key).")
    ],
    sites: Annotated[
        str | None, typer.Option("--sites", help="Comma-separated site names, or 'all'.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE; sites carrying all of them.")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="--config is a whole config, not a patch.")
    ] = False,
    stages: Annotated[
        str, typer.Option("--stages", help="Cumulative percentages of agents, ending at 100.")
    ] = "10,50,100",
    soak: Annotated[str, typer.Option("--soak", help="Healthy time per stage (e.g. 10m).")] = "10m",
    apply_timeout: Annotated[
        str, typer.Option("--apply-timeout", help="Time agents have to apply a revision.")
    ] = "10m",
    watch: Annotated[bool, typer.Option("--watch", help="Follow it until it ends.")] = False,
) -> None:
    """Start a rollout: the same change to many sites, stage by stage."""
    body: dict[str, Any] = {
        "config": _read_config(config),
        "config_mode": "replace" if replace else "patch",
        "soak": soak,
        "apply_timeout": apply_timeout,
    }
    try:
        body["stages"] = [int(part) for part in stages.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--stages {stages!r}: use numbers, e.g. 10,50,100") from None
    if sites is not None:
        body["sites"] = "all" if sites == "all" else [s for s in sites.split(",") if s]
    if label:
        body["labels"] = parse_labels(label)
    created = call_api(ctx, "POST", "/api/v1/rollouts", json=body)
    console.print(f"rollout {created['id']} {created['state']}")
    if watch:
        rollouts_watch(ctx, created["id"])


@rollouts_app.command("list")
def rollouts_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only rollouts in this state.")] = None,
) -> None:
    """Rollouts, newest first."""
    params = {} if state is None else {"state": state}
    items = call_api(ctx, "GET", "/api/v1/rollouts", params=params)["items"]
    print_table(
        "rollouts",
        ["id", "state", "stage", "sites", "created", "by", "reason"],
        [
            (
                r["id"],
                _state(r["state"]),
                f"{min(r['current_stage'], len(r['stages']))}/{len(r['stages'])}",
                r["sites"],
                r["created_at"],
                escape(r["created_by"]),
                escape(_reason(r.get("reason"))),
            )
            for r in items
        ],
    )


@rollouts_app.command("show")
def rollouts_show(ctx: typer.Context, rollout_id: str) -> None:
    """A rollout's stages and, per site, its revisions and agents."""
    console.print(_view(call_api(ctx, "GET", f"/api/v1/rollouts/{rollout_id}")))


@rollouts_app.command("pause")
def rollouts_pause(ctx: typer.Context, rollout_id: str) -> None:
    """Start no further stage (resume restarts the current stage's soak)."""
    answer = call_api(ctx, "POST", f"/api/v1/rollouts/{rollout_id}/pause")
    console.print(f"rollout {rollout_id} {_state(answer['state'])}")


@rollouts_app.command("resume")
def rollouts_resume(ctx: typer.Context, rollout_id: str) -> None:
    """Go on with a paused rollout."""
    answer = call_api(ctx, "POST", f"/api/v1/rollouts/{rollout_id}/resume")
    console.print(f"rollout {rollout_id} {_state(answer['state'])}")


@rollouts_app.command("abort")
def rollouts_abort(ctx: typer.Context, rollout_id: str) -> None:
    """Stop, and give every site the rollout changed its previous revision back."""
    answer = call_api(ctx, "POST", f"/api/v1/rollouts/{rollout_id}/abort")
    console.print(f"rollout {rollout_id} {_state(answer['state'])}; rolling back")


@rollouts_app.command("watch")
def rollouts_watch(
    ctx: typer.Context,
    rollout_id: str,
    interval: Annotated[float, typer.Option(help="Seconds between looks.")] = 1.0,
) -> None:
    """Follow a rollout live until it ends (exit 0 if completed, 1 if rolled back or aborted)."""
    answer = call_api(ctx, "GET", f"/api/v1/rollouts/{rollout_id}")
    with Live(_view(answer), console=console, refresh_per_second=4) as live:
        while answer["state"] not in ENDED or answer["rollback_pending"]:
            time.sleep(interval)
            answer = call_api(ctx, "GET", f"/api/v1/rollouts/{rollout_id}")
            live.update(_view(answer))
    if answer["state"] != "completed":
        raise typer.Exit(1)


def _view(rollout: dict[str, Any]) -> Group:
    head = Text.from_markup(
        f"rollout {rollout['id']}: {_state(rollout['state'])}"
        + (" (rolling back)" if rollout["rollback_pending"] else "")
        + f"  soak {rollout['soak']}  by {escape(rollout['created_by'])}"
    )
    stages = Table(title="stages")
    for column in ("stage", "%", "status", "agents", "sites", "started", "soak from", "done"):
        stages.add_column(column)
    for stage in rollout["stages"]:
        stages.add_row(
            str(stage["stage"]),
            str(stage["percent"]),
            stage["status"],
            str(stage["agents"]),
            escape(", ".join(stage["sites"])),
            _time(stage["started_at"]),
            _time(stage["soak_started_at"]),
            _time(stage["completed_at"]),
        )
    sites = Table(title="sites")
    for column in ("site", "stage", "status", "revisions", "agents applied", "agents"):
        sites.add_column(column)
    for site in rollout["sites"]:
        agents = site["agents"]
        revisions = " -> ".join(
            str(number)
            for number in (site["previous_revision"], site["revision"], site["rollback_revision"])
            if number is not None
        )
        sites.add_row(
            escape(site["site"]),
            str(site["stage"]),
            site["status"],
            revisions,
            f"{sum(agent['applied'] for agent in agents)}/{len(agents)}",
            escape(", ".join(f"{agent['name']} ({agent['status']})" for agent in agents)),
        )
    parts: list[Any] = [head, stages, sites]
    if rollout.get("reason"):
        parts.append(Text(f"reason: {_reason(rollout['reason'])}", style="red"))
    return Group(*parts)


def _reason(reason: dict[str, Any] | None) -> str:
    if not reason:
        return ""
    where = "/".join(part for part in (reason.get("site"), reason.get("agent")) if part)
    return f"{reason['what']}{f' at {where}' if where else ''}: {reason['detail']}"


def _state(state: str) -> str:
    style = _STATE_STYLES.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def _time(value: str | None) -> str:
    return "" if value is None else value[11:19]
