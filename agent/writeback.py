"""Starting a file's writeback without waiting for it: Linux `sync_file_range`, through libc.

Why: the spool fsyncs the slots of a group commit one after the other (`Spool.record`), and on
ext4 with delayed allocation a slot's blocks are allocated only when its dirty pages are written
back, which for a plain fsync happens inside that fsync: each fsync then starts a journal
transaction of its own and waits for its commit. Asking the kernel to write back every slot of
the group first (`SYNC_FILE_RANGE_WRITE`, which returns once the writes are queued) puts all
their block allocations into the running transaction, so the group's first fsync commits the
journal once for all of them and the later ones find little left to do. It is a hint, never a
durability step: each slot is still fsynced before its instance is acknowledged.

Python's `os` does not expose `sync_file_range`, so it is called through `ctypes`. Where libc
lacks it (not Linux) or the kernel or filesystem refuses it (ENOSYS, EINVAL), `Writeback.start`
does nothing from then on and the fsyncs alone do the work, as before.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

import structlog

__all__ = ["SYNC_FILE_RANGE_WRITE", "SyncFileRange", "Writeback", "libc_sync_file_range"]

_log = structlog.get_logger(__name__)

# <linux/fs.h>: start writeback of the range's dirty pages that are not already under
# writeback, without waiting for any of it.
SYNC_FILE_RANGE_WRITE = 2

SyncFileRange = Callable[[int, int, int, int], int]
"""`sync_file_range(fd, offset, nbytes, flags)` as libc declares it: 0, or -1 with errno set
(read with `ctypes.get_errno`)."""

# The call cannot work here at all: no such system call, or a file or filesystem that does not
# support it. Anything else (EIO, EBADF, ...) is an error of this file, raised to the caller.
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL})


def libc_sync_file_range() -> SyncFileRange | None:
    """libc's `sync_file_range` with its C argument types, or None where libc has none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    # int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags): glibc
    # declares the offsets as 64-bit on every architecture.
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


class Writeback:
    """Starts the writeback of whole files (see the module docstring for why).

    Thread-safe: its only state is whether to fall back, set once (two threads finding out at
    the same moment may both log it).
    """

    def __init__(self, sync_file_range: SyncFileRange | None) -> None:
        """`sync_file_range` is `libc_sync_file_range()` (`from_libc`); None, or a call that
        fails with ENOSYS or EINVAL, makes `start` a no-op."""
        self._sync_file_range = sync_file_range
        if sync_file_range is None:
            self._fall_back("libc has no sync_file_range")

    @classmethod
    def from_libc(cls) -> Writeback:
        """The writeback of this process's libc."""
        return cls(libc_sync_file_range())

    @property
    def available(self) -> bool:
        """Whether `start` still calls `sync_file_range`."""
        return self._sync_file_range is not None

    def start(self, fd: int) -> None:
        """Start writing back every dirty page of the open file `fd`; return without waiting.

        Raises `OSError` for an error of this file (EIO, EBADF, ...); an fsync after it would
        report a failed write-back too, since waiting for it is what collects the error.
        """
        call = self._sync_file_range
        if call is None:
            return
        # nbytes 0: from the offset to the end of the file, however long it grows.
        if call(fd, 0, 0, SYNC_FILE_RANGE_WRITE) == 0:
            return
        code = ctypes.get_errno()
        if code in _UNSUPPORTED:
            self._sync_file_range = None
            self._fall_back(f"sync_file_range failed: {os.strerror(code)}")
            return
        raise OSError(code, f"sync_file_range: {os.strerror(code)}")

    def _fall_back(self, reason: str) -> None:
        # Once per Writeback: `start` never calls again after this.
        _log.debug("writeback not started before fsync: each fsync writes its own", reason=reason)
