"""A prototype of a spool that writes into preallocated slot files, measured by the benchmark.

The agent's Spool creates a temp file, fsyncs it, renames it to its content address and
fsyncs the directory: the name changes on every store, so every store pays for a journal
commit of directory metadata. Here the files (and their names) are created and made durable
ahead of time, so a store is open, write, fsync, and the SQLite row. Only
bench/_agent_intake.py imports this; docs/benchmarks.md describes what the real change
(refilling the pool, recovery, duplicates) would need.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from agent.spool import Spool, SpoolFull
from agent.state import AddOutcome, AgentState, SpooledInstance


class SlotSpool(Spool):
    """Spool.store into files created in advance; everything else as the agent's Spool."""

    def __init__(self, root: Path, state: AgentState, slots: int) -> None:
        """Create the spool and `slots` empty files under root, made durable once.

        Each process gets its own slot directory, so processes sharing a spool never collide.
        """
        super().__init__(root, state)
        self._slot_state = state
        directory = root / f"slots-{os.getpid()}"
        directory.mkdir()
        self._free = [directory / f"{number:08d}.dcm" for number in range(slots)]
        for path in self._free:
            path.touch()
        _fsync_directory(directory)
        self._free_lock = threading.Lock()

    def store(
        self,
        part10: bytes | bytearray | memoryview,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        series_instance_uid: str,
        study_instance_uid: str,
        transfer_syntax_uid: str,
        received_at: float,
    ) -> AddOutcome:
        """Write part10 into the next free slot, fsync it, and record it in the state."""
        data = memoryview(part10).cast("B")
        sha256 = hashlib.sha256(data).hexdigest()
        with self._free_lock:
            if not self._free:
                raise SpoolFull("the prototype's slot pool is empty: start it with more slots")
            path = self._free.pop()
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        return self._slot_state.add_instance(
            SpooledInstance(
                sop_instance_uid=sop_instance_uid,
                sop_class_uid=sop_class_uid,
                series_instance_uid=series_instance_uid,
                study_instance_uid=study_instance_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                sha256=sha256,
                size=len(data),
                path=path,
                received_at=received_at,
                spooled_at=time.time(),
            )
        )


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
