"""The plain HTTP sink of the upload benchmark: reads every request body, keeps nothing.

    python bench/_http_sink.py PORT

An asyncio protocol on 127.0.0.1:PORT that reads a request's head, counts `Content-Length`
body bytes without parsing them and answers `200 {}` on the same keep-alive connection. It
stands for the fastest server there could be, so the agent's own cost of streaming a body
(the spool reads, the multipart framing, httpx2) is what the baseline measures. Prints
`ready` once it listens. Must not import any dicom-connector package.
"""

from __future__ import annotations

import asyncio
import sys

_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\n{}"
)
_MAX_HEAD = 64 * 1024


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._left: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        while data:
            if self._left is None:
                self._head += data
                end = self._head.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._head) > _MAX_HEAD:
                        self._close()
                    return
                head, data = self._head[:end], self._head[end + 4 :]
                self._head = b""
                self._left = _content_length(head)
                if self._left is None:
                    self._close()
                    return
            taken = min(self._left, len(data))
            self._left -= taken
            data = data[taken:]
            if self._left == 0:
                self._left = None
                assert self._transport is not None
                self._transport.write(_ANSWER)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Sink, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
