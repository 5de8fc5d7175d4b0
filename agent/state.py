"""The agent's durable bookkeeping of spooled instances and their series (SQLite, WAL).

The only writer of spool bookkeeping: the SCP records each durable file here before it answers
Success, the reaper and uploader move instances through `InstanceState`. Every method runs one
transaction on one connection guarded by a lock, so SCP threads and the asyncio side can share
an `AgentState`; a write can block on the disk (a synced commit, a checkpoint, another
process holding the write lock), so asyncio code should call them through `asyncio.to_thread`.

Durability: every commit that allows a spool file to be deleted (uploaded, skipped,
superseded) is synced (``synchronous=FULL``) before the file goes. The commit of a new
instance is not (NORMAL, ~0.4 ms less per instance and no WAL fsync under the lock): its file
was fsynced before, the file is the record of truth, and `Spool.recover` records it again if a
power cut takes the row back. In WAL mode each synced commit also makes every earlier one
durable, so a deletion is never on disk before the row change that allows it. See
docs/intake.md.

This module owns every deletion of a registered spool file, after the commit that makes it
unreferenced.

Schema version 3 adds a series' permanent failure (`fail_series`): a series that must not
leave the site as it is (its de-identification failed) is failed as a whole, with the reason,
and so is every instance of it that arrives later.

Schema version 2 adds the tables of the pull ledger (`pull_meta`, `pull_series`): their
migration lives here with every other schema step, their queries in `agent.pull.ledger`, which
reaches the database through `AgentState.transaction`.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

__all__ = [
    "AddOutcome",
    "AgentState",
    "FailedSeries",
    "InstanceRow",
    "InstanceState",
    "InvalidTransitionError",
    "SeriesRow",
    "SpoolStats",
    "SpooledInstance",
    "StateError",
    "StateFullError",
]

_log = structlog.get_logger(__name__)

SCHEMA_VERSION = 3
_BUSY_TIMEOUT_MS = 10_000

# One entry per schema version; entry N upgrades a database from user_version N to N + 1.
_MIGRATIONS: tuple[str, ...] = (
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


class StateError(Exception):
    """The state database is unreadable, corrupt, or from a newer agent; never "start empty"."""


class StateFullError(StateError):
    """The disk holding the state database is full; the instance was not recorded."""


class InvalidTransitionError(StateError):
    """A state change was asked for an unknown row or one whose state does not allow it."""


class InstanceState(StrEnum):
    """Where one received instance is in its life."""

    spooled = "spooled"  # on disk, waiting to be reaped/uploaded
    uploaded = "uploaded"  # confirmed by the destination; file deleted
    skipped = "skipped"  # upload policy said no; file deleted
    failed = "failed"  # permanent error; file kept for support
    superseded = "superseded"  # a newer version of the same SOP instance arrived before upload


class AddOutcome(StrEnum):
    """What `AgentState.add_instance` made of a received instance."""

    new = "new"
    duplicate = "duplicate"  # same SOP Instance UID and content already known: stored once
    replaced = "replaced"  # same SOP Instance UID, other content: a new version


@dataclass(frozen=True, slots=True)
class SpooledInstance:
    """What the SCP hands to the spool after a durable write."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    sha256: str
    size: int
    path: Path  # absolute path of the spooled file
    received_at: float  # epoch seconds when the C-STORE request arrived
    spooled_at: float  # epoch seconds when the file was durable


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """One recorded instance."""

    id: int
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sha256: str
    size: int
    path: Path
    received_at: float
    spooled_at: float
    state: InstanceState
    attempts: int
    next_attempt_at: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """One series and its stored reap decision."""

    series_instance_uid: str
    study_instance_uid: str
    first_received_at: float
    last_received_at: float
    pending: int  # instances in state spooled
    target: dict[str, Any] | None  # the stored reap decision (JSON), None until first reap
    reaped_at: float | None
    failed_at: float | None = None  # set when the series failed as a whole (`fail_series`)
    failure: str | None = None  # why, a PHI-free sentence


@dataclass(frozen=True, slots=True)
class FailedSeries:
    """A series failed as a whole, for health and support."""

    series_instance_uid: str
    failed_at: float
    failure: str
    instances: int  # instances of the series in state failed


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Counts for health reporting."""

    spooled_count: int
    spooled_bytes: int
    failed_count: int
    uploaded_count: int
    skipped_count: int
    oldest_spooled_at: float | None


_SELECT_DUE_SERIES = """
    SELECT s.series_instance_uid, s.study_instance_uid, s.first_received_at, s.last_received_at,
        (SELECT count(*) FROM instances p
         WHERE p.series_instance_uid = s.series_instance_uid AND p.state = 'spooled'),
        s.target, s.reaped_at, s.failed_at, s.failure
    FROM series s
    WHERE s.series_instance_uid IN (
        SELECT series_instance_uid FROM instances
        WHERE state = 'spooled' AND (next_attempt_at IS NULL OR next_attempt_at <= :now))
      AND s.last_received_at <= :quiet_since
    ORDER BY s.last_received_at, s.series_instance_uid
"""
_SELECT_SERIES = """
    SELECT s.series_instance_uid, s.study_instance_uid, s.first_received_at, s.last_received_at,
        (SELECT count(*) FROM instances p
         WHERE p.series_instance_uid = s.series_instance_uid AND p.state = 'spooled'),
        s.target, s.reaped_at, s.failed_at, s.failure
    FROM series s
    WHERE s.series_instance_uid = ?
"""
# A series needs support when it failed as a whole or holds failed instances. SQLite returns
# the bare columns of the row holding max(finished_at): the latest failed instance's error.
_SELECT_FAILED_SERIES = """
    SELECT s.series_instance_uid,
        coalesce(s.failed_at, max(i.finished_at), s.last_received_at),
        coalesce(s.failure, i.last_error, 'instances failed'),
        count(i.id)
    FROM series s
    LEFT JOIN instances i
        ON i.series_instance_uid = s.series_instance_uid AND i.state = 'failed'
    GROUP BY s.series_instance_uid
    HAVING s.failed_at IS NOT NULL OR count(i.id) > 0
    ORDER BY 2 DESC, s.series_instance_uid
"""
_SELECT_SPOOLED = """
    SELECT id, sop_instance_uid, series_instance_uid, study_instance_uid, sha256, size, path,
        received_at, spooled_at, state, attempts, next_attempt_at, last_error
    FROM instances
    WHERE series_instance_uid = :series AND state = 'spooled'
      AND (:now IS NULL OR next_attempt_at IS NULL OR next_attempt_at <= :now)
    ORDER BY id
"""
_SELECT_INSTANCE = """
    SELECT id, sop_instance_uid, series_instance_uid, study_instance_uid, sha256, size, path,
        received_at, spooled_at, state, attempts, next_attempt_at, last_error
    FROM instances
    WHERE id = ?
"""
# Same SOP Instance UID in one of these states and same content makes an arrival a duplicate.
_SELECT_DEDUP_CANDIDATES = """
    SELECT id, sha256, state, path FROM instances
    WHERE sop_instance_uid = ? AND state IN ('spooled', 'uploaded', 'skipped')
"""
# Rows in state spooled or failed still need their file on disk.
_SELECT_FILE_KEEPING_PATHS = (
    "SELECT DISTINCT path FROM instances WHERE state IN ('spooled', 'failed')"
)
_COUNT_FILE_KEEPING_ROWS = (
    "SELECT count(*) FROM instances WHERE path = ? AND state IN ('spooled', 'failed')"
)
# Per final state: (update of a spooled row, update of a superseded row keeping the detail).
_FINISH = {
    "uploaded": (
        "UPDATE instances SET state = 'uploaded', file_id = :detail, finished_at = :now, "
        "next_attempt_at = NULL WHERE id = :id",
        "UPDATE instances SET file_id = :detail WHERE id = :id",
    ),
    "skipped": (
        "UPDATE instances SET state = 'skipped', skip_reason = :detail, finished_at = :now, "
        "next_attempt_at = NULL WHERE id = :id",
        "UPDATE instances SET skip_reason = :detail WHERE id = :id",
    ),
    "failed": (
        "UPDATE instances SET state = 'failed', last_error = :detail, attempts = attempts + 1, "
        "finished_at = :now, next_attempt_at = NULL WHERE id = :id",
        "UPDATE instances SET last_error = :detail WHERE id = :id",
    ),
}


class AgentState:
    """The state database; open it with `AgentState.open`, share it between threads."""

    def __init__(self, connection: sqlite3.Connection, path: Path, clock: Callable[[], float]):
        """Use `AgentState.open`; this only wires an already prepared connection."""
        self._connection = connection
        self._path = path
        # Spool paths under the database's directory are stored relative to it, so a data
        # directory moved or mounted elsewhere as a whole keeps pointing at its own files.
        self._base = path.parent
        self._clock = clock
        self._lock = threading.Lock()
        # Writers in other processes (the intake workers) queue on this file's flock: SQLite's
        # own busy handler sleeps 1, 2, 5, 10… ms between tries, which cost the shared-port
        # intake a third of its rate when its processes met at the write lock (measured).
        self._writers = os.open(
            path.parent / f"{path.name}-writers.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        self._closed = False
        self._synced_commits = True  # _prepare sets synchronous = FULL

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> AgentState:
        """Open (creating or upgrading) the state database at `path`.

        `clock` stamps bookkeeping times (reaped_at, finished_at); instance times come from the
        caller. Raises `StateError` when the file is not a usable state database.
        """
        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise StateError(_unreadable_message(path, exc)) from exc
        try:
            _prepare(connection, path)
        except BaseException:
            connection.close()
            raise
        return cls(connection, path, clock)

    @property
    def path(self) -> Path:
        """Where the database lives."""
        return self._path

    def close(self) -> None:
        """Close the database; further calls raise `StateError`. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._connection.close()
                os.close(self._writers)

    def add_instance(self, inst: SpooledInstance) -> AddOutcome:
        """Record a durable spool file; committed (not yet synced) before it returns.

        Same SOP Instance UID and sha256 as a spooled/uploaded/skipped row → `duplicate` (the
        just-written file is removed unless a row still needs it). Same SOP Instance UID with
        other content → the spooled older version becomes `superseded` and the new row is
        added → `replaced`. Raises `StateError` if the file is not at `inst.path`.

        The commit of a new instance does not wait for the disk: its file was fsynced first,
        and `Spool.recover` records it again should a power cut take the row back. One that
        deletes an older version's file waits, so that deletion is never durable before the
        row change that allows it. Thread-safe.
        """
        path = self._stored(inst.path)
        known: list[tuple[int, str, str, str]] = []

        def deletes_an_older_version(db: sqlite3.Connection) -> bool:
            known.extend(db.execute(_SELECT_DEDUP_CANDIDATES, (inst.sop_instance_uid,)))
            if any(sha == inst.sha256 for _, sha, _, _ in known):
                return False
            return any(state == "spooled" for _, _, state, _ in known)

        with self._transaction(durable=deletes_an_older_version) as db:
            if any(sha == inst.sha256 for _, sha, _, _ in known):
                outcome, obsolete = AddOutcome.duplicate, [path]
            else:
                # Checked under the lock that guards every unlink, so the file cannot vanish
                # between this check and the commit that makes it referenced.
                if not inst.path.exists():
                    raise StateError(f"spool file {inst.path} does not exist; it was not recorded")
                outcome = AddOutcome.replaced if known else AddOutcome.new
                obsolete = self._insert(db, inst, path, known)
            self._commit_then_remove_unreferenced(db, obsolete)
        return outcome

    def add_recovered(self, inst: SpooledInstance) -> bool:
        """Record a spool file found without a row at start-up (see `Spool.recover`).

        False, recording nothing, when a row of any state already has its SOP Instance UID and
        sha256: the file is a leftover of an instance handled before. Otherwise it is recorded
        as `add_instance` would (an older spooled version becomes superseded) and the commit is
        synced before it returns.
        """
        path = self._stored(inst.path)
        with self._transaction() as db:
            found = db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ? AND sha256 = ? LIMIT 1",
                (inst.sop_instance_uid, inst.sha256),
            ).fetchone()
            if found is not None:
                return False
            known = db.execute(_SELECT_DEDUP_CANDIDATES, (inst.sop_instance_uid,)).fetchall()
            self._commit_then_remove_unreferenced(db, self._insert(db, inst, path, known))
        return True

    def _insert(
        self,
        db: sqlite3.Connection,
        inst: SpooledInstance,
        path: str,
        known: Sequence[tuple[int, str, str, str]],
    ) -> list[str]:
        """Upsert the instance's series and add its row, marking the spooled versions among
        `known` (its dedup candidates) superseded; return their paths, now unreferenced."""
        obsolete = [row_path for _, _, state, row_path in known if state == "spooled"]
        if obsolete:
            db.execute(
                "UPDATE instances SET state = 'superseded', finished_at = ? "
                "WHERE sop_instance_uid = ? AND state = 'spooled'",
                (self._clock(), inst.sop_instance_uid),
            )
        db.execute(
            "INSERT INTO series (series_instance_uid, study_instance_uid, "
            "first_received_at, last_received_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (series_instance_uid) DO UPDATE SET "
            "first_received_at = min(first_received_at, excluded.first_received_at), "
            "last_received_at = max(last_received_at, excluded.last_received_at)",
            (inst.series_instance_uid, inst.study_instance_uid, inst.received_at, inst.received_at),
        )
        db.execute(
            "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_instance_uid, "
            "study_instance_uid, transfer_syntax_uid, sha256, size, path, received_at, "
            "spooled_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'spooled')",
            (
                inst.sop_instance_uid,
                inst.sop_class_uid,
                inst.series_instance_uid,
                inst.study_instance_uid,
                inst.transfer_syntax_uid,
                inst.sha256,
                inst.size,
                path,
                inst.received_at,
                inst.spooled_at,
            ),
        )
        return obsolete

    def due_series(self, now: float, quiet_seconds: float) -> list[SeriesRow]:
        """Series quiet for `quiet_seconds` with at least one spooled instance due at `now`.

        Due means never attempted or `next_attempt_at <= now`. Oldest activity first.
        """
        with self._transaction(write=False) as db:
            rows = db.execute(
                _SELECT_DUE_SERIES, {"now": now, "quiet_since": now - quiet_seconds}
            ).fetchall()
        return [_series_row(row) for row in rows]

    def series(self, series_instance_uid: str) -> SeriesRow | None:
        """The series row, or None when the series is unknown."""
        with self._transaction(write=False) as db:
            row = db.execute(_SELECT_SERIES, (series_instance_uid,)).fetchone()
        return None if row is None else _series_row(row)

    def spooled_instances(
        self, series_instance_uid: str, now: float | None = None
    ) -> list[InstanceRow]:
        """Spooled instances of a series in arrival order; with `now`, only those due then."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                _SELECT_SPOOLED, {"series": series_instance_uid, "now": now}
            ).fetchall()
        return [_instance_row(row, self._base) for row in rows]

    def instance(self, instance_id: int) -> InstanceRow:
        """One instance row by id; `InvalidTransitionError` when there is none."""
        with self._transaction(write=False) as db:
            row = db.execute(_SELECT_INSTANCE, (instance_id,)).fetchone()
        if row is None:
            raise InvalidTransitionError(f"no instance with id {instance_id} in the state database")
        return _instance_row(row, self._base)

    def set_series_target(self, series_instance_uid: str, target: Mapping[str, Any]) -> None:
        """Store the reap decision of a series (JSON-serialisable) and stamp `reaped_at`."""
        encoded = json.dumps(dict(target), sort_keys=True)
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE series SET target = ?, reaped_at = ? WHERE series_instance_uid = ?",
                (encoded, self._clock(), series_instance_uid),
            ).rowcount
            if updated != 1:
                raise InvalidTransitionError("cannot set the target of a series that is not known")

    def mark_uploaded(self, instance_id: int, file_id: str) -> None:
        """The destination confirmed the instance: record `file_id`, then delete the file.

        A row superseded while it was being uploaded keeps its state and records `file_id`.
        """
        self._finish(instance_id, InstanceState.uploaded, file_id)

    def mark_skipped(self, instance_id: int, reason: str) -> None:
        """The upload policy declined the instance: record why, then delete the file."""
        self._finish(instance_id, InstanceState.skipped, reason)

    def mark_failed(self, instance_id: int, error: str) -> None:
        """A permanent failure: record the error (attempts + 1); the file is kept for support."""
        self._finish(instance_id, InstanceState.failed, error)

    def fail_series(self, series_instance_uid: str, reason: str) -> int:
        """Fail a series as a whole: record why, and fail each of its spooled instances.

        The files are kept for support. The first failure's reason and time stay; instances
        failed later (late arrivals) get `reason`. Returns how many instances were failed.
        """
        now = self._clock()
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE series SET failed_at = coalesce(failed_at, ?), "
                "failure = coalesce(failure, ?) WHERE series_instance_uid = ?",
                (now, reason, series_instance_uid),
            ).rowcount
            if updated != 1:
                raise InvalidTransitionError("cannot fail a series that is not known")
            return db.execute(
                "UPDATE instances SET state = 'failed', last_error = ?, attempts = attempts + 1, "
                "finished_at = ? WHERE series_instance_uid = ? AND state = 'spooled'",
                (reason, now, series_instance_uid),
            ).rowcount

    def failed_series(self, limit: int = 20) -> tuple[int, list[FailedSeries]]:
        """Series that need support, and the latest `limit` of them.

        A series needs support when it failed as a whole (`fail_series`) or holds instances
        that failed for good (refused by the destination, unreadable, out of retries); its
        reason is the series' failure, else the latest failed instance's error.
        """
        with self._transaction(write=False) as db:
            rows = db.execute(_SELECT_FAILED_SERIES).fetchall()
        failed = [FailedSeries(*row) for row in rows]
        return len(failed), failed[:limit]

    def skipped_series(self) -> dict[str, int]:
        """How many series the upload policy declined, per reason (opted_out, not_opted_in)."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT json_extract(target, '$.reason'), count(*) FROM series "
                "WHERE target IS NOT NULL AND json_extract(target, '$.upload') = 0 "
                "GROUP BY 1 ORDER BY 1"
            ).fetchall()
        return {str(reason): int(count) for reason, count in rows}

    def retry_series(self, series_instance_uid: str) -> int:
        """Put the failed instances of a series back in the spool to be tried again.

        A series failed as a whole is reaped again under the config in force then (its
        decision is dropped); one with refused instances keeps its decision. Returns how many
        instances are spooled again.
        """
        with self._transaction() as db:
            found = db.execute(
                "SELECT failed_at FROM series WHERE series_instance_uid = ?",
                (series_instance_uid,),
            ).fetchone()
            if found is None:
                raise InvalidTransitionError("cannot retry a series that is not known")
            if found[0] is not None:
                db.execute(
                    "UPDATE series SET failed_at = NULL, failure = NULL, target = NULL, "
                    "reaped_at = NULL WHERE series_instance_uid = ?",
                    (series_instance_uid,),
                )
            return db.execute(
                "UPDATE instances SET state = 'spooled', attempts = 0, next_attempt_at = NULL, "
                "finished_at = NULL WHERE series_instance_uid = ? AND state = 'failed'",
                (series_instance_uid,),
            ).rowcount

    def discard_series(self, series_instance_uid: str, reason: str) -> int:
        """Give up on the failed instances of a series: record `reason`, delete their files.

        Returns how many instances were discarded; the series no longer needs support.
        """
        with self._transaction() as db:
            paths = [
                path
                for (path,) in db.execute(
                    "SELECT path FROM instances WHERE series_instance_uid = ? AND state = 'failed'",
                    (series_instance_uid,),
                )
            ]
            updated = db.execute(
                "UPDATE series SET failed_at = NULL, failure = NULL WHERE series_instance_uid = ?",
                (series_instance_uid,),
            ).rowcount
            if updated != 1:
                raise InvalidTransitionError("cannot discard a series that is not known")
            discarded = db.execute(
                "UPDATE instances SET state = 'skipped', skip_reason = ?, finished_at = ? "
                "WHERE series_instance_uid = ? AND state = 'failed'",
                (reason, self._clock(), series_instance_uid),
            ).rowcount
            self._commit_then_remove_unreferenced(db, paths)
        return discarded

    def schedule_retry(self, instance_id: int, error: str, next_attempt_at: float) -> None:
        """A retryable failure: attempts + 1, remember the error, try again at `next_attempt_at`."""
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE instances SET attempts = attempts + 1, last_error = ?, "
                "next_attempt_at = ? WHERE id = ? AND state = 'spooled'",
                (error, next_attempt_at, instance_id),
            ).rowcount
            if updated != 1 and _current_state(db, instance_id) != "superseded":
                raise _transition_error(db, instance_id, "scheduled for a retry")

    def stats(self) -> SpoolStats:
        """Counts and bytes per state, for health reports."""
        with self._transaction(write=False) as db:
            row = db.execute(
                "SELECT "
                "  count(*) FILTER (WHERE state = 'spooled'), "
                "  coalesce(sum(size) FILTER (WHERE state = 'spooled'), 0), "
                "  count(*) FILTER (WHERE state = 'failed'), "
                "  count(*) FILTER (WHERE state = 'uploaded'), "
                "  count(*) FILTER (WHERE state = 'skipped'), "
                "  min(spooled_at) FILTER (WHERE state = 'spooled') "
                "FROM instances"
            ).fetchone()
        return SpoolStats(*row)

    def series_instance_count(self, series_instance_uid: str) -> int:
        """Distinct SOP instances known in a series, in any state but superseded."""
        with self._transaction(write=False) as db:
            (count,) = db.execute(
                "SELECT count(DISTINCT sop_instance_uid) FROM instances "
                "WHERE series_instance_uid = ? AND state != 'superseded'",
                (series_instance_uid,),
            ).fetchone()
        return int(count)

    def series_sop_instance_uids(self, series_instance_uid: str) -> set[str]:
        """SOP Instance UIDs known in a series, in any state but superseded."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT DISTINCT sop_instance_uid FROM instances "
                "WHERE series_instance_uid = ? AND state != 'superseded'",
                (series_instance_uid,),
            ).fetchall()
        return {uid for (uid,) in rows}

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction for a module that owns other tables of this database (the pull
        ledger); committed when the block ends, rolled back if it raises.

        SQLite errors come out as `StateError` (`StateFullError` for a full disk). The spool
        bookkeeping tables (`series`, `instances`) are written only through the methods above.
        """
        with self._transaction(write=write) as db:
            yield db

    def file_keeping_paths(self) -> set[Path]:
        """Paths of every row that still needs its file (spooled or failed), for recovery."""
        with self._transaction(write=False) as db:
            rows = db.execute(_SELECT_FILE_KEEPING_PATHS).fetchall()
        return {self._resolved(path) for (path,) in rows}

    def _finish(self, instance_id: int, state: InstanceState, detail: str) -> None:
        update_spooled, update_superseded = _FINISH[state.value]
        parameters = {"detail": detail, "now": self._clock(), "id": instance_id}
        with self._transaction() as db:
            row = db.execute("SELECT state, path FROM instances WHERE id = ?", (instance_id,))
            found = row.fetchone()
            if found is None:
                raise InvalidTransitionError(
                    f"no instance with id {instance_id} in the state database"
                )
            current, path = found
            if current == "spooled":
                db.execute(update_spooled, parameters)
            elif current == "superseded":
                # A newer version arrived while this one was being handled: it stays superseded
                # (the newer row follows) but keeps what happened to it.
                db.execute(update_superseded, parameters)
            elif current != state.value:
                raise InvalidTransitionError(
                    f"instance {instance_id} is {current}; it cannot become {state.value}"
                )
            obsolete = [] if state is InstanceState.failed else [path]
            self._commit_then_remove_unreferenced(db, obsolete)

    def _commit_then_remove_unreferenced(self, db: sqlite3.Connection, paths: list[str]) -> None:
        db.execute("COMMIT")
        for path in paths:
            (needed,) = db.execute(_COUNT_FILE_KEEPING_ROWS, (path,)).fetchone()
            if needed:
                continue
            try:
                self._resolved(path).unlink(missing_ok=True)
            except OSError as exc:
                # The change is committed; an undeletable file is only wasted space, and
                # Spool.recover() removes it at the next start.
                _log.warning("spool file not deleted", path=path, error=str(exc))

    def _stored(self, path: Path) -> str:
        return (
            path.relative_to(self._base).as_posix()
            if path.is_relative_to(self._base)
            else str(path)
        )

    def _resolved(self, stored: str) -> Path:
        return self._base / stored  # an absolute stored path stays as it is

    @contextmanager
    def _transaction(
        self, *, write: bool = True, durable: bool | Callable[[sqlite3.Connection], bool] = True
    ) -> Iterator[sqlite3.Connection]:
        """Hold the lock for one transaction; commit at exit unless already done.

        Writes take SQLite's write lock up front (IMMEDIATE) so they never fail half-way on a
        busy database; reads stay DEFERRED and do not block another process reading the file.
        A `durable` write's commit returns once it is on disk (`synchronous=FULL`); in WAL
        mode that also syncs every earlier commit that did not wait (NORMAL). A callable
        decides from what it reads: it runs before BEGIN (SQLite refuses to change the mode
        inside a transaction) but under the writers' lock, so nobody commits in between.
        """
        with self._lock:
            if self._closed:
                raise StateError(f"the state database {self._path} is closed")
            db = self._connection
            if write:
                fcntl.flock(self._writers, fcntl.LOCK_EX)
            try:
                if write:
                    synced = durable(db) if callable(durable) else durable
                    if synced != self._synced_commits:
                        db.execute(f"PRAGMA synchronous = {'FULL' if synced else 'NORMAL'}")
                        self._synced_commits = synced
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield db
                if db.in_transaction:
                    db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.rollback()
                if isinstance(exc, sqlite3.Error):
                    raise _translate(self._path, exc) from exc
                raise
            finally:
                if write:
                    fcntl.flock(self._writers, fcntl.LOCK_UN)


def _prepare(connection: sqlite3.Connection, path: Path) -> None:
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
            raise StateError(_unreadable_message(path, check))
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
                f"BEGIN IMMEDIATE; {_MIGRATIONS[target]}; "
                f"PRAGMA user_version = {target + 1}; COMMIT;"
            )
    except sqlite3.Error as exc:
        raise StateError(_unreadable_message(path, exc)) from exc


def _unreadable_message(path: Path, problem: object) -> str:
    return (
        f"the state database {path} is unreadable ({problem}). The spool still holds the "
        "received instances and the state is needed to upload them: stop the agent, keep a "
        f"copy of the file, and try `sqlite3 {path} .recover` or restore it from a backup. "
        "Do not delete it; the agent refuses to start with an empty state"
    )


def _translate(path: Path, exc: sqlite3.Error) -> StateError:
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return StateFullError(f"the disk holding the state database {path} is full")
    return StateError(f"the state database {path} failed: {exc}")


def _current_state(db: sqlite3.Connection, instance_id: int) -> str | None:
    row = db.execute("SELECT state FROM instances WHERE id = ?", (instance_id,)).fetchone()
    return None if row is None else str(row[0])


def _transition_error(
    db: sqlite3.Connection, instance_id: int, action: str
) -> InvalidTransitionError:
    current = _current_state(db, instance_id)
    if current is None:
        return InvalidTransitionError(f"no instance with id {instance_id} in the state database")
    return InvalidTransitionError(f"instance {instance_id} is {current}; it cannot be {action}")


def _instance_row(row: tuple[Any, ...], base: Path) -> InstanceRow:
    (
        id_,
        sop,
        series,
        study,
        sha,
        size,
        path,
        received,
        spooled,
        state,
        attempts,
        next_at,
        error,
    ) = row
    return InstanceRow(
        id=id_,
        sop_instance_uid=sop,
        series_instance_uid=series,
        study_instance_uid=study,
        sha256=sha,
        size=size,
        path=base / path,
        received_at=received,
        spooled_at=spooled,
        state=InstanceState(state),
        attempts=attempts,
        next_attempt_at=next_at,
        last_error=error,
    )


def _series_row(row: tuple[Any, ...]) -> SeriesRow:
    series, study, first, last, pending, target, reaped_at, failed_at, failure = row
    return SeriesRow(
        series_instance_uid=series,
        study_instance_uid=study,
        first_received_at=first,
        last_received_at=last,
        pending=pending,
        target=None if target is None else json.loads(target),
        reaped_at=reaped_at,
        failed_at=failed_at,
        failure=failure,
    )
