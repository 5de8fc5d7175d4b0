"""Retrieve one series from a source and check that every announced instance arrived.

A series fetched for the first time (or of which nothing is here) is asked for whole, with one
SERIES-level C-MOVE (or C-GET); it is complete when the source reported no failed
sub-operation and the state database knows at least as many of its instances as the source
announced. Otherwise, and for every later retrieval (instances added to a series already
retrieved, a retry of a short one), an image-level C-FIND lists the instances the source holds
and only those the agent lacks are asked for, at IMAGE level: never the whole series again.
Retries ask for each missing instance on its own. A retrieval still short after `attempts`
rounds of requests is reported with its missing count.

A large series fetched for the first time can be split (`parts`, given by the poller from the
retrieve slots nobody else waits for): an image-level C-FIND lists its instances and that many
image-level requests, each on its own association, fetch a share each at the same time. The
agent answers every C-STORE only once the instance is durable, so one association is a
ping-pong of one fsync per instance; several at once let the spool's group commit share the
disk's flushes between them (docs/benchmarks.md, "Pull").

The instances themselves arrive through the agent's own SCP (C-MOVE) or on the retrieve
association (C-GET, `SpoolSink`); either way they are durable in the spool and recorded in the
state before the source hears Success, so the check after the final response sees them all.

Blocking (run it through `asyncio.to_thread`). Must not import pynetdicom (only through
`agent.dicom.scu`), HTTP libraries or control_plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

from agent.dicom.scu import (
    UIDS_PER_REQUEST,
    RetrieveOutcome,
    RetrieveSession,
    Scu,
    SourceError,
    SpoolSink,
)
from agent.pull.ledger import TrackedSeries
from agent.state import AgentState

__all__ = [
    "DEFAULT_ATTEMPTS",
    "MAX_PARTS",
    "MIN_PART_INSTANCES",
    "RetrievalResult",
    "Retriever",
    "useful_parts",
]

# Rounds of requests per retrieval: the first one and two retries of what is still missing.
DEFAULT_ATTEMPTS = 3
# A series is split only when each part gets at least this many instances: below it the
# image-level C-FIND and the extra associations cost more than the shared flushes save.
MIN_PART_INSTANCES = 16
# Parts of one series at most: past four associations the spool's group commit is the limit.
MAX_PARTS = 4


def useful_parts(series: TrackedSeries) -> int:
    """How many associations a retrieval of `series` can use at most: one, unless it is a
    first retrieval large enough to give every part `MIN_PART_INSTANCES` (at most
    `MAX_PARTS`)."""
    if not series.first_retrieval:
        return 1
    return max(1, min(MAX_PARTS, series.remote_count // MIN_PART_INSTANCES))


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

    def retrieve(self, series: TrackedSeries, parts: int = 1) -> RetrievalResult:
        """Fetch what the agent lacks of `series`; raise `SourceError` if the source fails.

        `parts` > 1 lets a first retrieval of a large series run as that many image-level
        requests at once, each on its own association (see the module's docstring).
        """
        study, uid = series.study_instance_uid, series.series_instance_uid
        before = self._state.series_sop_instance_uids(uid)
        local = before
        requests = attempts = 0
        outcome = RetrieveOutcome()
        remote: set[str] | None = None
        if series.first_retrieval or not before:
            parts = min(parts, useful_parts(series))
            if parts > 1:
                remote = self._listed(study, uid)
                outcome, requests = self._in_parts(study, uid, sorted(remote - before), parts)
            else:
                with self._session() as session:
                    outcome = session.series(study, uid)
                requests = 1
            attempts = 1
            local = self._state.series_sop_instance_uids(uid)
            expected = series.remote_count if remote is None else len(remote)
            if outcome.ok and len(local) >= expected and (remote is None or remote <= local):
                return RetrievalResult(uid, expected, len(local - before), 0, requests)
        if remote is None:
            remote = self._listed(study, uid)
        missing = remote - local
        while missing and attempts < self._attempts:
            # A retry asks for each instance on its own: a source that stops a retrieval at
            # the first instance it cannot send (Orthanc does) then still sends the others.
            per_request = 1 if attempts else UIDS_PER_REQUEST
            with self._session() as session:
                outcome = session.instances(study, uid, sorted(missing), per_request=per_request)
            requests += -(-len(missing) // per_request)
            attempts += 1
            local = self._state.series_sop_instance_uids(uid)
            missing = remote - local
        problem = outcome.problem if missing else None
        return RetrievalResult(
            uid, len(remote), len(local - before), len(missing), requests, problem
        )

    def _listed(self, study: str, uid: str) -> set[str]:
        with self._scu.query() as query:
            return query.instances(study, uid)

    def _in_parts(
        self, study: str, uid: str, sop_instance_uids: Sequence[str], parts: int
    ) -> tuple[RetrieveOutcome, int]:
        """Fetch the instances in `parts` shares at once, one association each; return the
        outcomes summed and the requests sent. A share whose association failed counts as a
        problem (the retries ask for what it lacks); all of them failing raises the first
        `SourceError`."""
        uids = sop_instance_uids
        if not uids:
            return RetrieveOutcome(), 0
        size = -(-len(uids) // parts)
        shares = [uids[at : at + size] for at in range(0, len(uids), size)]

        def fetch(share: Sequence[str]) -> RetrieveOutcome:
            with self._session() as session:
                return session.instances(study, uid, share)

        with ThreadPoolExecutor(len(shares), thread_name_prefix="retrieve-part") as pool:
            futures = [pool.submit(fetch, share) for share in shares]
        total = RetrieveOutcome()
        failures: list[SourceError] = []
        for future in futures:
            error = future.exception()
            if error is None:
                total += future.result()
            elif isinstance(error, SourceError):
                failures.append(error)
                total += RetrieveOutcome(problem=str(error))
            else:
                raise error
        if len(failures) == len(shares):
            raise failures[0]
        requests = sum(-(-len(share) // UIDS_PER_REQUEST) for share in shares)
        return total, requests

    def _session(self) -> AbstractContextManager[RetrieveSession]:
        if self._method == "get":
            return self._scu.retrieve_by_get(self._sink)
        return self._scu.retrieve_by_move(self._destination)
