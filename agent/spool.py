"""The spool: received Part-10 files made durable on local disk, content-addressed.

Layout under the spool root::

    tmp/<random>.part              being written; never referenced by the state
    files/<sha[:2]>/<sha>.dcm      durable, named by the sha256 of the bytes

`Spool.store` writes the temp file, fsyncs it, renames it into place, fsyncs the directory
and only then records it in `AgentState`; the caller answers Success after that. A crash at
any step leaves either a temp file or an unreferenced file, and `Spool.recover` removes both
at the next start (the peer never got Success for them, so it sends them again).

Must not import pynetdicom or HTTP libraries: the SCP hands bytes in, the uploader reads paths
out of the state.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.state import AddOutcome, AgentState, SpooledInstance, StateFullError

__all__ = ["RecoveryReport", "Spool", "SpoolFull"]

_log = structlog.get_logger(__name__)

_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_SHARDS = tuple(f"{n:02x}" for n in range(256))


class SpoolFull(Exception):
    """No room to store an instance durably; nothing partial was left behind."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What `Spool.recover` cleaned up or found missing."""

    temp_files_removed: int
    orphans_removed: int
    missing_files: int


class Spool:
    """Durable, content-addressed storage of received instances, recorded in `AgentState`."""

    def __init__(self, root: Path, state: AgentState, reserve_bytes: int = 0) -> None:
        """Create the spool directories under `root` (made durable) if they are missing.

        `reserve_bytes` is the free space to keep on the spool's filesystem: a store that would
        go below it raises `SpoolFull`, so the state database and the OS keep room to work.
        """
        if reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {reserve_bytes}")
        self._root = Path(root).resolve()
        self._tmp = self._root / "tmp"
        self._files = self._root / "files"
        self._state = state
        self._reserve_bytes = reserve_bytes
        self._make_layout()

    @property
    def root(self) -> Path:
        """The absolute spool directory."""
        return self._root

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
        """Make `part10` durable and record it; return what the state made of it.

        Raises `SpoolFull` when the disk (or the reserve) is exhausted; no partial file
        remains. Other `OSError`s and `StateError`s propagate.
        """
        data = memoryview(part10).cast("B")
        sha256 = hashlib.sha256(data).hexdigest()
        self._check_free_space(len(data))
        final = self._files / sha256[:2] / f"{sha256}.dcm"
        tmp = self._tmp / f"{secrets.token_hex(16)}.part"
        try:
            _write_durably(tmp, data)
            # Same name means same bytes, so replacing an existing file changes no content.
            os.replace(tmp, final)
            # The rename is durable only once its directory entry is; the state row must never
            # point at a name a power cut could take back.
            _fsync_directory(final.parent)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in _OUT_OF_SPACE:
                raise SpoolFull(
                    f"spool {self._root} ran out of disk space writing {len(data)} bytes: free "
                    "space on that filesystem or move the data directory to a larger one"
                ) from exc
            raise
        instance = SpooledInstance(
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            series_instance_uid=series_instance_uid,
            study_instance_uid=study_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            sha256=sha256,
            size=len(data),
            path=final,
            received_at=received_at,
            spooled_at=time.time(),
        )
        try:
            return self._state.add_instance(instance)
        except StateFullError as exc:
            # The file stays unreferenced (it may share its name with a referenced duplicate,
            # so it is not ours to delete here); recover() removes it at the next start.
            raise SpoolFull(str(exc)) from exc

    def recover(self) -> RecoveryReport:
        """Clean up after a crash; call at start-up, before anything stores.

        Removes every temp file and every file no spooled/failed state row points at, and
        counts state rows whose file is gone (those fail loudly when uploaded).
        """
        temp_removed = 0
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
            temp_removed += 1
        needed = self._state.file_keeping_paths()
        orphans = 0
        for shard in _SHARDS:
            for candidate in (self._files / shard).iterdir():
                if candidate not in needed:
                    candidate.unlink(missing_ok=True)
                    orphans += 1
        missing = sum(1 for path in needed if not path.exists())
        report = RecoveryReport(temp_removed, orphans, missing)
        if missing:
            _log.error(
                "spooled files missing at start-up",
                count=missing,
                path=str(self._root),
                reason="files deleted outside the agent, or a different data directory",
            )
        _log.info(
            "spool recovered",
            count=temp_removed + orphans,
            instance_count=len(needed),
            path=str(self._root),
        )
        return report

    def _check_free_space(self, size: int) -> None:
        if not self._reserve_bytes:
            return
        stat = os.statvfs(self._root)
        free = stat.f_bavail * stat.f_frsize
        if free - size < self._reserve_bytes:
            raise SpoolFull(
                f"spool {self._root} has {free} bytes free; storing {size} more would go below "
                f"the reserve of {self._reserve_bytes} bytes: free disk space or lower the reserve"
            )

    def _make_layout(self) -> None:
        created = _make_directory(self._root)
        for directory in (self._tmp, self._files):
            created = _make_directory(directory) or created
        # All shards exist from the start, so a store never creates a directory and never has
        # to make a parent directory durable on the hot path.
        shards_created = False
        for shard in _SHARDS:
            shards_created = _make_directory(self._files / shard) or shards_created
        if shards_created:
            _fsync_directory(self._files)
        if created:
            _fsync_directory(self._root)
            _fsync_directory(self._root.parent)


def _make_directory(path: Path) -> bool:
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return False
    return True


def _write_durably(path: Path, data: memoryview) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
