"""Upload destination: the control plane's built-in hierarchy store.

Several instances of a series go in one `POST /api/v1/ingest/batch` (a streamed
multipart/related body, `agent.upload.multipart`), so the store records them in one database
transaction; a batch of one, and an instance larger than the batch byte cap, go through
`POST /api/v1/ingest`. Spooled files are streamed in chunks, never read whole into memory.
Short in-request retries (a few, within about a second) ride out a store restart or a dropped
keep-alive connection without sending the instances back through the durable retry queue;
anything longer is the uploader's job (`state.schedule_retry`).

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import IO, Any, TypeVar

import httpx2
from pydantic import ValidationError

from agent.http_retry import is_retryable
from agent.state import InstanceRow
from agent.tracing import trace_headers
from agent.upload.base import BatchLimits, UploadError, UploadResult
from agent.upload.http_retry import MAX_DETAIL_CHARS, RetryPolicy, with_retries
from agent.upload.multipart import CHUNK_SIZE, RelatedBody, SpooledPart, open_part, unreadable
from common.config import RoutingConfig
from common.hierarchy import HierarchyTarget
from common.ingest import (
    DICOM_MEDIA_TYPE,
    INGEST_BATCH_PATH,
    INGEST_PATH,
    MAX_BATCH_BYTES,
    MAX_BATCH_INSTANCES,
    BatchItemRefused,
    BatchItemStored,
    BatchResult,
    IngestParams,
    IngestResult,
    IngestTarget,
)

# The store's caps on one batch request (docs/architecture.md); more is refused with 413. A
# proxy in front of the store with a smaller body limit calls for smaller ones.
STORE_BATCH_LIMITS = BatchLimits(max_instances=MAX_BATCH_INSTANCES, max_bytes=MAX_BATCH_BYTES)

_T = TypeVar("_T")


class BuiltinStoreDestination:
    """Uploads instances to the built-in hierarchy store of a control plane."""

    def __init__(
        self,
        base_url: str,
        token: str | Callable[[], str],
        client: httpx2.AsyncClient | None = None,
        *,
        timeout: float = 60.0,
        verify: ssl.SSLContext | bool = True,
        retry_attempts: int = 3,
        retry_wait_initial: float = 0.1,
        retry_wait_max: float = 1.0,
        batch_limits: BatchLimits = STORE_BATCH_LIMITS,
    ) -> None:
        self._url = base_url.rstrip("/") + INGEST_PATH
        self._batch_url = base_url.rstrip("/") + INGEST_BATCH_PATH
        # A callable is asked on every request, so a rotated token file takes effect without
        # a restart.
        self._token = token if callable(token) else lambda: token
        self._owns_client = client is None
        self._client = client or httpx2.AsyncClient(timeout=timeout, verify=verify)
        self._retry = RetryPolicy(retry_attempts, retry_wait_initial, retry_wait_max)
        self._batch_limits = batch_limits

    @property
    def batch_limits(self) -> BatchLimits:
        """The caps on one batch request: the store's, unless others were passed in."""
        return self._batch_limits

    async def upload_batch(
        self, instances: Sequence[InstanceRow], target: HierarchyTarget, routing: RoutingConfig
    ) -> list[UploadResult | UploadError]:
        """Send instances of one series in one request; one outcome per instance, in order.

        Raises `UploadError` when the request as a whole failed (retryable for transport
        errors, 5xx, 408/425/429; permanent for other 4xx).
        """
        if len(instances) == 1:
            try:
                return [await self.upload(instances[0], target, routing)]
            except UploadError as exc:
                return [exc]
        outcomes: dict[int, UploadResult | UploadError] = {}
        parts: dict[int, SpooledPart] = {}
        try:
            for index, instance in enumerate(instances):
                try:
                    parts[index] = await open_part(instance)
                except UploadError as exc:
                    outcomes[index] = exc
            if parts:
                params = _query(target_params, instances[0], target, routing)
                sent = await self._with_retries(
                    lambda: self._post_batch_once(list(parts.values()), params)
                )
                outcomes.update(zip(parts, sent, strict=True))
        finally:
            for part in parts.values():
                os.close(part.descriptor)
        return [outcomes[index] for index in range(len(instances))]

    async def upload(
        self, instance: InstanceRow, target: HierarchyTarget, routing: RoutingConfig
    ) -> UploadResult:
        """Stream one instance to the store (`POST /api/v1/ingest`); return its confirmation.

        Raises `UploadError` (retryable for transport errors, 5xx, 408/425/429; permanent for
        other 4xx and for a spool file that cannot be read).
        """
        params = _query(ingest_params, instance, target, routing)
        return await self._with_retries(lambda: self._post_once(instance, params))

    def _auth_headers(self) -> dict[str, str]:
        # With the current trace (the series being uploaded): the store's spans join it.
        return {"Authorization": f"Bearer {self._token()}", **trace_headers()}

    async def aclose(self) -> None:
        """Close the HTTP client if this destination created it; idempotent."""
        if self._owns_client:
            await self._client.aclose()

    async def _with_retries(self, send: Callable[[], Awaitable[_T]]) -> _T:
        return await with_retries(send, self._retry, "the store")

    async def _post_batch_once(
        self, parts: list[SpooledPart], params: dict[str, str]
    ) -> list[UploadResult | UploadError]:
        body = RelatedBody(parts)
        response = await self._client.post(
            self._batch_url,
            params=params,
            content=body.chunks(),
            headers={
                **self._auth_headers(),
                "Content-Type": body.content_type,
                "Content-Length": str(body.content_length),
            },
        )
        return _batch_confirmation(response, [part.instance for part in parts])

    async def _post_once(self, instance: InstanceRow, params: dict[str, str]) -> UploadResult:
        handle = await _open_spool_file(instance)
        try:
            size = os.fstat(handle.fileno()).st_size
            response = await self._client.post(
                self._url,
                params=params,
                content=_chunks(handle),
                headers={
                    **self._auth_headers(),
                    "Content-Type": DICOM_MEDIA_TYPE,
                    "Content-Length": str(size),
                },
            )
        finally:
            handle.close()
        return _confirmation(response)


def ingest_params(
    instance: InstanceRow, target: HierarchyTarget, routing: RoutingConfig
) -> IngestParams:
    """The query of `POST /api/v1/ingest` for one instance.

    Raises `pydantic.ValidationError` when the store could not accept the target.
    """
    return IngestParams(
        **target_params(instance, target, routing).model_dump(),
        sop_instance_uid=instance.sop_instance_uid,
        sha256=instance.sha256,
    )


def target_params(
    instance: InstanceRow, target: HierarchyTarget, routing: RoutingConfig
) -> IngestTarget:
    """The query of `POST /api/v1/ingest/batch`: what the instances of `instance`'s series
    share.

    Raises `pydantic.ValidationError` when the store could not accept the target.
    """
    return IngestTarget(
        group=target.group,
        project=target.project,
        subject=target.subject,
        session=target.session,
        acquisition=target.acquisition,
        acquisition_key=target.acquisition_key,
        series_instance_uid=instance.series_instance_uid,
        study_instance_uid=instance.study_instance_uid,
        routing_reason=target.routing_reason,
        routing_string=target.routing_string,
        unknown_group=routing.unknown_group,
        unsorted_project=routing.unsorted_project,
        metadata=dict(target.metadata) or None,
    )


def _query(
    build: Callable[[InstanceRow, HierarchyTarget, RoutingConfig], IngestTarget],
    instance: InstanceRow,
    target: HierarchyTarget,
    routing: RoutingConfig,
) -> dict[str, str]:
    try:
        return build(instance, target, routing).query_params()
    except ValidationError as exc:
        # The store would refuse it the same way (422); only where and what, never the value.
        problems = "; ".join(
            ": ".join(
                [".".join(str(part) for part in error["loc"]), error["msg"]]
                if error["loc"]
                else [error["msg"]]
            )
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise UploadError(
            False, f"the series' target cannot be stored: {problems}"[:MAX_DETAIL_CHARS]
        ) from None


async def _open_spool_file(instance: InstanceRow) -> IO[bytes]:
    try:
        return await asyncio.to_thread(instance.path.open, "rb")
    except OSError as exc:
        raise unreadable(instance, exc) from exc


async def _chunks(handle: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(handle.read, CHUNK_SIZE):
        yield chunk


def _confirmation(response: httpx2.Response) -> UploadResult:
    if response.status_code != 200:
        retryable = is_retryable(response.status_code)
        raise UploadError(
            retryable,
            f"store answered HTTP {response.status_code}: {_error_detail(response)}",
        )
    try:
        result = IngestResult.model_validate_json(response.content)
    except ValidationError:
        # Not our store's answer (a proxy? a wrong URL?): nothing was confirmed, so the
        # instance must stay spooled; retrying keeps it safe while health shows the error.
        raise UploadError(
            True,
            "store answered 200 without a file_id and a status of created/exists/replaced",
        ) from None
    return UploadResult(
        file_id=str(result.file_id),
        status=str(result.status),
        routing_reason=str(result.routing_reason),
    )


def _batch_confirmation(
    response: httpx2.Response, sent: Sequence[InstanceRow]
) -> list[UploadResult | UploadError]:
    if response.status_code != 200:
        raise UploadError(
            is_retryable(response.status_code),
            f"store answered HTTP {response.status_code}: {_error_detail(response)}",
        )
    reason: str | None = None
    try:
        parsed = BatchResult.model_validate_json(response.content)
        items, reason = parsed.items, parsed.routing_reason
    except ValidationError:
        items = []
    if len(items) != len(sent):
        # As for a single upload: nothing is confirmed, so every instance stays spooled.
        raise UploadError(
            True,
            f"store answered 200 without one item per part ({len(sent)}), each with a"
            " file_id and a known status or an error",
        )
    return [
        _item_outcome(item, instance, reason) for item, instance in zip(items, sent, strict=True)
    ]


def _item_outcome(
    item: BatchItemStored | BatchItemRefused, instance: InstanceRow, reason: str | None
) -> UploadResult | UploadError:
    # A refused part names no UID when the store found none valid in its headers.
    if isinstance(item, BatchItemRefused) and item.sop_instance_uid in (
        None,
        instance.sop_instance_uid,
    ):
        # The store's refusal names digests and what to do, never a DICOM value.
        return UploadError(False, f"store refused the instance: {item.error}"[:MAX_DETAIL_CHARS])
    if isinstance(item, BatchItemStored) and item.sop_instance_uid == instance.sop_instance_uid:
        return UploadResult(
            file_id=str(item.file_id),
            status=str(item.status),
            routing_reason=None if reason is None else str(reason),
        )
    return UploadError(
        True, "store answered 200 with items that do not match the parts sent, in order"
    )


def _error_detail(response: httpx2.Response) -> str:
    """A short reason from an error answer, without echoing any request value back."""
    body = _json_or_none(response)
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        text = detail
    elif isinstance(detail, list):
        # FastAPI validation errors echo the offending input; keep only where and what.
        text = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg', '')}"
            for item in detail
            if isinstance(item, dict)
        )
    else:
        text = response.reason_phrase or "no detail"
    return text[:MAX_DETAIL_CHARS]


def _json_or_none(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
