"""Which upload and config-fetch errors are worth another try: the agent's one answer.

Every HTTP error goes through `is_retryable`, so the uploader, the destinations' in-request
retries and the config client agree on what is transient. The waits themselves come from
`agent.retry.backoff`.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import httpx2

__all__ = ["is_retryable"]

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
