"""`dicom-connector admin metrics SITE`: the guide's operational figures of a site and of
each of its scanners (`GET /api/v1/sites/{site}/metrics`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.admin import _call as call_api
from cli.admin import _client, console
from cli.admin import _table as print_table


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _row(name: str, figures: dict[str, Any]) -> list[str]:
    routing = ", ".join(f"{reason} {share:.0%}" for reason, share in figures["routing"].items())
    return [
        name,
        str(figures["series"]),
        _share(figures["upload_success_rate"]),
        _share(figures["completeness"]),
        _seconds(figures["upload_latency_p50_s"]),
        _seconds(figures["upload_latency_p95_s"]),
        escape(routing or "-"),
        f"{figures['series_deferred']} ({figures['deferred_s_total']:.0f} s)",
        str(figures["bytes_uploaded"]),
    ]


def metrics(
    ctx: typer.Context,
    site: str,
    since: Annotated[
        str | None,
        typer.Option(help="Start of the window, ISO 8601 with a timezone; default: a day ago."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")] = False,
) -> None:
    """Upload success rate, latency p50/p95, completeness, routing, deferrals and bytes
    uploaded, for the site and per scanner (calling AE title)."""
    params = {} if since is None else {"since": since}
    answer = call_api(ctx, "GET", f"/api/v1/sites/{site}/metrics", params=params)
    if as_json:
        console.print_json(json.dumps(answer))
        return
    rows = [_row(f"site {site}", answer["figures"])]
    rows += [
        _row(scanner["calling_ae"] or "(pull / unknown)", scanner["figures"])
        for scanner in answer["scanners"]
    ]
    print_table(
        f"{site}: {answer['since']} to {answer['until']}",
        [
            "scope",
            "series",
            "success",
            "complete",
            "latency p50",
            "p95",
            "routing",
            "deferred",
            "bytes",
        ],
        rows,
    )


def card(ctx: typer.Context, site: str) -> None:
    """Print the site's quick-reference card for scanner operators (HTML, one printable page):
    `dicom-connector admin card SITE > card.html`."""
    with _client(ctx) as client:
        response = client.get(f"/api/v1/sites/{site}/card")
    if not response.is_success:
        console.print(f"[red]GET card: HTTP {response.status_code}: {escape(response.text)}[/red]")
        raise typer.Exit(1)
    typer.echo(response.text, nl=False)
