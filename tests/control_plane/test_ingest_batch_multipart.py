"""The streaming multipart/related reader of batch ingest: framing however the body is cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.errors import RejectedUploadError, UnsupportedMediaTypeError
from control_plane.hierarchy.multipart import MAX_HEADER_BYTES, read_parts, related_boundary

BOUNDARY = b"b0undary"


def body_of(parts: Sequence[tuple[dict[str, str], bytes]], *, preamble: bytes = b"") -> bytes:
    framed = bytearray(preamble)
    for headers, data in parts:
        framed += b"--" + BOUNDARY + b"\r\n"
        for name, value in headers.items():
            framed += f"{name}: {value}\r\n".encode()
        framed += b"\r\n" + data + b"\r\n"
    return bytes(framed + b"--" + BOUNDARY + b"--\r\nepilogue")


async def _chunked(body: bytes, cuts: Sequence[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        yield body[start:cut]
        start = cut
    yield body[start:]


async def _read(body: bytes, cuts: Sequence[int] = ()) -> list[tuple[dict[str, str], bytes]]:
    parts = []
    async for part in read_parts(_chunked(body, cuts), BOUNDARY):
        parts.append((part.headers, b"".join([chunk async for chunk in part.body])))
    return parts


# Data that looks like framing (CR, LF, dashes, a boundary prefix) is the hard case.
_DATA = st.lists(
    st.sampled_from([b"\r", b"\n", b"-", b"--", b"--b0und", b"\r\n--b0undar", b"x", b"DICM"]),
    max_size=30,
).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(
    datas=st.lists(_DATA, min_size=1, max_size=4),
    cut_fractions=st.lists(st.floats(0, 1), max_size=12),
)
def test_parts_come_out_as_framed_wherever_the_body_is_cut(
    datas: list[bytes], cut_fractions: list[float]
) -> None:
    parts = [({"x-sop-instance-uid": f"1.2.{n}"}, data) for n, data in enumerate(datas)]
    body = body_of(parts, preamble=b"preamble\r\n")
    cuts = [int(fraction * len(body)) for fraction in cut_fractions]

    assert asyncio.run(_read(body, cuts)) == parts


async def test_a_part_left_unread_is_skipped_and_the_next_one_is_whole() -> None:
    body = body_of([({"a": "1"}, b"first" * 1000), ({"a": "2"}, b"second")])

    seen = []
    async for part in read_parts(_chunked(body, range(7, len(body), 97)), BOUNDARY):
        if part.headers["a"] == "2":
            seen.append(b"".join([chunk async for chunk in part.body]))

    assert seen == [b"second"]


async def test_a_part_without_headers_has_empty_headers() -> None:
    assert await _read(body_of([({}, b"data")])) == [({}, b"data")]


async def test_a_body_without_the_boundary_is_refused() -> None:
    with pytest.raises(RejectedUploadError, match="no delimiter"):
        await _read(b"just some bytes")


async def test_a_body_cut_before_the_close_delimiter_is_refused() -> None:
    body = body_of([({"a": "1"}, b"data")])

    with pytest.raises(RejectedUploadError, match="close delimiter"):
        await _read(body[: body.index(b"--" + BOUNDARY + b"--")])


async def test_headers_without_an_end_are_refused_before_they_fill_memory() -> None:
    endless = b"--" + BOUNDARY + b"\r\nX-Padding: " + b"a" * (MAX_HEADER_BYTES + 10)

    with pytest.raises(RejectedUploadError, match="headers exceed"):
        await _read(endless + b"\r\n\r\ndata\r\n--" + BOUNDARY + b"--", range(0, 20000, 1000))


async def test_a_header_line_without_a_colon_is_refused() -> None:
    body = b"--" + BOUNDARY + b"\r\nnonsense\r\n\r\ndata\r\n--" + BOUNDARY + b"--"

    with pytest.raises(RejectedUploadError, match="Name: value"):
        await _read(body)


def test_boundary_is_taken_from_a_related_dicom_content_type() -> None:
    content_type = 'Multipart/Related; type="application/dicom"; boundary="abc-123"'

    assert related_boundary(content_type) == b"abc-123"


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/dicom",
        "multipart/form-data; boundary=abc",
        "multipart/related; boundary=abc",
        'multipart/related; type="application/json"; boundary=abc',
        'multipart/related; type="application/dicom"',
        f'multipart/related; type="application/dicom"; boundary={"b" * 71}',
    ],
)
def test_other_content_types_are_unsupported(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        related_boundary(content_type)
