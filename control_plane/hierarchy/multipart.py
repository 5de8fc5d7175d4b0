"""A streaming reader of `multipart/related` bodies (RFC 2046), the shape of a STOW-RS request.

`related_boundary` checks the request's Content-Type; `read_parts` turns the body's chunks into
parts whose headers are parsed and whose bytes are handed on as they arrive, so a body of any
size passes through with memory bounded by one network chunk plus one delimiter. Only the
framing is handled here: what the parts mean is `control_plane.hierarchy.ingest_batch`'s job.
Must not import FastAPI or the database layer.
"""

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from email.message import Message

from common.ingest import DICOM_MEDIA_TYPE
from control_plane.errors import RejectedUploadError, UnsupportedMediaTypeError

RELATED_TYPE = "multipart/related"
DICOM_TYPE = DICOM_MEDIA_TYPE
# Part headers are a handful of short lines; more than this is not a client of ours.
MAX_HEADER_BYTES = 8 * 1024
# RFC 2046 caps boundaries at 70 characters.
MAX_BOUNDARY_LENGTH = 70

_CRLF = b"\r\n"
_HEADER_END = b"\r\n\r\n"


@dataclass
class Part:
    """One part: its headers (names lower-cased) and its bytes, readable once, in order.

    `body` must be read to the end (or abandoned) before the next part is asked for;
    `read_parts` skips what was left unread.
    """

    headers: dict[str, str]
    body: AsyncIterator[bytes]


def related_boundary(content_type: str | None) -> bytes:
    """The boundary of a `multipart/related; type="application/dicom"` Content-Type.

    Raises `UnsupportedMediaTypeError` for any other media type, root type or a missing or
    malformed boundary.
    """
    expected = f'send Content-Type: {RELATED_TYPE}; type="{DICOM_TYPE}"; boundary=...'
    header = Message()
    header["content-type"] = content_type or ""
    if header.get_content_type() != RELATED_TYPE:
        raise UnsupportedMediaTypeError(f"the body is not {RELATED_TYPE}; {expected}")
    root_type = header.get_param("type")
    if not isinstance(root_type, str) or root_type.lower() != DICOM_TYPE:
        raise UnsupportedMediaTypeError(
            f"the multipart body does not declare type={DICOM_TYPE}; {expected}"
        )
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= MAX_BOUNDARY_LENGTH:
        raise UnsupportedMediaTypeError(
            f"the multipart Content-Type has no boundary of 1-{MAX_BOUNDARY_LENGTH} characters;"
            f" {expected}"
        )
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        raise UnsupportedMediaTypeError(
            f"the multipart boundary is not ASCII; {expected}"
        ) from None


async def read_parts(body: AsyncIterable[bytes], boundary: bytes) -> AsyncIterator[Part]:
    """The parts of a multipart body, in order, each streamed.

    Raises `RejectedUploadError` when the framing is broken: no opening delimiter, a header
    block that does not end or is too long, or a body that ends before the close delimiter.
    Preamble and epilogue are ignored, as RFC 2046 asks.
    """
    reader = _Reader(body.__aiter__(), boundary)
    await reader.skip_preamble()
    while await reader.next_part_follows():
        headers = _parse_headers(await reader.header_block())
        part_body = reader.part_body()
        yield Part(headers=headers, body=part_body)
        async for _ in part_body:
            pass


class _Reader:
    """A buffer over the body's chunks that finds delimiters without holding a whole part."""

    def __init__(self, chunks: AsyncIterator[bytes], boundary: bytes) -> None:
        self._chunks = chunks
        # The CRLF before a delimiter belongs to the delimiter, not to the part's bytes.
        self._delimiter = _CRLF + b"--" + boundary
        # The first delimiter may start the body without a CRLF; a virtual one makes every
        # delimiter look the same.
        self._buffer = bytearray(_CRLF)
        self._exhausted = False

    async def _fill(self) -> bool:
        """Append the next chunk; False once the body has ended."""
        if self._exhausted:
            return False
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._exhausted = True
            return False
        self._buffer += chunk
        return True

    async def skip_preamble(self) -> None:
        while (found := self._buffer.find(self._delimiter)) < 0:
            # Keep what could be the start of a delimiter split across two chunks.
            del self._buffer[: max(0, len(self._buffer) - len(self._delimiter) + 1)]
            if not await self._fill():
                raise RejectedUploadError(
                    "the multipart body holds no delimiter of the boundary its Content-Type"
                    " names; send each instance as a part opened by --BOUNDARY"
                )
        del self._buffer[: found + len(self._delimiter)]

    async def next_part_follows(self) -> bool:
        """After a delimiter: True for a part (its CRLF consumed), False for the close one."""
        while len(self._buffer) < 2 or (self._buffer[:2] != b"--" and self._buffer.find(_CRLF) < 0):
            if not await self._fill():
                raise _truncated()
        if self._buffer.startswith(b"--"):
            return False
        line_end = self._buffer.find(_CRLF)
        # RFC 2046 allows linear whitespace ("transport padding") after a delimiter.
        if self._buffer[:line_end].strip(b" \t"):
            raise RejectedUploadError(
                "a multipart delimiter is followed by other text; the boundary must not occur"
                " inside a part (choose a boundary that is not in the data)"
            )
        del self._buffer[: line_end + len(_CRLF)]
        return True

    async def header_block(self) -> bytes:
        """The part's header lines, up to and without the blank line that ends them."""
        while len(self._buffer) < len(_CRLF):
            if not await self._fill():
                raise _truncated()
        if self._buffer.startswith(_CRLF):
            del self._buffer[: len(_CRLF)]
            return b""
        while (end := self._buffer.find(_HEADER_END)) < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise _headers_too_long()
            if not await self._fill():
                raise _truncated()
        if end > MAX_HEADER_BYTES:
            raise _headers_too_long()
        block = bytes(self._buffer[:end])
        del self._buffer[: end + len(_HEADER_END)]
        return block

    async def part_body(self) -> AsyncIterator[bytes]:
        """The part's bytes up to the next delimiter, which is consumed."""
        keep = len(self._delimiter) - 1
        while True:
            found = self._buffer.find(self._delimiter)
            if found >= 0:
                if found:
                    yield bytes(self._buffer[:found])
                del self._buffer[: found + len(self._delimiter)]
                return
            if len(self._buffer) > keep:
                ready = len(self._buffer) - keep
                yield bytes(self._buffer[:ready])
                del self._buffer[:ready]
            if not await self._fill():
                raise _truncated()


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not block:
        return headers
    for raw_line in block.split(_CRLF):
        name, colon, value = raw_line.partition(b":")
        if not colon or not name.strip():
            raise RejectedUploadError(
                "a multipart part has a header line without 'Name: value'; send one header per"
                " line, then an empty line, then the instance's bytes"
            )
        try:
            headers[name.strip().decode("ascii").lower()] = value.strip().decode("ascii")
        except UnicodeDecodeError:
            raise RejectedUploadError(
                "a multipart part header is not ASCII; part headers carry UIDs, digests and"
                " media types only"
            ) from None
    return headers


def _truncated() -> RejectedUploadError:
    return RejectedUploadError(
        "the multipart body ended before its close delimiter (--BOUNDARY--); end the body"
        " with CRLF --BOUNDARY-- after the last part"
    )


def _headers_too_long() -> RejectedUploadError:
    return RejectedUploadError(
        f"a multipart part's headers exceed {MAX_HEADER_BYTES} bytes or do not end with an"
        " empty line; send Content-Type and the instance headers, then an empty line"
    )
