"""Pull mode as one task of the agent: a `SourcePoller` per configured source.

`PullService.run` follows the site config: in pull mode it runs one poller per entry of
`pull.sources` (starting, reconfiguring and stopping them as revisions arrive through
`apply`), in push mode none. The first time it pulls in a data directory it ties the state
database to it (`bind_ledger`). All pollers share one limit of concurrent retrievals.

Must not import pynetdicom (only through `agent.dicom.scu`), HTTP libraries or control_plane.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from agent.dicom.scu import RequestorEngine, SpoolSink
from agent.health import PipelineCounters, PullSourceHealth
from agent.pull.ledger import PullLedger, bind_ledger
from agent.pull.poller import SourcePoller, source_key
from agent.site import SiteSnapshot
from agent.spool import Spool
from agent.state import AgentState

__all__ = ["PullService"]

log = structlog.get_logger(__name__)


class PullService:
    """Runs the pollers the current site config asks for; owns their tasks."""

    def __init__(
        self,
        state: AgentState,
        spool: Spool,
        snapshot: SiteSnapshot,
        *,
        data_dir: Path,
        counters: PipelineCounters,
        clock: Callable[[], float] = time.time,
        on_stored: Callable[[str], None] | None = None,
        requestor_engine: RequestorEngine = "lean",
    ) -> None:
        """`on_stored(series_instance_uid)` is called on a DICOM thread for each instance a
        C-GET spooled (the listener calls its own for C-MOVE); `requestor_engine` talks to
        the sources."""
        self._state = state
        self._ledger = PullLedger(state)
        self._sink = SpoolSink(spool, on_stored)
        self._snapshot = snapshot
        self._data_dir = data_dir
        self._counters = counters
        self._clock = clock
        self._requestor_engine = requestor_engine
        self._pollers: dict[str, SourcePoller] = {}
        self._round_locks: dict[str, asyncio.Lock] = {}
        self._slots_size = snapshot.config.pull.max_concurrent_retrievals
        self._slots = asyncio.Semaphore(self._slots_size)
        self._changed = asyncio.Event()
        self._stopping = False
        self._bound = False

    def apply(self, snapshot: SiteSnapshot) -> None:
        """Follow a new site config (event-loop thread only)."""
        self._snapshot = snapshot
        self._changed.set()

    def stop(self) -> None:
        """Stop every poller (their open associations are aborted) and end `run`. Idempotent."""
        self._stopping = True
        for poller in self._pollers.values():
            poller.stop()
        self._changed.set()

    def health(self) -> tuple[PullSourceHealth, ...]:
        """One entry per source being polled (blocking: reads the ledger)."""
        return tuple(poller.health() for poller in list(self._pollers.values()))

    async def echo_now(self, source: str) -> tuple[bool, str]:
        """C-ECHO a source now (a support command); whether it answered, and a sentence."""
        poller = self._pollers.get(source)
        if poller is None:
            return False, self._unknown(source)
        started = time.monotonic()
        if await poller.echo():
            return True, f"{source} answered C-ECHO in {(time.monotonic() - started) * 1000:.0f} ms"
        health = await asyncio.to_thread(poller.health)
        return False, f"{source} did not answer C-ECHO: {health.echo_error or 'no reason given'}"

    async def query_now(self, source: str) -> tuple[bool, str]:
        """Run a query round of a source now (a support command), retrievals included."""
        poller = self._pollers.get(source)
        if poller is None:
            return False, self._unknown(source)
        report = await poller.poll_once()
        if not report.ok or report.changes is None:
            return False, f"{source} could not be queried: {report.error or 'no reason given'}"
        return True, (
            f"{source}: {report.changes.seen} series listed in {report.duration * 1000:.0f} ms,"
            f" {len(report.retrievals)} retrieval(s), {report.failed_retrievals} failed"
        )

    def _unknown(self, source: str) -> str:
        known = ", ".join(sorted(self._pollers)) or "none (the site is not in pull mode)"
        return f"{source} is not a PULL source of this agent; its sources: {known}"

    async def run(self) -> None:
        """Run until `stop`; the pollers' tasks end with it."""
        async with asyncio.TaskGroup() as group:
            while not self._stopping:
                await self._follow_config(group)
                await self._changed.wait()
                self._changed.clear()
            for poller in self._pollers.values():
                poller.stop()

    async def _follow_config(self, group: asyncio.TaskGroup) -> None:
        snapshot = self._snapshot
        config = snapshot.config
        wanted = (
            {source_key(source): source for source in config.pull.sources}
            if config.mode == "pull"
            else {}
        )
        if wanted and not self._bound:
            await asyncio.to_thread(bind_ledger, self._state, self._data_dir)
            self._bound = True
        if config.pull.max_concurrent_retrievals != self._slots_size:
            # Retrievals already running keep their slot in the old semaphore.
            self._slots_size = config.pull.max_concurrent_retrievals
            self._slots = asyncio.Semaphore(self._slots_size)
        for key in [key for key in self._pollers if key not in wanted]:
            self._pollers.pop(key).stop()
            log.info("pull.source_removed", revision=snapshot.revision)
        for key, source in wanted.items():
            poller = self._pollers.get(key)
            if poller is not None:
                poller.configure(source, snapshot, self._slots)
                continue
            poller = SourcePoller(
                source,
                snapshot,
                state=self._state,
                ledger=self._ledger,
                sink=self._sink,
                slots=self._slots,
                counters=self._counters,
                clock=self._clock,
                round_lock=self._round_locks.setdefault(key, asyncio.Lock()),
                requestor_engine=self._requestor_engine,
            )
            self._pollers[key] = poller
            group.create_task(poller.run(), name=f"pull {key}")
            log.info(
                "pull.source_added",
                peer_ae=source.ae_title,
                peer_host=source.host,
                port=source.port,
                mode=source.retrieve,
                revision=snapshot.revision,
            )
