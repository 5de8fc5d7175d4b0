"""The state database's connection: opening it, one transaction at a time, and handing a spool
file back to its owner after the commit that leaves no row needing it.

Every method runs one transaction on one connection guarded by a lock, so SCP threads and the
asyncio side can share it; a write can block on the disk (a synced commit, a checkpoint,
another process holding the write lock), so asyncio code calls through `asyncio.to_thread`.
Writers in other processes (the intake workers) queue on a file lock next to the database.

The state never deletes a file itself: it knows when a file stops being needed (bookkeeping),
the spool owns the files and deletes them (`FileRelease`, given by `agent.spool.Spool`).

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from agent.state import queries
from agent.state.checkpoint import Checkpointer
from agent.state.errors import StateError, translate_error, unreadable_message
from agent.state.schema import prepare

__all__ = ["Database", "FileRelease"]

_BUSY_TIMEOUT_MS = 10_000

FileRelease = Callable[[Path], None]
"""Deletes a spool file no row needs any more. Called after the synced commit that made it
unreferenced, under the state's locks (so no row can take the path again meanwhile): it must
be quick, must not call back into the state, and must not raise for a file it cannot delete
(one left behind is removed by `Spool.recover` at the next start)."""


class Database:
    """One state database file: its connection, lock and transactions."""

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
        self._checkpointer = Checkpointer(path)
        self._synced_commits = True  # _prepare sets synchronous = FULL
        # Who deletes files that became unreferenced; until a spool says it owns them they
        # stay on disk, which is safe (recovery removes leftovers), never the reverse.
        self._release: FileRelease | None = None

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> Self:
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
            raise StateError(unreadable_message(path, exc)) from exc
        try:
            prepare(connection, path)
            # Checkpoints run on a thread of their own (agent.state.checkpoint), never inside
            # a commit of this connection.
            connection.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            connection.close()
            raise StateError(unreadable_message(path, exc)) from exc
        except BaseException:
            connection.close()
            raise
        return cls(connection, path, clock)

    @property
    def path(self) -> Path:
        """Where the database lives."""
        return self._path

    def release_files_with(self, release: FileRelease) -> None:
        """Name the owner of the spool files: from now on, each file that no row needs any
        more is handed to `release` after the commit that made it so (`agent.spool.Spool`
        calls this with its own deletion when it is built on this state)."""
        with self._lock:
            self._release = release

    def close(self) -> None:
        """Close the database; further calls raise `StateError`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # Outside the lock: a checkpoint under way ends first; then nothing else uses the file.
        self._checkpointer.close()
        with self._lock:
            self._connection.close()
            os.close(self._writers)

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction for a module that owns other tables of this database (the pull
        ledger); committed when the block ends, rolled back if it raises.

        SQLite errors come out as `StateError` (`StateFullError` for a full disk). The spool
        bookkeeping tables (`series`, `instances`) are written only through the methods above.
        """
        with self._transaction(write=write) as db:
            yield db

    def _commit_then_release_unreferenced(self, db: sqlite3.Connection, paths: list[str]) -> None:
        # The commit comes first (synced for every transaction that passes paths here), so a
        # file is never gone while a row on disk still needs it: a crash in between leaves
        # only a file no row names, which Spool.recover removes or records again.
        db.execute("COMMIT")
        release = self._release
        if release is None:
            return
        for path in paths:
            (needed,) = db.execute(queries.COUNT_FILE_KEEPING_ROWS, (path,)).fetchone()
            if not needed:
                release(self._resolved(path))

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
                if write:
                    self._checkpointer.committed()
            except BaseException as exc:
                if db.in_transaction:
                    db.rollback()
                if isinstance(exc, sqlite3.Error):
                    raise translate_error(self._path, exc) from exc
                raise
            finally:
                if write:
                    fcntl.flock(self._writers, fcntl.LOCK_UN)
