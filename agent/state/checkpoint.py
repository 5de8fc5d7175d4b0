"""WAL checkpoints off the writers' path: a thread of the state database's own copies the
write-ahead log back into the database file.

SQLite's automatic checkpoint runs inside the COMMIT that pushes the log past 1000 pages, on
the committing thread and under the state's lock: on the VM one commit in ~70 of an instance's
row paid 3 to 16 ms for it, half of all the time spent in `add_instance` (docs/benchmarks.md),
and with group commit every association waiting on that batch paid it too. So the state's own
connection does not checkpoint (`wal_autocheckpoint = 0`); after every `COMMITS_PER_CHECKPOINT`
write transactions, this thread runs a PASSIVE checkpoint on a connection of its own. PASSIVE
never blocks writers or readers: it copies what no reader still needs and leaves the rest for
the next round. A checkpoint changes what is in the database file, never what is committed, so
it has no bearing on what was acknowledged.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import structlog

__all__ = ["COMMITS_PER_CHECKPOINT", "Checkpointer"]

_log = structlog.get_logger(__name__)

COMMITS_PER_CHECKPOINT = 100
"""Write transactions between checkpoints: an instance's row writes 8 to 10 pages, so this keeps
the log near SQLite's own 1000-page threshold."""


class Checkpointer:
    """Checkpoints one database's WAL on its own thread, started at the first `committed`."""

    def __init__(self, path: Path, every: int = COMMITS_PER_CHECKPOINT) -> None:
        """`path` is the database file; a checkpoint runs after every `every` commits."""
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self._path = path
        self._every = every
        self._commits = 0
        self._due = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.checkpoints = 0
        """Checkpoints run so far (for tests and health)."""

    def committed(self, transactions: int = 1) -> None:
        """Count write transactions just committed; wake the thread when a checkpoint is due.
        Cheap: called by every write transaction under the state's lock."""
        self._commits += transactions
        if self._commits < self._every:
            return
        self._commits = 0
        with self._lock:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"state-checkpoint {self._path}", daemon=True
                )
                self._thread.start()
        self._due.set()

    def close(self) -> None:
        """Stop the thread after the checkpoint under way, if any. Idempotent."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._due.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        try:
            connection = sqlite3.connect(self._path, isolation_level=None, timeout=0)
        except sqlite3.Error as exc:
            _log.error("state checkpoints stopped", path=str(self._path), error=str(exc))
            return
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._closed:
                    return
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    # Another process's checkpoint under way, or the disk: the log only grows
                    # until the next round, nothing is lost.
                    _log.info("state checkpoint skipped", path=str(self._path), error=str(exc))
                else:
                    self.checkpoints += 1
        finally:
            connection.close()
