"""The spool bookkeeping: instances and their series moving through `InstanceState`.

The only writer of spool bookkeeping: the SCP records each durable file here before it answers
Success, the reaper and uploader move instances through their states, support retries or
discards failed series.

Files: a file no row needs any more (uploaded, skipped, superseded, discarded, a duplicate) is
released to the spool, which owns the files and deletes it (`Database.release_files_with`).

Durability: every commit that allows a spool file to be deleted (uploaded, skipped,
superseded) is synced (``synchronous=FULL``) before the file goes. The commit of a new
instance is not (NORMAL, ~0.4 ms less per instance and no WAL fsync under the lock): its file
was fsynced before, the file is the record of truth, and `Spool.recover` records it again if a
power cut takes the row back. In WAL mode each synced commit also makes every earlier one
durable, so a deletion is never on disk before the row change that allows it. See
docs/intake.md.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.state import queries
from agent.state.database import Database
from agent.state.errors import InvalidTransitionError, StateError
from agent.state.rows import (
    AddOutcome,
    FailedSeries,
    InstanceRow,
    InstanceState,
    SeriesRow,
    SpooledInstance,
    SpoolStats,
    instance_row,
    series_row,
)

__all__ = ["AgentState"]


class AgentState(Database):
    """The state database; open it with `AgentState.open`, share it between threads."""

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
            known.extend(db.execute(queries.SELECT_DEDUP_CANDIDATES, (inst.sop_instance_uid,)))
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
            self._commit_then_release_unreferenced(db, obsolete)
        return outcome

    def add_instances(self, instances: Sequence[SpooledInstance]) -> list[AddOutcome | Exception]:
        """Record several durable spool files in one transaction (group commit, see
        `agent.state.group_commit`); return each one's outcome or the error meant for it.

        The outcomes are those of `add_instance` called once per instance in this order: an
        instance whose SOP Instance UID and content an earlier one of the batch brought is a
        `duplicate`, one with other content `replaced`s it. The commit waits for the disk when
        any instance deletes an older version's file, as `add_instance` does. When the batch
        fails (a full disk, a missing file, anything), nothing of it is kept and each instance
        is recorded alone, so each gets exactly the outcome or error it would have got alone.
        Thread-safe.
        """
        if len(instances) == 1:
            return [self._add_alone(instances[0])]
        try:
            return list(self._add_batch(instances))
        except Exception:
            return [self._add_alone(inst) for inst in instances]

    def _add_alone(self, inst: SpooledInstance) -> AddOutcome | Exception:
        try:
            return self.add_instance(inst)
        except Exception as exc:
            return exc

    def _add_batch(self, instances: Sequence[SpooledInstance]) -> list[AddOutcome]:
        paths = [self._stored(inst.path) for inst in instances]
        plans: list[_Plan] = []

        def deletes_an_older_version(db: sqlite3.Connection) -> bool:
            # Read before BEGIN under the writers' lock (nobody commits in between), then play
            # the batch through in order, as successive add_instance calls would see it.
            seen: dict[str, list[tuple[int, str, str, str]]] = {}
            for inst, path in zip(instances, paths, strict=True):
                known = seen.get(inst.sop_instance_uid)
                if known is None:
                    known = seen[inst.sop_instance_uid] = db.execute(
                        queries.SELECT_DEDUP_CANDIDATES, (inst.sop_instance_uid,)
                    ).fetchall()
                plans.append(_Plan(inst, path, list(known)))
                if any(sha == inst.sha256 for _, sha, _, _ in known):
                    continue
                known[:] = [row for row in known if row[2] != "spooled"]
                known.append((0, inst.sha256, "spooled", path))
            return any(plan.deletes_an_older_version for plan in plans)

        outcomes: list[AddOutcome] = []
        with self._transaction(durable=deletes_an_older_version) as db:
            obsolete: list[str] = []
            for plan in plans:
                inst = plan.instance
                if plan.duplicate:
                    outcomes.append(AddOutcome.duplicate)
                    obsolete.append(plan.path)
                    continue
                # Checked under the lock that guards every unlink, as in add_instance.
                if not inst.path.exists():
                    raise StateError(f"spool file {inst.path} does not exist; it was not recorded")
                outcomes.append(AddOutcome.replaced if plan.known else AddOutcome.new)
                obsolete.extend(self._insert(db, inst, plan.path, plan.known))
            self._commit_then_release_unreferenced(db, obsolete)
        # The transaction counted once; its log grew about as much as one per instance.
        self._checkpointer.committed(len(instances) - 1)
        return outcomes

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
            known = db.execute(queries.SELECT_DEDUP_CANDIDATES, (inst.sop_instance_uid,)).fetchall()
            self._commit_then_release_unreferenced(db, self._insert(db, inst, path, known))
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
                queries.SELECT_DUE_SERIES, {"now": now, "quiet_since": now - quiet_seconds}
            ).fetchall()
        return [series_row(row) for row in rows]

    def series(self, series_instance_uid: str) -> SeriesRow | None:
        """The series row, or None when the series is unknown."""
        with self._transaction(write=False) as db:
            row = db.execute(queries.SELECT_SERIES, (series_instance_uid,)).fetchone()
        return None if row is None else series_row(row)

    def spooled_instances(
        self, series_instance_uid: str, now: float | None = None
    ) -> list[InstanceRow]:
        """Spooled instances of a series in arrival order; with `now`, only those due then."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                queries.SELECT_SPOOLED, {"series": series_instance_uid, "now": now}
            ).fetchall()
        return [instance_row(row, self._base) for row in rows]

    def instance(self, instance_id: int) -> InstanceRow:
        """One instance row by id; `InvalidTransitionError` when there is none."""
        with self._transaction(write=False) as db:
            row = db.execute(queries.SELECT_INSTANCE, (instance_id,)).fetchone()
        if row is None:
            raise InvalidTransitionError(f"no instance with id {instance_id} in the state database")
        return instance_row(row, self._base)

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
        """The destination confirmed the instance: record `file_id`, then release the file.

        A row superseded while it was being uploaded keeps its state and records `file_id`.
        """
        self._finish(instance_id, InstanceState.uploaded, file_id)

    def mark_skipped(self, instance_id: int, reason: str) -> None:
        """The upload policy declined the instance: record why, then release the file."""
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
            rows = db.execute(queries.SELECT_FAILED_SERIES).fetchall()
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
        """Give up on the failed instances of a series: record `reason`, release their files.

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
            self._commit_then_release_unreferenced(db, paths)
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

    def file_keeping_paths(self) -> set[Path]:
        """Paths of every row that still needs its file (spooled or failed), for recovery."""
        with self._transaction(write=False) as db:
            rows = db.execute(queries.SELECT_FILE_KEEPING_PATHS).fetchall()
        return {self._resolved(path) for (path,) in rows}

    def _finish(self, instance_id: int, state: InstanceState, detail: str) -> None:
        update_spooled, update_superseded = queries.FINISH[state.value]
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
            self._commit_then_release_unreferenced(db, obsolete)


@dataclass(slots=True)
class _Plan:
    """One instance of a batch and the dedup candidates it will meet in the transaction."""

    instance: SpooledInstance
    path: str
    known: list[tuple[int, str, str, str]]

    @property
    def duplicate(self) -> bool:
        return any(sha == self.instance.sha256 for _, sha, _, _ in self.known)

    @property
    def deletes_an_older_version(self) -> bool:
        return not self.duplicate and any(state == "spooled" for _, _, state, _ in self.known)


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
