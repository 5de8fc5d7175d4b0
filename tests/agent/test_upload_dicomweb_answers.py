"""How STOW-RS answers that Orthanc does not give are read, and the bearer token file.

`stow_outcomes` is the pure reading of an answer (status + Store Instances Response Module).
The token tests need a server that checks a bearer token, which Orthanc cannot do without an
authorization plugin, so a small Starlette STOW-RS endpoint (served by uvicorn on 127.0.0.1)
records each request's Authorization header and references every part it was sent.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.spool import Spool
from agent.state import AgentState, InstanceRow
from agent.upload.base import UploadError, UploadResult
from agent.upload.dicomweb import STORED_WITH_WARNING, DicomwebDestination, stow_outcomes
from agent.upload.http_retry import RetryPolicy
from common.config import RoutingConfig
from tests.agent.test_reaper import T0, series_datasets, spool_datasets
from tests.agent.test_upload_builtin_store import TARGET
from tests.support.http_server import UvicornThread
from tests.support.related_body import split_related

ROUTING = RoutingConfig()
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')


def rows(state: AgentState, spool: Spool, n: int) -> list[InstanceRow]:
    datasets = series_datasets(n, comments=None)
    spool_datasets(spool, datasets, T0)
    return state.spooled_instances(datasets[0].SeriesInstanceUID)


def module(
    referenced: Sequence[str] = (),
    failed: Sequence[tuple[str, int]] = (),
    warning: int | None = None,
) -> dict[str, Any]:
    def item(uid: str, **extra: Any) -> dict[str, Any]:
        return {"00081155": {"vr": "UI", "Value": [uid]}, **extra}

    ref_items = [
        item(uid, **({"00081196": {"vr": "US", "Value": [warning]}} if warning else {}))
        for uid in referenced
    ]
    failed_items = [
        item(uid, **{"00081197": {"vr": "US", "Value": [reason]}}) for uid, reason in failed
    ]
    return {
        "00081199": {"vr": "SQ", "Value": ref_items},
        "00081198": {"vr": "SQ", "Value": failed_items},
    }


def test_out_of_resources_is_retried_and_other_failure_reasons_are_permanent(
    state: AgentState, spool: Spool
) -> None:
    sent = rows(state, spool, 3)
    uids = [row.sop_instance_uid for row in sent]
    body = module(failed=[(uids[0], 0xA700), (uids[1], 0xA7F3), (uids[2], 0xC000)])

    outcomes = stow_outcomes(202, body, sent)

    prefix = "the DICOMweb archive failed the instance: failure reason"
    assert [(o.retryable, o.message) for o in outcomes if isinstance(o, UploadError)] == [
        (True, f"{prefix} 0xA700 (out of resources)"),
        (True, f"{prefix} 0xA7F3 (out of resources)"),
        (False, f"{prefix} 0xC000 (cannot understand)"),
    ]


def test_a_warning_is_still_stored_and_an_instance_not_named_is_retried(
    state: AgentState, spool: Spool
) -> None:
    sent = rows(state, spool, 3)
    uids = [row.sop_instance_uid for row in sent]

    outcomes = stow_outcomes(200, module(referenced=uids[:1], warning=0xB000), sent[:1])
    forgotten = stow_outcomes(200, module(referenced=uids[:2]), sent)

    assert outcomes == [UploadResult(file_id=uids[0], status=STORED_WITH_WARNING)]
    assert [type(o) for o in forgotten] == [UploadResult, UploadResult, UploadError]
    assert isinstance(forgotten[2], UploadError)
    assert forgotten[2].retryable


@pytest.mark.parametrize(
    ("status", "body", "retryable"),
    [
        (200, None, True),
        (200, {"detail": "ok"}, True),
        (503, None, True),
        (429, None, True),
        (415, None, False),
        (400, "not json", False),
    ],
)
def test_an_answer_without_a_response_module_decides_for_the_whole_request(
    state: AgentState, spool: Spool, status: int, body: Any, retryable: bool
) -> None:
    with pytest.raises(UploadError) as raised:
        stow_outcomes(status, body, rows(state, spool, 1))

    assert raised.value.retryable is retryable
    assert f"HTTP {status}" in raised.value.message


@dataclass
class TokenCheckingStow:
    """A STOW-RS endpoint that wants `Bearer {token}` and references every part it can read."""

    token: str
    authorizations: list[str | None] = field(default_factory=list)

    def app(self) -> Starlette:
        route = Route("/dicom-web/studies/{study}", self._stow, methods=["POST"])
        return Starlette(routes=[route])

    async def _stow(self, request: Request) -> Response:
        self.authorizations.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"detail": "unauthorized"}, status_code=401)
        boundary = _BOUNDARY.search(request.headers["content-type"])
        assert boundary is not None
        assert request.headers["accept"] == "application/dicom+json"
        parts = split_related(await request.body(), boundary.group(1).encode())
        uids = [str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID) for _, data in parts]
        return JSONResponse(module(referenced=uids), media_type="application/dicom+json")


@pytest.fixture
def stow() -> Iterator[tuple[TokenCheckingStow, str]]:
    endpoint = TokenCheckingStow(token="first-token")
    server = UvicornThread(endpoint.app())
    url = server.start()
    yield endpoint, f"{url}/dicom-web"
    server.stop()


async def test_the_token_file_is_read_on_every_request_so_a_rotated_token_is_used(
    stow: tuple[TokenCheckingStow, str], state: AgentState, spool: Spool, tmp_path: Path
) -> None:
    endpoint, url = stow
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n", encoding="utf-8")
    destination = DicomwebDestination(url, token_file, retry=RetryPolicy(attempts=1))
    sent = rows(state, spool, 1)
    try:
        first = await destination.upload_batch(sent, TARGET, ROUTING)
        endpoint.token = "second-token"
        with pytest.raises(UploadError) as refused:
            await destination.upload_batch(sent, TARGET, ROUTING)
        token_file.write_text("second-token", encoding="utf-8")
        rotated = await destination.upload_batch(sent, TARGET, ROUTING)
    finally:
        await destination.aclose()

    assert [type(o) for o in first + rotated] == [UploadResult, UploadResult]
    assert refused.value.retryable
    assert refused.value.message == "the DICOMweb archive answered HTTP 401"
    assert endpoint.authorizations == [
        "Bearer first-token",
        "Bearer first-token",
        "Bearer second-token",
    ]


async def test_a_missing_token_file_keeps_the_instances_waiting_and_sends_nothing(
    stow: tuple[TokenCheckingStow, str], state: AgentState, spool: Spool, tmp_path: Path
) -> None:
    endpoint, url = stow
    missing = tmp_path / "no-such-token"
    destination = DicomwebDestination(url, missing, retry=RetryPolicy(attempts=1))
    try:
        with pytest.raises(UploadError) as raised:
            await destination.upload_batch(rows(state, spool, 1), TARGET, ROUTING)
    finally:
        await destination.aclose()

    assert raised.value.retryable
    assert raised.value.message == (
        f"cannot read the token file {missing}: No such file or directory"
    )
    assert endpoint.authorizations == []
