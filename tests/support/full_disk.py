"""A disk that runs out of space, for the spool's `append_file` seam.

CI may not mount a small filesystem (that needs CAP_SYS_ADMIN), so the disk-full tests write
through `FillingDisk`: real files, real fsyncs, and once its free bytes are used up a write
stores what fits and fails with ENOSPC, as a full filesystem does. Setting `free` again is
space returning.
"""

from __future__ import annotations

import errno
import os

from agent.spool import append_all

__all__ = ["FillingDisk"]


class FillingDisk:
    """`free` bytes left; every write takes from them."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.refused = 0

    def append(self, fd: int, data: memoryview) -> None:
        """The spool's `append_file` seam: every write into a slot goes through it."""
        if len(data) <= self.free:
            append_all(fd, data)
            self.free -= len(data)
            return
        append_all(fd, data[: self.free])
        self.free = 0
        self.refused += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
