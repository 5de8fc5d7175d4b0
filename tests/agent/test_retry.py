"""The one error classifier and the jittered backoff of the agent."""

from __future__ import annotations

import random

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.http_retry import is_retryable
from agent.retry import BACKOFF_CAP_SECONDS, backoff
from agent.upload.base import UploadError

_REQUEST = httpx2.Request("POST", "http://store.invalid/api/v1/ingest")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 401, 408, 425, 429])
def test_status_is_retryable_when_transient(status: int) -> None:
    assert is_retryable(status)


@pytest.mark.parametrize("status", [400, 403, 404, 409, 413, 415, 422])
def test_status_is_permanent_for_other_client_errors(status: int) -> None:
    assert not is_retryable(status)


@pytest.mark.parametrize(
    "error",
    [
        httpx2.ConnectError("refused", request=_REQUEST),
        httpx2.ConnectTimeout("slow", request=_REQUEST),
        httpx2.ReadTimeout("slow", request=_REQUEST),
        httpx2.ReadError("reset", request=_REQUEST),
        httpx2.RemoteProtocolError("closed mid-answer", request=_REQUEST),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_exception_is_retryable_when_transport_fails(error: BaseException) -> None:
    assert is_retryable(error)


def test_http_status_error_is_classified_by_its_status() -> None:
    def failure(status: int) -> httpx2.HTTPStatusError:
        response = httpx2.Response(status, request=_REQUEST)
        return httpx2.HTTPStatusError("failed", request=_REQUEST, response=response)

    assert is_retryable(failure(503))
    assert not is_retryable(failure(400))


def test_upload_error_decides_for_itself() -> None:
    assert is_retryable(UploadError(True, "store busy"))
    assert not is_retryable(UploadError(False, "store refused"))


@pytest.mark.parametrize(
    "error", [FileNotFoundError("gone"), ValueError("bug"), httpx2.InvalidURL("bad")]
)
def test_exception_is_permanent_when_local(error: BaseException) -> None:
    assert not is_retryable(error)


@given(attempt=st.integers(min_value=0, max_value=10_000), seed=st.integers())
def test_backoff_stays_between_zero_and_the_exponential_ceiling(attempt: int, seed: int) -> None:
    wait = backoff(attempt, rng=random.Random(seed))

    assert 0.0 <= wait <= min(BACKOFF_CAP_SECONDS, 2.0 ** min(attempt, 64))


def test_backoff_is_capped_at_five_minutes_for_long_outages() -> None:
    waits = [backoff(1_000, rng=random.Random(seed)) for seed in range(200)]

    assert max(waits) <= 300.0
    # Full jitter: the waits spread over the whole range instead of all hitting the cap.
    assert min(waits) < 150.0 < max(waits)


def test_backoff_refuses_a_negative_attempt() -> None:
    with pytest.raises(ValueError, match="attempt must be 0 or more"):
        backoff(-1)
