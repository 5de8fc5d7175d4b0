"""The query rounds of one source: study-level, then series-level C-FIND, with counts.

A round asks for the studies dated inside the lookback window (with their series and instance
counts), then for each study's series with NumberOfSeriesRelatedInstances; a series whose count
the source does not give is counted with an image-level C-FIND. All of it runs on one
association, and a round either completes or raises `SourceError`: a half-answered round is
never taken for a source with fewer series.

Most studies do not change between two polls, and asking for their series again is most of a
round's cost (one response per series). So a study whose series and instance counts are the
same as in the previous round, and add up with the series remembered for it, keeps those series
without a series-level query. Every `full_every`-th round asks for every study's series anyway,
so a change the counts cannot show (a series replaced by another of the same size) is seen
within that many rounds. A study the source gives no counts for is always asked.

Blocking (run it through `asyncio.to_thread`), one round at a time. Must not import pynetdicom
(only through `agent.dicom.scu`), HTTP libraries or control_plane.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from agent.dicom.scu import QuerySession, Scu, StudyMatch
from agent.pull.ledger import RemoteSeries

__all__ = ["FULL_ROUND_EVERY", "QueryRounds", "RoundQueries"]

FULL_ROUND_EVERY = 10


@dataclass(frozen=True, slots=True)
class RoundQueries:
    """How much asking a round took: study-level once, then per study and per series."""

    studies: int
    series_queries: int  # studies whose series were asked for
    image_queries: int  # series counted instance by instance


@dataclass(frozen=True, slots=True)
class _StudyView:
    match: StudyMatch
    series: tuple[RemoteSeries, ...]

    def still_valid_for(self, study: StudyMatch) -> bool:
        return (
            study.series_count is not None
            and study.instance_count is not None
            and study == self.match
            and len(self.series) == study.series_count
            and sum(series.instance_count for series in self.series) == study.instance_count
        )


class QueryRounds:
    """Runs the rounds of one source and remembers each study's series between them."""

    def __init__(self, scu: Scu, *, full_every: int = FULL_ROUND_EVERY) -> None:
        if full_every < 1:
            raise ValueError(f"full_every must be 1 or more, got {full_every}")
        self._scu = scu
        self._full_every = full_every
        self._rounds = 0
        self._views: dict[str, _StudyView] = {}
        self.last_queries: RoundQueries | None = None

    def run(self, since: dt.date) -> list[RemoteSeries]:
        """Every series of the studies dated `since` or later on the source, with its count.

        Raises `agent.dicom.scu.SourceError` when any query of the round fails or times out;
        what was remembered from earlier rounds is then kept as it was.
        """
        full = self._rounds % self._full_every == 0
        views: dict[str, _StudyView] = {}
        series_queries = image_queries = 0
        with self._scu.query() as session:
            studies = {study.study_instance_uid: study for study in session.studies(since)}
            for uid, study in studies.items():
                previous = self._views.get(uid)
                if not full and previous is not None and previous.still_valid_for(study):
                    views[uid] = previous
                    continue
                found, counted = _series_of(session, uid)
                views[uid] = _StudyView(study, found)
                series_queries += 1
                image_queries += counted
        self._views = views
        self._rounds += 1
        self.last_queries = RoundQueries(len(studies), series_queries, image_queries)
        unique = {
            series.series_instance_uid: series for view in views.values() for series in view.series
        }
        return list(unique.values())


def _series_of(session: QuerySession, study_uid: str) -> tuple[tuple[RemoteSeries, ...], int]:
    """The series of one study with their counts, and how many had to be counted by image."""
    found: dict[str, RemoteSeries] = {}
    counted = 0
    for match in session.series(study_uid):
        count = match.instance_count
        if count is None:
            count = len(session.instances(study_uid, match.series_instance_uid))
            counted += 1
        found[match.series_instance_uid] = RemoteSeries(
            study_instance_uid=study_uid,
            series_instance_uid=match.series_instance_uid,
            instance_count=count,
        )
    return tuple(found.values()), counted
