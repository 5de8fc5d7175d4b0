"""The connected agents of this control-plane process, and the work that keeps them in step.

The hub holds one `AgentLink` per connected agent (a newer link of the same agent replaces
the older one) and fans out to them: a new config revision goes to every link of the site at
once, a rotated or revoked token closes the agent's link at once, a command goes to one agent.

Its background task (`run`, owned by the app's lifespan) does four things:

- flushes the `LinkRecorder` every `fleet_flush_interval_s` (sooner after a connect,
  disconnect or config result), so heartbeats cost two statements per flush, not two per
  message;
- reconciles every `fleet_reconcile_interval_s`: one query for the token digests of all
  connected agents, one for the current revision of their sites. It closes links whose
  token changed and offers revisions the links have not seen — the safety net for changes
  made through another replica (which on PostgreSQL arrive at once through the replica bus,
  `apply_notice`), and how a token rotated while its agent was mid-handshake is still caught;
- prunes the health history to `health_history_per_agent` reports per agent every minute;
- resyncs the `FleetView` (what the fleet routes answer from) with the database every
  `fleet_reconcile_interval_s`, for what other replicas changed, and soon after another
  replica says (on the replica bus) that it wrote connects, disconnects or config results.

Must not import FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import Tracer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.messages import CLOSE_GOING_AWAY, CLOSE_REPLACED, CLOSE_UNAUTHORIZED, CommandResult
from control_plane.clock import Clock
from control_plane.fleet.agents import LinkAgent, token_digests
from control_plane.fleet.config_revisions import (
    DEFAULT_CONFIG,
    latest_configs,
    latest_revision_numbers,
)
from control_plane.fleet.notices import FleetNotice, NoticeKind
from control_plane.fleet.recorder import LinkRecorder
from control_plane.fleet.view import FleetView
from control_plane.link import AgentLink, ConfigOffer, LinkClosedError, LinkContext, LinkTransport
from control_plane.settings import ControlPlaneSettings

logger = structlog.get_logger(__name__)

PRUNE_INTERVAL_S = 60.0
# A burst of connects is written together rather than one transaction each.
URGENT_FLUSH_DELAY_S = 0.05
TOLD_RESYNC_MIN_INTERVAL_S = 0.25
TOKEN_CHANGED_REASON = "token revoked or rotated"  # noqa: S105 - a close reason, not a secret


class AgentNotConnectedError(LookupError):
    """The agent has no link to this control-plane process."""


class Hub:
    """Connected agents by id and by site; fan-out of configs, closes and commands."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        read_sessionmaker: async_sessionmaker[AsyncSession],
        settings: ControlPlaneSettings,
        clock: Clock,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self._read_sessionmaker = read_sessionmaker
        self._settings = settings
        self.view = FleetView(
            read_sessionmaker, clock, dt.timedelta(seconds=settings.heartbeat_interval_s)
        )
        """Every agent's latest state and health, which the fleet routes answer from."""
        self.replica_id = uuid.uuid4()
        """This process among the replicas (in notices, so it can skip its own)."""
        self.recorder = LinkRecorder(
            sessionmaker,
            settings.health_history_per_agent,
            on_state=self.view.record_state,
            notice=FleetNotice.states_written(self.replica_id),
        )
        self._view_stale = asyncio.Event()
        self._view_lock = asyncio.Lock()
        self._context = LinkContext(
            clock=clock,
            recorder=self.recorder,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            current_config=self._current_config,
            tracer=tracer or trace.get_tracer(__name__),
        )
        self._links: dict[uuid.UUID, AgentLink] = {}
        self._by_site: defaultdict[uuid.UUID, set[AgentLink]] = defaultdict(set)
        # The newest config offer known per site, so a reconnecting fleet costs no config
        # reads. Kept current by pushes from this process and by `reconcile` for the others.
        self._offers: dict[uuid.UUID, ConfigOffer] = {}

    def is_connected(self, agent_id: uuid.UUID) -> bool:
        """Whether the agent has a link to this process."""
        return agent_id in self._links

    async def serve(
        self, agent: LinkAgent, transport: LinkTransport, frames: AsyncIterator[str | bytes]
    ) -> None:
        """Run one agent's link from its hello until it closes."""
        link = AgentLink(agent, transport, self._context)
        hello = await link.handshake(frames)
        if hello is None:
            return
        # Registered before the current config is read, so a revision stored meanwhile is
        # pushed to this link too; `AgentLink.offer` never sends an older one after it.
        previous = self._links.get(agent.agent_id)
        self._register(link)
        if previous is not None:
            await previous.close(CLOSE_REPLACED, "replaced by a newer link of this agent")
        try:
            await link.start(hello)
            await link.converse(frames)
        finally:
            current = self._links.get(agent.agent_id) is link
            if current:
                self._unregister(link)
            link.finish(current=current)

    async def push_config(self, site_id: uuid.UUID, offer: ConfigOffer) -> int:
        """Offer a config revision to every link of the site; the number of links."""
        self._remember(site_id, offer)
        links = list(self._by_site.get(site_id, ()))
        await asyncio.gather(*(link.offer(offer) for link in links))
        return len(links)

    async def disconnect(self, agent_id: uuid.UUID, code: int, reason: str) -> bool:
        """Close the agent's link; False when it has none here."""
        link = self._links.get(agent_id)
        if link is None:
            return False
        await link.close(code, reason)
        return True

    async def command(
        self, agent_id: uuid.UUID, name: str, args: dict[str, Any], timeout_s: float
    ) -> CommandResult:
        """Send a command to a connected agent and wait for its result.

        Raises:
            AgentNotConnectedError: the agent has no link here, or it closed meanwhile.
            TimeoutError: the agent did not answer within `timeout_s`.
        """
        link = self._links.get(agent_id)
        if link is None:
            raise AgentNotConnectedError(agent_id)
        try:
            return await link.command(name, args, timeout_s)
        except LinkClosedError as exc:
            raise AgentNotConnectedError(agent_id) from exc

    async def run(self) -> None:
        """The hub's background work, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._flush_loop())
            tasks.create_task(
                self._every(self._settings.fleet_reconcile_interval_s, self.reconcile)
            )
            tasks.create_task(self._every(PRUNE_INTERVAL_S, self.recorder.prune_history))
            tasks.create_task(
                self._every(self._settings.fleet_reconcile_interval_s, self.resync_view)
            )
            tasks.create_task(self._resync_when_told())

    async def close(self) -> None:
        """Close every link (agents reconnect with backoff) and write what is pending."""
        await asyncio.gather(
            *(
                link.close(CLOSE_GOING_AWAY, "control plane stopping")
                for link in list(self._links.values())
            )
        )
        try:
            await self.recorder.flush()
        except (SQLAlchemyError, OSError) as exc:
            logger.error("could not record agent links at shutdown", error=type(exc).__name__)

    async def apply_notice(self, notice: FleetNotice) -> None:
        """Act on a change heard on the replica bus (made through any replica, this one too):
        offer a site's new revision to its links here, close a link whose token changed."""
        if notice.kind is NoticeKind.config and notice.site is not None and notice.revision:
            await self._revision_stored(notice.site, notice.revision)
        elif notice.kind is NoticeKind.token and notice.agent is not None:
            await self._token_changed(notice.agent)
        elif notice.kind is NoticeKind.states and notice.origin != self.replica_id:
            # Many flushes of other replicas may come in a burst: one resync covers them.
            self._view_stale.set()

    async def catch_up(self) -> None:
        """Everything a full reconcile does, for when notices may have been missed."""
        await self.reconcile()
        await self.resync_view()

    async def resync_view(self) -> None:
        """Bring the fleet view up to date with the database (one resync at a time)."""
        async with self._view_lock:
            await self.view.resync()

    async def _revision_stored(self, site_id: uuid.UUID, revision: int) -> None:
        self.view.set_revision(site_id, revision)
        behind = [link for link in self._by_site.get(site_id, ()) if link.site_revision < revision]
        if not behind:
            return
        async with self._read_sessionmaker() as session:
            configs = await latest_configs(session, [site_id])
        current = configs.get(site_id, DEFAULT_CONFIG)
        agent = behind[0].agent
        await self.push_config(
            site_id,
            ConfigOffer.of(
                current.revision, agent.site, agent.timezone, current.config, agent.deid_salt
            ),
        )

    async def _token_changed(self, agent_id: uuid.UUID) -> None:
        await self.view.reload_agents([agent_id])
        link = self._links.get(agent_id)
        if link is None:
            return
        async with self._read_sessionmaker() as session:
            digests = await token_digests(session, [agent_id])
        # A link that already authenticated with the new token stays.
        if digests.get(agent_id) != link.agent.token_digest:
            await link.close(CLOSE_UNAUTHORIZED, TOKEN_CHANGED_REASON)

    async def reconcile(self) -> None:
        """Close links whose token changed; offer links the revisions they have not seen."""
        links = list(self._links.values())
        if not links:
            return
        async with self._read_sessionmaker() as session:
            digests = await token_digests(session, [link.agent.agent_id for link in links])
            stale = [
                link
                for link in links
                if digests.get(link.agent.agent_id) != link.agent.token_digest
            ]
            live = [
                link
                for link in links
                if digests.get(link.agent.agent_id) == link.agent.token_digest
            ]
            revisions = await latest_revision_numbers(
                session, {link.agent.site_id for link in live}
            )
            behind = {
                link.agent.site_id
                for link in live
                if revisions[link.agent.site_id] > link.site_revision
            }
            configs = await latest_configs(session, behind) if behind else {}
        await asyncio.gather(
            *(link.close(CLOSE_UNAUTHORIZED, TOKEN_CHANGED_REASON) for link in stale)
        )
        for link in live:
            if link.agent.site_id in behind:
                current = configs.get(link.agent.site_id, DEFAULT_CONFIG)
                offer = ConfigOffer.of(
                    current.revision,
                    link.agent.site,
                    link.agent.timezone,
                    current.config,
                    link.agent.deid_salt,
                )
                self._remember(link.agent.site_id, offer)
                await link.offer(offer)

    async def _current_config(self, agent: LinkAgent) -> ConfigOffer:
        offer = self._offers.get(agent.site_id)
        if offer is not None:
            return offer
        async with self._read_sessionmaker() as session:
            configs = await latest_configs(session, [agent.site_id])
        current = configs.get(agent.site_id, DEFAULT_CONFIG)
        offer = ConfigOffer.of(
            current.revision, agent.site, agent.timezone, current.config, agent.deid_salt
        )
        self._remember(agent.site_id, offer)
        return offer

    def _remember(self, site_id: uuid.UUID, offer: ConfigOffer) -> None:
        known = self._offers.get(site_id)
        if known is None or offer.message.revision > known.message.revision:
            self._offers[site_id] = offer
        self.view.set_revision(site_id, offer.message.revision)

    def _register(self, link: AgentLink) -> None:
        previous = self._links.get(link.agent.agent_id)
        if previous is not None:
            self._by_site[previous.agent.site_id].discard(previous)
        self._links[link.agent.agent_id] = link
        self._by_site[link.agent.site_id].add(link)

    def _unregister(self, link: AgentLink) -> None:
        del self._links[link.agent.agent_id]
        site_links = self._by_site[link.agent.site_id]
        site_links.discard(link)
        if not site_links:
            del self._by_site[link.agent.site_id]

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.fleet_flush_interval_s):
                    await self.recorder.urgent.wait()
                await asyncio.sleep(URGENT_FLUSH_DELAY_S)
            self.recorder.urgent.clear()
            try:
                await self.recorder.flush()
            except (SQLAlchemyError, OSError) as exc:
                logger.error(
                    "could not record agent links; retrying at the next flush",
                    error=type(exc).__name__,
                    count=self.recorder.pending,
                )

    async def _resync_when_told(self) -> None:
        while True:
            await self._view_stale.wait()
            self._view_stale.clear()
            try:
                await self.resync_view()
            except (SQLAlchemyError, OSError) as exc:
                logger.error("fleet view resync failed; retrying", error=type(exc).__name__)
            # At most a few resyncs a second, however busy the other replicas' links are.
            await asyncio.sleep(TOLD_RESYNC_MIN_INTERVAL_S)

    async def _every(
        self, interval_s: float, work: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await work()
            except (SQLAlchemyError, OSError) as exc:
                logger.error("fleet maintenance failed; retrying", error=type(exc).__name__)
