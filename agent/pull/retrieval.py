"""Retrieve one series from a source and check that every announced instance arrived.

A series fetched for the first time (or of which nothing is here) is asked for whole, with one
SERIES-level C-MOVE (or C-GET); it is complete when the source reported no failed
sub-operation and the state database knows at least as many of its instances as the source
announced. Otherwise, and for every later retrieval (instances added to a series already
retrieved, a retry of a short one), an image-level C-FIND lists the instances the source holds
and only those the agent lacks are asked for, at IMAGE level: never the whole series again.
Retries ask for each missing instance on its own. A retrieval still short after `attempts`
requests is reported with its missing count.

The instances themselves arrive through the agent's own SCP (C-MOVE) or on the retrieve
association (C-GET, `SpoolSink`); either way they are durable in the spool and recorded in the
state before the source hears Success, so the check after the final response sees them all.

Blocking (run it through `asyncio.to_thread`). Must not import pynetdicom (only through
`agent.dicom.scu`), HTTP libraries or control_plane.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

from agent.dicom.scu import UIDS_PER_REQUEST, RetrieveOutcome, RetrieveSession, Scu, SpoolSink
from agent.pull.ledger import TrackedSeries
from agent.state import AgentState

__all__ = ["DEFAULT_ATTEMPTS", "RetrievalResult", "Retriever"]

# Requests per retrieval: the first one and two retries of what is still missing.
DEFAULT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class RetrievalResult:
    """How one retrieval of a series went."""

    series_instance_uid: str
    expected: int  # instances the source holds, as far as the agent knows
    received: int  # instances of the series new to the agent after this retrieval
    missing: int  # of `expected`, still not here
    requests: int  # C-MOVE/C-GET requests sent
    problem: str | None = None  # the source's last status other than Success, if any

    @property
    def complete(self) -> bool:
        """Every expected instance is here."""
        return self.missing == 0


class Retriever:
    """Fetches series from one source by C-MOVE to `destination_ae_title` or by C-GET."""

    def __init__(
        self,
        scu: Scu,
        state: AgentState,
        *,
        method: Literal["move", "get"],
        destination_ae_title: str,
        sink: SpoolSink,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        """`sink` receives the C-GET instances; `attempts` bounds the requests per retrieval."""
        if attempts < 1:
            raise ValueError(f"attempts must be 1 or more, got {attempts}")
        self._scu = scu
        self._state = state
        self._method = method
        self._destination = destination_ae_title
        self._sink = sink
        self._attempts = attempts

    def retrieve(self, series: TrackedSeries) -> RetrievalResult:
        """Fetch what the agent lacks of `series`; raise `SourceError` if the source fails."""
        study, uid = series.study_instance_uid, series.series_instance_uid
        before = self._state.series_sop_instance_uids(uid)
        local = before
        requests = 0
        outcome = RetrieveOutcome()
        if series.first_retrieval or not before:
            with self._session() as session:
                outcome = session.series(study, uid)
            requests += 1
            local = self._state.series_sop_instance_uids(uid)
            if outcome.ok and len(local) >= series.remote_count:
                return RetrievalResult(uid, series.remote_count, len(local - before), 0, requests)
        with self._scu.query() as query:
            remote = query.instances(study, uid)
        missing = remote - local
        while missing and requests < self._attempts:
            # A retry asks for each instance on its own: a source that stops a retrieval at
            # the first instance it cannot send (Orthanc does) then still sends the others.
            per_request = 1 if requests else UIDS_PER_REQUEST
            with self._session() as session:
                outcome = session.instances(study, uid, sorted(missing), per_request=per_request)
            requests += 1
            local = self._state.series_sop_instance_uids(uid)
            missing = remote - local
        problem = outcome.problem if missing else None
        return RetrievalResult(
            uid, len(remote), len(local - before), len(missing), requests, problem
        )

    def _session(self) -> AbstractContextManager[RetrieveSession]:
        if self._method == "get":
            return self._scu.retrieve_by_get(self._sink)
        return self._scu.retrieve_by_move(self._destination)
