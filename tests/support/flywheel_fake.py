"""A FAKE Flywheel: the one endpoint the agent's Flywheel destination uses, in memory.

No Flywheel runs here. `FlywheelFake` is a small Starlette app (served by uvicorn on
127.0.0.1, port 0) implementing `POST /api/upload/label` as Flywheel documents it and as the
open-source core (scitran/core `api/placer.py` LabelPlacer, `api/dao/hierarchy.py`
upsert_top_down_hierarchy, `api/schemas/input/labelupload.json`) implements it:

- `Authorization: scitran-user KEY` (or `Bearer KEY`), else 401;
- a `multipart/form-data` body with a `metadata` field holding JSON of the labelupload shape
  (group `_id` and project `label` required; session, subject, acquisition optional with a
  required `label`; a session may carry `info`, as Flywheel's SessionMetadataInput does; no
  other keys), else 400; at least one file field, else 400;
- containers found or created top-down by label (a session by label and subject code under
  its project, an acquisition by label under its session); a group it does not know files
  the data under group `unknown`, project `GROUP_PROJECT` (core's fallback, without its
  fuzzy matching of group ids); a project it does not know is created; a group listed in
  `read_only_groups` is refused with 403, naming the group, as core does for a key without
  write access;
- each file field placed in the acquisition under its file name if the metadata lists that
  name, replacing a file of the same name (its `version` goes up); the answer is the list of
  saved files.

`fail_next` scripts whole-request failures, as for the store double; `hold` keeps answers
waiting (a slow Flywheel); `other_keys` are accepted too (a key being rotated).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import threading
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.http_server import UvicornThread

API_KEY = "fake-flywheel-key-0123"
_KEY_KINDS = ("scitran-user", "Bearer")
_CONTAINER_KEYS = {
    "group": {"_id"},
    "project": {"label", "public", "metadata", "files"},
    "session": {
        "label",
        "public",
        "info",
        "metadata",
        "operator",
        "uid",
        "timestamp",
        "timezone",
        "subject",
        "files",
    },
    "acquisition": {
        "label",
        "public",
        "metadata",
        "uid",
        "instrument",
        "measurement",
        "timestamp",
        "timezone",
        "files",
    },
}


@dataclass
class FlywheelFile:
    """A file in an acquisition."""

    name: str
    data: bytes
    info: dict[str, Any]
    version: int = 1


@dataclass
class Acquisition:
    """An acquisition, where it sits and its files by name."""

    group: str
    project: str
    subject: str
    session: str
    label: str
    session_uid: str | None
    uid: str | None
    files: dict[str, FlywheelFile] = field(default_factory=dict)


@dataclass
class FlywheelFake:
    """The label upload of a Flywheel site, in memory."""

    api_key: str = API_KEY
    # Also accepted, e.g. the key an admin is rotating to.
    other_keys: set[str] = field(default_factory=set)
    # While set and not released, an upload's answer waits (a slow Flywheel).
    hold: threading.Event | None = None
    waiting: int = 0
    groups: set[str] = field(default_factory=lambda: {"neuro", "unknown"})
    read_only_groups: set[str] = field(default_factory=set)
    projects: set[tuple[str, str]] = field(default_factory=set)
    acquisitions: list[Acquisition] = field(default_factory=list)
    # Session `info` by (group, project, subject code, session label): each key is set only
    # where the session has none yet, as core's upsert does (_update_container_nulls).
    session_info: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    fail_next: collections.deque[int] = field(default_factory=collections.deque)
    statuses: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: UvicornThread | None = None
    base_url: str = ""

    def start(self) -> str:
        """Serve on a free port of 127.0.0.1; return the base URL."""
        app = Starlette(routes=[Route("/api/upload/label", self._upload, methods=["POST"])])
        self._server = UvicornThread(app)
        self.base_url = self._server.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving; idempotent."""
        if self._server is not None:
            self._server.stop()

    def files(self) -> list[tuple[Acquisition, FlywheelFile]]:
        """Every file with its acquisition."""
        with self._lock:
            return [(acq, f) for acq in self.acquisitions for f in acq.files.values()]

    async def _upload(self, request: Request) -> Response:
        answer = await self._answer(request)
        with self._lock:
            self.statuses.append(answer.status_code)
        return answer

    async def _answer(self, request: Request) -> Response:
        authorization = request.headers.get("authorization", "")
        keys = {self.api_key, *self.other_keys}
        if authorization not in {f"{kind} {key}" for key in keys for kind in _KEY_KINDS}:
            return _error(401, "Invalid or missing API key")
        if self.hold is not None:
            with self._lock:
                self.waiting += 1
            await asyncio.to_thread(self.hold.wait, 30)
            with self._lock:
                self.waiting -= 1
        with self._lock:
            scripted = self.fail_next.popleft() if self.fail_next else None
        if scripted is not None:
            return _error(scripted, "scripted failure")
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return _error(400, "Expected a multipart/form-data upload")
        fields, files = _form(content_type, await request.body())
        if "metadata" not in fields:
            return _error(400, "Metadata required")
        try:
            metadata = json.loads(fields["metadata"])
        except json.JSONDecodeError:
            return _error(400, "metadata is not JSON")
        problem = _shape_problem(metadata)
        if problem is not None:
            return _error(400, f"Invalid metadata: {problem}")
        if not files:
            return _error(400, "No files selected for upload")
        group = metadata["group"]["_id"]
        if group in self.read_only_groups:
            # core's APIPermissionException names the group
            return _error(403, f"User does not have read-write access to group {group}")
        return JSONResponse(self._place(metadata, files))

    def _place(self, metadata: dict[str, Any], files: list[tuple[str, bytes]]) -> list[Any]:
        group, project = metadata["group"]["_id"], metadata["project"]["label"]
        session = metadata.get("session") or {}
        acquisition = metadata.get("acquisition") or {}
        listed = {f["name"]: f for f in acquisition.get("files") or []}
        saved: list[dict[str, Any]] = []
        with self._lock:
            if group not in self.groups:
                group, project = "unknown", f"{group}_{project}"
            self.projects.add((group, project))
            subject = (session.get("subject") or {}).get("code") or ""
            info = self.session_info.setdefault((group, project, subject, session["label"]), {})
            for key, value in (session.get("info") or {}).items():
                info.setdefault(key, value)
            target = self._acquisition(group, project, subject, session, acquisition)
            for name, data in files:
                if name not in listed:
                    continue  # core skips a file the metadata does not list
                known = target.files.get(name)
                version = 1 if known is None else known.version + 1
                info = listed[name].get("info") or {}
                target.files[name] = FlywheelFile(name, data, info, version)
                digest = hashlib.sha384(data).hexdigest()
                saved.append({"name": name, "size": len(data), "hash": f"v0-sha384-{digest}"})
        return saved

    def _acquisition(
        self,
        group: str,
        project: str,
        subject: str,
        session: dict[str, Any],
        acquisition: dict[str, Any],
    ) -> Acquisition:
        for known in self.acquisitions:
            if (known.group, known.project, known.subject, known.session, known.label) == (
                group,
                project,
                subject,
                session["label"],
                acquisition["label"],
            ):
                return known
        created = Acquisition(
            group,
            project,
            subject,
            session["label"],
            acquisition["label"],
            session.get("uid"),
            acquisition.get("uid"),
        )
        self.acquisitions.append(created)
        return created


def _error(status: int, message: str) -> Response:
    return JSONResponse({"message": message, "status_code": status}, status_code=status)


def _form(content_type: str, body: bytes) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """The text fields and the files (file name, bytes) of a multipart/form-data body."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("ascii") + body
    )
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    parts = message.get_payload() if message.is_multipart() else []
    for part in parts:
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        if filename is not None:
            files.append((filename, data))
        elif isinstance(name, str):
            fields[name] = data.decode("utf-8")
    return fields, files


def _shape_problem(metadata: Any) -> str | None:
    """What labelupload.json would refuse in `metadata`, or None."""
    if not isinstance(metadata, dict):
        return "not an object"
    unknown = set(metadata) - set(_CONTAINER_KEYS)
    if unknown:
        return f"unknown keys {sorted(unknown)}"
    for level in ("group", "project"):
        if not isinstance(metadata.get(level), dict):
            return f"{level} is required"
    if not isinstance(metadata["group"].get("_id"), str):
        return "group._id is required"
    for level, allowed in _CONTAINER_KEYS.items():
        container = metadata.get(level)
        if container is None:
            continue
        if not isinstance(container, dict) or set(container) - allowed:
            return f"{level} has keys the schema does not allow"
        if level != "group" and not isinstance(container.get("label"), str):
            return f"{level}.label is required"
    return None
