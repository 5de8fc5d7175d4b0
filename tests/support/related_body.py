"""Reading a whole `multipart/related` body in a test server (test doubles, fakes)."""

from __future__ import annotations


def split_related(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a whole multipart body: (lower-cased headers, bytes) each."""
    segments = (b"\r\n" + body).split(b"\r\n--" + boundary)
    parts = []
    for segment in segments[1:-1]:
        head, _, data = segment.partition(b"\r\n\r\n")
        lines = head.decode("ascii").split("\r\n")[1:]
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)
        }
        parts.append((headers, data))
    assert segments[-1].startswith(b"--"), "the body does not end with the close delimiter"
    return parts
