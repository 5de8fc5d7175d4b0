"""Upload destination: a Flywheel site, through its label upload (`POST /api/upload/label`).

One chunk of a series is one request through `fw-client` (Flywheel's HTTP client): a
`multipart/form-data` body with a `metadata` field (JSON, Flywheel's `labelupload.json`
shape) and one file field per instance (`file1`, `file2`, ...), streamed from the spool files
with a Content-Length (`agent.upload.multipart.FormDataBody`). The metadata names the
hierarchy by label and carries the UIDs:

```json
{"group": {"_id": GROUP},
 "project": {"label": PROJECT},
 "session": {"label": SESSION, "uid": StudyInstanceUID,
             "subject": {"code": SUBJECT, "label": SUBJECT}},
 "acquisition": {"label": ACQUISITION, "uid": SeriesInstanceUID,
                 "files": [{"name": "<SOPInstanceUID>.dcm", "type": "dicom",
                            "info": {"sha256": ...}}]}}
```

Session metadata extracted by the site's patterns goes in as the session's `"info"` (omitted
when there is none).

Flywheel finds or creates each container by label under its parent (top-down) and files each
instance under its name in the acquisition. A series without a routing string goes to the
site's fallback names (`routing.unknown_group` / `unsorted_project`), as in the built-in
store. A group Flywheel does not know is resolved by Flywheel itself (its `unknown` group,
project `GROUP_PROJECT`); a project it does not know is created when the key may (see
docs/destinations.md).

Idempotency: a file of the same name in the same acquisition is replaced, not added, so
resending a chunk after a crash between Flywheel's answer and our bookkeeping never makes a
second file. An instance is confirmed only when the answer's list of saved files names it.

The API key is read from `api_key_file` on every request; a new key builds a new client.
Error messages carry the HTTP status and Flywheel's message with any of our labels cut out,
never a DICOM value.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2

# fw_client patches httpx2 when imported (the bases of Client and AsyncClient, Response
# methods, the errors' str() and attribute lookup): a client created before the import stops
# working after it. Imported with this module, hence with the agent's runtime, it is in place
# before any HTTP client of the agent exists; see docs/destinations.md.
from fw_client.client import FWClient

from agent.http_retry import is_retryable
from agent.state import InstanceRow
from agent.upload.base import BatchLimits, UploadError, UploadResult
from agent.upload.http_retry import MAX_DETAIL_CHARS, RetryPolicy, with_retries
from agent.upload.multipart import FormDataBody, SpooledPart, open_part
from agent.upload.secret_file import read_secret
from common.config import RoutingConfig
from common.hierarchy import HierarchyTarget
from common.ingest import MAX_BATCH_BYTES, MAX_BATCH_INSTANCES

LABEL_UPLOAD_PATH = "/api/upload/label"
UPLOADED = "uploaded"
FLYWHEEL_BATCH_LIMITS = BatchLimits(max_instances=MAX_BATCH_INSTANCES, max_bytes=MAX_BATCH_BYTES)
_PEER = "Flywheel"
_CLIENT_NAME = "dicom-connector"


def file_name(instance: InstanceRow) -> str:
    """The instance's file name in its Flywheel acquisition (unique per instance)."""
    return f"{instance.sop_instance_uid}.dcm"


def label_upload_metadata(
    instances: Sequence[InstanceRow], target: HierarchyTarget, routing: RoutingConfig
) -> dict[str, Any]:
    """The `metadata` field of a label upload of `instances` (one series) to `target`."""
    first = instances[0]
    routed = target.group is not None and target.project is not None
    session: dict[str, Any] = {
        "label": target.session,
        "uid": first.study_instance_uid,
        "subject": {"code": target.subject, "label": target.subject},
    }
    if target.metadata:
        # Session metadata from the site's patterns goes into the session's `info`; Flywheel
        # sets each key only where the session has none yet (docs/destinations.md).
        session["info"] = dict(target.metadata)
    return {
        "group": {"_id": target.group if routed else routing.unknown_group},
        "project": {"label": target.project if routed else routing.unsorted_project},
        "session": session,
        "acquisition": {
            "label": target.acquisition,
            "uid": first.series_instance_uid,
            "files": [
                {"name": file_name(instance), "type": "dicom", "info": {"sha256": instance.sha256}}
                for instance in instances
            ],
        },
    }


class FlywheelDestination:
    """Uploads instances to a Flywheel site by label."""

    def __init__(
        self,
        url: str,
        api_key_file: Path,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        batch_limits: BatchLimits = FLYWHEEL_BATCH_LIMITS,
    ) -> None:
        self._url = url.rstrip("/")
        self._api_key_file = api_key_file
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._batch_limits = batch_limits
        self._client: FWClient | None = None
        self._client_key: str | None = None
        # Requests in flight per client: a client replaced by a new key is closed when its
        # last request is done, not under it.
        self._in_flight: dict[FWClient, int] = {}

    @property
    def batch_limits(self) -> BatchLimits:
        """The most one label upload carries."""
        return self._batch_limits

    async def upload_batch(
        self, instances: Sequence[InstanceRow], target: HierarchyTarget, routing: RoutingConfig
    ) -> list[UploadResult | UploadError]:
        """Upload instances of one series in one label upload; one outcome each, in order.

        Raises `UploadError` when the request as a whole failed (transport, 5xx, 401, 429:
        retried later; other 4xx: permanent).
        """
        outcomes: dict[int, UploadResult | UploadError] = {}
        parts: dict[int, SpooledPart] = {}
        try:
            for index, instance in enumerate(instances):
                try:
                    parts[index] = await open_part(instance)
                except UploadError as exc:
                    outcomes[index] = exc
            if parts:
                sent = list(parts.values())
                answered = await with_retries(
                    lambda: self._post_once(sent, target, routing), self._retry, _PEER
                )
                outcomes.update(zip(parts, answered, strict=True))
        finally:
            for part in parts.values():
                os.close(part.descriptor)
        return [outcomes[index] for index in range(len(instances))]

    async def aclose(self) -> None:
        """Close the clients; idempotent (the uploader has no request in flight by then)."""
        clients = {*self._in_flight, *([self._client] if self._client else [])}
        self._client, self._client_key, self._in_flight = None, None, {}
        for client in clients:
            await _close(client)

    async def _client_for_current_key(self) -> FWClient:
        key = await asyncio.to_thread(read_secret, self._api_key_file, "API key")
        if self._client is None or key != self._client_key:
            previous = self._client
            # fw-client's own retries are off: ours (with_retries) and the durable queue
            # decide, the same way for every destination.
            self._client = FWClient(
                api_key=key,
                url=self._url,
                client_name=_CLIENT_NAME,
                timeout=self._timeout,
                retry_total=0,
            )
            self._client_key = key
            if previous is not None and not self._in_flight.get(previous):
                self._in_flight.pop(previous, None)
                await _close(previous)
        return self._client

    async def _post_once(
        self, parts: Sequence[SpooledPart], target: HierarchyTarget, routing: RoutingConfig
    ) -> list[UploadResult | UploadError]:
        client = await self._client_for_current_key()
        self._in_flight[client] = self._in_flight.get(client, 0) + 1
        try:
            return await self._send(client, parts, target, routing)
        finally:
            remaining = self._in_flight.pop(client, 1) - 1
            if remaining or client is self._client:
                self._in_flight[client] = remaining
            else:
                await _close(client)

    async def _send(
        self,
        client: FWClient,
        parts: Sequence[SpooledPart],
        target: HierarchyTarget,
        routing: RoutingConfig,
    ) -> list[UploadResult | UploadError]:
        sent = [part.instance for part in parts]
        metadata = label_upload_metadata(sent, target, routing)
        body = FormDataBody(
            {"metadata": json.dumps(metadata)}, parts, [file_name(row) for row in sent]
        )
        response = await client.apost(
            LABEL_UPLOAD_PATH,
            content=body.chunks(),
            headers={
                "content-type": body.content_type,
                "content-length": str(body.content_length),
            },
            raw=True,
        )
        return _outcomes(response, sent, _labels(metadata))


async def _close(client: FWClient) -> None:
    await client.aclose()
    client.close()


def _outcomes(
    response: httpx2.Response, sent: Sequence[InstanceRow], labels: Sequence[str]
) -> list[UploadResult | UploadError]:
    status = response.status_code
    if status != 200:
        raise UploadError(
            is_retryable(status),
            f"{_PEER} answered HTTP {status}: {_error_detail(response, labels, sent)}",
        )
    saved = _json_or_none(response)
    names = (
        {item.get("name") for item in saved if isinstance(item, dict)}
        if isinstance(saved, list)
        else set()
    )
    return [
        UploadResult(file_id=file_name(instance), status=UPLOADED)
        if file_name(instance) in names
        else UploadError(
            True, f"{_PEER} answered HTTP 200 without this instance among the saved files"
        )
        for instance in sent
    ]


def _labels(metadata: dict[str, Any]) -> list[str]:
    session = metadata["session"]
    acquisition = metadata["acquisition"]
    return [
        metadata["group"]["_id"],
        metadata["project"]["label"],
        session["label"],
        session["subject"]["label"],
        acquisition["label"],
        # Metadata values come from headers too: never echoed back in an error.
        *session.get("info", {}).values(),
    ]


def _error_detail(
    response: httpx2.Response, labels: Sequence[str], sent: Sequence[InstanceRow]
) -> str:
    """Flywheel's message (`{"message": ...}`) without any label or UID we sent in it."""
    body = _json_or_none(response)
    message = body.get("message") if isinstance(body, dict) else None
    text = message if isinstance(message, str) else (response.reason_phrase or "no detail")
    secrets = [*labels, *(file_name(instance) for instance in sent)]
    secrets += [value for instance in sent for value in _uids(instance)]
    for value in sorted((value for value in secrets if value), key=len, reverse=True):
        text = text.replace(value, "<redacted>")
    return text[:MAX_DETAIL_CHARS]


def _uids(instance: InstanceRow) -> tuple[str, str, str]:
    return instance.sop_instance_uid, instance.series_instance_uid, instance.study_instance_uid


def _json_or_none(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
