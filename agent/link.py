"""The agent's end of the link: an outbound websocket to the control plane, kept up forever.

`ControlPlaneLink.run` dials `<control plane>/api/v1/agent/link` (http → ws, https → wss)
with `Authorization: Bearer <token>`, says hello, and then serves the conversation of
`common.messages`: a `config` is validated (the `SiteConfig` and the DICOM keywords it names),
applied through the `LinkOwner` (the runtime) and only then stored as last-known-good, and
answered `applied` or `failed` with the reason (the old config keeps running); a `health`
report goes out every heartbeat interval of the welcome; pings are answered; an unusable
frame gets an `error` frame back, never a crash.

Every way the link can end goes through `_classify`: a refused token (HTTP 401/403 or close
4401) is retried slowly, because only an admin installing a new token file can fix it;
everything else is retried with capped, full-jitter exponential backoff, so a fleet
reconnecting after a control-plane restart arrives spread out. Each failure is one log line
and the agent's `last_error` (health); no token ever goes into either.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import importlib.metadata
import random
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from opentelemetry import trace
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from agent.figures import FiguresBuffer
from agent.retry import backoff
from agent.site import ConfigRefused, SiteSnapshot, parse_snapshot
from agent.tls import describe_verification_failure
from common.logging import RecentLogLines
from common.messages import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REPLACED,
    CLOSE_UNAUTHORIZED,
    COMMAND_ARGUMENTS,
    MAX_LOG_LINE_LENGTH,
    MAX_LOG_LINES,
    MAX_TEXT_LENGTH,
    SUPPORTED_VERSIONS,
    Command,
    CommandResult,
    ConfigMessage,
    ConfigResult,
    DiagnosticsBundle,
    Error,
    ErrorCode,
    Figures,
    Health,
    HealthReport,
    Hello,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Welcome,
    encode_message,
    parse_message,
)
from common.telemetry import safe_attributes

__all__ = [
    "LINK_PATH",
    "ConfigNotApplied",
    "ControlPlaneLink",
    "LinkOwner",
    "agent_version",
    "link_url",
]

LINK_PATH = "/api/v1/agent/link"
DISTRIBUTION = "dicom-connector"

log = structlog.get_logger(__name__)


class ConfigNotApplied(Exception):
    """A valid config could not be put into effect; the previous one is still running."""


class LinkOwner(Protocol):
    """What the link needs from the agent it serves (the runtime)."""

    @property
    def applied_revision(self) -> int | None:
        """The config revision the agent runs on."""

    async def apply_config(self, snapshot: SiteSnapshot) -> None:
        """Put `snapshot` into effect; `ConfigNotApplied` (and the old config kept) if not."""

    def health_report(self) -> HealthReport:
        """The current health (blocking: reads the state database)."""

    def record_error(self, message: str) -> None:
        """Make `message` the agent's latest error (a PHI-free sentence)."""

    async def run_command(self, name: str, args: dict[str, Any]) -> tuple[bool, str]:
        """Carry out a support command; whether it worked and a PHI-free detail."""


class ConfigStore(Protocol):
    """Where an applied config is kept as last-known-good."""

    def save(self, snapshot: SiteSnapshot) -> None:
        """Store `snapshot` durably (blocking)."""


class _Retry(enum.Enum):
    backoff = "backoff"
    slowly = "slowly"


@dataclass(frozen=True)
class _Outcome:
    retry: _Retry
    message: str
    token_refused: bool = False


def agent_version() -> str:
    """This agent's version, from the installed package's metadata."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        # Running from a source tree that was never installed: still a valid hello.
        return "0+unknown"


def link_url(control_plane_url: str) -> str:
    """The websocket URL of the link for a control plane base URL (http → ws, https → wss)."""
    base = control_plane_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + LINK_PATH
    if base.startswith("http://"):
        return "ws://" + base.removeprefix("http://") + LINK_PATH
    raise ValueError(f"the control plane URL must start with http:// or https://, got {base!r}")


class ControlPlaneLink:
    """The agent's websocket to its control plane; `run` keeps it up until cancelled."""

    def __init__(
        self,
        control_plane_url: str,
        token_file: Path,
        owner: LinkOwner,
        config_store: ConfigStore,
        *,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        unauthorized_retry_interval: float = 60.0,
        open_timeout: float = 10.0,
        rng: random.Random | None = None,
        ssl_context: ssl.SSLContext | None = None,
        figures: FiguresBuffer | None = None,
        tracer: Tracer | None = None,
        recent_logs: RecentLogLines | None = None,
    ) -> None:
        self.url = link_url(control_plane_url)
        self._recent_logs = recent_logs
        self._figures = figures
        self._tracer = tracer or trace.get_tracer(__name__)
        # Only a wss:// link takes a TLS context (websockets refuses one for ws://).
        self._ssl = ssl_context if self.url.startswith("wss://") else None
        self._token_file = token_file
        self._owner = owner
        self._config_store = config_store
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._unauthorized_retry_interval = unauthorized_retry_interval
        self._open_timeout = open_timeout
        self._rng = rng
        self._version = agent_version()
        self._token: str | None = None
        self.agent_id: uuid.UUID | None = None
        """The id the control plane gave this agent (learnt from the welcome)."""
        self.site: str | None = None
        self.deployment: str | None = None
        """edge or in-cluster, as the welcome said; None before one."""
        self.connected = False
        """Whether the link is up (welcomed and not closed since)."""
        self.last_error: str | None = None
        """Why the link is down, or None while it is up."""
        self.token_refused = False
        """Whether the control plane refused the token the last time the agent tried."""
        self._connected_event = asyncio.Event()

    @property
    def tracer(self) -> Tracer:
        """Where spans of commands go."""
        return self._tracer

    async def wait_connected(self) -> None:
        """Return once the link is up."""
        await self._connected_event.wait()

    async def run(self) -> None:
        """Connect, converse, and reconnect forever; only cancellation ends it."""
        attempt = 0
        while True:
            outcome = await self._connect_once()
            if self.connected:
                attempt = 0
            self._set_connected(False)
            self.last_error = outcome.message
            self.token_refused = outcome.token_refused
            self._owner.record_error(outcome.message)
            if outcome.retry is _Retry.slowly:
                delay = self._unauthorized_retry_interval
            else:
                delay = backoff(
                    attempt, base=self._backoff_base, cap=self._backoff_cap, rng=self._rng
                )
                attempt += 1
            log.warning(
                "link.down", url=self.url, error=outcome.message, retry_in_s=round(delay, 1)
            )
            await asyncio.sleep(delay)

    async def _connect_once(self) -> _Outcome:
        try:
            token = await asyncio.to_thread(self._read_token)
        except (OSError, ValueError) as exc:
            return _Outcome(_Retry.slowly, str(exc))
        if token != self._token:
            # Another token may belong to another agent: let the control plane say who we are.
            self._token, self.agent_id = token, None
        try:
            async with connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {token}"},
                compression=None,
                open_timeout=self._open_timeout,
                user_agent_header=f"dicom-connector-agent/{self._version}",
                ssl=self._ssl,
            ) as websocket:
                await self._converse(websocket)
        except InvalidStatus as exc:
            return _classify_status(exc.response.status_code, self._token_file)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            return self._classify_close(code, reason)
        except ssl.SSLCertVerificationError as exc:
            return _Outcome(_Retry.backoff, describe_verification_failure(exc, self.url))
        except (InvalidHandshake, InvalidURI) as exc:
            return _Outcome(_Retry.backoff, f"the control plane link failed: {exc}")
        except (OSError, TimeoutError) as exc:
            detail = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            return _Outcome(_Retry.backoff, f"control plane unreachable at {self.url} ({detail})")
        # The iteration ends quietly on a normal close; the close code still decides.
        return self._classify_close(websocket.close_code, websocket.close_reason or "")

    def _classify_close(self, code: int | None, reason: str) -> _Outcome:
        if code == CLOSE_UNAUTHORIZED:
            return _Outcome(
                _Retry.slowly, _token_refused_message(self._token_file, reason), token_refused=True
            )
        if code == CLOSE_PROTOCOL_ERROR:
            return _Outcome(
                _Retry.slowly,
                "the control plane closed the link for a protocol error (see the error logged"
                " before); agent and control plane may need matching versions",
            )
        if code == CLOSE_REPLACED:
            return _Outcome(
                _Retry.backoff,
                "another link of this agent replaced this one; is the same token installed on"
                " two machines?",
            )
        return _Outcome(
            _Retry.backoff, f"the control plane link closed (code {code}{_with(reason)})"
        )

    async def _converse(self, websocket: ClientConnection) -> None:
        hello = Hello(
            agent_id=self.agent_id,
            agent_version=self._version,
            applied_revision=self._owner.applied_revision,
            protocol_versions=sorted(SUPPORTED_VERSIONS),
        )
        await websocket.send(encode_message(hello))
        conversation = _Conversation(
            websocket, self, self._owner.health_report, figures=self._figures
        )
        heartbeat: asyncio.Task[None] | None = None
        try:
            async for frame in websocket:
                welcome = await conversation.handle(frame)
                if welcome is not None and heartbeat is None:
                    self._welcomed(welcome)
                    heartbeat = asyncio.create_task(
                        conversation.heartbeat(welcome.heartbeat_interval_s)
                    )
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat

    def _welcomed(self, welcome: Welcome) -> None:
        self.agent_id, self.site = welcome.agent_id, welcome.site
        self.deployment = welcome.deployment
        self.token_refused = False
        self.last_error = None
        self._set_connected(True)
        log.info("link.up", url=self.url, agent_id=str(welcome.agent_id), site=welcome.site)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        if connected:
            self._connected_event.set()
        else:
            self._connected_event.clear()

    def _read_token(self) -> str:
        try:
            token = self._token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise OSError(
                f"cannot read the agent token file {self._token_file}: {exc.strerror}"
            ) from exc
        if not token:
            raise ValueError(f"the agent token file {self._token_file} is empty")
        return token

    async def run_command(self, name: str, args: dict[str, Any]) -> tuple[bool, str]:
        """Run a command the control plane sent; an unknown one or bad arguments fail here."""
        model = COMMAND_ARGUMENTS.get(name)
        if model is None:
            known = ", ".join(sorted(COMMAND_ARGUMENTS))
            return False, f"this agent has no command {name!r}; it knows {known}"
        try:
            model.model_validate(args)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'args'}: {error['msg']}"
                for error in exc.errors(include_url=False)
            )
            return False, f"bad arguments for {name}: {problems}"[:MAX_TEXT_LENGTH]
        log.info("link.command", reason=name)
        ok, detail = await self._owner.run_command(name, args)
        return ok, detail[:MAX_TEXT_LENGTH]

    async def diagnostics(self) -> DiagnosticsBundle:
        """The diagnostics bundle: version, config revision, health now, recent log lines."""
        report = await asyncio.to_thread(self._owner.health_report)
        lines = [] if self._recent_logs is None else self._recent_logs.lines()
        return DiagnosticsBundle(
            agent_version=self._version[:64],
            config_revision=self._owner.applied_revision,
            collected_at=datetime.datetime.now(datetime.UTC),
            health=report,
            log_lines=[line[:MAX_LOG_LINE_LENGTH] for line in lines[-MAX_LOG_LINES:]],
        )

    async def apply(self, message: ConfigMessage) -> ConfigResult:
        """Validate, apply and store one pushed config; the `config_result` to answer with."""
        try:
            snapshot = parse_snapshot(
                {
                    "site": message.site,
                    "revision": message.revision,
                    "timezone": message.timezone,
                    "config": message.config,
                    "deid_salt": message.deid_salt,
                }
            )
            await self._owner.apply_config(snapshot)
        except (ConfigRefused, ConfigNotApplied) as exc:
            reason = str(exc)[:MAX_TEXT_LENGTH]
            self._owner.record_error(f"refused config revision {message.revision}: {reason}")
            log.error("link.config_refused", revision=message.revision, error=reason)
            return ConfigResult(revision=message.revision, status="failed", reason=reason)
        try:
            await asyncio.to_thread(self._config_store.save, snapshot)
        except OSError as exc:
            # It runs, so it is applied; only a restart without the control plane would fall
            # back to the older stored config.
            error = f"applied config revision {message.revision} but could not store it: {exc}"
            self._owner.record_error(error)
            log.error("link.config_not_stored", revision=message.revision, error=str(exc))
        log.info("link.config_applied", revision=message.revision)
        return ConfigResult(revision=message.revision, status="applied")


class _Conversation:
    """The frames of one connected link (from the hello on)."""

    def __init__(
        self,
        websocket: ClientConnection,
        link: ControlPlaneLink,
        health_report: Callable[[], HealthReport],
        *,
        figures: FiguresBuffer | None = None,
    ) -> None:
        self._websocket = websocket
        self._link = link
        self._health_report = health_report
        self._figures = figures
        self._version: int | None = None

    async def handle(self, frame: str | bytes) -> Welcome | None:
        """Handle one frame from the control plane; the welcome when it is one."""
        try:
            message = parse_message(frame)
        except ProtocolError as exc:
            log.warning("link.unusable_frame", error=exc.code.value)
            await self.send(exc.as_message())
            return None
        match message:
            case Welcome(protocol_version=version):
                if self._version is not None:
                    await self._unexpected(message)
                    return None
                self._version = version
                return message
            case ConfigMessage():
                await self.send(await self._link.apply(message))
            case Ping(nonce=nonce):
                await self.send(Pong(nonce=nonce))
            case Pong():
                pass
            case Command(id=command_id, name=name, args=args, traceparent=traceparent):
                # In the trace of the request that sent it, when the control plane named one.
                parent = None
                if traceparent:
                    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
                with self._link.tracer.start_as_current_span(
                    "command", context=parent, attributes=safe_attributes(reason=name)
                ):
                    if name == "diagnostics" and not args:
                        bundle = await self._link.diagnostics()
                        result = CommandResult(
                            id=command_id,
                            ok=True,
                            detail=f"diagnostics with {len(bundle.log_lines)} log line(s)",
                            diagnostics=bundle,
                        )
                    else:
                        ok, detail = await self._link.run_command(name, args)
                        result = CommandResult(id=command_id, ok=ok, detail=detail)
                await self.send(result)
            case Error(code=code, message=text):
                log.warning("link.control_plane_error", error=code.value, detail=text)
            case _:
                await self._unexpected(message)
        return None

    async def heartbeat(self, interval_s: float) -> None:
        """Send a health report now and every `interval_s` seconds, until the link closes."""
        while True:
            report = await asyncio.to_thread(self._health_report)
            try:
                await self._send_figures()
                await self.send(Health(report=report))
            except ConnectionClosed:
                # The receiving side sees the same close and decides what comes next.
                return
            await asyncio.sleep(interval_s)

    async def _send_figures(self) -> None:
        """Send the series figures gathered since the last heartbeat; kept if sending fails."""
        while self._figures is not None and len(self._figures):
            batch = self._figures.take()
            try:
                await self.send(Figures(series=batch))
            except BaseException:
                self._figures.give_back(batch)
                raise

    async def send(self, message: Message) -> None:
        """Send one frame in the agreed protocol version (the hello's before a welcome)."""
        if self._version is not None and message.v != self._version:
            message = message.model_copy(update={"v": self._version})
        await self._websocket.send(encode_message(message))

    async def _unexpected(self, message: Message) -> None:
        await self.send(
            Error(
                code=ErrorCode.unexpected_message,
                message=f"an agent does not accept a {message.type} now",
            )
        )


def _classify_status(status: int, token_file: Path) -> _Outcome:
    if status in (401, 403):
        return _Outcome(
            _Retry.slowly, _token_refused_message(token_file, f"HTTP {status}"), token_refused=True
        )
    return _Outcome(
        _Retry.backoff,
        f"the control plane answered HTTP {status} instead of opening the link",
    )


def _token_refused_message(token_file: Path, detail: str) -> str:
    return (
        f"the control plane refused the agent token ({detail or 'revoked or rotated'}); install"
        f" the agent's current token in {token_file}"
    )


def _with(reason: str) -> str:
    return f", {reason}" if reason else ""
