"""Batched writes of what agent links say: link state onto `agents`, reports into the history.

A thousand agents heartbeating every 10 s are a hundred messages a second; writing each in
its own transaction would keep the database (SQLite above all) busy with commits. Links
hand their latest state and each health report to the `LinkRecorder`, which writes whatever
accumulated in one transaction per flush — an executemany UPDATE of the agents that changed
and an executemany INSERT of the reports — so the cost is two statements per flush, not per
message. Every state is also handed at once to a listener (the hub's in-memory `FleetView`),
so that the API need not wait for the flush. A flush that fails keeps its data for the next
one (the newest state of an agent wins; the history buffer is capped), and says so in the
log; a batch the database refuses for good (a constraint violation) is dropped, so that it
cannot block every later flush. A flush that holds a state readers should see soon (a
connect, a disconnect, a config result) also tells the other replicas, in its transaction.

Must not import FastAPI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.messages import SeriesFigures
from control_plane.fleet.health_rules import Verdict
from control_plane.fleet.notices import FleetNotice, announce
from control_plane.models import Agent, AgentHealthReport, SeriesFigure

logger = structlog.get_logger(__name__)

# Reports waiting while the database is unreachable: about 10 minutes of a 1,000-agent fleet.
MAX_PENDING_REPORTS = 60_000


@dataclass(frozen=True)
class LinkState:
    """What an agent's link last said, column for column as written to its `agents` row."""

    agent_version: str | None
    config_revision: int | None
    config_failed_revision: int | None
    config_failure_reason: str | None
    connected: bool
    connected_at: datetime | None
    disconnected_at: datetime | None
    last_seen_at: datetime | None
    health_report: dict[str, Any] | None
    health_reported_at: datetime | None
    health_status: str | None
    health_reasons: list[str] | None

    @classmethod
    def columns_of_agent(cls) -> list[Any]:
        """The `agents` columns a `LinkState` is read from, in `from_row` order."""
        return [getattr(Agent, name) for name in _COLUMNS]

    @classmethod
    def from_row(cls, values: Sequence[Any]) -> LinkState:
        """The state from the values of `columns_of_agent()`, in that order."""
        return cls(*values)

    def columns(self) -> dict[str, Any]:
        """Column name → value (shallow: `dataclasses.asdict` would deep-copy every report)."""
        return {name: getattr(self, name) for name in _COLUMNS}


_COLUMNS = tuple(field.name for field in dataclasses.fields(LinkState))
_AGENTS = Agent.metadata.tables[Agent.__tablename__]
_REPORTS = AgentHealthReport.metadata.tables[AgentHealthReport.__tablename__]
_FIGURES = SeriesFigure.metadata.tables[SeriesFigure.__tablename__]
_UPDATE_LINK_STATE = (
    update(_AGENTS)
    .where(_AGENTS.c.id == bindparam("agent_id"))
    .values({name: bindparam(name) for name in _COLUMNS})
)


class LinkRecorder:
    """Collects link states and health reports; `flush()` writes them in one transaction."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        history_per_agent: int,
        on_state: Callable[[uuid.UUID, LinkState], None] | None = None,
        notice: FleetNotice | None = None,
    ) -> None:
        """`notice` is announced with each flush that holds an urgent state, so that other
        replicas' readers catch up at once (`control_plane.fleet.notices`)."""
        self._sessionmaker = sessionmaker
        self._on_state = on_state
        self._history_per_agent = history_per_agent
        self._states: dict[uuid.UUID, LinkState] = {}
        self._reports: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING_REPORTS)
        # Series figures are facts, not states: kept like reports (capped while the database
        # is away), written in the same transaction.
        self._figures: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING_REPORTS)
        self._dropped_reports = 0
        self._lock = asyncio.Lock()
        self._notice = notice
        self._notice_due = False
        self.urgent = asyncio.Event()
        """Set when something was recorded that readers should see soon (a connect, a
        disconnect, a config result); the flush loop wakes early for it."""

    @property
    def pending(self) -> int:
        """States and reports not yet written."""
        return len(self._states) + len(self._reports) + len(self._figures)

    def record_state(self, agent_id: uuid.UUID, state: LinkState, *, urgent: bool = False) -> None:
        """Write `state` as the agent's link state at the next flush (replacing any older),
        and hand it to the listener now."""
        self._states[agent_id] = state
        if self._on_state is not None:
            self._on_state(agent_id, state)
        if urgent:
            self._notice_due = True
            self.urgent.set()

    def record_report(
        self, agent_id: uuid.UUID, received_at: datetime, verdict: Verdict, report: dict[str, Any]
    ) -> None:
        """Add a health report, with the status it earned, to the history at the next flush."""
        if len(self._reports) == MAX_PENDING_REPORTS:
            self._dropped_reports += 1
        self._reports.append(
            {
                "id": uuid.uuid4(),
                "agent_id": agent_id,
                "received_at": received_at,
                "status": verdict.status.value,
                "reasons": list(verdict.reasons),
                "report": report,
            }
        )

    def record_figures(
        self,
        site_id: uuid.UUID,
        agent_id: uuid.UUID,
        received_at: datetime,
        figures: Sequence[SeriesFigures],
    ) -> None:
        """Add an agent's series figures to the next flush."""
        for item in figures:
            if len(self._figures) == MAX_PENDING_REPORTS:
                self._dropped_reports += 1
            self._figures.append(
                {
                    "id": uuid.uuid4(),
                    "site_id": site_id,
                    "agent_id": agent_id,
                    "recorded_at": received_at,
                    # The trace is joined when the figures arrive (control_plane.link), not kept.
                    **item.model_dump(exclude={"traceparent"}),
                }
            )

    async def flush(self) -> None:
        """Write everything recorded so far, in one transaction.

        Once this returns, everything recorded before the call is stored — or was refused by
        the database for good (a constraint, not an outage) and dropped, so that one bad row
        cannot stop all recording; that is logged.

        Raises:
            OperationalError, InterfaceError, OSError: the database could not be reached or
                was busy; everything is kept for the next flush.
        """
        async with self._lock:
            states, self._states = self._states, {}
            reports = list(self._reports)
            self._reports.clear()
            figures = list(self._figures)
            self._figures.clear()
            notice = self._notice if self._notice_due else None
            self._notice_due = False
            if not states and not reports and not figures:
                return
            try:
                await self._write(states, reports, figures, notice)
            except (OperationalError, InterfaceError, OSError):
                self._notice_due = self._notice_due or notice is not None
                self._restore(states, reports)
                self._figures.extendleft(reversed(figures))
                raise
            except SQLAlchemyError as exc:
                logger.error(
                    "the database refused a batch of agent link records; dropped",
                    error=type(exc).__name__,
                    count=len(states) + len(reports),
                )
        if self._dropped_reports:
            logger.warning(
                "health reports dropped while the database was unreachable",
                count=self._dropped_reports,
            )
            self._dropped_reports = 0

    async def prune_history(self) -> None:
        """Delete each agent's reports beyond the newest `history_per_agent`."""
        ranked = select(
            AgentHealthReport.id,
            func.row_number()
            .over(
                partition_by=AgentHealthReport.agent_id,
                order_by=AgentHealthReport.received_at.desc(),
            )
            .label("rank"),
        ).subquery()
        async with self._sessionmaker() as session:
            await session.execute(
                delete(AgentHealthReport).where(
                    AgentHealthReport.id.in_(
                        select(ranked.c.id).where(ranked.c.rank > self._history_per_agent)
                    )
                )
            )
            await session.commit()

    async def _write(
        self,
        states: dict[uuid.UUID, LinkState],
        reports: list[dict[str, Any]],
        figures: list[dict[str, Any]] | None = None,
        notice: FleetNotice | None = None,
    ) -> None:
        # Core statements on the tables: the ORM's bulk paths do per-row bookkeeping that a
        # flush of a thousand agents pays for on the event loop.
        async with self._sessionmaker() as session:
            if states:
                await session.execute(
                    _UPDATE_LINK_STATE,
                    [
                        {"agent_id": agent_id, **state.columns()}
                        for agent_id, state in states.items()
                    ],
                )
            if reports:
                await session.execute(insert(_REPORTS), reports)
            if figures:
                await session.execute(insert(_FIGURES), figures)
            if notice is not None:
                await announce(session, notice)
            await session.commit()

    def _restore(self, states: dict[uuid.UUID, LinkState], reports: list[dict[str, Any]]) -> None:
        # States recorded while the write was failing are newer than the ones given back;
        # reports go back in front of the newer ones, the oldest falling off a full buffer.
        for agent_id, state in states.items():
            self._states.setdefault(agent_id, state)
        combined = [*reports, *self._reports]
        self._dropped_reports += max(0, len(combined) - MAX_PENDING_REPORTS)
        self._reports = deque(combined, maxlen=MAX_PENDING_REPORTS)
