"""The `dicom-connector agent` arguments of a deploy manifest, read by the real CLI.

A manifest that passes a flag the agent does not have, or a value of the wrong type, fails
here rather than at the first start on a customer's machine.
"""

from __future__ import annotations

from typing import Any

import typer.main

from cli.main import app


def agent_params(arguments: list[str]) -> dict[str, Any]:
    """The parameters `dicom-connector agent ARGUMENTS…` runs with (`arguments[0]` is `agent`)."""
    group = typer.main.get_command(app)
    role, *options = arguments
    assert role == "agent", arguments
    command = group.get_command(group.make_context("dicom-connector", [role]), role)
    assert command is not None
    params: dict[str, Any] = command.make_context(role, options).params
    return params
