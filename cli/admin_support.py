"""Support commands over the agent link: `dicom-connector admin agents echo|query|diagnostics`.

Each sends one typed command (`common.messages.COMMAND_ARGUMENTS`) through
`POST /api/v1/agents/{id}/commands` (audited) and prints the agent's answer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.admin import _call as call_api
from cli.admin import console


def _command(ctx: typer.Context, agent_id: str, name: str, args: dict[str, Any]) -> Any:
    answer = call_api(
        ctx, "POST", f"/api/v1/agents/{agent_id}/commands", json={"name": name, "args": args}
    )
    colour = "green" if answer["ok"] else "red"
    console.print(f"[{colour}]{escape(answer['detail'] or '')}[/{colour}]")
    if not answer["ok"]:
        raise typer.Exit(1)
    return answer


def echo(ctx: typer.Context, agent_id: str, source: str) -> None:
    """C-ECHO a PULL source from the agent now (SOURCE as health names it: AE@host:port)."""
    _command(ctx, agent_id, "echo_source", {"source": source})


def query(ctx: typer.Context, agent_id: str, source: str) -> None:
    """Run a query round of a PULL source now (retrievals of what became due included)."""
    _command(ctx, agent_id, "query_source", {"source": source})


def diagnostics(
    ctx: typer.Context,
    agent_id: str,
    output: Annotated[
        typer.FileTextWrite | None,
        typer.Option("--output", "-o", help="Write the bundle (JSON) to this file."),
    ] = None,
) -> None:
    """Collect the agent's diagnostics bundle: version, config revision, health, recent log
    lines (PHI-filtered)."""
    answer = _command(ctx, agent_id, "diagnostics", {})
    bundle = answer["diagnostics"]
    text = json.dumps(bundle, indent=2)
    if output is not None:
        output.write(text + "\n")
        console.print(f"written to {output.name}")
        return
    console.print_json(text)
