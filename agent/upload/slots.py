"""A limit on requests in flight that can change while requests wait (the site config's
`upload.concurrency` may change with any revision).

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Slots:
    """At most `size` holders at once; a smaller size lets the holders over it finish."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"at least 1 slot is needed, got {size}")
        self._size = size
        self._used = 0
        self._changed = asyncio.Condition()

    @property
    def size(self) -> int:
        """How many may hold a slot at once."""
        return self._size

    async def resize(self, size: int) -> None:
        """Allow `size` holders from now on; waiters get the new room at once."""
        if size < 1:
            raise ValueError(f"at least 1 slot is needed, got {size}")
        async with self._changed:
            self._size = size
            self._changed.notify_all()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block, waiting for one if all are taken."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._used < self._size)
            self._used += 1
        try:
            yield
        finally:
            async with self._changed:
                self._used -= 1
                self._changed.notify()
