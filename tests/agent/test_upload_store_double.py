"""A test double of the control plane's agent-facing HTTP contract, and tests that it keeps it.

`StoreDouble` is a small Starlette app served by uvicorn on 127.0.0.1 (port 0) in its own
thread (`UvicornThread`, which also serves the real control plane in other tests). It
implements `GET /api/v1/agent/config`, `POST /api/v1/ingest` and `POST /api/v1/ingest/batch`
as docs/architecture.md specifies them (bearer token, query parameters validated with the
`common.ingest` models, multipart/related parts with their headers, sha256 check per instance,
idempotence on (sop_instance_uid, sha256), fallback group), so the agent is tested against a
real HTTP peer. Scripted answers (`fail_next`, `config_status`) let tests play an unhealthy
store; `fail_next` applies to either ingest route.
"""

from __future__ import annotations

import collections
import hashlib
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.ingest import (
    DICOM_MEDIA_TYPE,
    INGEST_BATCH_PATH,
    INGEST_PATH,
    SHA256_HEADER,
    SOP_INSTANCE_UID_HEADER,
    BatchResult,
    IngestParams,
    IngestTarget,
)
from tests.support.http_server import UvicornThread
from tests.support.related_body import split_related

AGENT_TOKEN = "agent-secret-token"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')


@dataclass
class StoredFile:
    """One file the double holds, with where it was filed."""

    file_id: str
    sha256: str
    data: bytes
    params: dict[str, str]
    group: str
    project: str
    routing_reason: str


@dataclass
class StoreDouble:
    """The agent-facing HTTP contract of the control plane, in memory."""

    token: str = AGENT_TOKEN
    known_groups: dict[str, set[str]] = field(default_factory=lambda: {"neuro": {"study-a"}})
    config_answer: dict[str, Any] | None = None
    config_status: collections.deque[int] = field(default_factory=collections.deque)
    fail_next: collections.deque[int] = field(default_factory=collections.deque)
    files: dict[str, StoredFile] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)
    ingest_statuses: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    config_requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: UvicornThread | None = None
    base_url: str = ""

    def app(self) -> Starlette:
        """The Starlette application implementing the two agent-facing routes."""
        return Starlette(
            routes=[
                Route("/api/v1/agent/config", self._config, methods=["GET"]),
                Route(INGEST_PATH, self._ingest, methods=["POST"]),
                Route(INGEST_BATCH_PATH, self._ingest_batch, methods=["POST"]),
            ]
        )

    def start(self) -> str:
        """Serve on a free port of 127.0.0.1; return the base URL."""
        self._server = UvicornThread(self.app())
        self.base_url = self._server.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving and wait for the server thread; idempotent."""
        if self._server is not None:
            self._server.stop()

    def file_of(self, sop_instance_uid: str) -> StoredFile | None:
        """The stored file of a SOP instance, if any."""
        with self._lock:
            return self.files.get(sop_instance_uid)

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.token}"

    async def _config(self, request: Request) -> Response:
        with self._lock:
            self.config_requests += 1
            status = self.config_status.popleft() if self.config_status else 200
        if not self._authorized(request):
            return JSONResponse({"detail": "invalid agent token"}, status_code=401)
        if status != 200 or self.config_answer is None:
            return JSONResponse({"detail": "scripted failure"}, status_code=status or 503)
        return JSONResponse(self.config_answer)

    async def _ingest(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._answer(JSONResponse({"detail": "invalid agent token"}, status_code=401))
        with self._lock:
            scripted = self.fail_next.popleft() if self.fail_next else None
        if scripted is not None:
            return self._answer(JSONResponse({"detail": "scripted failure"}, status_code=scripted))
        if request.headers.get("content-type") != DICOM_MEDIA_TYPE:
            return self._answer(JSONResponse({"detail": "send application/dicom"}, 415))
        params = dict(request.query_params)
        invalid = _invalid_query(IngestParams, params)
        if invalid is not None:
            return self._answer(invalid)
        digest = hashlib.sha256()
        chunks = []
        async for chunk in request.stream():
            digest.update(chunk)
            chunks.append(chunk)
        if digest.hexdigest() != params["sha256"]:
            return self._answer(
                JSONResponse({"detail": "sha256 does not match the body"}, status_code=400)
            )
        return self._answer(JSONResponse(self._file(params, b"".join(chunks))))

    async def _ingest_batch(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._answer(JSONResponse({"detail": "invalid agent token"}, status_code=401))
        with self._lock:
            scripted = self.fail_next.popleft() if self.fail_next else None
        if scripted is not None:
            return self._answer(JSONResponse({"detail": "scripted failure"}, status_code=scripted))
        content_type = request.headers.get("content-type", "")
        boundary = _BOUNDARY.search(content_type)
        if not content_type.startswith("multipart/related") or boundary is None:
            return self._answer(JSONResponse({"detail": "send multipart/related"}, 415))
        params = dict(request.query_params)
        invalid = _invalid_query(IngestTarget, params)
        if invalid is not None:
            return self._answer(invalid)
        body = await request.body()
        parts = split_related(body, boundary.group(1).encode())
        with self._lock:
            self.batch_sizes.append(len(parts))
        items: list[dict[str, str]] = []
        placed: dict[str, str] = {}
        for headers, data in parts:
            sop = headers.get(SOP_INSTANCE_UID_HEADER.lower(), "")
            digest = headers.get(SHA256_HEADER.lower())
            if hashlib.sha256(data).hexdigest() != digest:
                items.append({"sop_instance_uid": sop, "error": "sha256 does not match"})
                continue
            instance = params | {"sop_instance_uid": sop, "sha256": digest}
            placed = self._file(instance, data)
            items.append(
                {"sop_instance_uid": sop, "file_id": placed["file_id"], "status": placed["status"]}
            )
        answer = BatchResult.model_validate(
            {
                "items": items,
                "group": placed.get("group"),
                "project": placed.get("project"),
                "routing_reason": placed.get("routing_reason"),
            }
        )
        return self._answer(JSONResponse(answer.model_dump(mode="json")))

    def _file(self, params: dict[str, str], data: bytes) -> dict[str, str]:
        group, project, reason = self._resolve(params)
        sop = params["sop_instance_uid"]
        with self._lock:
            known = self.files.get(sop)
            if known is not None and known.sha256 == params["sha256"]:
                stored, status = known, "exists"
            else:
                status = "created" if known is None else "replaced"
                if known is not None:
                    self.replaced.append(sop)
                stored = StoredFile(
                    str(uuid.uuid4()),
                    params["sha256"],
                    data,
                    params,
                    group,
                    project,
                    reason,
                )
                self.files[sop] = stored
        return {
            "file_id": stored.file_id,
            "status": status,
            "group": stored.group,
            "project": stored.project,
            "routing_reason": stored.routing_reason,
        }

    def _resolve(self, params: dict[str, str]) -> tuple[str, str, str]:
        group, project = params.get("group"), params.get("project")
        unknown, unsorted = params["unknown_group"], params["unsorted_project"]
        if group is None or project is None:
            return unknown, unsorted, params["routing_reason"]
        if group not in self.known_groups:
            return unknown, unsorted, "unknown_group"
        if project not in self.known_groups[group]:
            return group, unsorted, "unknown_project"
        return group, project, "routed"

    def _answer(self, response: Response) -> Response:
        with self._lock:
            self.ingest_statuses.append(response.status_code)
        return response


def _invalid_query(model: type[BaseModel], params: dict[str, str]) -> Response | None:
    """The store's 422 for a query its model refuses, shaped like FastAPI's (which echoes the
    input back), or None."""
    try:
        model.model_validate(params)
    except ValidationError as exc:
        detail = [
            {"loc": ["query", *error["loc"]], "msg": error["msg"], "input": params}
            for error in exc.errors(include_url=False)
        ]
        return JSONResponse({"detail": detail}, status_code=422)
    return None


@pytest.fixture
def store() -> Iterator[StoreDouble]:
    """A running store double, stopped after the test."""
    double = StoreDouble()
    double.start()
    yield double
    double.stop()


def _params(data: bytes, **overrides: str) -> dict[str, str]:
    params = {
        "subject": "sub-1",
        "session": "ses-1",
        "acquisition": "T1",
        "series_instance_uid": "1.2.3.4",
        "sop_instance_uid": "1.2.3.4.1",
        "sha256": hashlib.sha256(data).hexdigest(),
        "unknown_group": "unknown",
        "unsorted_project": "Unsorted",
        "routing_reason": "no_routing_string",
    }
    params.update(overrides)
    return params


def _post(store: StoreDouble, data: bytes, **overrides: str) -> httpx2.Response:
    return httpx2.post(
        f"{store.base_url}/api/v1/ingest",
        params=_params(data, **overrides),
        content=data,
        headers={"Authorization": f"Bearer {store.token}", "Content-Type": "application/dicom"},
    )


def test_double_refuses_a_body_whose_sha256_differs(store: StoreDouble) -> None:
    response = _post(store, b"DICM", sha256="0" * 64)

    assert response.status_code == 400


def test_double_is_idempotent_on_sop_and_sha256_and_records_replacements(
    store: StoreDouble,
) -> None:
    first = _post(store, b"one", sop_instance_uid="1.2.3").json()
    again = _post(store, b"one", sop_instance_uid="1.2.3").json()
    other = _post(store, b"two", sop_instance_uid="1.2.3").json()

    assert [first["status"], again["status"], other["status"]] == ["created", "exists", "replaced"]
    assert first["file_id"] == again["file_id"] != other["file_id"]
    assert store.replaced == ["1.2.3"]


def test_double_files_an_unknown_group_under_the_fallback_names(store: StoreDouble) -> None:
    answer = _post(store, b"x", group="nobody", project="p", routing_reason="routed").json()

    assert (answer["group"], answer["project"], answer["routing_reason"]) == (
        "unknown",
        "Unsorted",
        "unknown_group",
    )


def test_double_refuses_a_wrong_token(store: StoreDouble) -> None:
    response = httpx2.post(
        f"{store.base_url}/api/v1/ingest",
        params=_params(b"x"),
        content=b"x",
        headers={"Authorization": "Bearer wrong", "Content-Type": "application/dicom"},
    )

    assert response.status_code == 401
