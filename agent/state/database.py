"""The state database's connection: opening it, one transaction at a time, and file deletion
after the commit that allows it.

Every method runs one transaction on one connection guarded by a lock, so SCP threads and the
asyncio side can share it; a write can block on the disk (a synced commit, a checkpoint,
another process holding the write lock), so asyncio code calls through `asyncio.to_thread`.
Writers in other processes (the intake workers) queue on a file lock next to the database.

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

import structlog

from agent.state import queries
from agent.state.errors import StateError, translate_error, unreadable_message
from agent.state.schema import prepare

__all__ = ["Database"]

_log = structlog.get_logger(__name__)
_BUSY_TIMEOUT_MS = 10_000


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
        self._synced_commits = True  # _prepare sets synchronous = FULL

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

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction for a module that owns other tables of this database (the pull
        ledger); committed when the block ends, rolled back if it raises.

        SQLite errors come out as `StateError` (`StateFullError` for a full disk). The spool
        bookkeeping tables (`series`, `instances`) are written only through the methods above.
        """
        with self._transaction(write=write) as db:
            yield db

    def _commit_then_remove_unreferenced(self, db: sqlite3.Connection, paths: list[str]) -> None:
        db.execute("COMMIT")
        for path in paths:
            (needed,) = db.execute(queries.COUNT_FILE_KEEPING_ROWS, (path,)).fetchone()
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
                    raise translate_error(self._path, exc) from exc
                raise
            finally:
                if write:
                    fcntl.flock(self._writers, fcntl.LOCK_UN)
