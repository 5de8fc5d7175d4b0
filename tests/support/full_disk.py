"""A disk that runs out of space, for the spool's `write_file` and `append_file` seams.

CI may not mount a small filesystem (that needs CAP_SYS_ADMIN), so the disk-full tests write
through `FillingDisk`: real files, real fsyncs, and once its free bytes are used up a write
stores what fits and fails with ENOSPC, as a full filesystem does. Setting `free` again is
space returning.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from agent.spool import append_all, write_durably

__all__ = ["FillingDisk"]


class FillingDisk:
    """`free` bytes left; every write takes from them."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.refused = 0

    def __call__(self, path: Path, data: memoryview) -> None:
        if len(data) <= self.free:
            write_durably(path, data)
            self.free -= len(data)
            return
        write_durably(path, data[: self.free])  # the partial write a full disk leaves
        self.free = 0
        self.refused += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def append(self, fd: int, data: memoryview) -> None:
        """The same for the spool's `append_file` seam (a `SlotWriter`'s writes)."""
        if len(data) <= self.free:
            append_all(fd, data)
            self.free -= len(data)
            return
        append_all(fd, data[: self.free])
        self.free = 0
        self.refused += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
