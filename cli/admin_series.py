"""`dicom-connector admin series`: series the agents could not deliver, and what to do with them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from cli.admin import _call as call_api
from cli.admin import _table as print_table
from cli.admin import console

series_app = typer.Typer(help="Series that need support: list, retry, discard.")


@series_app.command("list")
def series_list(
    ctx: typer.Context,
    site: str,
    state: Annotated[str, typer.Option(help="Which series; the agents report failed ones.")] = (
        "failed"
    ),
) -> None:
    """Series the site's agents keep because they could not deliver them, with the reason."""
    answer = call_api(ctx, "GET", f"/api/v1/sites/{site}/series", params={"state": state})
    if not answer["items"]:
        console.print(f"no {state} series at {site}")
        return
    print_table(
        f"{state} series of {site}",
        ["series", "agent", "failed at", "instances", "reason"],
        [
            (s["series_key"], s["agent"], s["failed_at"], s["instances"], escape(s["reason"]))
            for s in answer["items"]
        ],
    )


@series_app.command("retry")
def series_retry(ctx: typer.Context, site: str, series_key: str) -> None:
    """Try a failed series again under the site's current config."""
    _act(ctx, site, series_key, "retry")


@series_app.command("discard")
def series_discard(ctx: typer.Context, site: str, series_key: str) -> None:
    """Give up on a failed series: its files are deleted from the agent."""
    _act(ctx, site, series_key, "discard")


def _act(ctx: typer.Context, site: str, series_key: str, action: str) -> None:
    answer = call_api(ctx, "POST", f"/api/v1/sites/{site}/series/{series_key}/{action}")
    failed = False
    for result in answer["results"]:
        style = "green" if result["ok"] else "red"
        failed = failed or not result["ok"]
        console.print(f"[{style}]agent {result['agent_id']}: {escape(result['detail'] or '')}[/]")
    if failed:
        raise typer.Exit(1)
