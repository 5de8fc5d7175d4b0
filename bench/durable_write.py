"""What making one received instance durable costs on this disk, step by step.

    .venv/bin/python bench/durable_write.py [--instances 300] [--writers 1,4] [--dir PATH]

The agent answers a C-STORE only after the instance is on disk for good, so on one association
these costs add straight to every instance. This measures the write patterns in isolation (no
DICOM, no pynetdicom): the agent's spool as it is (temp file, fsync, rename, directory fsync,
SQLite commit with synchronous=FULL) and the cheaper variants discussed in docs/benchmarks.md.
``writers`` threads store at once, sharing one SQLite connection behind a lock as AgentState
does, to show what concurrent associations gain from the kernel batching journal commits.

Run it on the filesystem the agent's data directory lives on (``--dir``). Must not import
pynetdicom or any dicom-connector package.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

INSTANCE_BYTES = 131_500  # a 256x256 16-bit MR image with its header, as in bench/intake.py


@dataclass
class Store:
    """One spool directory and its SQLite bookkeeping, written in one pattern."""

    root: Path
    db: sqlite3.Connection
    lock: threading.Lock
    pool: list[Path]

    def record(self, sha256: str, path: Path) -> None:
        """Insert one row and commit, under the lock (one connection, like AgentState)."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO instances (sha256, path) VALUES (?, ?)", (sha256, str(path))
            )
            self.db.execute("COMMIT")


def agent_today(store: Store, data: bytes) -> None:
    """Temp file + fsync, rename into its content address, fsync the directory, FULL commit."""
    sha256 = hashlib.sha256(data).hexdigest()
    final = store.root / "files" / sha256[:2] / f"{sha256}.dcm"
    tmp = store.root / "tmp" / f"{secrets.token_hex(16)}.part"
    _write_fsync(tmp, data, os.O_CREAT | os.O_EXCL)
    os.replace(tmp, final)
    _fsync_directory(final.parent)
    store.record(sha256, final)


def without_directory_fsync(store: Store, data: bytes) -> None:
    """As the agent, minus the directory fsync (safe only where the FS orders the rename)."""
    sha256 = hashlib.sha256(data).hexdigest()
    final = store.root / "files" / sha256[:2] / f"{sha256}.dcm"
    tmp = store.root / "tmp" / f"{secrets.token_hex(16)}.part"
    _write_fsync(tmp, data, os.O_CREAT | os.O_EXCL)
    os.replace(tmp, final)
    store.record(sha256, final)


def preallocated_file(store: Store, data: bytes) -> None:
    """Write into a file created (and its name made durable) ahead of time: no rename."""
    sha256 = hashlib.sha256(data).hexdigest()
    with store.lock:
        path = store.pool.pop()
    _write_fsync(path, data, 0)
    store.record(sha256, path)


def preallocated_no_fsync(store: Store, data: bytes) -> None:
    """As preallocated_file without its fsync: not durable, the lower bound of the write path."""
    sha256 = hashlib.sha256(data).hexdigest()
    with store.lock:
        path = store.pool.pop()
    fd = os.open(path, os.O_WRONLY, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    store.record(sha256, path)


# name -> (store one instance, SQLite synchronous mode)
PATTERNS: dict[str, tuple[Callable[[Store, bytes], None], str]] = {
    "agent today (FULL)": (agent_today, "FULL"),
    "agent, commit NORMAL": (agent_today, "NORMAL"),
    "no dir fsync, commit NORMAL": (without_directory_fsync, "NORMAL"),
    "preallocated file, commit NORMAL": (preallocated_file, "NORMAL"),
    "preallocated file, no fsync (not durable)": (preallocated_no_fsync, "NORMAL"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every pattern with every writer count and print a Markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument(
        "--writers", type=lambda text: [int(n) for n in text.split(",")], default=[1, 4]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default /tmp)")
    args = parser.parse_args(argv)
    payloads = [os.urandom(INSTANCE_BYTES) for _ in range(args.instances)]
    workdir = Path(tempfile.mkdtemp(prefix="durable-write-", dir=args.dir))
    rates: dict[tuple[str, int], list[float]] = {}
    try:
        for round_number in range(args.rounds):
            for name, (pattern, synchronous) in PATTERNS.items():
                for writers in args.writers:
                    root = workdir / f"{round_number}-{len(rates)}-{writers}"
                    store = _prepare(root, synchronous, args.instances)
                    try:
                        seconds = _timed(store, pattern, payloads, writers)
                    finally:
                        store.db.close()
                        shutil.rmtree(root)
                    rates.setdefault((name, writers), []).append(args.instances / seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("| pattern | writers | instances/s | ms per instance (one writer) |")
    print("|---|---:|---:|---:|")
    for (name, writers), values in rates.items():
        rate = statistics.median(values)
        latency = f"{1000 / rate:.2f}" if writers == 1 else ""
        print(f"| {name} | {writers} | {rate:.0f} | {latency} |")
    return 0


def _prepare(root: Path, synchronous: str, instances: int) -> Store:
    for shard in range(256):
        (root / "files" / f"{shard:02x}").mkdir(parents=True)
    (root / "tmp").mkdir()
    pool = [root / "pool" / f"{number:08d}" for number in range(instances)]
    pool[0].parent.mkdir()
    for path in pool:
        path.touch()
    os.sync()  # every name above is durable before the clock starts
    db = sqlite3.connect(root / "state.db", isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    db.execute("CREATE TABLE instances (id INTEGER PRIMARY KEY, sha256 TEXT, path TEXT)")
    return Store(root=root, db=db, lock=threading.Lock(), pool=pool)


def _timed(
    store: Store, pattern: Callable[[Store, bytes], None], payloads: Sequence[bytes], writers: int
) -> float:
    started = time.perf_counter()
    if writers == 1:
        for data in payloads:
            pattern(store, data)
    else:
        with ThreadPoolExecutor(writers) as pool:
            for future in [pool.submit(pattern, store, data) for data in payloads]:
                future.result()
    return time.perf_counter() - started


def _write_fsync(path: Path, data: bytes, flags: int) -> None:
    fd = os.open(path, os.O_WRONLY | flags, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
