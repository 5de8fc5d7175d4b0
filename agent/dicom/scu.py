"""The query/retrieve SCU of pull mode: C-ECHO, C-FIND, C-MOVE and C-GET against one source.

Blocking: each `Scu` call opens an association and reads its answers on the calling thread, so
asyncio code calls in through `asyncio.to_thread`. Two requestor engines do the talking (agent
setting `requestor_engine`): `lean` (the default, `agent.dicom.requestor_lean`: one blocking loop
on pynetdicom's codec, no thread of its own) and `pynetdicom` (`agent.dicom.requestor_pynetdicom`:
pynetdicom's AE with its reader threads), kept for one release. Every step has a timeout (TCP
connect, association negotiation, each DIMSE answer, an idle network), and `Scu.abort` ends the
open associations from any thread, so stopping never waits for a PACS.

The queries ask only for what tracking needs (UIDs, instance counts, the study date as the
window): no patient attribute is requested. A C-MOVE sends the images to our own AE title, where
the listener spools them like any PUSH; a C-GET receives them on this association and spools
them here, through the same C-STORE handler (`SpoolSink`).

Errors and log lines carry the source's AE title, host and port, statuses and counts, never a
DICOM value.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from agent.dicom import requestor_lean, requestor_pynetdicom
from agent.dicom.engine.commands import StoreRequest
from agent.dicom.intake import status_dataset, store_part10, store_received
from agent.dicom.scp import DEFAULT_DUL_LOOP_DELAY
from agent.dicom.source import (
    REQUESTOR_ENGINES,
    Purpose,
    RequestorEngine,
    SourceAddress,
    SourceError,
    SourceLink,
)
from agent.dicom.store_handler import StoreHandler
from agent.dicom.tls import TlsFiles
from agent.spool import Spool

__all__ = [
    "REQUESTOR_ENGINES",
    "UIDS_PER_REQUEST",
    "QuerySession",
    "RequestorEngine",
    "RetrieveOutcome",
    "RetrieveSession",
    "Scu",
    "SeriesMatch",
    "SourceAddress",
    "SourceError",
    "SpoolSink",
    "StudyMatch",
]

# Larger receive PDUs mean fewer PDU decodes per instance received over C-GET.
_MAXIMUM_PDU_SIZE = 1 << 20
# A UID list in one IMAGE-level retrieve; keeps the identifier well under any peer's limits.
UIDS_PER_REQUEST = 200
_PENDING = frozenset({0xFF00, 0xFF01})
_SUCCESS = 0x0000
# What a C-GET asks the source to send in: uncompressed, plus the compressed syntaxes PACS
# usually hold, so the source need not transcode (or refuse) what it stored compressed.
_GET_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEG2000,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
_STATUS_HINTS = {
    0xA701: "out of resources (it cannot count the matches)",
    0xA702: "out of resources (it cannot perform the sub-operations)",
    0xA801: "it does not know the move destination: register the agent's AE title, host and "
    "port on the source",
    0xA900: "identifier does not match the SOP class",
    0xB000: "some sub-operations failed",
    0xC000: "unable to process",
    0xFE00: "cancelled",
}


@dataclass(frozen=True, slots=True)
class StudyMatch:
    """One study a study-level C-FIND returned; counts None when the source gives none."""

    study_instance_uid: str
    series_count: int | None
    instance_count: int | None


@dataclass(frozen=True, slots=True)
class SeriesMatch:
    """One series a series-level C-FIND returned; `instance_count` None when not given."""

    study_instance_uid: str
    series_instance_uid: str
    instance_count: int | None


@dataclass(frozen=True, slots=True)
class RetrieveOutcome:
    """What the source reported for one or more C-MOVE/C-GET requests.

    `problem` describes the last final status that was not Success (a failure or warning),
    None when every request succeeded. Which images arrived is for the caller to check: a
    source may fail a retrieval half-way (Orthanc stops at the first refused sub-operation).
    """

    completed: int = 0
    failed: int = 0
    warning: int = 0
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """Every request ended in Success with no failed sub-operation."""
        return self.problem is None and self.failed == 0

    def __add__(self, other: RetrieveOutcome) -> RetrieveOutcome:
        return RetrieveOutcome(
            self.completed + other.completed,
            self.failed + other.failed,
            self.warning + other.warning,
            other.problem or self.problem,
        )


class SpoolSink:
    """Spools the instances a C-GET brings in, through the listener's own C-STORE handler
    (`StoreHandler`): same checks, statuses and log lines, whichever requestor engine.

    `on_stored(series_instance_uid)` is called on the association thread after each instance
    that became durable (not for duplicates).
    """

    def __init__(self, spool: Spool, on_stored: Callable[[str], None] | None = None) -> None:
        self._spool = spool
        self._handler = StoreHandler(on_stored)

    def handle_store(self, event: Event) -> Dataset:
        """The EVT_C_STORE handler of the pynetdicom requestor: make the instance durable,
        return the status to send."""
        received_at = time.time()
        request = cast(C_STORE, event.request)
        status, comment = self._handler.handle(
            None,
            lambda: store_received(
                event, self._spool, source_ae_title=None, received_at=received_at
            ),
            str(request.AffectedSOPClassUID or ""),
        )
        return status_dataset(status, comment)

    def store_part10(
        self,
        request: StoreRequest,
        transfer_syntax_uid: str,
        part10: bytearray,
        dataset_offset: int,
        received_at: float,
    ) -> tuple[int, str | None]:
        """The store callback of the lean requestor: make the instance whose Part-10 bytes
        arrived durable; (status, error comment) to answer with."""
        status, comment = self._handler.handle(
            None,
            lambda: store_part10(
                part10,
                dataset_offset,
                self._spool,
                transfer_syntax_uid=transfer_syntax_uid,
                sop_class_uid=request.sop_class_uid,
                sop_instance_uid=request.sop_instance_uid,
                received_at=received_at,
            ),
            request.sop_class_uid,
        )
        return int(status), comment


class Scu:
    """Query/retrieve user of one source; thread-safe, one association per session."""

    def __init__(
        self,
        source: SourceAddress,
        *,
        calling_ae_title: str,
        timeout: float,
        engine: RequestorEngine = "lean",
        dul_loop_delay: float = DEFAULT_DUL_LOOP_DELAY,
        tls: TlsFiles | None = None,
    ) -> None:
        """`timeout` bounds the TCP connect, the association negotiation, each DIMSE answer
        and idle network time, in seconds. `engine` is the requestor engine
        (`dul_loop_delay` tunes the pynetdicom one's reader thread). `tls`: associate over
        TLS, presenting that certificate and checking the source's against its CA; the files
        are read for each association, so a renewed certificate is used by the next one."""
        if timeout <= 0:
            raise ValueError(f"timeout must be more than 0 seconds, got {timeout}")
        if engine not in REQUESTOR_ENGINES:
            raise ValueError(
                f"requestor engine must be one of {', '.join(REQUESTOR_ENGINES)}, got {engine!r}"
            )
        self.source = source
        self.engine = engine
        self._calling_ae_title = calling_ae_title
        self._timeout = timeout
        self._dul_loop_delay = dul_loop_delay
        self._tls = tls
        self._open: set[SourceLink] = set()
        self._open_lock = threading.Lock()
        self._aborted = False

    def echo(self) -> None:
        """C-ECHO the source; raise `SourceError` unless it answers Success."""
        with self._association("C-ECHO") as link:
            code = link.echo()
            if code != _SUCCESS:
                raise SourceError(f"{self.source} answered the C-ECHO with {_describe(code)}")

    @contextmanager
    def query(self) -> Iterator[QuerySession]:
        """An association for C-FINDs (Study Root)."""
        with self._association("C-FIND") as link:
            yield QuerySession(self, link)

    @contextmanager
    def retrieve_by_move(self, destination_ae_title: str) -> Iterator[RetrieveSession]:
        """An association for C-MOVEs that send the images to `destination_ae_title`."""
        with self._association("C-MOVE") as link:
            yield RetrieveSession(self, link, destination_ae_title)

    @contextmanager
    def retrieve_by_get(self, sink: SpoolSink) -> Iterator[RetrieveSession]:
        """An association for C-GETs; the images arrive on it and go to `sink`."""
        with self._association("C-GET", sink) as link:
            yield RetrieveSession(self, link, None)

    def abort(self) -> None:
        """Abort every open association and refuse new ones (from any thread). For shutdown."""
        with self._open_lock:
            self._aborted = True
            open_now = list(self._open)
        for link in open_now:
            link.abort()

    @contextmanager
    def _association(self, purpose: Purpose, sink: SpoolSink | None = None) -> Iterator[SourceLink]:
        with self._open_lock:
            if self._aborted:
                raise SourceError(f"no {purpose} with {self.source}: the agent is stopping")
        link: SourceLink
        if self.engine == "lean":
            link = requestor_lean.open_link(
                self.source,
                purpose,
                calling_ae_title=self._calling_ae_title,
                timeout=self._timeout,
                maximum_pdu=_MAXIMUM_PDU_SIZE,
                get_transfer_syntaxes=_GET_TRANSFER_SYNTAXES,
                tls=self._tls,
                store=None if sink is None else sink.store_part10,
            )
        else:
            link = requestor_pynetdicom.open_link(
                self.source,
                purpose,
                calling_ae_title=self._calling_ae_title,
                timeout=self._timeout,
                maximum_pdu=_MAXIMUM_PDU_SIZE,
                dul_loop_delay=self._dul_loop_delay,
                get_transfer_syntaxes=_GET_TRANSFER_SYNTAXES,
                tls=self._tls,
                store=None if sink is None else sink.handle_store,
            )
        with self._open_lock:
            self._open.add(link)
            aborted = self._aborted
        if aborted:  # abort() ran while this one was being opened
            link.abort()
        try:
            yield link
        finally:
            with self._open_lock:
                self._open.discard(link)
            link.release()


class QuerySession:
    """C-FINDs on one open association (see `Scu.query`)."""

    def __init__(self, scu: Scu, link: SourceLink) -> None:
        self._scu = scu
        self._link = link

    def studies(self, since: dt.date) -> list[StudyMatch]:
        """The studies dated `since` or later, with their series and instance counts."""
        query = _identifier(
            "STUDY",
            StudyDate=f"{since:%Y%m%d}-",
            StudyInstanceUID="",
            NumberOfStudyRelatedSeries="",
            NumberOfStudyRelatedInstances="",
        )
        matches = []
        for found in self._find(query, "study"):
            uid = _uid(found, "StudyInstanceUID")
            if uid:
                series = _count(found.get("NumberOfStudyRelatedSeries"))
                instances = _count(found.get("NumberOfStudyRelatedInstances"))
                matches.append(StudyMatch(uid, series, instances))
        return matches

    def series(self, study_instance_uid: str) -> list[SeriesMatch]:
        """The series of one study, each with its instance count when the source gives it."""
        query = _identifier(
            "SERIES",
            StudyInstanceUID=study_instance_uid,
            SeriesInstanceUID="",
            NumberOfSeriesRelatedInstances="",
        )
        matches = []
        for found in self._find(query, "series"):
            uid = _uid(found, "SeriesInstanceUID")
            if uid:
                count = _count(found.get("NumberOfSeriesRelatedInstances"))
                matches.append(SeriesMatch(study_instance_uid, uid, count))
        return matches

    def instances(self, study_instance_uid: str, series_instance_uid: str) -> set[str]:
        """SOP Instance UIDs of one series (an image-level C-FIND)."""
        query = _identifier(
            "IMAGE",
            StudyInstanceUID=study_instance_uid,
            SeriesInstanceUID=series_instance_uid,
            SOPInstanceUID="",
        )
        uids = {_uid(found, "SOPInstanceUID") for found in self._find(query, "image")}
        uids.discard("")
        return uids

    def _find(self, query: Dataset, level: str) -> Iterator[Dataset]:
        source = self._scu.source
        for code, found in self._link.find(query, f"{level}-level C-FIND"):
            if code in _PENDING:
                if found is not None:
                    yield found
            elif code == _SUCCESS:
                return
            else:
                raise SourceError(
                    f"{source} answered a {level}-level C-FIND with {_describe(code)}"
                )


class RetrieveSession:
    """C-MOVEs (to a destination AE title) or C-GETs on one open association."""

    def __init__(self, scu: Scu, link: SourceLink, destination: str | None) -> None:
        self._scu = scu
        self._link = link
        self._destination = destination

    def series(self, study_instance_uid: str, series_instance_uid: str) -> RetrieveOutcome:
        """Retrieve a whole series; return what the source reported.

        Raises `SourceError` only when the source did not answer (timeout, abort): a final
        failure status is reported in the outcome.
        """
        identifier = _identifier(
            "SERIES", StudyInstanceUID=study_instance_uid, SeriesInstanceUID=series_instance_uid
        )
        return self._retrieve(identifier, "series")

    def instances(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uids: Sequence[str],
        *,
        per_request: int = UIDS_PER_REQUEST,
    ) -> RetrieveOutcome:
        """Retrieve the named instances of one series (IMAGE level), `per_request` UIDs in
        each request (1: one request per instance)."""
        if per_request < 1:
            raise ValueError(f"per_request must be 1 or more, got {per_request}")
        total = RetrieveOutcome()
        uids = sorted(sop_instance_uids)
        for start in range(0, len(uids), per_request):
            chunk = uids[start : start + per_request]
            identifier = _identifier(
                "IMAGE",
                StudyInstanceUID=study_instance_uid,
                SeriesInstanceUID=series_instance_uid,
                SOPInstanceUID=chunk if len(chunk) > 1 else chunk[0],
            )
            total += self._retrieve(identifier, "image")
        return total

    def _retrieve(self, identifier: Dataset, level: str) -> RetrieveOutcome:
        source = self._scu.source
        operation = "C-GET" if self._destination is None else "C-MOVE"
        what = f"{level}-level {operation}"
        for code, counts in self._link.retrieve(identifier, self._destination, what):
            if code in _PENDING:
                continue
            problem = None
            if code != _SUCCESS:
                problem = f"{source} answered a {what} with {_describe(code)}"
            return RetrieveOutcome(
                completed=counts.completed or 0,
                failed=counts.failed or 0,
                warning=counts.warning or 0,
                problem=problem,
            )
        raise SourceError(f"{source} ended a {what} without a final status")


def _identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _uid(found: Dataset, keyword: str) -> str:
    value = found.get(keyword)
    return "" if value is None else str(value).strip()


def _count(value: object) -> int | None:
    """An IS/US count as int; None when absent, empty or not a number."""
    if value is None or value == "":
        return None
    try:
        count = int(str(value).strip())
    except ValueError:
        return None
    return count if count >= 0 else None


def _describe(code: int) -> str:
    hint = _STATUS_HINTS.get(code)
    if hint is None and 0xC000 <= code <= 0xCFFF:
        hint = "unable to process"
    return f"status 0x{code:04X}" + (f" ({hint})" if hint else "")
