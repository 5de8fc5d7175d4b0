"""The blob store on a local directory and on a real S3 API (moto's server on loopback):
uploads stream in and are kept under their digest, large ones in parts; an existing blob is
never rewritten; a discarded, failed or cancelled upload leaves nothing; reads stream the bytes
back."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from control_plane.errors import MissingBlobError
from control_plane.hierarchy.blobs import PART_BYTES, BlobStore
from tests.support.s3_server import S3Server, s3_server

SMALL = b"DICM" * 1000
# Three parts and a bit: a multipart upload on S3.
LARGE = os.urandom(3 * PART_BYTES + 12345)


class Backend:
    """A blob store under test and a way to look at what it wrote."""

    def __init__(
        self,
        store: BlobStore,
        versions: Callable[[str], int],
        keys: Callable[[], list[str]],
    ) -> None:
        self.store = store
        self.versions = versions
        """How many times the key was written."""
        self.keys = keys
        """Every stored key, temporary ones included."""


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Backend]:
    if request.param == "local":
        root = tmp_path / "blobs"
        store = BlobStore.local(root)
        inodes: dict[str, set[int]] = {}

        def local_versions(key: str) -> int:
            # A rewrite (a rename over it) gives the key another inode.
            inodes.setdefault(key, set()).add((root / key).stat().st_ino)
            return len(inodes[key])

        def local_keys() -> list[str]:
            return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())

        async with store:
            await store.prepare()
            yield Backend(store, local_versions, local_keys)
        return
    server: S3Server = request.getfixturevalue("s3")
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    prefix = f"test-{os.urandom(4).hex()}"
    store = BlobStore.s3(server.url(prefix))
    async with store:
        await store.prepare()
        yield Backend(
            store,
            lambda key: server.versions(f"{prefix}/{key}"),
            lambda: [key.removeprefix(f"{prefix}/") for key in server.keys(f"{prefix}/")],
        )


async def _chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _read(store: BlobStore, sha256: str) -> bytes:
    blob = await store.open(sha256)
    data = bytearray()
    async for chunk in blob.chunks:
        data += chunk
    assert blob.size == len(data)
    return bytes(data)


@pytest.mark.parametrize("data", [SMALL, LARGE, b""], ids=["small", "multipart", "empty"])
async def test_an_upload_is_kept_under_its_digest_and_reads_back(
    backend: Backend, data: bytes
) -> None:
    sha256 = hashlib.sha256(data).hexdigest()

    received = await backend.store.receive(_chunks(data))
    await backend.store.keep(received)

    assert (received.sha256, received.size) == (sha256, len(data))
    assert await _read(backend.store, sha256) == data
    assert backend.keys() == [BlobStore.key_of(sha256)]


async def test_an_existing_blob_is_not_rewritten_by_the_same_bytes_again(
    backend: Backend,
) -> None:
    key = BlobStore.key_of(hashlib.sha256(LARGE).hexdigest())
    await backend.store.keep(await backend.store.receive(_chunks(LARGE)))
    assert backend.versions(key) == 1

    await backend.store.keep(await backend.store.receive(_chunks(LARGE)))

    assert backend.versions(key) == 1
    assert backend.keys() == [key]


async def test_a_discarded_upload_leaves_nothing(backend: Backend) -> None:
    received = await backend.store.receive(_chunks(LARGE))

    await backend.store.discard(received)

    assert backend.keys() == []


async def test_an_upload_that_breaks_off_leaves_nothing(backend: Backend) -> None:
    async def broken() -> AsyncIterator[bytes]:
        async for chunk in _chunks(LARGE):
            yield chunk
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await backend.store.receive(broken())

    assert backend.keys() == []


async def test_a_missing_blob_is_an_explicit_error_and_remove_counts_what_existed(
    backend: Backend,
) -> None:
    kept = hashlib.sha256(SMALL).hexdigest()
    await backend.store.keep(await backend.store.receive(_chunks(SMALL)))
    absent = hashlib.sha256(b"never stored").hexdigest()

    with pytest.raises(MissingBlobError, match="missing from the blob store"):
        await backend.store.open(absent)
    assert await backend.store.remove([kept, absent]) == 1
    assert backend.keys() == []


async def test_an_upload_cancelled_while_it_streams_leaves_nothing(backend: Backend) -> None:
    stalled = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        # Two parts are sent; the third never comes, as from a client that stopped sending.
        async for chunk in _chunks(LARGE[: 2 * PART_BYTES + 1]):
            yield chunk
        stalled.set()
        await asyncio.Event().wait()

    upload = asyncio.create_task(backend.store.receive(stalling()))
    await stalled.wait()
    upload.cancel()

    with pytest.raises(asyncio.CancelledError):
        await upload
    assert backend.keys() == []
