"""How long to wait before trying again: one capped, jittered backoff for the whole agent.

Durable waits (minutes to days) are stored as `next_attempt_at` in the state database;
`backoff` only computes them. Which errors are worth a retry is `agent.http_retry`'s answer.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import random

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0


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
