"""Upload destination: a DICOMweb archive, through STOW-RS (DICOM PS3.18 §10.5).

A chunk of a series goes as one `POST {url}/studies/{StudyInstanceUID}` (or `{url}/studies`
when the chunk spans studies) with a streamed `multipart/related; type="application/dicom"`
body (`agent.upload.multipart`, without our store's part headers) and
`Accept: application/dicom+json`. The bearer token, when the config names a `token_file`,
is read from that file on every request, so a rotated token takes effect without a restart.

Every instance's outcome is read from the Store Instances Response Module of the answer:

- in the ReferencedSOPSequence (0008,1199): stored (a Warning Reason (0008,1196), such as
  coerced attributes, still means stored);
- in the FailedSOPSequence (0008,1198): its FailureReason (0008,1197) decides. 0xA7xx (out of
  resources) is transient and retried; every other reason is a permanent refusal of that
  instance, booked as failed with the code, never dropped;
- in neither: not confirmed. It is retried, unless the archive refused the request as a whole
  with a permanent 4xx (it will not take these bytes as sent).

HTTP 200 (all stored), 202 (some stored, with warnings or failures) and 409 (some or all
failed) are all read per instance, as is any other status whose body is a response module
(Orthanc answers 400 with one when a part is not DICOM). A status without a readable module is
a whole-request outcome: 5xx, 401, 408, 425, 429 and transport errors are retried, other 4xx
are permanent.

Idempotency: STOW-RS identifies an instance by its SOP Instance UID. Storing an instance that
the archive already holds is answered as stored (Orthanc: ReferencedSOPSequence, the stored
copy kept unless the archive is configured to overwrite), so resending a chunk after a crash
between the archive's answer and our bookkeeping never duplicates (docs/destinations.md).

Error messages name the failure reason code and the HTTP status, never a DICOM value.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx2

from agent.http_retry import is_retryable
from agent.state import InstanceRow
from agent.tracing import trace_headers
from agent.upload.base import BatchLimits, UploadError, UploadResult
from agent.upload.http_retry import RetryPolicy, with_retries
from agent.upload.multipart import RelatedBody, SpooledPart, open_part
from agent.upload.secret_file import read_secret
from common.config import RoutingConfig
from common.hierarchy import HierarchyTarget
from common.ingest import MAX_BATCH_BYTES, MAX_BATCH_INSTANCES

DICOM_JSON = "application/dicom+json"
# The same caps as our own store: archives and the proxies before them limit request bodies,
# and a failed request then resends at most this much.
STOW_BATCH_LIMITS = BatchLimits(max_instances=MAX_BATCH_INSTANCES, max_bytes=MAX_BATCH_BYTES)

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
REFERENCED_SOP_INSTANCE_UID = "00081155"
RETRIEVE_URL = "00081190"

STORED = "stored"
STORED_WITH_WARNING = "stored-with-warning"

# PS3.4 Annex GG / PS3.18 failure reasons with a name support staff will recognise.
_FAILURE_NAMES = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "referenced transfer syntax not supported",
}
_PEER = "the DICOMweb archive"


class DicomwebDestination:
    """Stores instances in a DICOMweb archive with STOW-RS."""

    def __init__(
        self,
        base_url: str,
        token_file: Path | None = None,
        client: httpx2.AsyncClient | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        batch_limits: BatchLimits = STOW_BATCH_LIMITS,
    ) -> None:
        self._studies_url = base_url.rstrip("/") + "/studies"
        self._token_file = token_file
        self._owns_client = client is None
        self._client = client or httpx2.AsyncClient(timeout=timeout)
        self._retry = retry or RetryPolicy()
        self._batch_limits = batch_limits

    @property
    def batch_limits(self) -> BatchLimits:
        """The most one STOW-RS request carries."""
        return self._batch_limits

    async def upload_batch(
        self, instances: Sequence[InstanceRow], target: HierarchyTarget, routing: RoutingConfig
    ) -> list[UploadResult | UploadError]:
        """Store instances of one series with one STOW-RS request; one outcome each, in order.

        The hierarchy target is not sent: a DICOMweb archive files instances by their own
        UIDs. Raises `UploadError` when the request as a whole failed.
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
                url = self._url_for(sent)
                answered = await with_retries(
                    lambda: self._post_once(url, sent), self._retry, _PEER
                )
                outcomes.update(zip(parts, answered, strict=True))
        finally:
            for part in parts.values():
                os.close(part.descriptor)
        return [outcomes[index] for index in range(len(instances))]

    async def aclose(self) -> None:
        """Close the HTTP client if this destination created it; idempotent."""
        if self._owns_client:
            await self._client.aclose()

    def _url_for(self, parts: Sequence[SpooledPart]) -> str:
        # Naming the study lets the archive refuse an instance whose file belongs elsewhere,
        # instead of filing it under a study the agent did not mean.
        studies = {part.instance.study_instance_uid for part in parts}
        if len(studies) == 1:
            return f"{self._studies_url}/{studies.pop()}"
        return self._studies_url

    async def _headers(self) -> dict[str, str]:
        headers = {"Accept": DICOM_JSON, **trace_headers()}
        if self._token_file is not None:
            token = await asyncio.to_thread(read_secret, self._token_file, "token")
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _post_once(
        self, url: str, parts: Sequence[SpooledPart]
    ) -> list[UploadResult | UploadError]:
        body = RelatedBody(parts, instance_headers=False)
        response = await self._client.post(
            url,
            content=body.chunks(),
            headers={
                **await self._headers(),
                "Content-Type": body.content_type,
                "Content-Length": str(body.content_length),
            },
        )
        sent = [part.instance for part in parts]
        return stow_outcomes(response.status_code, _json_or_none(response), sent)


def stow_outcomes(
    status: int, body: Any, sent: Sequence[InstanceRow]
) -> list[UploadResult | UploadError]:
    """Each sent instance's outcome from a STOW-RS answer (its HTTP status and JSON body).

    Raises `UploadError` when the answer holds no Store Instances Response Module: then the
    status alone decides for the whole request.
    """
    if not isinstance(body, Mapping) or not (
        REFERENCED_SOP_SEQUENCE in body or FAILED_SOP_SEQUENCE in body
    ):
        if 200 <= status < 300:
            # Nothing was confirmed (a proxy? a wrong URL?): keep every instance spooled.
            raise UploadError(
                True, f"{_PEER} answered HTTP {status} without a STOW-RS response module"
            )
        raise UploadError(is_retryable(status), f"{_PEER} answered HTTP {status}")
    referenced = {
        uid: item for uid, item in _items(body, REFERENCED_SOP_SEQUENCE) if uid is not None
    }
    failed = {uid: item for uid, item in _items(body, FAILED_SOP_SEQUENCE) if uid is not None}
    # A request refused as a whole (400 malformed, 413, 415...) will not take these bytes
    # again; a 2xx or 409 that forgot an instance, or a transient status, may.
    unmentioned_retryable = status < 400 or status == 409 or is_retryable(status)
    outcomes: list[UploadResult | UploadError] = []
    for instance in sent:
        uid = instance.sop_instance_uid
        if uid in failed:
            outcomes.append(_failure(failed[uid], status))
        elif uid in referenced:
            outcomes.append(_stored(referenced[uid], uid))
        else:
            outcomes.append(
                UploadError(
                    unmentioned_retryable,
                    f"{_PEER} answered HTTP {status} and named this instance neither stored"
                    " nor failed",
                )
            )
    return outcomes


def _items(body: Mapping[str, Any], tag: str) -> list[tuple[str | None, Mapping[str, Any]]]:
    sequence = body.get(tag)
    values = sequence.get("Value") if isinstance(sequence, Mapping) else None
    if not isinstance(values, list):
        return []
    return [
        (_first(item, REFERENCED_SOP_INSTANCE_UID), item)
        for item in values
        if isinstance(item, Mapping)
    ]


def _first(item: Mapping[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, Mapping) else None
    return values[0] if isinstance(values, list) and values else None


def _failure(item: Mapping[str, Any], status: int) -> UploadError:
    reason = _first(item, FAILURE_REASON)
    if not isinstance(reason, int):
        return UploadError(
            True, f"{_PEER} answered HTTP {status} and failed the instance without a reason"
        )
    name = _FAILURE_NAMES.get(reason) or (
        "out of resources" if 0xA700 <= reason <= 0xA7FF else "refused"
    )
    # Out of resources (0xA7xx) passes once the archive has room; anything else will not.
    retryable = 0xA700 <= reason <= 0xA7FF
    return UploadError(
        retryable, f"{_PEER} failed the instance: failure reason 0x{reason:04X} ({name})"
    )


def _stored(item: Mapping[str, Any], uid: str) -> UploadResult:
    retrieve_url = _first(item, RETRIEVE_URL)
    status = STORED if _first(item, WARNING_REASON) is None else STORED_WITH_WARNING
    return UploadResult(
        file_id=retrieve_url if isinstance(retrieve_url, str) else uid, status=status
    )


def _json_or_none(response: httpx2.Response) -> Any:
    # Orthanc sends its error answers' response module without a Content-Type, so the body
    # is tried whatever the header says.
    try:
        return response.json()
    except ValueError:
        return None
