"""The agent's one answer to "try again or give up?" and "how long to wait?".

Every upload error goes through `is_retryable`, so the uploader, the in-request retries and
the config client agree on what is transient. Durable waits (minutes to days) are stored as
`next_attempt_at` in the state database; `backoff` only computes them.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import random

import httpx2

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0

# 408 and 425 say "too early / too slow, send it again"; 429 asks us to slow down. 401 means the
# agent token was rotated or revoked: the instances wait, durably, until an admin installs the
# new token file (read on every request), instead of being failed for good.
_RETRYABLE_CLIENT_STATUSES = frozenset({401, 408, 425, 429})

# Transport-level failures: the request may not have reached the server, or the answer was
# lost. Ingest is idempotent on (SOP Instance UID, sha256), so resending is always safe.
_RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    httpx2.TimeoutException,
    httpx2.NetworkError,
    httpx2.RemoteProtocolError,
    ConnectionError,
    TimeoutError,
)


def is_retryable(error: BaseException | int) -> bool:
    """Whether an error (an exception or an HTTP status code) is worth retrying.

    Timeouts, connection failures, 5xx, 401, 408, 425 and 429 are transient; every other 4xx is a
    permanent refusal of that request. Any other exception is permanent too: retrying a local
    bug or an unreadable file forever would hide it instead of making it a visible failure.
    Exceptions with a `retryable` attribute (such as `UploadError`) decide for themselves.
    """
    if isinstance(error, int):
        return error >= 500 or error in _RETRYABLE_CLIENT_STATUSES
    retryable = getattr(error, "retryable", None)
    if isinstance(retryable, bool):
        return retryable
    if isinstance(error, httpx2.HTTPStatusError):
        return is_retryable(error.response.status_code)
    return isinstance(error, _RETRYABLE_EXCEPTIONS)


def backoff(
    attempt: int,
    *,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    Capped exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)].
    Full jitter spreads the retries of many agents hitting one recovering store.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more, got {attempt}")
    # Clamp the exponent so a days-long outage cannot overflow the float.
    ceiling = min(cap, base * 2 ** min(attempt, 64))
    return (rng or random).uniform(0.0, ceiling)
