"""One agent per data directory: an exclusive lock held for the agent's whole life.

Two agents on one spool would each recover (delete, record again) files the other is writing.
The lock is an `flock` on ``DIR/agent.lock``. It belongs to the open file, so the intake worker
processes that inherit the descriptor hold it too: an agent killed with -9 leaves it held until
its workers have exited, and a restarted agent waits for that instead of recovering a spool
they still write into.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

__all__ = ["DataDirLock", "DataDirLocked"]

LOCK_FILE_NAME = "agent.lock"
_POLL_SECONDS = 0.05


class DataDirLocked(Exception):
    """Another agent (or the intake workers of one that died) still uses the data directory."""


class DataDirLock:
    """The exclusive lock of one data directory; `acquire` once, `release` when done."""

    def __init__(self, data_dir: Path) -> None:
        """Nothing is opened until `acquire`."""
        self.path = Path(data_dir) / LOCK_FILE_NAME
        self._fd: int | None = None

    @property
    def fd(self) -> int:
        """The locked descriptor, to hand to child processes that must hold the lock too."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not locked; call acquire() first")
        return self._fd

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting up to `timeout` seconds; raise `DataDirLocked` if it stays
        held. Writes this process's id into the file for the next one's error message."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                if time.monotonic() >= deadline:
                    raise DataDirLocked(self._held_message(fd, timeout))
                time.sleep(_POLL_SECONDS)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (child processes still holding the descriptor keep it). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _held_message(self, fd: int, timeout: float) -> str:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        return (
            f"the data directory {self.path.parent} is in use by another agent (process "
            f"{holder}, or intake processes of an agent that stopped) and stayed locked for "
            f"{timeout:g} s: stop that agent, or give this one its own --data-dir"
        )
