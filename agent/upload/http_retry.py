"""Short in-request retries shared by the HTTP destinations.

A few attempts within about a second ride out a restarting peer or a dropped keep-alive
connection without sending the instances back through the durable retry queue; anything
longer is the uploader's job (`state.schedule_retry`). What is worth retrying is decided by
`agent.http_retry.is_retryable`, so an `UploadError(retryable=True)` raised by `send` is
retried too.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx2
import stamina

from agent.http_retry import is_retryable
from agent.tls import describe_verification_failure, verification_failure
from agent.upload.base import UploadError

MAX_DETAIL_CHARS = 300

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long one request is tried before its outcome is booked."""

    attempts: int = 3
    wait_initial: float = 0.1
    wait_max: float = 1.0


async def with_retries(send: Callable[[], Awaitable[_T]], policy: RetryPolicy, peer: str) -> _T:
    """Await `send()` until it succeeds or fails for good; transport errors become
    `UploadError`s naming `peer` (e.g. "the DICOMweb archive") but never the request URL."""
    try:
        async for attempt in stamina.retry_context(
            on=is_retryable,
            attempts=policy.attempts,
            timeout=None,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
            # stamina's default jitter (1 s) would dwarf waits meant to be ~0.1-0.4 s.
            wait_jitter=policy.wait_initial,
        ):
            with attempt:
                return await send()
    except httpx2.HTTPError as exc:
        raise UploadError(is_retryable(exc), transport_message(exc, peer)) from exc
    raise AssertionError("stamina.retry_context yields until success or raises")


def transport_message(exc: httpx2.HTTPError, peer: str) -> str:
    """A transport failure in words, without the request URL (its path or query may hold
    hierarchy labels or UIDs).

    The reason is the exception's own message (`args[0]`), not `str(exc)`: fw-client, loaded
    with the Flywheel destination, rewrites `str()` of every httpx2 error in the process to
    start with the request's method and URL.
    """
    refused = verification_failure(exc)
    if refused is not None:
        return describe_verification_failure(refused, peer)[:MAX_DETAIL_CHARS]
    reason = str(exc.args[0]) if exc.args and exc.args[0] else type(exc).__name__
    return f"request to {peer} failed ({type(exc).__name__}): {reason}"[:MAX_DETAIL_CHARS]
