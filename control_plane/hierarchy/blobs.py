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

Every obstore call is a blocking one (`obstore.put`, `get`, `head`, `rename`, `delete`) made
in the store's own bounded pool of `blob-io` threads, never obstore's `*_async` API. That API
completes its futures from obstore's tokio threads, and a tokio thread handing over a result
while the interpreter finalizes aborts the process: `control-plane --blob-url` naming a
missing bucket then died of SIGABRT now and then instead of exiting with status 2, and so
could a server stopping with a blob call in flight. Our own threads are joined before the
interpreter finalizes (by `close`, else by `concurrent.futures` at exit), so no obstore call
outlives it. A multipart upload holds one thread for as long as it lasts, the put pulling
each next batch from the event loop; at most `STREAMING_UPLOADS` do so at once, so that
short calls always find a thread. A download holds a thread only while it fetches a chunk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, Self, TypeVar
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
# Each blob-io thread makes one blocking obstore call at a time (the GIL released while it
# waits on the store), so this many calls of one process are in flight at once.
IO_THREADS = 16
# Multipart uploads holding a thread each: the other half of the threads stay for short calls,
# and the uploads' memory (see above) stays bounded.
STREAMING_UPLOADS = IO_THREADS // 2
S3_SCHEME = "s3"

P = ParamSpec("P")
T = TypeVar("T")


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
    """Blobs in one obstore store, reached through the store's own `blob-io` threads.

    `close` (or leaving `async with`) waits for the calls still running and ends the threads.
    """

    def __init__(self, store: ObjectStore, location: str, local_root: Path | None) -> None:
        self._store = store
        self.location = location
        """Where the blobs are, for messages: a directory or an s3:// URL (no credentials)."""
        self._local_root = local_root
        self._io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="blob-io")
        self._streaming = asyncio.Semaphore(STREAMING_UPLOADS)

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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Wait for the blob calls still running, then end the `blob-io` threads; call once
        nothing uses the store any more. Idempotent."""
        # Waited for off the loop: a streamed upload still running needs the loop to fetch its
        # batches.
        await asyncio.to_thread(self._io.shutdown)

    async def prepare(self) -> None:
        """Check that the store takes uploads; create the local directories. Call once
        before the first upload; `BlobStoreConfigError` when the store refuses us."""
        if self._local_root is not None:
            await self._call((self._local_root / INCOMING).mkdir, parents=True, exist_ok=True)
            return
        # A write and its removal: the store must exist and take uploads (a HEAD would answer
        # "not found" alike for a missing key and a missing bucket).
        probe = f"{INCOMING}/{uuid.uuid4().hex}.probe"
        try:
            await self._call(obstore.put, self._store, probe, b"", use_multipart=False)
            await self._call(obstore.delete, self._store, probe)
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
            result = await self._call(obstore.get, self._store, self.key_of(sha256))
        except FileNotFoundError:
            raise MissingBlobError(
                f"the bytes with sha256 {sha256} are missing from the blob store at"
                f" {self.location}; restore it from backup"
            ) from None
        return StoredBlob(
            size=result.meta["size"],
            chunks=self._views(result.stream(min_chunk_size=READ_CHUNK_BYTES)),
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
                await self._call(obstore.put, self._store, temp_key, first, use_multipart=False)
            else:
                async with self._streaming:
                    await self._stream(temp_key, (first, second), batches)
        except BaseException:
            await self._delete_quietly(temp_key)
            raise
        return ReceivedBlob(temp_key=temp_key, sha256=tally.hexdigest(), size=tally.size)

    async def keep(self, received: ReceivedBlob) -> None:
        """Move a received upload to its content address (durably); when a blob with that
        digest exists already, leave it untouched and drop the upload."""
        final = self.key_of(received.sha256)
        try:
            await self._call(obstore.head, self._store, final)
        except FileNotFoundError:
            # Same digest means same bytes: a concurrent keep of the same blob is harmless.
            await self._call(obstore.rename, self._store, received.temp_key, final, overwrite=True)
            if self._local_root is not None:
                await self._call(_fsync_file_and_directory, self._local_root / final)
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
                await self._call(obstore.head, self._store, key)
            except FileNotFoundError:
                continue
            await self._delete_quietly(key)
            removed += 1
        return removed

    async def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self._call(obstore.delete, self._store, key)

    async def _call(self, function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await _outcome(self._io.submit(function, *args, **kwargs))

    async def _stream(
        self, key: str, first: tuple[bytes, bytes], rest: AsyncIterator[bytes]
    ) -> None:
        # A multipart upload: the blocking put pulls the batches through `_Feed` for as long
        # as the upload lasts; an error of the body (the client gone) comes out of it as is.
        feed = _Feed(first, rest, asyncio.get_running_loop())
        put = self._io.submit(
            obstore.put,
            self._store,
            key,
            feed,
            chunk_size=PART_BYTES,
            max_concurrency=UPLOAD_CONCURRENCY,
        )
        await _outcome(put, abandon=feed.stop)

    async def _views(self, stream: BytesStream) -> AsyncIterator[memoryview]:
        # One chunk per call: a slow reader holds no thread between chunks. The HTTP server
        # takes memoryviews (of obstore's bytes, without a copy).
        while (chunk := await self._call(next, stream, None)) is not None:
            yield memoryview(chunk)


async def _outcome(call: Future[T], abandon: Callable[[], None] | None = None) -> T:
    """The result of `call`, running in a blob-io thread.

    When the caller is cancelled, a call not yet started is dropped; a started one cannot be
    stopped, so it is asked to end early (`abandon`) and waited for: whatever the caller
    cleans up next (a temporary object) must not be written by it afterwards.
    """
    try:
        return await asyncio.wrap_future(call)
    except asyncio.CancelledError:
        if abandon is not None:
            abandon()
        await asyncio.wait([asyncio.wrap_future(call)])
        raise


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


class _Feed:
    """An upload's batches as the plain iterator that the blocking `obstore.put` pulls in its
    blob-io thread: each batch after the first ones is fetched on the event loop when obstore
    asks for it, so the upload still streams."""

    def __init__(
        self, first: tuple[bytes, ...], rest: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._first = collections.deque(first)
        self._rest = rest
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: Future[bytes | None] | None = None
        self._stopped = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        if self._first:
            return self._first.popleft()
        with self._lock:
            if self._stopped:
                raise CancelledError
            self._pending = asyncio.run_coroutine_threadsafe(_next_batch(self._rest), self._loop)
            pending = self._pending
        batch = pending.result()
        if batch is None:
            raise StopIteration
        return batch

    def stop(self) -> None:
        """Make the upload fail at the batch it waits for, or else at its next one (from the
        event loop)."""
        with self._lock:
            self._stopped = True
            if self._pending is not None:
                self._pending.cancel()


async def _next_batch(batches: AsyncIterator[bytes]) -> bytes | None:
    return await anext(batches, None)


def _fsync_file_and_directory(path: Path) -> None:
    for target, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY)):
        descriptor = os.open(target, flags)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
