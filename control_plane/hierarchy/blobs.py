"""Content-addressed blob store through obstore: `<sha[:2]>/<sha>` under a local directory
(the embedded default) or an S3-compatible bucket and prefix (replicas share one).

Identical bytes share one blob, so blobs are never overwritten with other content and never
deleted by ingest (replaced file versions keep theirs). An upload streams to a temporary
object `incoming/<random>.part` while it is hashed; only once its digest is checked is it
moved to its content address, so no partial or unchecked bytes ever sit under a digest name.
A blob that already exists under that digest is left as it is and the upload dropped.

Both ways stream: an upload is sent in parts of `PART_BYTES` (one plain PUT when the whole
body fits in one part, an S3 multipart upload otherwise), a download is read in chunks.
Local blobs are fsynced (file and directory) before they count as kept; obstore's local
store alone does not. The local layout is the one the store had before obstore, so existing
data directories keep working. Must not import FastAPI or the database layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import obstore
from obstore.store import LocalStore, S3Store

from control_plane.errors import MissingBlobError

if TYPE_CHECKING:
    from obstore import BytesStream
    from obstore.store import ObjectStore

INCOMING = "incoming"
# S3's smallest multipart part is 5 MiB; a DICOM instance below it (almost all of them) is one
# PUT. At most PART_BYTES * (UPLOAD_CONCURRENCY + 2) of an upload is held in memory at once.
PART_BYTES = 5 * 1024 * 1024
UPLOAD_CONCURRENCY = 4
READ_CHUNK_BYTES = 1024 * 1024
S3_SCHEME = "s3"


class BlobStoreConfigError(ValueError):
    """The blob store location cannot be used as given."""


@dataclass(frozen=True)
class ReceivedBlob:
    """A fully received upload, in a temporary object, waiting to be kept or discarded."""

    temp_key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class StoredBlob:
    """A blob being read: its size and its bytes in chunks."""

    size: int
    chunks: AsyncIterator[memoryview]


def check_blob_url(url: str) -> str:
    """`url` when it names an S3 bucket (`s3://bucket[/prefix]`); `BlobStoreConfigError`
    otherwise."""
    parts = urlsplit(url)
    if parts.scheme != S3_SCHEME or not parts.netloc or parts.query or parts.fragment:
        raise BlobStoreConfigError(
            f"the blob URL must look like s3://BUCKET or s3://BUCKET/PREFIX (got scheme"
            f" {parts.scheme or 'none'!r}); for a local directory use --blob-dir"
        )
    return url


class BlobStore:
    """Blobs in one obstore store."""

    def __init__(self, store: ObjectStore, location: str, local_root: Path | None) -> None:
        self._store = store
        self.location = location
        """Where the blobs are, for messages: a directory or an s3:// URL (no credentials)."""
        self._local_root = local_root

    @classmethod
    def local(cls, root: Path) -> BlobStore:
        """Blobs under the directory `root` (created by `prepare`)."""
        root = root.absolute()
        return cls(LocalStore(root, mkdir=True), str(root), root)

    @classmethod
    def s3(cls, url: str) -> BlobStore:
        """Blobs in an S3-compatible bucket, `s3://bucket[/prefix]`; endpoint, region and
        credentials come from the standard AWS_* environment variables."""
        check_blob_url(url)
        return cls(S3Store.from_url(url), url, None)

    async def prepare(self) -> None:
        """Check that the store takes uploads; create the local directories. Call once
        before the first upload; `BlobStoreConfigError` when the store refuses us."""
        if self._local_root is not None:
            await asyncio.to_thread(
                (self._local_root / INCOMING).mkdir, parents=True, exist_ok=True
            )
            return
        # A write and its removal: the store must exist and take uploads (a HEAD would answer
        # "not found" alike for a missing key and a missing bucket).
        probe = f"{INCOMING}/{uuid.uuid4().hex}.probe"
        try:
            await obstore.put_async(self._store, probe, b"", use_multipart=False)
            await obstore.delete_async(self._store, probe)
        except Exception as exc:  # obstore raises its own types, and OSError for transport
            raise BlobStoreConfigError(
                f"the blob store {self.location} cannot be used ({type(exc).__name__}): check"
                " the bucket name and AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY (AWS_ALLOW_HTTP=true for a plain-http endpoint)"
            ) from exc

    @staticmethod
    def key_of(sha256: str) -> str:
        """The object key of the blob with this digest (whether or not it exists)."""
        return f"{sha256[:2]}/{sha256}"

    async def open(self, sha256: str) -> StoredBlob:
        """Start reading the blob of a file; `MissingBlobError` when it is not there."""
        try:
            result = await obstore.get_async(self._store, self.key_of(sha256))
        except FileNotFoundError:
            raise MissingBlobError(
                f"the bytes with sha256 {sha256} are missing from the blob store at"
                f" {self.location}; restore it from backup"
            ) from None
        return StoredBlob(
            size=result.meta["size"],
            chunks=_views(result.stream(min_chunk_size=READ_CHUNK_BYTES)),
        )

    async def receive(self, chunks: AsyncIterable[bytes]) -> ReceivedBlob:
        """Stream `chunks` into a temporary object while hashing them.

        On any failure (including the client going away) the temporary object is removed.
        """
        temp_key = f"{INCOMING}/{uuid.uuid4().hex}.part"
        tally = _Tally()
        try:
            batches = tally.batches(chunks)
            first = await anext(batches, b"")
            second = await anext(batches, None)
            if second is None:
                await obstore.put_async(self._store, temp_key, first, use_multipart=False)
            else:
                await obstore.put_async(
                    self._store,
                    temp_key,
                    _chained(first, second, batches),
                    chunk_size=PART_BYTES,
                    max_concurrency=UPLOAD_CONCURRENCY,
                )
        except BaseException:
            await self._delete_quietly(temp_key)
            raise
        return ReceivedBlob(temp_key=temp_key, sha256=tally.hexdigest(), size=tally.size)

    async def keep(self, received: ReceivedBlob) -> None:
        """Move a received upload to its content address (durably); when a blob with that
        digest exists already, leave it untouched and drop the upload."""
        final = self.key_of(received.sha256)
        try:
            await obstore.head_async(self._store, final)
        except FileNotFoundError:
            # Same digest means same bytes: a concurrent keep of the same blob is harmless.
            await obstore.rename_async(self._store, received.temp_key, final, overwrite=True)
            if self._local_root is not None:
                await asyncio.to_thread(_fsync_file_and_directory, self._local_root / final)
            return
        await self._delete_quietly(received.temp_key)

    async def discard(self, received: ReceivedBlob) -> None:
        """Remove a received upload that must not be kept."""
        await self._delete_quietly(received.temp_key)

    async def remove(self, digests: list[str]) -> int:
        """Delete the blobs of `digests` (their rows are gone); how many existed."""
        removed = 0
        for digest in digests:
            key = self.key_of(digest)
            try:
                await obstore.head_async(self._store, key)
            except FileNotFoundError:
                continue
            await self._delete_quietly(key)
            removed += 1
        return removed

    async def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await obstore.delete_async(self._store, key)


class _Tally:
    """Hashes and counts an upload on its way through, in batches of `PART_BYTES`."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self.size = 0

    async def batches(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        # Hashing runs in a worker thread (hashlib releases the GIL), so a large upload does
        # not hold up the event loop; the server's small chunks are batched to keep thread
        # hand-offs few.
        batch = bytearray()
        async for chunk in chunks:
            batch += chunk
            if len(batch) >= PART_BYTES:
                yield await self._counted(bytes(batch))
                batch.clear()
        if batch or self.size == 0:
            yield await self._counted(bytes(batch))

    async def _counted(self, data: bytes) -> bytes:
        await asyncio.to_thread(self._digest.update, data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


async def _chained(first: bytes, second: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    yield second
    async for batch in rest:
        yield batch


async def _views(stream: BytesStream) -> AsyncIterator[memoryview]:
    # obstore's Bytes share the buffer without a copy; the HTTP server takes memoryviews.
    async for chunk in stream:
        yield memoryview(chunk)


def _fsync_file_and_directory(path: Path) -> None:
    for target, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY)):
        descriptor = os.open(target, flags)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
