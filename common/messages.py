"""The agent ⇄ control-plane wire protocol: typed, versioned JSON messages on the agent link.

The link is a websocket that the agent dials out to, `GET /api/v1/agent/link`, sending
`Authorization: Bearer AGENT_TOKEN` on the upgrade request; an unknown, rotated or revoked
token is refused with HTTP 401 before the websocket opens. Every frame is one UTF-8 JSON
object: a `Message`, discriminated on `type`, carrying `v`, the protocol version it is
written in.

The conversation:

1. agent → `hello`, always written as `v: 1` (its shape never changes), listing every
   protocol version the agent speaks and the config revision it runs on.
2. control plane → `welcome` with the chosen version (the highest both speak), the heartbeat
   interval, and the agent's id and site; then `config` when the agent's applied revision is
   not the site's current one. Both sides write the chosen version from then on.
3. agent → `config_result` for every `config` it receives: `applied`, or `failed` with a
   reason, in which case it keeps running on its previous config.
4. agent → `health` every heartbeat interval. The health message *is* the heartbeat: an
   agent not heard from for 3 intervals is reported missing. Before it, a `figures` frame
   when upload batches ended since the last one (the operational figures' raw facts).
5. control plane → `config` again whenever the site gets a new config revision.
6. control plane → `command`; agent → `command_result` with the same id. An agent answers a
   command name it does not know with `ok: false`, never by ignoring it.
7. either side → `ping`; the other answers `pong` with the same nonce. Frames are handled in
   order, so a pong also says that everything sent before its ping was handled.
8. either side → `error` for a frame it could not use; the link stays open. The link is
   closed only with one of the close codes below.

Close codes the control plane uses: `CLOSE_UNAUTHORIZED` (the token was rotated or revoked:
reconnecting with it is refused until a new token is installed), `CLOSE_PROTOCOL_ERROR` (no
common protocol version, or the first frame was not a hello), `CLOSE_REPLACED` (a newer link
of the same agent took over). Any other close — `CLOSE_GOING_AWAY`, 1006 (connection lost),
1011, 1012 (the server restarts) — means: reconnect with capped, jittered backoff.

Frames are small JSON objects: agents connect without permessage-deflate (with the
`websockets` client, `compression=None`), which would cost each side a pair of zlib contexts
— tens of kilobytes — per link.

No field holds a DICOM value: health reports carry counts, durations, sizes and PHI-free error
messages only. Must not import web, database or DICOM libraries: pydantic and stdlib only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from common.config import SiteConfig, validate_site_config
from common.policy import PolicyReason

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_REPLACED",
    "CLOSE_UNAUTHORIZED",
    "HELLO_VERSION",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Command",
    "CommandResult",
    "ConfigMessage",
    "ConfigResult",
    "DiagnosticsBundle",
    "DicomRejectionCount",
    "Error",
    "ErrorCode",
    "Figures",
    "Health",
    "HealthReport",
    "Hello",
    "Message",
    "Ping",
    "Pong",
    "ProtocolError",
    "PullSourceReport",
    "SeriesFigures",
    "Welcome",
    "encode_message",
    "negotiate_version",
    "parse_message",
]

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = frozenset({1})
# A hello must be readable by every control plane, whatever versions the agent speaks.
HELLO_VERSION: Final = 1

CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 4400
CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_REPLACED: Final = 4409

MAX_TEXT_LENGTH: Final = 2000
_REPR_LIMIT = 40

Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]
Revision = Annotated[int, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ErrorCode(StrEnum):
    """Why a frame could not be used."""

    malformed = "malformed"
    """Not a UTF-8 JSON object."""
    unsupported_version = "unsupported_version"
    """`v` is missing from this side's supported versions, or no version is shared."""
    unknown_type = "unknown_type"
    """`type` names no message of this protocol."""
    invalid_message = "invalid_message"
    """A known type whose fields do not validate."""
    unexpected_message = "unexpected_message"
    """A valid message this side does not accept now (a second hello, a welcome sent to the
    control plane, a command result nobody asked for)."""
    agent_mismatch = "agent_mismatch"
    """The hello names another agent than the token belongs to."""


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = Field(default=PROTOCOL_VERSION, ge=1, description="Protocol version of this frame.")


class Hello(_Frame):
    """Agent → control plane, first frame of every link."""

    type: Literal["hello"] = "hello"
    v: int = Field(default=HELLO_VERSION, ge=1)
    agent_id: uuid.UUID | None = Field(
        description="The id a previous welcome gave this agent; null on first contact."
    )
    agent_version: str = Field(min_length=1, max_length=64)
    applied_revision: Revision | None = Field(
        description="The config revision the agent runs on; null when it has none yet."
    )
    protocol_versions: list[int] = Field(min_length=1, max_length=16)


class Welcome(_Frame):
    """Control plane → agent, the answer to a hello."""

    type: Literal["welcome"] = "welcome"
    protocol_version: int = Field(ge=1)
    heartbeat_interval_s: float = Field(gt=0, allow_inf_nan=False)
    agent_id: uuid.UUID
    site: str
    deployment: Literal["edge", "in-cluster"] = Field(
        default="edge",
        description="How the agent was registered; an in-cluster agent refuses a config "
        "without dicom.tls or with mode pull (the admin guide: mTLS and push only).",
    )


class ConfigMessage(_Frame):
    """Control plane → agent: the site config the agent should run (type `config`).

    `config` is the `SiteConfig` as a JSON object, left unvalidated here so that an agent can
    answer a config it cannot use with a `config_result` saying why (`site_config()`), rather
    than with a protocol error.
    """

    type: Literal["config"] = "config"
    revision: Revision
    site: str
    timezone: str
    config: dict[str, Any]
    deid_salt: str = Field(
        min_length=16,
        max_length=128,
        repr=False,
        description="The site's de-identification salt (UID remapping, hashes); a secret.",
    )

    @classmethod
    def of(
        cls, revision: int, site: str, timezone: str, config: SiteConfig, deid_salt: str
    ) -> Self:
        """The message carrying `config` as revision `revision` of `site`."""
        return cls(
            revision=revision,
            site=site,
            timezone=timezone,
            config=config.model_dump(mode="json"),
            deid_salt=deid_salt,
        )

    def site_config(self) -> SiteConfig:
        """The validated config.

        Raises:
            common.config.ConfigError: listing every problem, ready to be the failure reason.
        """
        return validate_site_config(self.config)


class ConfigResult(_Frame):
    """Agent → control plane: what became of a `config`; a failed one needs a reason."""

    type: Literal["config_result"] = "config_result"
    revision: Revision
    status: Literal["applied", "failed"]
    reason: Text | None = None

    @model_validator(mode="after")
    def _failure_needs_a_reason(self) -> Self:
        if self.status == "failed" and not self.reason:
            raise ValueError("a failed config_result needs a reason saying what was wrong")
        return self


class FailedSeriesReport(BaseModel):
    """A series that failed as a whole and stays on the agent (its de-identification failed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    series_key: str = Field(
        max_length=64, description="The series' PHI-free key, as in the agent's logs."
    )
    reason: Text
    failed_at: AwareDatetime
    instances: Count = Field(description="Instances of the series kept on the agent.")


class DicomRejectionCount(BaseModel):
    """Associations (or TLS handshakes) the agent's SCP refused, for one reason and source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Literal[
        "unlisted_address",
        "calling_ae_not_recognised",
        "called_ae_not_recognised",
        "association_limit",
        "tls_handshake_failed",
    ]
    source: str = Field(max_length=64, description="The peer's IP address, or `other`.")
    count: Count


TLS_EXPIRY_WARNING_DAYS: Final = 30
MAX_PULL_SOURCES: Final = 64


class PullSourceReport(BaseModel):
    """One PULL source as the agent sees it: its last C-ECHO and C-FIND outcomes and the
    series it could not retrieve whole. The source is named by AE title and address, never
    by anything it holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(max_length=128, description="AE_TITLE@host:port of the source.")
    echo_ok: bool | None = Field(
        default=None, description="The last C-ECHO answered; null before one was tried."
    )
    echo_error: Text | None = None
    echo_at: AwareDatetime | None = None
    query_ok: bool | None = Field(
        default=None, description="The last C-FIND round succeeded; null before the first."
    )
    query_error: Text | None = None
    query_at: AwareDatetime | None = None
    query_duration_s: Seconds | None = None
    consecutive_failed_queries: Count = 0
    series_short: Count = Field(
        default=0, description="Series whose retrieval stayed short (retried with a backoff)."
    )
    instances_missing: Count = Field(default=0, description="What the short series lack.")
    retrievals_failed: Count = 0
    last_retrieve_error: Text | None = None


class HealthReport(BaseModel):
    """One reading of an agent's health. Durations in seconds, sizes in bytes, counts since
    the agent process started unless said otherwise; null where there is nothing to say yet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listener_ok: bool = Field(description="The DICOM listener (SCP) accepts associations.")
    uploads_open: bool = Field(description="Uploads are allowed now (inside working hours).")
    last_query_duration_s: Seconds | None = Field(
        description="Duration of the last C-FIND round (pull mode); null in push mode."
    )
    longest_reap_s: Seconds | None = Field(
        description="Longest processing of a series (reap, de-identification, upload) over "
        "the last `reap_window_s`; null before one."
    )
    reap_window_s: Seconds | None = Field(
        default=None, description="The sliding window `longest_reap_s` is taken over."
    )
    spool_depth: Count = Field(description="Instances in the spool, not yet uploaded.")
    spool_bytes: Count
    deferred_uploads: Count = Field(description="Instances waiting for the upload window.")
    failed_instances: Count = Field(
        description="Instances that failed permanently and are kept for support (durable)."
    )
    failed_series: Count = Field(
        default=0,
        description="Series failed as a whole (nothing of them left the site), durable.",
    )
    skipped_series: dict[PolicyReason, Count] = Field(
        default_factory=dict,
        description="Series the upload policy declined, per reason (durable): a count of "
        "not_opted_in that grows while nothing uploads says the opt-in string is not typed.",
    )
    failed_series_recent: list[FailedSeriesReport] = Field(
        default_factory=list,
        max_length=20,
        description="The latest series failed as a whole, newest first, with the reason.",
    )
    uploads_succeeded: Count
    uploads_failed: Count
    retries_scheduled: Count = Field(
        default=0, description="Upload attempts that failed and were scheduled again."
    )
    uploads_failing_for_s: Seconds | None = Field(
        default=None,
        description="How long upload attempts have been failing with no success in between "
        "(measured by the agent); null while uploads succeed.",
    )
    consecutive_upload_failures: Count = Field(
        default=0, description="Failed upload attempts since the last success."
    )
    pull_sources: list[PullSourceReport] = Field(
        default_factory=list,
        max_length=MAX_PULL_SOURCES,
        description="Every PULL source being polled (pull mode); empty in push mode.",
    )
    oldest_unuploaded_age_s: Seconds | None = Field(
        description="Age of the oldest spooled instance; null when the spool is empty."
    )
    disk_free_bytes: Count = Field(description="Free space on the spool's filesystem.")
    disk_total_bytes: Count | None = Field(description="Size of that filesystem, if known.")
    disk_reserve_bytes: Count = Field(
        description="Free space the agent keeps: below it, it refuses images (Out of Resources)."
    )
    last_error: Text | None = Field(description="The latest error, a PHI-free sentence.")
    last_error_at: AwareDatetime | None
    dicom_rejections: list[DicomRejectionCount] = Field(
        default_factory=list,
        max_length=512,
        description="Refused associations and TLS handshakes by reason and source address "
        "since the agent started, over all its intake processes, largest first.",
    )
    tls_certificate_expires_at: AwareDatetime | None = Field(
        default=None,
        description="When the agent's DICOM TLS certificate expires; null without TLS.",
    )
    tls_certificate_days_left: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description=f"Days until then when the report was made (negative: expired); health "
        f"degrades {TLS_EXPIRY_WARNING_DAYS} days ahead.",
    )
    tls_problem: Text | None = Field(
        default=None,
        description="Why renewed TLS files could not be loaded (the previous ones stay in use).",
    )


class Health(_Frame):
    """Agent → control plane, every heartbeat interval: the heartbeat with a health report."""

    type: Literal["health"] = "health"
    report: HealthReport


MAX_FIGURES_PER_FRAME: Final = 500
TRACEPARENT_PATTERN: Final = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


class SeriesFigures(BaseModel):
    """What became of one upload batch of a series: the raw facts the control plane keeps to
    compute the guide's operational figures (per site and per scanner). PHI-free: the series
    by its key, the scanner by its calling AE title (a node identity, not a patient's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    series_key: str = Field(max_length=64)
    calling_ae: str | None = Field(
        default=None,
        max_length=16,
        description="The calling AE title the batch's first instance came from (a modality; "
        "the PACS for PULL by C-MOVE); null for C-GET retrievals or when it is not known.",
    )
    routing_reason: str = Field(max_length=32)
    instances_received: Count = Field(
        description="Instances of the batch sent for the first time (a retried instance was "
        "counted when it was new)."
    )
    instances_announced: Count | None = Field(
        default=None,
        description="PULL: the instance count the source announced for the whole series at "
        "its last query (the same on every batch of the series); null for PUSH.",
    )
    instances_stored: Count = Field(description="Confirmed by the destination.")
    instances_failed: Count = Field(description="Failed for good in this batch.")
    instances_retrying: Count = Field(description="Failed now, scheduled to be tried again.")
    bytes_uploaded: Count = Field(description="Bytes of the instances confirmed.")
    last_received_at: AwareDatetime = Field(
        description="When the batch's latest instance reached the agent."
    )
    stored_at: AwareDatetime = Field(description="When the batch's upload ended.")
    deferred_s: Seconds = Field(
        default=0.0, description="Time the series waited for the working-hours window."
    )
    traceparent: str | None = Field(
        default=None,
        pattern=TRACEPARENT_PATTERN,
        description="The batch's trace (W3C traceparent): the control plane's record of these "
        "figures joins it.",
    )


class Figures(_Frame):
    """Agent → control plane: series figures since the last `figures` frame (sent with the
    heartbeat; kept by the agent until sent)."""

    type: Literal["figures"] = "figures"
    series: list[SeriesFigures] = Field(min_length=1, max_length=MAX_FIGURES_PER_FRAME)


class Command(_Frame):
    """Control plane → agent: do something now; answered by a `command_result`."""

    type: Literal["command"] = "command"
    id: uuid.UUID
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    args: dict[str, Any] = Field(default_factory=dict)
    traceparent: str | None = Field(
        default=None,
        pattern=TRACEPARENT_PATTERN,
        description="The trace of the request that sent the command (W3C traceparent): the "
        "agent's span for it joins that trace.",
    )


class SeriesCommandArgs(BaseModel):
    """The arguments of `retry_series` and `discard_series`: the series by its PHI-free key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    series_key: str = Field(pattern=r"^[0-9a-f]{16}$")


class SourceCommandArgs(BaseModel):
    """The arguments of `echo_source` and `query_source`: a PULL source as health names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        min_length=1, max_length=128, description="AE_TITLE@host:port, as in pull_sources."
    )


class NoArgs(BaseModel):
    """A command without arguments (`diagnostics`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


COMMAND_ARGUMENTS: dict[str, type[BaseModel]] = {
    "retry_series": SeriesCommandArgs,
    "discard_series": SeriesCommandArgs,
    "echo_source": SourceCommandArgs,
    "query_source": SourceCommandArgs,
    "diagnostics": NoArgs,
}
"""The commands an agent knows, with the model of their `args`."""


MAX_LOG_LINES: Final = 200
MAX_LOG_LINE_LENGTH: Final = 1000


class DiagnosticsBundle(BaseModel):
    """What support needs from an agent in one piece (the `diagnostics` command): its version
    and config revision, its health now, and its latest log lines (after the PHI filter)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_version: str = Field(max_length=64)
    config_revision: Revision | None
    collected_at: AwareDatetime
    health: HealthReport
    log_lines: list[Annotated[str, Field(max_length=MAX_LOG_LINE_LENGTH)]] = Field(
        default_factory=list,
        max_length=MAX_LOG_LINES,
        description="The latest log lines, oldest first, as JSON objects (PHI-filtered).",
    )


class CommandResult(_Frame):
    """Agent → control plane: the outcome of the command with the same id."""

    type: Literal["command_result"] = "command_result"
    id: uuid.UUID
    ok: bool
    detail: Text | None = None
    diagnostics: DiagnosticsBundle | None = Field(
        default=None, description="The bundle a `diagnostics` command collected."
    )


class Ping(_Frame):
    """Either side: ask for a `pong` with the same nonce."""

    type: Literal["ping"] = "ping"
    nonce: str = Field(min_length=1, max_length=64)


class Pong(_Frame):
    """Either side: the answer to a `ping`."""

    type: Literal["pong"] = "pong"
    nonce: str = Field(min_length=1, max_length=64)


class Error(_Frame):
    """Either side: a frame could not be used, and why."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: Text


Message = Annotated[
    Hello
    | Welcome
    | ConfigMessage
    | ConfigResult
    | Health
    | Figures
    | Command
    | CommandResult
    | Ping
    | Pong
    | Error,
    Field(discriminator="type"),
]

_MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
MESSAGE_TYPES: Final = frozenset(
    {
        "hello",
        "welcome",
        "config",
        "config_result",
        "health",
        "figures",
        "command",
        "command_result",
        "ping",
        "pong",
        "error",
    }
)


class ProtocolError(ValueError):
    """A frame that cannot be used; `as_message()` is the `error` frame to answer with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_message(self) -> Error:
        """The `error` frame telling the peer what was wrong."""
        return Error(code=self.code, message=self.message[:MAX_TEXT_LENGTH])


def negotiate_version(offered: Iterable[int]) -> int | None:
    """The highest protocol version both this side and the peer speak, or None."""
    common = SUPPORTED_VERSIONS.intersection(offered)
    return max(common) if common else None


def parse_message(frame: str | bytes) -> Message:
    """Decode one frame.

    Raises:
        ProtocolError: for text that is not a JSON object, an unsupported `v`, an unknown
            `type` or fields that do not validate. Never anything else.
    """
    try:
        document = json.loads(frame)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(
            ErrorCode.malformed, f"the frame is not UTF-8 JSON ({_describe_decode_error(exc)})"
        ) from None
    except RecursionError:
        raise ProtocolError(ErrorCode.malformed, "the frame is nested too deeply") from None
    if not isinstance(document, dict):
        raise ProtocolError(
            ErrorCode.malformed,
            f"the frame must be a JSON object with `v` and `type`; got {_json_kind(document)}",
        )
    _check_version(document)
    kind = document.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError(
            ErrorCode.unknown_type,
            f"unknown message type {_short(kind)}; known types: {', '.join(sorted(MESSAGE_TYPES))}",
        )
    try:
        return _MESSAGE_ADAPTER.validate_python(document)
    except ValidationError as exc:
        problems = "; ".join(
            _describe_problem(detail["loc"][1:], detail["msg"])
            for detail in exc.errors(include_url=False)
        )
        raise ProtocolError(
            ErrorCode.invalid_message, f"invalid {kind} message: {problems}"
        ) from None


def encode_message(message: Message) -> str:
    """One frame's text for `message`."""
    return message.model_dump_json()


def _check_version(document: dict[str, Any]) -> None:
    supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
    if "v" not in document:
        raise ProtocolError(
            ErrorCode.unsupported_version,
            f"the frame has no protocol version `v`; this side speaks {supported}",
        )
    version = document["v"]
    # bool is an int to Python, but `"v": true` is no version.
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            ErrorCode.unsupported_version,
            f"protocol version {_short(version)} is not supported; this side speaks {supported}",
        )


def _describe_decode_error(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at character {exc.pos}"
    return "invalid UTF-8"


def _describe_problem(location: tuple[int | str, ...], sentence: str) -> str:
    # Only the location and pydantic's sentence: the offending value is not repeated, because
    # a peer's frame is not ours to echo into logs or answers. The location starts after the
    # union's tag, which `parse_message` already names.
    dotted = ".".join(str(part) for part in location) or "(message)"
    return f"{dotted}: {sentence}"


def _json_kind(document: object) -> str:
    if isinstance(document, list):
        return "an array"
    if isinstance(document, str):
        return "a string"
    if isinstance(document, bool):
        return "a boolean"
    if document is None:
        return "null"
    return "a number"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else f"{text[: _REPR_LIMIT - 3]}..."
