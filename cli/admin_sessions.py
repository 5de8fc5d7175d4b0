"""`dicom-connector admin sessions`: show a session, move it to its project, or purge it."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.admin import _call as call_api
from cli.admin import _table as print_table
from cli.admin import console

sessions_app = typer.Typer(help="Sessions of the hierarchy store: show, move, purge.")


@sessions_app.command("show")
def sessions_show(ctx: typer.Context, session_id: str) -> None:
    """Where a session is and its history of moves."""
    _print(call_api(ctx, "GET", f"/api/v1/sessions/{session_id}"))


@sessions_app.command("move")
def sessions_move(ctx: typer.Context, session_id: str, group: str, project: str) -> None:
    """Move a misrouted session, with its files, to GROUP/PROJECT (which must exist)."""
    body = {"group": group, "project": project}
    _print(call_api(ctx, "POST", f"/api/v1/sessions/{session_id}/move", json=body))


@sessions_app.command("purge")
def sessions_purge(
    ctx: typer.Context,
    session_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a session uploaded by mistake, with every file and its stored bytes."""
    if not yes:
        typer.confirm(f"delete session {session_id} and all its files for good?", abort=True)
    answer = call_api(ctx, "DELETE", f"/api/v1/sessions/{session_id}")
    console.print(
        f"purged session {answer['id']} from {answer['group']}/{escape(answer['project'])}:"
        f" {answer['files']} file(s), {answer['bytes']} bytes, {answer['blobs_removed']} blob(s)"
    )


def _print(session: dict[str, Any]) -> None:
    console.print(
        f"{session['group']}/{escape(session['project'])}/{escape(session['subject'])}/"
        f"{escape(session['session'])} ({session['routing_reason']})"
    )
    if session["history"]:
        print_table(
            "history",
            ["when", "what", "from", "to", "files", "by"],
            [
                (
                    event["at"],
                    event["kind"],
                    f"{event['from_group']}/{event['from_project']}",
                    f"{event['to_group']}/{event['to_project']}" if event["to_group"] else "",
                    event["files"],
                    event["actor"],
                )
                for event in session["history"]
            ],
        )
