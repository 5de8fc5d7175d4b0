"""The control plane's side of one agent link: the conversation of `common.messages`.

An `AgentLink` exists once a websocket authenticated with an agent token. It waits for the
hello, answers with a welcome and, when the agent runs another revision, the site config;
then it handles what the agent sends — health (the heartbeat), config results, command
results, pings — and answers a frame it cannot use with an `error` frame, never by crashing
or closing. What it learns goes to the `LinkRecorder`; it reads nothing from the database
itself (the config to offer comes through `LinkContext.current_config`).

Transport-agnostic: it writes through a `LinkTransport` and reads frames from an async
iterator, so the websocket route stays thin. Must not import FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog
from opentelemetry import trace
from opentelemetry.trace import Tracer

from common.config import SiteConfig
from common.messages import (
    CLOSE_PROTOCOL_ERROR,
    Command,
    CommandResult,
    ConfigMessage,
    ConfigResult,
    Error,
    ErrorCode,
    Figures,
    Health,
    Hello,
    Message,
    Ping,
    Pong,
    ProtocolError,
    SeriesFigures,
    Welcome,
    encode_message,
    negotiate_version,
    parse_message,
)
from common.telemetry import safe_attributes
from control_plane.clock import Clock
from control_plane.fleet.agents import LinkAgent
from control_plane.fleet.health_rules import Thresholds, verdict_of_report
from control_plane.fleet.recorder import LinkRecorder
from control_plane.tracing import current_traceparent, remote_context

logger = structlog.get_logger(__name__)

HELLO_TIMEOUT_S = 30.0
_PROTOCOL_ERROR_REASON = "protocol error; see the error frame"


class LinkClosedError(ConnectionError):
    """The link is closed (or its peer went away); nothing more can be sent on it."""


class LinkTransport(Protocol):
    """What the link needs from a websocket."""

    async def send_text(self, text: str) -> None:
        """Send one text frame; `LinkClosedError` when the connection is gone."""

    async def close(self, code: int, reason: str) -> None:
        """Close with `code`; `LinkClosedError` when the connection is already gone."""


@dataclass(frozen=True)
class ConfigOffer:
    """A site config revision to offer agents, with the health thresholds it sets."""

    message: ConfigMessage
    thresholds: Thresholds

    @classmethod
    def of(
        cls, revision: int, site: str, timezone: str, config: SiteConfig, deid_salt: str
    ) -> ConfigOffer:
        """The offer of `config` as revision `revision` of `site`, with the site's salt."""
        return cls(
            message=ConfigMessage.of(revision, site, timezone, config, deid_salt),
            thresholds=Thresholds.of(config),
        )


@dataclass(frozen=True)
class LinkContext:
    """What every link of one control plane shares."""

    clock: Clock
    recorder: LinkRecorder
    heartbeat_interval_s: float
    current_config: Callable[[LinkAgent], Awaitable[ConfigOffer]]
    """The current config of the agent's site (read from the database)."""
    tracer: Tracer = field(default_factory=lambda: trace.get_tracer(__name__))
    """Spans of what agents report, in the trace the agent names (`traceparent`)."""


class AgentLink:
    """One authenticated agent's link, from its hello until it closes."""

    def __init__(self, agent: LinkAgent, transport: LinkTransport, context: LinkContext) -> None:
        self.agent = agent
        self._transport = transport
        self._context = context
        self._state = agent.state
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._protocol_version: int | None = None
        self._commands: dict[uuid.UUID, asyncio.Future[CommandResult]] = {}
        self.site_revision = -1
        """The newest config revision this agent was offered or said it runs."""
        self.thresholds = Thresholds.of(SiteConfig())

    @property
    def closed(self) -> bool:
        """Whether the link was closed (by either side)."""
        return self._closed

    async def handshake(self, frames: AsyncIterator[str | bytes]) -> Hello | None:
        """Wait for the hello and agree on a protocol version; None (and the link closed)
        when the first frame is not a usable hello."""
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                frame = await anext(frames, None)
        except TimeoutError:
            await self._refuse(
                ErrorCode.unexpected_message, f"no hello within {HELLO_TIMEOUT_S:.0f} s"
            )
            return None
        if frame is None:
            self._closed = True
            return None
        try:
            hello = parse_message(frame)
        except ProtocolError as exc:
            await self._refuse(exc.code, exc.message)
            return None
        if not isinstance(hello, Hello):
            await self._refuse(
                ErrorCode.unexpected_message, f"the first frame must be a hello, not a {hello.type}"
            )
            return None
        if hello.agent_id is not None and hello.agent_id != self.agent.agent_id:
            await self._refuse(
                ErrorCode.agent_mismatch,
                f"the hello names agent {hello.agent_id} but the token belongs to agent"
                f" {self.agent.agent_id}; install the right token",
            )
            return None
        version = negotiate_version(hello.protocol_versions)
        if version is None:
            await self._refuse(
                ErrorCode.unsupported_version,
                f"the agent speaks protocol versions {sorted(hello.protocol_versions)}, this"
                " control plane does not speak any of them; upgrade one side",
            )
            return None
        self._protocol_version = version
        return hello

    async def start(self, hello: Hello) -> None:
        """Record the connection, send the welcome and, if needed, the current config."""
        now = self._context.clock()
        self._state = replace(
            self._state,
            agent_version=hello.agent_version,
            connected=True,
            connected_at=now,
            last_seen_at=now,
        )
        if hello.applied_revision is not None:
            self._applied(hello.applied_revision)
        self._record(urgent=True)
        assert self._protocol_version is not None, "start() follows a successful handshake()"
        await self.send(
            Welcome(
                protocol_version=self._protocol_version,
                heartbeat_interval_s=self._context.heartbeat_interval_s,
                agent_id=self.agent.agent_id,
                site=self.agent.site,
                deployment=self.agent.deployment,
            )
        )
        offer = await self._context.current_config(self.agent)
        if hello.applied_revision == offer.message.revision:
            self.site_revision = max(self.site_revision, hello.applied_revision)
            self.thresholds = offer.thresholds
        else:
            await self.offer(offer)

    async def converse(self, frames: AsyncIterator[str | bytes]) -> None:
        """Handle frames until the agent goes away or the link is closed."""
        async for frame in frames:
            try:
                message = parse_message(frame)
            except ProtocolError as exc:
                logger.info(
                    "unusable frame from agent", agent_id=str(self.agent.agent_id), error=exc.code
                )
                await self.send(exc.as_message())
                continue
            await self._handle(message)

    def finish(self, *, current: bool) -> None:
        """The link ended: fail waiting commands; record the disconnect when no newer link of
        the agent took over (`current`)."""
        self._closed = True
        for future in self._commands.values():
            if not future.done():
                future.set_exception(LinkClosedError("the agent's link closed"))
        self._commands.clear()
        if current:
            now = self._context.clock()
            self._state = replace(self._state, connected=False, disconnected_at=now)
            self._record(urgent=True)

    async def offer(self, offer: ConfigOffer) -> None:
        """Send a config revision unless the agent already has it or a newer one."""
        if offer.message.revision <= self.site_revision:
            return
        self.site_revision = offer.message.revision
        self.thresholds = offer.thresholds
        await self.send(offer.message)

    async def command(self, name: str, args: dict[str, Any], timeout_s: float) -> CommandResult:
        """Send a command and wait for its result.

        Raises:
            LinkClosedError: the link closed before the agent answered.
            TimeoutError: no answer within `timeout_s`.
        """
        command = Command(id=uuid.uuid4(), name=name, args=args, traceparent=current_traceparent())
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._commands[command.id] = future
        try:
            if not await self.send(command):
                raise LinkClosedError("the agent's link is closed")
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            self._commands.pop(command.id, None)

    async def send(self, message: Message) -> bool:
        """Send one message in the agreed protocol version; False when the link is closed."""
        if self._protocol_version is not None and message.v != self._protocol_version:
            message = message.model_copy(update={"v": self._protocol_version})
        text = encode_message(message)
        async with self._send_lock:
            if self._closed:
                return False
            try:
                await self._transport.send_text(text)
            except LinkClosedError:
                self._closed = True
                return False
        return True

    async def close(self, code: int, reason: str) -> None:
        """Close the link with `code` (idempotent); a frame being written is finished first."""
        if self._closed:
            return
        self._closed = True
        async with self._send_lock:
            with contextlib.suppress(LinkClosedError):
                await self._transport.close(code, reason)

    async def _handle(self, message: Message) -> None:
        now = self._context.clock()
        self._state = replace(self._state, last_seen_at=now)
        urgent = False
        match message:
            case Health(report=report):
                document = report.model_dump(mode="json")
                verdict = verdict_of_report(report, self.thresholds)
                self._state = replace(
                    self._state,
                    health_report=document,
                    health_reported_at=now,
                    health_status=verdict.status.value,
                    health_reasons=list(verdict.reasons),
                )
                self._context.recorder.record_report(self.agent.agent_id, now, verdict, document)
            case Figures(series=series):
                self._context.recorder.record_figures(
                    self.agent.site_id, self.agent.agent_id, now, series
                )
                self._trace_figures(series)
            case ConfigResult(revision=revision, status="applied"):
                self._applied(revision)
                urgent = True
                # Debug: a push to a thousand agents would be a thousand info lines.
                logger.debug(
                    "agent applied config", agent_id=str(self.agent.agent_id), revision=revision
                )
            case ConfigResult(revision=revision, reason=reason):
                self._state = replace(
                    self._state, config_failed_revision=revision, config_failure_reason=reason
                )
                urgent = True
                logger.warning(
                    "agent rejected config", agent_id=str(self.agent.agent_id), revision=revision
                )
            case CommandResult(id=command_id):
                future = self._commands.pop(command_id, None)
                if future is None:
                    await self.send(
                        Error(
                            code=ErrorCode.unexpected_message,
                            message=f"no command {command_id} is waiting for a result",
                        )
                    )
                elif not future.done():
                    future.set_result(message)
            case Ping(nonce=nonce):
                await self.send(Pong(nonce=nonce))
            case Pong():
                pass
            case Error(code=code):
                logger.warning(
                    "agent could not use a frame", agent_id=str(self.agent.agent_id), error=code
                )
            case _:
                await self.send(
                    Error(
                        code=ErrorCode.unexpected_message,
                        message=f"a {message.type} is not something an agent sends after its hello",
                    )
                )
        self._record(urgent=urgent)

    def _trace_figures(self, series: Sequence[SeriesFigures]) -> None:
        # One short span per batch, inside the agent's trace of that series: the trace of a
        # series then shows its upload requests and the control plane recording its figures.
        for item in series:
            parent = remote_context(item.traceparent)
            if parent is None:
                continue
            span = self._context.tracer.start_span(
                "series.figures",
                context=parent,
                attributes=safe_attributes(series_key=item.series_key, site=self.agent.site),
            )
            span.end()

    def _applied(self, revision: int) -> None:
        failed = self._state.config_failed_revision
        # A failure is settled once the agent runs that revision or a newer one.
        settled = failed is not None and revision >= failed
        self._state = replace(
            self._state,
            config_revision=revision,
            config_failed_revision=None if settled else failed,
            config_failure_reason=None if settled else self._state.config_failure_reason,
        )
        self.site_revision = max(self.site_revision, revision)

    def _record(self, *, urgent: bool) -> None:
        self._context.recorder.record_state(self.agent.agent_id, self._state, urgent=urgent)

    async def _refuse(self, code: ErrorCode, message: str) -> None:
        logger.info("agent link refused", agent_id=str(self.agent.agent_id), error=code)
        await self.send(ProtocolError(code, message).as_message())
        await self.close(CLOSE_PROTOCOL_ERROR, _PROTOCOL_ERROR_REASON)
