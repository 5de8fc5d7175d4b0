"""The spool: received Part-10 files made durable on local disk.

Layout under the spool root::

    slots/<random>.dcm    every spooled file; an empty one that no state row names is free

Making a new name durable costs a journal commit of directory metadata: a temp file, its
rename and a directory fsync took 2.6 ms per store on the reference VM, a write into a file
whose name already was durable 0.9 ms (bench/durable_write.py, docs/benchmarks.md). So names
are made ahead of time: `_SlotPool` creates empty slots in batches, in a thread of its own,
and fsyncs the directory once per batch. A store changes no directory: `Spool.write` (or, for
an instance written as it arrives, `open_slot` and `SlotWriter.write`) fills a free slot, and
`Spool.record` fsyncs it and records it in `AgentState`; the caller answers Success after that.

`record` is a group commit (`agent.state.GroupCommit`): slots recorded at the same time by
several associations are fsynced one after the other by one thread (fsyncs of several threads
at once wait on each other's journal commits) and their rows go into one transaction; each
caller returns only once its own file is fsynced and its row committed.

The spool owns its files: it makes, fills, recovers and deletes them. The state only says when
a file is no longer needed (`Spool.release`, handed to the state when the spool is built), so
deletion follows the synced commit that allows it.

The file is the record of truth, its state row the bookkeeping: `AgentState.add_instance`
commits without waiting for the disk, and after a power cut took such a commit back,
`Spool.recover` finds the complete slot no row names and records it again (`identify` reads
its UIDs). A slot cut short by a crash before its fsync was never acknowledged; recovery
deletes it and the peer sends it again.

Must not import pynetdicom or HTTP libraries: the SCP hands bytes in, the uploader reads paths
out of the state; `identify` comes from the caller.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.state import AddOutcome, AgentState, GroupCommit, SpooledInstance, StateFullError

__all__ = [
    "AppendFile",
    "RecoveryReport",
    "SlotWriter",
    "Spool",
    "SpoolFull",
    "SpoolIdentity",
    "WrittenSlot",
    "write_durably",
]

_log = structlog.get_logger(__name__)

_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_SLOT_SUFFIX = ".dcm"
# Slots made per directory fsync: the batch's one flush spread over this many stores.
SLOT_BATCH = 64


class SpoolFull(Exception):
    """No room to store an instance durably; nothing partial was left behind."""


@dataclass(frozen=True, slots=True)
class SpoolIdentity:
    """What recovery needs to record a spooled file again: its UIDs."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True, slots=True)
class WrittenSlot:
    """A slot that holds one instance's whole Part-10 bytes, fsynced, not yet recorded."""

    path: Path
    sha256: str
    size: int


AppendFile = Callable[[int, memoryview], None]
"""Appends the bytes to an open slot (a `SlotWriter`'s); raises `OSError` (ENOSPC: disk full)."""

Identify = Callable[[memoryview], SpoolIdentity | None]
"""Reads the UIDs of a whole Part-10 file; None when the bytes are not one (cut short)."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What `Spool.recover` found in the spool at start-up."""

    free_slots: int  # empty slots adopted by the pool
    recorded_again: int  # complete files whose state row a power cut took back
    partial_removed: int  # files cut short before their fsync: never acknowledged
    leftovers_removed: int  # files of rows already uploaded, skipped, superseded or duplicate
    missing_files: int  # rows that need a file that is gone


class Spool:
    """Durable storage of received instances in pre-made slot files, recorded in `AgentState`."""

    def __init__(
        self,
        root: Path,
        state: AgentState,
        reserve_bytes: int = 0,
        *,
        slot_batch: int = SLOT_BATCH,
        append_file: AppendFile | None = None,
    ) -> None:
        """Create the spool directories under `root` (made durable) if they are missing.

        `reserve_bytes` is the free space to keep on the spool's filesystem: a store that would
        go below it raises `SpoolFull`, so the state database and the OS keep room to work.
        `append_file` is the seam tests use to run out of disk where mounting a small
        filesystem is not allowed (CI); it defaults to `append_all`.
        """
        if reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {reserve_bytes}")
        if slot_batch < 1:
            raise ValueError(f"slot_batch must be >= 1, got {slot_batch}")
        self._root = Path(root).resolve()
        self._slots = self._root / "slots"
        self._state = state
        self._reserve_bytes = reserve_bytes
        self._append_file = append_file or append_all
        self._make_layout()
        self._pool = _SlotPool(self._slots, slot_batch)
        self._commits: GroupCommit[_Pending, AddOutcome] = GroupCommit(self._commit_group)
        # The spool owns its files: the state says when one is no longer needed, we delete it.
        state.release_files_with(self.release)

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

        `write` then `record`. Raises `SpoolFull` when the disk (or the reserve) is exhausted;
        no partial file remains. Other `OSError`s and `StateError`s propagate.
        """
        return self.record(
            self.write(part10),
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            series_instance_uid=series_instance_uid,
            study_instance_uid=study_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            received_at=received_at,
        )

    def write(self, part10: bytes | bytearray | memoryview) -> SlotWriter:
        """Write `part10` into a free slot; `record` makes it durable and records it.

        Raises `SpoolFull` when the disk (or the reserve) is exhausted; the slot is emptied.
        """
        slot = self.open_slot()
        slot.write(memoryview(part10).cast("B"))
        return slot

    def open_slot(self) -> SlotWriter:
        """A free slot to write one instance into as its bytes arrive (`SlotWriter`).

        Raises `SpoolFull` when no slot can be made for want of disk space.
        """
        slot = self._take_slot()
        try:
            # Read too: the receiver checks the data set through a read-only mapping.
            fd = os.open(slot, os.O_RDWR | os.O_CLOEXEC)
        except BaseException:
            self._give_back(slot)
            raise
        return SlotWriter(self, slot, fd)

    def record(
        self,
        slot: SlotWriter,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        series_instance_uid: str,
        study_instance_uid: str,
        transfer_syntax_uid: str,
        received_at: float,
    ) -> AddOutcome:
        """Fsync a written slot and record it; return what the state made of it once both are
        done (the file on disk and its row committed).

        Slots recorded at the same time on other threads go into the same group commit
        (`agent.state.GroupCommit`): one thread fsyncs each slot of the group in turn, then
        commits their rows in one transaction, and each caller returns only then. Raises
        `SpoolFull` when the disk or the state database's disk is full (the slot is emptied);
        other `OSError`s and `StateError`s propagate.
        """
        return self._commits.submit(
            _Pending(
                slot,
                sop_instance_uid=sop_instance_uid,
                sop_class_uid=sop_class_uid,
                series_instance_uid=series_instance_uid,
                study_instance_uid=study_instance_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                received_at=received_at,
            )
        )

    def _commit_group(self, group: Sequence[_Pending]) -> list[AddOutcome | Exception]:
        """Fsync every slot of the group, then record those that are on disk in one
        transaction; each gets its outcome or its error.

        One thread fsyncs them one after the other: on ext4 a file's fsync commits the
        journal, and fsyncs of several threads at once wait on each other's commits (measured
        several times slower than the same fsyncs in turn, docs/benchmarks.md). Starting the
        whole group's writeback first (`sync_file_range`), so that one journal commit covers
        the group, was built and measured: the later fsyncs got cheaper, but the writeback
        calls took what they saved and the intake rate did not move (docs/benchmarks.md, "One
        journal commit per group").
        """
        results: list[AddOutcome | Exception] = []
        instances: list[SpooledInstance] = []
        places: list[int] = []
        for pending in group:
            try:
                written = pending.slot.finish()  # the slot is given back if this fails
            except Exception as exc:
                results.append(exc)
                continue
            places.append(len(results))
            results.append(AddOutcome.new)  # replaced below by what the state says
            instances.append(pending.instance(written))
        if instances:
            for place, inst, outcome in zip(
                places, instances, self._state.add_instances(instances), strict=True
            ):
                if isinstance(outcome, StateFullError):
                    # Rolled back: no row names the slot, so it is ours to empty.
                    self._give_back(inst.path)
                    full = SpoolFull(str(outcome))
                    full.__cause__ = outcome
                    results[place] = full
                else:
                    results[place] = outcome
        return results

    def release(self, path: Path) -> None:
        """Delete a spool file that no state row needs any more.

        Called by the state after the synced commit that left the file unreferenced (see
        `agent.state.FileRelease`). A file that cannot be deleted is only wasted space: it is
        logged and `recover` removes it at the next start.
        """
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            _log.warning("spool file not deleted", path=str(path), error=exc.strerror)

    def close(self) -> None:
        """Wait for the records and the slot refill under way to end; stores after this still
        work. Idempotent."""
        self._commits.drain()
        self._pool.join_refill()

    def recover(self, identify: Identify) -> RecoveryReport:
        """Put the spool in order after a stop or a crash; call at start-up, before any store.

        Empty unreferenced slots become free. A non-empty slot no spooled or failed row names
        is recorded again when `identify` reads it whole and no row knows its content (its
        row was lost after Success), else deleted. Oldest first, so of two lost versions of
        one instance the newer wins. Rows whose file is gone are counted and logged.
        """
        # The scan below finds every free slot, those already in the pool included.
        self._pool.join_refill()
        self._pool.clear()
        needed = self._state.file_keeping_paths()
        free: list[Path] = []
        unreferenced: list[tuple[float, Path]] = []
        with os.scandir(self._slots) as entries:
            for entry in entries:
                path = Path(entry.path)
                if path in needed:
                    continue
                stat = entry.stat()
                if stat.st_size == 0:
                    free.append(path)
                else:
                    unreferenced.append((stat.st_mtime, path))
        recorded = partial = leftovers = 0
        for mtime, path in sorted(unreferenced):
            outcome = self._record_again(path, mtime, identify)
            if outcome is None:
                partial += 1
            elif outcome:
                recorded += 1
            else:
                leftovers += 1
        self._pool.adopt(free)
        # Rows recorded again may have superseded others: only then is the first read stale.
        kept = self._state.file_keeping_paths() if recorded else needed
        missing = sum(1 for path in kept if not path.exists())
        report = RecoveryReport(len(free), recorded, partial, leftovers, missing)
        if missing:
            _log.error(
                "spooled files missing at start-up",
                count=missing,
                path=str(self._root),
                reason="files deleted outside the agent, or a different data directory",
            )
        if recorded:
            _log.warning(
                "spooled files recorded again",
                count=recorded,
                path=str(self._root),
                reason="their state rows were lost, as after a power cut",
            )
        _log.info(
            "spool recovered",
            count=partial + leftovers,
            instance_count=len(needed) + recorded,
            path=str(self._root),
        )
        return report

    def _record_again(self, path: Path, mtime: float, identify: Identify) -> bool | None:
        """True: recorded again; False: content already known, deleted; None: partial, deleted."""
        data = path.read_bytes()
        identity = identify(memoryview(data))
        if identity is None:
            path.unlink(missing_ok=True)
            return None
        instance = SpooledInstance(
            sop_instance_uid=identity.sop_instance_uid,
            sop_class_uid=identity.sop_class_uid,
            series_instance_uid=identity.series_instance_uid,
            study_instance_uid=identity.study_instance_uid,
            transfer_syntax_uid=identity.transfer_syntax_uid,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            path=path,
            received_at=mtime,
            spooled_at=mtime,
        )
        if self._state.add_recovered(instance):
            return True
        path.unlink(missing_ok=True)
        return False

    def _take_slot(self) -> Path:
        try:
            return self._pool.take()
        except OSError as exc:
            if exc.errno in _OUT_OF_SPACE:
                raise SpoolFull(
                    f"spool {self._root} ran out of disk space creating spool files: free "
                    "space on that filesystem or move the data directory to a larger one"
                ) from exc
            raise

    def _give_back(self, slot: Path) -> None:
        """Empty a slot whose store failed and return it to the pool; a slot that cannot be
        emptied is deleted, and one that cannot be deleted either is left to `recover`."""
        try:
            os.truncate(slot, 0)
        except OSError:
            try:
                slot.unlink(missing_ok=True)
            except OSError as exc:
                _log.warning("spool slot not cleaned", path=str(slot), error=str(exc))
            return
        self._pool.adopt([slot])

    def _full(self, size: int) -> SpoolFull:
        return SpoolFull(
            f"spool {self._root} ran out of disk space writing {size} bytes: free space on "
            "that filesystem or move the data directory to a larger one"
        )

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
        created = _make_directory(self._slots) or created
        if created:
            _fsync_directory(self._root)
            _fsync_directory(self._root.parent)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A written slot waiting for its group commit, with what its row will say."""

    slot: SlotWriter
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    received_at: float

    def instance(self, written: WrittenSlot) -> SpooledInstance:
        return SpooledInstance(
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            series_instance_uid=self.series_instance_uid,
            study_instance_uid=self.study_instance_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            sha256=written.sha256,
            size=written.size,
            path=written.path,
            received_at=self.received_at,
            spooled_at=time.time(),
        )


class SlotWriter:
    """One instance written into a spool slot as its bytes arrive, hashed on the way.

    For instances too large to hold in memory whole: the receiver appends each part as it
    comes (`write`), checks the whole file (`mapped`), then `finish` fsyncs it and the caller
    records it (`Spool.record`) before it answers Success. Any failure, and `discard`, empties
    the slot and gives it back to the pool; a crash before `finish` leaves a slot cut short,
    which `Spool.recover` deletes at the next start (its peer never got Success). Owned by one
    thread (one association's).
    """

    def __init__(self, spool: Spool, path: Path, fd: int) -> None:
        """Use `Spool.open_slot`."""
        self._spool = spool
        self.path = path
        self._fd: int | None = fd
        self._sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: memoryview) -> None:
        """Append `data`. Raises `SpoolFull` (the slot given back) when the disk, or the free
        space above the reserve, runs out; other `OSError`s likewise give the slot back."""
        fd = self._open_fd()
        try:
            self._spool._check_free_space(len(data))
            self._spool._append_file(fd, data)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError) and exc.errno in _OUT_OF_SPACE:
                raise self._spool._full(self.size + len(data)) from exc
            raise
        self._sha256.update(data)
        self.size += len(data)

    @contextmanager
    def mapped(self) -> Iterator[memoryview]:
        """The bytes written so far, mapped read-only from the file (the page cache): only the
        pages the reader touches are brought in. Release every view of it before the block
        ends."""
        fd = self._open_fd()
        with mmap.mmap(fd, self.size, prot=mmap.PROT_READ) as mapping, memoryview(mapping) as view:
            yield view

    def finish(self) -> WrittenSlot:
        """Fsync the slot and close it; it is ready for `Spool.record`. Raises `SpoolFull` (the
        slot given back) when the disk is full."""
        fd = self._open_fd()
        try:
            os.fsync(fd)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError) and exc.errno in _OUT_OF_SPACE:
                raise self._spool._full(self.size) from exc
            raise
        self._fd = None
        os.close(fd)
        return WrittenSlot(self.path, self._sha256.hexdigest(), self.size)

    def discard(self) -> None:
        """Give the slot back empty; nothing of it was recorded. Idempotent; a no-op after
        `finish` (a finished slot is the caller's to record)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with suppress(OSError):
            os.close(fd)
        self._spool._give_back(self.path)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"the spool slot {self.path} was already finished or discarded")
        return self._fd


class _SlotPool:
    """Free slots: empty files whose names are durable. Thread-safe.

    When fewer than `batch` are left, a refill thread creates `batch` more and fsyncs the
    directory once; nobody gets a slot before that fsync. Creating a file costs 0.1 to 0.6 ms of
    kernel time here (measured), so it stays off the path of the store that waits for it
    unless the pool ran dry. At most one refill runs; its error (a full disk) is raised by
    the next `take` that finds the pool empty.
    """

    def __init__(self, directory: Path, batch: int) -> None:
        self._directory = directory
        self._batch = batch
        self._free: deque[Path] = deque()
        self._changed = threading.Condition()
        self._refill: threading.Thread | None = None
        self._refill_error: OSError | None = None

    def adopt(self, slots: list[Path]) -> None:
        """Add slots known to be empty and durable."""
        with self._changed:
            self._free.extend(slots)
            self._changed.notify_all()

    def take(self) -> Path:
        """A free slot; raises `OSError` when none can be created (ENOSPC: disk full)."""
        with self._changed:
            while not self._free:
                if self._refill_error is not None:
                    error, self._refill_error = self._refill_error, None
                    raise error
                self._start_refill()
                self._changed.wait()
            slot = self._free.popleft()
            if len(self._free) < self._batch:
                self._start_refill()
            return slot

    def clear(self) -> None:
        """Forget every free slot (the files stay)."""
        with self._changed:
            self._free.clear()

    def join_refill(self) -> None:
        """Wait until no refill runs."""
        with self._changed:
            refill = self._refill
        if refill is not None:
            refill.join()

    def _start_refill(self) -> None:
        if self._refill is None:
            self._refill = threading.Thread(target=self._run_refill, name="spool-slots")
            self._refill.start()

    def _run_refill(self) -> None:
        try:
            made, error = _make_slots(self._directory, self._batch), None
        except OSError as exc:
            made, error = [], exc
        with self._changed:
            self._free.extend(made)
            self._refill_error = error
            self._refill = None
            self._changed.notify_all()


def _make_slots(directory: Path, count: int) -> list[Path]:
    """Create up to `count` empty files and make their names durable with one directory
    fsync; raise the `OSError` that stopped the first one."""
    made: list[Path] = []
    failure: OSError | None = None
    for _ in range(count):
        path = directory / f"{secrets.token_hex(16)}{_SLOT_SUFFIX}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            failure = exc
            break
        made.append(path)
    if made:
        _fsync_directory(directory)
    elif failure is not None:
        raise failure
    return made


def _make_directory(path: Path) -> bool:
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return False
    return True


def append_all(fd: int, data: memoryview) -> None:
    """Write all of `data` at the file's current offset."""
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


def write_durably(path: Path, data: memoryview) -> None:
    """Write `data` into the existing file `path` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        append_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
