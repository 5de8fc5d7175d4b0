"""`dicom.max_associations` over every intake process of the agent: one lock file per slot.

An association holds an exclusive `flock` on one of N files in the data directory while it
lives; one that finds all N taken is rejected (transient, local limit exceeded). The kernel
drops a dead process's locks, so a crashed intake process never keeps slots. `flock` locks
belong to an open file description: each process opens the files itself (close-on-exec, so
they are not inherited), and inside a process a set of taken slots keeps two threads from
sharing one.

Without a directory (a listener on its own, as in tests) the limit counts in this process only.

Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path

__all__ = ["AssociationLimit"]


class AssociationLimit:
    """At most `limit` slots taken at once, across the processes sharing `directory`."""

    def __init__(self, limit: int, directory: Path | None = None) -> None:
        """Open (creating if need be) the slot files; raises `OSError` when it cannot."""
        if limit < 1:
            raise ValueError(f"the association limit must be >= 1, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._taken: set[int] = set()
        self._fds: list[int] = []
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for index in range(limit):
                path = directory / f"slot-{index:04d}"
                self._fds.append(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def acquire(self) -> int | None:
        """Take a free slot and return its number, or None when all are taken."""
        with self._lock:
            for index in range(self.limit):
                if index in self._taken:
                    continue
                if self._fds:
                    try:
                        fcntl.flock(self._fds[index], fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # another process holds it
                self._taken.add(index)
                return index
            return None

    def release(self, index: int) -> None:
        """Give slot `index` back; releasing a free slot does nothing."""
        with self._lock:
            if index not in self._taken:
                return
            self._taken.discard(index)
            if self._fds:
                fcntl.flock(self._fds[index], fcntl.LOCK_UN)

    @property
    def taken(self) -> int:
        """Slots this process holds."""
        with self._lock:
            return len(self._taken)

    def close(self) -> None:
        """Release every slot and close the files. Idempotent."""
        with self._lock:
            fds, self._fds = self._fds, []
            self._taken.clear()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
