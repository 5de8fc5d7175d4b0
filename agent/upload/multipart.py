"""A streamed `multipart/related; type="application/dicom"` body (the STOW-RS shape, DICOM
PS3.18) of spooled instances, for `POST /api/v1/ingest/batch` and for STOW-RS itself; and
the same as `multipart/form-data` (text fields, then one file field per instance) for
Flywheel's upload.

Each part carries one spooled file with the header `Content-Type: application/dicom`, and for
the built-in store also `X-Sop-Instance-Uid` and `X-Sha256` (`common.ingest`). The body's
length is known before the first byte is sent (headers are built up front, file sizes come
from `fstat`), so the request goes out with a Content-Length instead of chunked encoding.
File bytes are read with positional reads in worker threads, chunk by chunk, so a body can be
streamed again from the start when the request is retried and memory stays at one chunk
whatever the batch size.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from agent.state import InstanceRow
from agent.upload.base import UploadError
from common.ingest import DICOM_MEDIA_TYPE, SHA256_HEADER, SOP_INSTANCE_UID_HEADER

CHUNK_SIZE = 1024 * 1024
_CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class SpooledPart:
    """One open spool file to send as a part; `size` was taken from the open descriptor."""

    instance: InstanceRow
    descriptor: int
    size: int


class RelatedBody:
    """The multipart body of a batch of open spool files; iterate `chunks()` once per send."""

    def __init__(self, parts: Sequence[SpooledPart], *, instance_headers: bool = True) -> None:
        """`instance_headers`: add the store's per-part headers (SOP Instance UID, sha256)."""
        self._instance_headers = instance_headers
        # 128 random bits: the odds that a boundary occurs inside DICOM data are nil, so
        # the files need not be scanned for it first.
        self.boundary = f"dicom-connector-{uuid.uuid4().hex}"
        self._parts = tuple(parts)
        self._lead = self._leading_parts()
        self._heads = [
            self._head(number, part.instance) for number, part in enumerate(self._parts, 1)
        ]
        self._close = b"--" + self.boundary.encode("ascii") + b"--" + _CRLF

    @property
    def content_type(self) -> str:
        """The request's Content-Type header, boundary included."""
        return f'multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary={self.boundary}'

    @property
    def content_length(self) -> int:
        """The exact number of bytes `chunks()` yields."""
        framing = sum(len(head) + len(_CRLF) for head in self._heads) + len(self._close)
        return len(self._lead) + framing + sum(part.size for part in self._parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, part after part; raises `UploadError` (retryable) if a file shrank."""
        if self._lead:
            yield self._lead
        for head, part in zip(self._heads, self._parts, strict=True):
            yield head
            offset = 0
            while offset < part.size:
                wanted = min(CHUNK_SIZE, part.size - offset)
                chunk = await asyncio.to_thread(os.pread, part.descriptor, wanted, offset)
                if not chunk:
                    # The announced Content-Length can no longer be met; a retry re-reads
                    # the size, and the store then refuses just this instance's digest.
                    raise UploadError(
                        True,
                        f"spool file of instance {part.instance.id} shrank while it was"
                        " being uploaded",
                    )
                offset += len(chunk)
                yield chunk
            yield _CRLF
        yield self._close

    def _leading_parts(self) -> bytes:
        """Parts before the files (none in a multipart/related body)."""
        return b""

    def _head(self, number: int, instance: InstanceRow) -> bytes:
        """The delimiter and headers of the `number`th file's part (from 1)."""
        lines = [f"--{self.boundary}", f"Content-Type: {DICOM_MEDIA_TYPE}"]
        if self._instance_headers:
            lines.append(f"{SOP_INSTANCE_UID_HEADER}: {instance.sop_instance_uid}")
            lines.append(f"{SHA256_HEADER}: {instance.sha256}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def open_part(instance: InstanceRow) -> SpooledPart:
    """Open an instance's spool file for a body; the caller closes `descriptor`.

    Raises `UploadError` (permanent) when the file cannot be opened.
    """
    try:
        descriptor = await asyncio.to_thread(os.open, instance.path, os.O_RDONLY)
    except OSError as exc:
        raise unreadable(instance, exc) from exc
    try:
        size = os.fstat(descriptor).st_size
    except OSError as exc:
        os.close(descriptor)
        raise unreadable(instance, exc) from exc
    return SpooledPart(instance, descriptor, size)


def unreadable(instance: InstanceRow, exc: OSError) -> UploadError:
    """The permanent error of an instance whose spool file cannot be read."""
    # The path names a content hash, not a patient, but strerror is all support needs.
    return UploadError(
        False, f"spool file of instance {instance.id} cannot be read: {exc.strerror}"
    )


class FormDataBody(RelatedBody):
    """A streamed `multipart/form-data` body: text fields first, then one file field per
    spool file (`file1`, `file2`, ...), each with its own file name (RFC 7578)."""

    def __init__(
        self, fields: Mapping[str, str], parts: Sequence[SpooledPart], file_names: Sequence[str]
    ) -> None:
        self._fields = dict(fields)
        self._file_names = tuple(file_names)
        if len(self._file_names) != len(parts):
            raise ValueError(f"{len(parts)} files need as many names, got {len(file_names)}")
        super().__init__(parts, instance_headers=False)

    @property
    def content_type(self) -> str:
        """The request's Content-Type header, boundary included."""
        return f"multipart/form-data; boundary={self.boundary}"

    def _leading_parts(self) -> bytes:
        return b"".join(
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{_quoted(name)}"\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n".encode("ascii")
            + value.encode("utf-8")
            + _CRLF
            for name, value in self._fields.items()
        )

    def _head(self, number: int, instance: InstanceRow) -> bytes:
        file_name = _quoted(self._file_names[number - 1])
        lines = (
            f"--{self.boundary}",
            f'Content-Disposition: form-data; name="file{number}"; filename="{file_name}"',
            f"Content-Type: {DICOM_MEDIA_TYPE}",
        )
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _quoted(value: str) -> str:
    """`value` for a quoted header parameter; refuses what cannot be sent as is."""
    if not value.isascii() or any(char in value for char in '"\\\r\n'):
        raise ValueError("a form field or file name must be ASCII without quotes or line breaks")
    return value
