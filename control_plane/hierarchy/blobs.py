"""Content-addressed blob store on a local directory: `ROOT/<sha[:2]>/<sha>`.

Identical bytes share one blob, so blobs are never overwritten with other content and never
deleted by ingest (replaced file versions keep theirs). Uploads stream into `ROOT/incoming/`
while being hashed, are fsynced, and only then renamed into place, so a crash never leaves a
partial blob under a digest name. Blocking file I/O runs in worker threads.
Must not import FastAPI or the database layer.
"""

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from control_plane.errors import MissingBlobError

# Chunks from the HTTP server are small; writing them in batches keeps thread hand-offs
# few while memory use stays bounded whatever the body size.
WRITE_BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ReceivedBlob:
    """A fully received, fsynced upload waiting to be kept or discarded."""

    temp_path: Path
    sha256: str
    size: int


class BlobStore:
    """Blobs under one local directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._incoming = root / "incoming"

    async def prepare(self) -> None:
        """Create the directories (idempotent); call once before the first upload."""
        await asyncio.to_thread(self._incoming.mkdir, parents=True, exist_ok=True)

    def path_of(self, sha256: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        return self.root / sha256[:2] / sha256

    async def existing_path(self, sha256: str) -> Path:
        """The path of a blob that must exist; `MissingBlobError` when it does not."""
        path = self.path_of(sha256)
        if not await asyncio.to_thread(path.is_file):
            raise MissingBlobError(
                f"the bytes with sha256 {sha256} are missing from the blob store at"
                f" {self.root}; restore that directory from backup"
            )
        return path

    async def receive(self, chunks: AsyncIterable[bytes]) -> ReceivedBlob:
        """Stream `chunks` into a temp file while hashing; fsync it before returning.

        On any failure (including the client going away) the temp file is removed.
        """
        temp_path = self._incoming / f"{uuid.uuid4().hex}.part"
        handle = await asyncio.to_thread(temp_path.open, "xb")
        digest = hashlib.sha256()
        size = 0
        try:
            batch = bytearray()
            async for chunk in chunks:
                batch += chunk
                size += len(chunk)
                if len(batch) >= WRITE_BATCH_BYTES:
                    await asyncio.to_thread(_write, handle, digest.update, bytes(batch))
                    batch.clear()
            await asyncio.to_thread(_write, handle, digest.update, bytes(batch))
            await asyncio.to_thread(_flush_and_close, handle)
        except BaseException:
            await asyncio.to_thread(_close_and_remove, handle, temp_path)
            raise
        return ReceivedBlob(temp_path=temp_path, sha256=digest.hexdigest(), size=size)

    async def keep(self, received: ReceivedBlob) -> Path:
        """Move a received upload to its content address and make the rename durable."""
        return await asyncio.to_thread(self._keep, received)

    async def remove(self, digests: list[str]) -> int:
        """Delete the blobs of `digests` (their rows are gone); how many files were removed."""
        return await asyncio.to_thread(self._remove, digests)

    def _remove(self, digests: list[str]) -> int:
        removed = 0
        for digest in digests:
            try:
                self.path_of(digest).unlink()
            except FileNotFoundError:
                continue
            removed += 1
        return removed

    async def discard(self, received: ReceivedBlob) -> None:
        """Remove a received upload that must not be kept."""
        await asyncio.to_thread(received.temp_path.unlink, missing_ok=True)

    def _keep(self, received: ReceivedBlob) -> Path:
        final = self.path_of(received.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Same digest means same bytes, so replacing an existing blob changes nothing.
        os.replace(received.temp_path, final)
        _fsync_directory(final.parent)
        return final


def _write(handle: IO[bytes], hash_update: Callable[[bytes], None], data: bytes) -> None:
    hash_update(data)
    handle.write(data)


def _flush_and_close(handle: IO[bytes]) -> None:
    with handle:
        handle.flush()
        os.fsync(handle.fileno())


def _close_and_remove(handle: IO[bytes], path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
