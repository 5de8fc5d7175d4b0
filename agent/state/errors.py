"""Errors of the agent's state database, and how SQLite's are reported.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = [
    "InvalidTransitionError",
    "StateError",
    "StateFullError",
    "translate_error",
    "unreadable_message",
]


class StateError(Exception):
    """The state database is unreadable, corrupt, or from a newer agent; never "start empty"."""


class StateFullError(StateError):
    """The disk holding the state database is full; the instance was not recorded."""


class InvalidTransitionError(StateError):
    """A state change was asked for an unknown row or one whose state does not allow it."""


def unreadable_message(path: Path, problem: object) -> str:
    """What to do about a state database that cannot be read."""
    return (
        f"the state database {path} is unreadable ({problem}). The spool still holds the "
        "received instances and the state is needed to upload them: stop the agent, keep a "
        f"copy of the file, and try `sqlite3 {path} .recover` or restore it from a backup. "
        "Do not delete it; the agent refuses to start with an empty state"
    )


def translate_error(path: Path, exc: sqlite3.Error) -> StateError:
    """An SQLite error as a `StateError` (`StateFullError` for a full disk)."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return StateFullError(f"the disk holding the state database {path} is full")
    return StateError(f"the state database {path} failed: {exc}")
