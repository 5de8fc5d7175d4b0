"""The pull ledger: what each source showed, per series, in the agent's state database.

A series is tracked per source from the first query round that lists it. Its remote instance
count and the time that count last changed decide when it is complete (stable for
`acquisition_delay`). Its state says what is left to do:

- `new`: not yet retrieved completely (never, or an earlier attempt failed);
- `retrieved`: every instance the source announced (`retrieved_count`) arrived; when the
  count grows beyond it, the new instances are due (and only those);
- `short`: retrieval kept coming up short by `missing` instances; retried with a backoff.

A series missing from a successful round is `vanished` (stamped, never forgotten at once);
listed again, it is the same series, not a new one. After `grace_period` vanished it is
forgotten, so it would be new if it came back. Only complete rounds are recorded: a failed
query changes nothing here.

`bind_ledger` ties the database to its data directory with a marker file, so a state database
that was deleted or swapped for an empty one is refused instead of making every series look new.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.state import AgentState, StateError

__all__ = [
    "LEDGER_MARKER_NAME",
    "LedgerSummary",
    "PullLedger",
    "RemoteSeries",
    "RoundChanges",
    "SeriesState",
    "TrackedSeries",
    "bind_ledger",
    "check_ledger",
]

LEDGER_MARKER_NAME = "pull-ledger.id"

_SELECT_TRACKED = """
    SELECT source, series_instance_uid, study_instance_uid, remote_count, count_changed_at,
        vanished_at, state, retrieved_count, retrievals, missing, next_attempt_at, last_error
    FROM pull_series
"""
# Due: present on the source, count stable long enough, not waiting for a retry, and with
# something left to fetch.
_SELECT_DUE = (
    _SELECT_TRACKED
    + """
    WHERE source = :source AND vanished_at IS NULL
      AND count_changed_at <= :stable_since
      AND (next_attempt_at IS NULL OR next_attempt_at <= :now)
      AND (state != 'retrieved' OR remote_count > retrieved_count)
    ORDER BY count_changed_at, series_instance_uid
"""
)
_UPSERT_SEEN = """
    INSERT INTO pull_series (source, series_instance_uid, study_instance_uid, remote_count,
        count_changed_at, first_seen_at, last_seen_at, state)
    VALUES (:source, :series, :study, :count, :now, :now, :now, 'new')
    ON CONFLICT (source, series_instance_uid) DO UPDATE SET
        count_changed_at = CASE WHEN remote_count != excluded.remote_count
            THEN excluded.count_changed_at ELSE count_changed_at END,
        remote_count = excluded.remote_count,
        last_seen_at = excluded.last_seen_at,
        vanished_at = NULL
"""


class SeriesState(StrEnum):
    """What is left to do for a tracked series."""

    new = "new"
    retrieved = "retrieved"
    short = "short"


@dataclass(frozen=True, slots=True)
class RemoteSeries:
    """One series as a complete query round found it on a source."""

    study_instance_uid: str
    series_instance_uid: str
    instance_count: int


@dataclass(frozen=True, slots=True)
class TrackedSeries:
    """One row of the ledger."""

    source: str
    series_instance_uid: str
    study_instance_uid: str
    remote_count: int
    count_changed_at: float
    vanished_at: float | None
    state: SeriesState
    retrieved_count: int
    retrievals: int
    missing: int
    next_attempt_at: float | None
    last_error: str | None

    @property
    def first_retrieval(self) -> bool:
        """Never fetched before: the whole series is asked for in one request."""
        return self.state is SeriesState.new and self.retrievals == 0


@dataclass(frozen=True, slots=True)
class RoundChanges:
    """What a recorded round changed in the ledger."""

    seen: int
    new: int
    changed: int  # series whose count differs from the previous round
    reappeared: int  # vanished series listed again (inside the grace period)
    vanished: int  # series missing from this round for the first time
    forgotten: int  # vanished longer than the grace period, removed


@dataclass(frozen=True, slots=True)
class LedgerSummary:
    """Counts of one source's series, for health."""

    tracked: int
    waiting: int  # present, with something left to fetch (new, short, or grown)
    retrieved: int
    short: int
    missing_instances: int
    vanished: int


class PullLedger:
    """Queries on the pull tables; blocking (SQLite), so asyncio code uses `to_thread`."""

    def __init__(self, state: AgentState) -> None:
        self._state = state

    def record_round(
        self, source: str, found: Sequence[RemoteSeries], now: float, grace_seconds: float
    ) -> RoundChanges:
        """Record one complete round of `source`, all at once: upsert what was listed, stamp
        what is missing as vanished, forget what vanished more than `grace_seconds` ago."""
        with self._state.transaction() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS pull_round (series TEXT PRIMARY KEY)")
            db.execute("DELETE FROM temp.pull_round")
            db.executemany(
                "INSERT OR IGNORE INTO temp.pull_round (series) VALUES (?)",
                [(item.series_instance_uid,) for item in found],
            )
            known = _known(db, source)
            new = changed = reappeared = 0
            for item in found:
                previous = known.get(item.series_instance_uid)
                if previous is None:
                    new += 1
                else:
                    count, vanished_at = previous
                    changed += count != item.instance_count
                    reappeared += vanished_at is not None
            db.executemany(
                _UPSERT_SEEN,
                [
                    {
                        "source": source,
                        "series": item.series_instance_uid,
                        "study": item.study_instance_uid,
                        "count": item.instance_count,
                        "now": now,
                    }
                    for item in found
                ],
            )
            vanished = db.execute(
                "UPDATE pull_series SET vanished_at = :now WHERE source = :source "
                "AND vanished_at IS NULL "
                "AND series_instance_uid NOT IN (SELECT series FROM temp.pull_round)",
                {"source": source, "now": now},
            ).rowcount
            forgotten = db.execute(
                "DELETE FROM pull_series WHERE source = ? AND vanished_at <= ?",
                (source, now - grace_seconds),
            ).rowcount
            db.execute("DELETE FROM temp.pull_round")
        return RoundChanges(
            seen=len(found),
            new=new,
            changed=changed,
            reappeared=reappeared,
            vanished=vanished,
            forgotten=forgotten,
        )

    def due(self, source: str, now: float, quiet_seconds: float) -> list[TrackedSeries]:
        """Series of `source` to retrieve at `now`: stable for `quiet_seconds`, not retried
        before their time, with instances left to fetch. Longest-stable first."""
        with self._state.transaction(write=False) as db:
            rows = db.execute(
                _SELECT_DUE, {"source": source, "now": now, "stable_since": now - quiet_seconds}
            ).fetchall()
        return [_tracked(row) for row in rows]

    def series(self, source: str, series_instance_uid: str) -> TrackedSeries | None:
        """One tracked series, or None."""
        with self._state.transaction(write=False) as db:
            row = db.execute(
                _SELECT_TRACKED + "WHERE source = ? AND series_instance_uid = ?",
                (source, series_instance_uid),
            ).fetchone()
        return None if row is None else _tracked(row)

    def announced(self, series_instance_uid: str) -> int | None:
        """How many instances the sources announced for a series at their last query (the
        largest, should two sources hold it); None for a series no source listed (PUSH)."""
        with self._state.transaction(write=False) as db:
            row = db.execute(
                "SELECT max(remote_count) FROM pull_series WHERE series_instance_uid = ?",
                (series_instance_uid,),
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def mark_retrieved(self, source: str, series_instance_uid: str, count: int, now: float) -> None:
        """Every one of `count` announced instances arrived."""
        self._update(
            "UPDATE pull_series SET state = 'retrieved', retrieved_count = :count, "
            "retrieved_at = :now, retrievals = retrievals + 1, missing = 0, "
            "next_attempt_at = NULL, last_error = NULL "
            "WHERE source = :source AND series_instance_uid = :series",
            {"source": source, "series": series_instance_uid, "count": count, "now": now},
        )

    def mark_short(
        self,
        source: str,
        series_instance_uid: str,
        missing: int,
        error: str,
        next_attempt_at: float,
    ) -> None:
        """The retrieval stayed `missing` instances short; try again at `next_attempt_at`."""
        self._update(
            "UPDATE pull_series SET state = 'short', missing = :missing, "
            "retrievals = retrievals + 1, next_attempt_at = :next, last_error = :error "
            "WHERE source = :source AND series_instance_uid = :series",
            {
                "source": source,
                "series": series_instance_uid,
                "missing": missing,
                "next": next_attempt_at,
                "error": error,
            },
        )

    def mark_failed(
        self, source: str, series_instance_uid: str, error: str, next_attempt_at: float
    ) -> None:
        """The retrieval failed (no answer, a failure status); its state stays, retried later."""
        self._update(
            "UPDATE pull_series SET retrievals = retrievals + 1, next_attempt_at = :next, "
            "last_error = :error WHERE source = :source AND series_instance_uid = :series",
            {
                "source": source,
                "series": series_instance_uid,
                "next": next_attempt_at,
                "error": error,
            },
        )

    def summary(self, source: str) -> LedgerSummary:
        """Counts of the series tracked for `source`."""
        with self._state.transaction(write=False) as db:
            row = db.execute(
                "SELECT count(*), "
                "  count(*) FILTER (WHERE vanished_at IS NULL AND (state != 'retrieved' "
                "      OR remote_count > retrieved_count)), "
                "  count(*) FILTER (WHERE state = 'retrieved'), "
                "  count(*) FILTER (WHERE state = 'short'), "
                "  coalesce(sum(missing) FILTER (WHERE state = 'short'), 0), "
                "  count(*) FILTER (WHERE vanished_at IS NOT NULL) "
                "FROM pull_series WHERE source = ?",
                (source,),
            ).fetchone()
        return LedgerSummary(*row)

    def _update(self, statement: str, parameters: dict[str, object]) -> None:
        with self._state.transaction() as db:
            if db.execute(statement, parameters).rowcount != 1:
                raise StateError(
                    "the pull ledger has no such series; it was forgotten while being retrieved"
                )


def check_ledger(state: AgentState, data_dir: Path) -> None:
    """Refuse a state database that is not the one this data directory's pull ledger lives in.

    Raises `StateError` when `data_dir` holds a ledger marker naming another database: the
    state file was deleted, replaced by an empty one, or copied from elsewhere, and pulling
    on would retrieve every series again as new.
    """
    marker = data_dir / LEDGER_MARKER_NAME
    try:
        recorded = marker.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"cannot read the pull ledger marker {marker}: {exc}") from exc
    current = _ledger_id(state)
    if recorded != current:
        raise StateError(
            f"the state database {state.path} is not the one this data directory pulled with "
            f"(its pull ledger id is {current}, {marker} says {recorded}): it was deleted, "
            "replaced or restored from elsewhere, and every series would look new. Put the "
            f"right state.db back (or restore it from a backup); to really start over, delete "
            f"{marker} as well"
        )


def bind_ledger(state: AgentState, data_dir: Path) -> None:
    """Check the ledger marker (`check_ledger`), then write it if it is missing (durably)."""
    check_ledger(state, data_dir)
    marker = data_dir / LEDGER_MARKER_NAME
    if marker.exists():
        return
    fd, temp = tempfile.mkstemp(dir=data_dir, prefix=".pull-ledger.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(_ledger_id(state) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, marker)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _ledger_id(state: AgentState) -> str:
    with state.transaction(write=False) as db:
        row = db.execute("SELECT value FROM pull_meta WHERE key = 'ledger_id'").fetchone()
    if row is None:
        raise StateError(f"the state database {state.path} has no pull ledger id; it is damaged")
    return str(row[0])


def _known(db: sqlite3.Connection, source: str) -> dict[str, tuple[int, float | None]]:
    rows = db.execute(
        "SELECT series_instance_uid, remote_count, vanished_at FROM pull_series "
        "WHERE source = ? AND series_instance_uid IN (SELECT series FROM temp.pull_round)",
        (source,),
    ).fetchall()
    return {uid: (count, vanished_at) for uid, count, vanished_at in rows}


def _tracked(row: tuple[Any, ...]) -> TrackedSeries:
    source, series, study, remote_count, changed_at, vanished_at, state, *rest = row
    retrieved_count, retrievals, missing, next_attempt_at, last_error = rest
    return TrackedSeries(
        source=source,
        series_instance_uid=series,
        study_instance_uid=study,
        remote_count=remote_count,
        count_changed_at=changed_at,
        vanished_at=vanished_at,
        state=SeriesState(state),
        retrieved_count=retrieved_count,
        retrievals=retrievals,
        missing=missing,
        next_attempt_at=next_attempt_at,
        last_error=last_error,
    )
