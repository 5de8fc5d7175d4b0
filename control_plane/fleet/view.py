"""The fleet as the API shows it, kept in memory: every agent's latest state and verdict, and
the serialized answers built from them, by site.

A thousand agents heartbeating change a hundred records a second, and each whole-site answer
used to read, judge and serialize all of them (100-400 ms under load). Here each agent's
record is replaced when its link records a new state (the hub's `LinkRecorder` hands every
state over at once, before it is written), and its verdict and JSON are built right then
(~70 us per heartbeat, spread evenly, instead of hundreds of them inside one request). A
verdict is kept until the clock can change it (an agent turning missing), and JSON is
rebuilt only after the verdict or the record changed. A site's answer is the join of its
agents' JSON, kept until one of them changes; the fleet's answer is built from each site's
kept verdict.

Where the records come from:

- `resync()` reads the database: at start-up, then every `fleet_reconcile_interval_s` (the
  hub's loop). It picks up what this process did not see: sites and agents created, tokens
  changed, revisions stored and link states written by another replica. It reads the few
  columns that tell a change first, and whole rows only for the agents that changed.
- The links of this process (`record_state`): their state is newer than the database's
  until the recorder's next flush, so a row read from the database replaces it only when it
  was heard from later (through another replica).
- Writes through this process's API (`reload_site`, `reload_agents`, `set_revision`), so an
  answer right after a write shows it.
- A lookup of a site or agent this view does not know reads the database first.

With several replicas, each one serves its own links' states at once and the others' within
a reconcile interval (plus their flush interval). Must not import FastAPI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import structlog
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control_plane.clock import Clock
from control_plane.errors import NotFoundError
from control_plane.fleet import sites
from control_plane.fleet.config_revisions import latest_revision_numbers
from control_plane.fleet.health import (
    AgentRecord,
    HealthContext,
    agent_public,
    agent_summary,
    is_connected,
    record_of,
    select_records,
    site_verdict,
    status_counts,
    token_active_column,
    verdict,
)
from control_plane.fleet.health_rules import AgentStatus, Verdict, missing_after, worst
from control_plane.fleet.recorder import LinkState
from control_plane.fleet_schemas import FleetHealth, SiteAttention, SiteHealth
from control_plane.models import Agent, Site
from control_plane.schemas import ItemList

# Agents whose JSON is rebuilt between two yields to the event loop (a few milliseconds).
BUILD_CHUNK = 100
# Agent ids per `IN (...)` of a reload, well inside every driver's limit on parameters.
RELOAD_CHUNK = 500

_AGENTS = Agent.__table__

logger = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class AgentStatusEntry:
    """One agent of a `SiteStatus`: its name, verdict and whether its link is up."""

    name: str
    verdict: Verdict
    connected: bool


@dataclasses.dataclass(frozen=True, slots=True)
class SiteStatus:
    """A site's verdict at one moment, with its agents' (by name)."""

    site: str
    verdict: Verdict
    agents: tuple[AgentStatusEntry, ...]
    config_revision: int


class _Entry:
    """One agent: its record, and what was judged and serialized from it (None: not yet, or
    outdated by a change)."""

    __slots__ = (
        "connected",
        "judged",
        "judged_at",
        "local",
        "public_json",
        "record",
        "summary_json",
        "valid_until",
    )

    def __init__(self, record: AgentRecord, *, local: bool) -> None:
        self.record = record
        self.local = local
        """Its state came from a link of this process, and may be newer than the database."""
        self.judged: Verdict | None = None
        self.connected = False
        self.judged_at: dt.datetime | None = None
        self.valid_until: dt.datetime | None = None
        """Until when `judged` and `connected` hold (None: until the record changes)."""
        self.public_json: bytes | None = None
        self.summary_json: bytes | None = None

    def replace(self, record: AgentRecord) -> bool:
        """Take `record` in place of the current one; whether anything changed."""
        if record == self.record:
            return False
        self.record = record
        self.judged = None
        self.public_json = self.summary_json = None
        return True

    def judge(self, context: HealthContext) -> bool:
        """Judge the agent at `context.now` unless its verdict still holds; whether the
        verdict or connection state changed."""
        now = context.now
        if (
            self.judged is not None
            and self.judged_at is not None
            and self.judged_at <= now
            and (self.valid_until is None or now <= self.valid_until)
        ):
            return False
        judged = verdict(self.record, context)
        connected = is_connected(self.record, context)
        self.judged_at = now
        self.valid_until = _valid_until(self.record, context)
        if judged == self.judged and connected == self.connected:
            return False
        self.judged, self.connected = judged, connected
        self.public_json = self.summary_json = None
        return True

    def verdict(self) -> Verdict:
        """The verdict of the last `judge`."""
        assert self.judged is not None, "judge() comes first"
        return self.judged


def _valid_until(record: AgentRecord, context: HealthContext) -> dt.datetime | None:
    # Only silence makes a verdict depend on the clock: it holds until the agent turns
    # missing; once missing, its reason names the length of the silence, so it is judged
    # again at every read.
    if record.last_seen_at is None:
        return None
    turns_missing = record.last_seen_at + missing_after(context.heartbeat_interval)
    return turns_missing if context.now <= turns_missing else context.now


class _Site:
    """One site: its agents and the answers kept for the current `generation`."""

    def __init__(self, site_id: uuid.UUID, name: str, config_revision: int) -> None:
        self.id = site_id
        self.name = name
        self.config_revision = config_revision
        self.agents: dict[uuid.UUID, _Entry] = {}
        self._ordered: list[_Entry] | None = None
        self.generation = 0
        """Moves on with every change of what the site's answers show."""
        self.verdict: tuple[int, Verdict, dict[AgentStatus, int]] | None = None
        self.agents_json: tuple[int, bytes] | None = None
        self.health_json: tuple[int, bytes] | None = None

    def ordered(self) -> list[_Entry]:
        """The agents by name, as the answers list them."""
        if self._ordered is None:
            self._ordered = sorted(self.agents.values(), key=lambda entry: entry.record.name)
        return self._ordered

    def add(self, entry: _Entry) -> None:
        """Add an agent."""
        self.agents[entry.record.id] = entry
        self._ordered = None

    def remove(self, agent_id: uuid.UUID) -> None:
        """Forget an agent."""
        del self.agents[agent_id]
        self._ordered = None

    def reorder(self) -> None:
        """Sort the agents again at the next `ordered()` (a name changed)."""
        self._ordered = None


class FleetView:
    """Every site and agent with its latest state; answers of the fleet routes as JSON."""

    def __init__(
        self,
        read_sessionmaker: async_sessionmaker[AsyncSession],
        clock: Clock,
        heartbeat_interval: dt.timedelta,
    ) -> None:
        self._sessionmaker = read_sessionmaker
        self._clock = clock
        self._heartbeat_interval = heartbeat_interval
        self._sites: dict[uuid.UUID, _Site] = {}
        self._by_name: dict[str, _Site] = {}
        self._agents: dict[uuid.UUID, _Entry] = {}
        # States recorded by links before this view knew their agent (registered through
        # another replica since the last resync); placed when its row is read.
        self._unplaced: dict[uuid.UUID, LinkState] = {}
        self._generation = 0
        self._fleet_json: tuple[int, bytes] | None = None

    def record_state(self, agent_id: uuid.UUID, state: LinkState) -> None:
        """What a link of this process says now about its agent (the recorder's listener)."""
        entry = self._agents.get(agent_id)
        if entry is None:
            self._unplaced[agent_id] = state
            return
        entry.local = True
        if entry.replace(dataclasses.replace(entry.record, **state.columns())):
            site = self._sites[entry.record.site_id]
            self._changed(site)
            context = HealthContext(now=self._clock(), heartbeat_interval=self._heartbeat_interval)
            self._public_json(site, entry, context)
            self._summary_json(site, entry, context)

    def set_revision(self, site_id: uuid.UUID, revision: int) -> None:
        """The site's current config revision is (at least) `revision`."""
        site = self._sites.get(site_id)
        if site is not None and revision > site.config_revision:
            site.config_revision = revision
            self._changed(site)

    async def resync(self) -> None:
        """Catch up with the database: sites, revisions, and the agents that changed."""
        # Only what was known before reading can be missing from what was read: a site or
        # agent added meanwhile (through this process) is not gone.
        known_sites, known_agents = set(self._sites), set(self._agents)
        known_unplaced = set(self._unplaced)
        async with self._sessionmaker() as session:
            site_rows = (await session.execute(select(Site.id, Site.name))).all()
            revisions = await latest_revision_numbers(session, [row[0] for row in site_rows])
            markers = (
                await session.execute(
                    select(
                        _AGENTS.c.id,
                        _AGENTS.c.site_id,
                        _AGENTS.c.name,
                        _AGENTS.c.deployment,
                        token_active_column(),
                        _AGENTS.c.last_seen_at,
                        _AGENTS.c.connected,
                    )
                )
            ).all()
            stale = [row[0] for row in markers if self._differs(row)]
            records = await _read_records(session, stale)
        for site_id, name in site_rows:
            self._place_site(site_id, name, revisions[site_id])
        for gone in known_sites - {row[0] for row in site_rows}:
            self._drop_site(gone)
        for record in records:
            self._merge(record)
        present = {row[0] for row in markers}
        for gone in (known_agents - present) & self._agents.keys():
            self._drop_agent(gone)
        for unknown in (known_unplaced - present) & self._unplaced.keys():
            del self._unplaced[unknown]

    async def reload_site(self, name: str) -> None:
        """Read the site called `name` and its agents, after a write through this process."""
        try:
            async with self._sessionmaker() as session:
                await self._load_site(session, name)
        except (SQLAlchemyError, OSError, NotFoundError) as exc:
            _left_to_resync(exc)

    async def reload_agents(self, agent_ids: Collection[uuid.UUID]) -> None:
        """Read these agents again, after a write through this process."""
        try:
            async with self._sessionmaker() as session:
                await self._load_agents(session, agent_ids)
        except (SQLAlchemyError, OSError) as exc:
            _left_to_resync(exc)

    async def agent_json(self, agent_id: uuid.UUID, context: HealthContext) -> bytes:
        """`GET /api/v1/agents/{id}`; `NotFoundError` when unknown."""
        entry = self._agents.get(agent_id)
        if entry is None:
            async with self._sessionmaker() as session:
                await self._load_agents(session, [agent_id])
            entry = self._agents.get(agent_id)
            if entry is None:
                raise NotFoundError(f"agent {agent_id} does not exist")
        return self._public_json(self._sites[entry.record.site_id], entry, context)

    async def site_agents_json(self, name: str, context: HealthContext) -> bytes:
        """`GET /api/v1/sites/{site}/agents`; `NotFoundError` for an unknown site."""
        site = await self._site(name, context)
        if site.agents_json is not None and site.agents_json[0] == site.generation:
            return site.agents_json[1]
        generation = site.generation
        parts = await _built(
            site.ordered(),
            lambda entry: entry.public_json,
            lambda entry: self._public_json(site, entry, context),
        )
        answer = _with_array(ItemList[Any](items=[]), "items", parts)
        site.agents_json = (generation, answer)
        return answer

    async def site_health_json(self, name: str, context: HealthContext) -> bytes:
        """`GET /api/v1/sites/{site}/health`; `NotFoundError` for an unknown site."""
        site = await self._site(name, context)
        if site.health_json is not None and site.health_json[0] == site.generation:
            return site.health_json[1]
        generation = site.generation
        judged, _ = self._site_verdict(site)
        parts = await _built(
            site.ordered(),
            lambda entry: entry.summary_json,
            lambda entry: self._summary_json(site, entry, context),
        )
        head = SiteHealth(
            site=site.name,
            status=judged.status,
            reasons=list(judged.reasons),
            config_revision=site.config_revision,
            agents=[],
        )
        answer = _with_array(head, "agents", parts)
        site.health_json = (generation, answer)
        return answer

    def fleet_health_json(
        self, context: HealthContext, only: Collection[str] | None = None
    ) -> bytes:
        """`GET /api/v1/fleet/health`, of the sites named in `only` when given (a label
        selection: built for the request, not kept)."""
        for site in self._sites.values():
            self._judge_site(site, context)
        if only is not None:
            return (
                self._fleet_health([site for site in self._sites.values() if site.name in only])
                .model_dump_json()
                .encode()
            )
        if self._fleet_json is not None and self._fleet_json[0] == self._generation:
            return self._fleet_json[1]
        answer = self._fleet_health(list(self._sites.values())).model_dump_json()
        self._fleet_json = (self._generation, answer.encode())
        return self._fleet_json[1]

    def _fleet_health(self, chosen: list[_Site]) -> FleetHealth:
        site_statuses: list[AgentStatus] = []
        agent_counts = status_counts(())
        attention: list[SiteAttention] = []
        for site in sorted(chosen, key=lambda site: site.name):
            judged, counts = self._site_verdict(site)
            site_statuses.append(judged.status)
            for status, count in counts.items():
                agent_counts[status] += count
            if judged.status is not AgentStatus.ok:
                attention.append(
                    SiteAttention(
                        site=site.name, status=judged.status, reasons=list(judged.reasons)
                    )
                )
        attention.sort(key=lambda entry: (-entry.status.severity, entry.site))
        return FleetHealth(
            status=worst(site_statuses),
            sites=status_counts(site_statuses),
            agents=agent_counts,
            attention=attention,
        )

    def site_statuses(self, context: HealthContext) -> list[SiteStatus]:
        """Every site's verdict now, with each agent's, by site name (alerts and metrics)."""
        statuses: list[SiteStatus] = []
        for site in sorted(self._sites.values(), key=lambda site: site.name):
            self._judge_site(site, context)
            judged, _ = self._site_verdict(site)
            statuses.append(
                SiteStatus(
                    site=site.name,
                    verdict=judged,
                    agents=tuple(
                        AgentStatusEntry(entry.record.name, entry.verdict(), entry.connected)
                        for entry in site.ordered()
                    ),
                    config_revision=site.config_revision,
                )
            )
        return statuses

    async def _site(self, name: str, context: HealthContext) -> _Site:
        site = self._by_name.get(name)
        if site is None:
            async with self._sessionmaker() as session:
                await self._load_site(session, name)
            site = self._by_name[name]
        self._judge_site(site, context)
        return site

    def _judge_site(self, site: _Site, context: HealthContext) -> None:
        changed = False
        for entry in site.agents.values():
            changed = entry.judge(context) or changed
        if changed:
            self._changed(site)

    def _site_verdict(self, site: _Site) -> tuple[Verdict, dict[AgentStatus, int]]:
        if site.verdict is None or site.verdict[0] != site.generation:
            ordered = site.ordered()
            judged = site_verdict((entry.record.name, entry.verdict()) for entry in ordered)
            counts = status_counts(entry.verdict().status for entry in ordered)
            site.verdict = (site.generation, judged, counts)
        return site.verdict[1], site.verdict[2]

    def _public_json(self, site: _Site, entry: _Entry, context: HealthContext) -> bytes:
        # Judged here too: while an answer is being built, the event loop may have let a
        # link replace this agent's record.
        if entry.judge(context):
            self._changed(site)
        if entry.public_json is None:
            public = agent_public(
                entry.record, site.name, entry.verdict(), connected=entry.connected
            )
            entry.public_json = public.model_dump_json().encode()
        return entry.public_json

    def _summary_json(self, site: _Site, entry: _Entry, context: HealthContext) -> bytes:
        if entry.judge(context):
            self._changed(site)
        if entry.summary_json is None:
            summary = agent_summary(entry.record, entry.verdict(), connected=entry.connected)
            entry.summary_json = summary.model_dump_json().encode()
        return entry.summary_json

    def _changed(self, site: _Site) -> None:
        site.generation += 1
        self._generation += 1

    def _differs(self, marker: Sequence[Any]) -> bool:
        # Every state a link records moves `last_seen_at` on, except the disconnect, which
        # turns `connected` off: these two columns tell whether a row holds a newer state.
        agent_id, site_id, name, deployment, token_active, last_seen_at, connected = marker
        entry = self._agents.get(agent_id)
        if entry is None:
            return True
        record = entry.record
        if (record.site_id, record.name, record.deployment, record.token_active) != (
            site_id,
            name,
            deployment,
            token_active,
        ):
            return True
        if entry.local:
            return _later(last_seen_at, record.last_seen_at)
        return (record.last_seen_at, record.connected) != (last_seen_at, connected)

    def _merge(self, stored: AgentRecord) -> None:
        site = self._sites.get(stored.site_id)
        if site is None:
            return
        entry = self._agents.get(stored.id)
        unplaced = self._unplaced.pop(stored.id, None)
        if entry is None:
            if unplaced is not None and not _later(stored.last_seen_at, unplaced.last_seen_at):
                entry = _Entry(dataclasses.replace(stored, **unplaced.columns()), local=True)
            else:
                entry = _Entry(stored, local=False)
            site.add(entry)
            self._agents[stored.id] = entry
            self._changed(site)
            return
        if entry.local and not _later(stored.last_seen_at, entry.record.last_seen_at):
            # The link's state here is newer than the stored one; only what the API changes
            # (the token) comes from the row.
            stored = dataclasses.replace(
                entry.record,
                name=stored.name,
                deployment=stored.deployment,
                token_active=stored.token_active,
            )
        else:
            entry.local = False
        renamed = stored.name != entry.record.name
        if entry.replace(stored):
            if renamed:
                site.reorder()
            self._changed(site)

    def _place_site(self, site_id: uuid.UUID, name: str, revision: int) -> _Site:
        site = self._sites.get(site_id)
        if site is None:
            site = _Site(site_id, name, revision)
            self._sites[site_id] = site
            self._by_name[name] = site
            self._generation += 1
        else:
            self.set_revision(site_id, revision)
        return site

    def _drop_site(self, site_id: uuid.UUID) -> None:
        site = self._sites.pop(site_id)
        del self._by_name[site.name]
        for agent_id in site.agents:
            del self._agents[agent_id]
        self._generation += 1

    def _drop_agent(self, agent_id: uuid.UUID) -> None:
        entry = self._agents.pop(agent_id)
        site = self._sites[entry.record.site_id]
        site.remove(agent_id)
        self._changed(site)

    async def _load_site(self, session: AsyncSession, name: str) -> None:
        row = await sites.site_by_name(session, name)
        site_id, site_name = row.id, row.name
        revisions = await latest_revision_numbers(session, [site_id])
        self._place_site(site_id, site_name, revisions[site_id])
        records = await _read(session, select_records().where(_AGENTS.c.site_id == site_id))
        for record in records:
            self._merge(record)

    async def _load_agents(self, session: AsyncSession, agent_ids: Collection[uuid.UUID]) -> None:
        records = await _read_records(session, agent_ids)
        unknown_sites = {record.site_id for record in records} - self._sites.keys()
        if unknown_sites:
            site_rows = (
                await session.execute(select(Site.id, Site.name).where(Site.id.in_(unknown_sites)))
            ).all()
            revisions = await latest_revision_numbers(session, unknown_sites)
            for site_id, name in site_rows:
                self._place_site(site_id, name, revisions[site_id])
        for record in records:
            self._merge(record)


def _left_to_resync(exc: Exception) -> None:
    # The write itself succeeded, and its answer (a token shown once) must reach the caller;
    # the view catches up at its next resync.
    logger.warning(
        "could not read a write back into the fleet view; the next resync will",
        error=type(exc).__name__,
    )


def _later(first: dt.datetime | None, second: dt.datetime | None) -> bool:
    """Whether `first` is a moment after `second` (any moment is after none)."""
    return first is not None and (second is None or first > second)


async def _built(
    entries: list[_Entry],
    kept: Callable[[_Entry], bytes | None],
    build: Callable[[_Entry], bytes],
) -> list[bytes]:
    # Most parts are kept from the previous answer; the event loop gets a turn after every
    # BUILD_CHUNK that had to be rebuilt, so that a site-wide answer does not hold up the
    # small requests behind it.
    parts: list[bytes] = []
    rebuilt = 0
    for entry in entries:
        part = kept(entry)
        if part is None:
            part = build(entry)
            rebuilt += 1
            if rebuilt % BUILD_CHUNK == 0:
                await asyncio.sleep(0)
        parts.append(part)
    return parts


def _with_array(head: BaseModel, field: str, parts: Iterable[bytes]) -> bytes:
    """The JSON of `head` with its last field, an empty list, holding the serialized `parts`
    (the same bytes as serializing the whole model, without serializing any part again)."""
    assert list(type(head).model_fields)[-1] == field, f"{field} must be the last field"
    document = head.model_dump_json(exclude={field}).encode()
    separator = b"," if document != b"{}" else b""
    return b"".join(
        (document[:-1], separator, b'"', field.encode(), b'":[', b",".join(parts), b"]}")
    )


async def _read(session: AsyncSession, statement: Any) -> list[AgentRecord]:
    return [record_of(row) for row in (await session.execute(statement)).all()]


async def _read_records(
    session: AsyncSession, agent_ids: Collection[uuid.UUID]
) -> list[AgentRecord]:
    ids = list(agent_ids)
    records: list[AgentRecord] = []
    for start in range(0, len(ids), RELOAD_CHUNK):
        chunk = ids[start : start + RELOAD_CHUNK]
        records.extend(await _read(session, select_records().where(_AGENTS.c.id.in_(chunk))))
    return records
