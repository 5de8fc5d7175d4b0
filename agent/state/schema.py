"""The state database's schema: its migrations, and opening a file as a state database.

Version 1: `series` and `instances`. Version 2 adds the tables of the pull ledger (`pull_meta`,
`pull_series`): their migration lives here with every other schema step, their queries in
`agent.pull.ledger`, which reaches the database through `AgentState.transaction`. Version 3
adds a series' permanent failure (`fail_series`): a series that must not leave the site as it
is (its de-identification failed) is failed as a whole, with the reason, and so is every
instance of it that arrives later.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.state.errors import StateError, unreadable_message

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "prepare"]

SCHEMA_VERSION = 3

# One entry per schema version; entry N upgrades a database from user_version N to N + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE series (
        series_instance_uid TEXT PRIMARY KEY,
        study_instance_uid  TEXT NOT NULL,
        first_received_at   REAL NOT NULL,
        last_received_at    REAL NOT NULL,
        target              TEXT,
        reaped_at           REAL
    ) STRICT;
    CREATE TABLE instances (
        id                  INTEGER PRIMARY KEY,
        sop_instance_uid    TEXT NOT NULL,
        sop_class_uid       TEXT NOT NULL,
        series_instance_uid TEXT NOT NULL REFERENCES series (series_instance_uid),
        study_instance_uid  TEXT NOT NULL,
        transfer_syntax_uid TEXT NOT NULL,
        sha256              TEXT NOT NULL,
        size                INTEGER NOT NULL,
        path                TEXT NOT NULL,
        received_at         REAL NOT NULL,
        spooled_at          REAL NOT NULL,
        state               TEXT NOT NULL CHECK (
            state IN ('spooled', 'uploaded', 'skipped', 'failed', 'superseded')
        ),
        attempts            INTEGER NOT NULL DEFAULT 0,
        next_attempt_at     REAL,
        last_error          TEXT,
        file_id             TEXT,
        skip_reason         TEXT,
        finished_at         REAL
    ) STRICT;
    CREATE INDEX instances_by_sop ON instances (sop_instance_uid);
    CREATE INDEX instances_by_series ON instances (series_instance_uid, state);
    CREATE INDEX instances_by_path ON instances (path, state);
    CREATE INDEX instances_spooled ON instances (series_instance_uid, next_attempt_at)
        WHERE state = 'spooled';
    CREATE INDEX instances_by_state ON instances (state);
    """,
    # The pull ledger: what each source showed in its query rounds. `ledger_id` names this
    # database, so a state file replaced by an empty one is noticed (agent.pull.ledger).
    """
    CREATE TABLE pull_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    INSERT INTO pull_meta (key, value) VALUES ('ledger_id', lower(hex(randomblob(16))));
    CREATE TABLE pull_series (
        source              TEXT NOT NULL,
        series_instance_uid TEXT NOT NULL,
        study_instance_uid  TEXT NOT NULL,
        remote_count        INTEGER NOT NULL,
        count_changed_at    REAL NOT NULL,
        first_seen_at       REAL NOT NULL,
        last_seen_at        REAL NOT NULL,
        vanished_at         REAL,
        state               TEXT NOT NULL CHECK (state IN ('new', 'retrieved', 'short')),
        retrieved_count     INTEGER NOT NULL DEFAULT 0,
        retrieved_at        REAL,
        retrievals          INTEGER NOT NULL DEFAULT 0,
        missing             INTEGER NOT NULL DEFAULT 0,
        next_attempt_at     REAL,
        last_error          TEXT,
        PRIMARY KEY (source, series_instance_uid)
    ) STRICT;
    CREATE INDEX pull_series_by_vanish ON pull_series (source, vanished_at);
    """,
    # A series failed as a whole: nothing of it leaves the site until support acts.
    """
    ALTER TABLE series ADD COLUMN failed_at REAL;
    ALTER TABLE series ADD COLUMN failure TEXT;
    CREATE INDEX series_failed ON series (failed_at) WHERE failed_at IS NOT NULL;
    """,
)


def prepare(connection: sqlite3.Connection, path: Path) -> None:
    """Check `connection` is a usable state database (WAL, intact, not newer) and upgrade it
    to `SCHEMA_VERSION`; `StateError` when it is not one."""
    try:
        (journal_mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if journal_mode != "wal":
            raise StateError(
                f"the state database {path} cannot use write-ahead logging (journal mode "
                f"{journal_mode!r}); put the data directory on a local filesystem"
            )
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        (check,) = connection.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise StateError(unreadable_message(path, check))
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StateError(
                f"the state database {path} has schema version {version} but this agent knows "
                f"only up to {SCHEMA_VERSION}: it was written by a newer agent. Run that newer "
                "agent version (or later) on this data directory; do not delete the file"
            )
        if version == 0:
            tables = connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
            if tables:
                raise StateError(
                    f"{path} is an SQLite database but not an agent state database (it has "
                    "tables and no schema version); point the agent at its own data directory"
                )
        for target in range(version, SCHEMA_VERSION):
            # executescript() commits whatever is open before it runs, so the transaction that
            # makes each step all-or-nothing lives inside the script.
            connection.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[target]}; "
                f"PRAGMA user_version = {target + 1}; COMMIT;"
            )
    except sqlite3.Error as exc:
        raise StateError(unreadable_message(path, exc)) from exc
