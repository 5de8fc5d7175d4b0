"""The query/retrieve SCU of pull mode: C-ECHO, C-FIND, C-MOVE and C-GET against one source.

Blocking: each `Scu` call opens an association on the calling thread (pynetdicom runs its own
reader thread beside it), so asyncio code calls in through `asyncio.to_thread`. Every step has
a timeout (TCP connect, association negotiation, each DIMSE answer, an idle network), and
`Scu.abort` ends the open associations from any thread, so stopping never waits for a PACS.

The queries ask only for what tracking needs (UIDs, instance counts, the study date as the
window): no patient attribute is requested. A C-MOVE sends the images to our own AE title, where
the `DicomListener` spools them like any PUSH; a C-GET receives them on this association and
spools them here, the same way (`SpoolSink`).

Part of the one package that imports pynetdicom. Errors and log lines carry the source's AE
title, host and port, statuses and counts, never a DICOM value.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import structlog
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
from pynetdicom import (
    AE,
    StoragePresentationContexts,
    build_role,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, InterventionEvent
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from agent.dicom.intake import status_dataset, store_received
from agent.dicom.pynetdicom_adapter import (
    disable_nagle,
    park_reactor,
    quiet_identifier_logging,
    set_dul_loop_delay,
    unbind_logging_handlers,
)
from agent.dicom.scp import DEFAULT_DUL_LOOP_DELAY
from agent.dicom.store_handler import StoreHandler
from agent.dicom.tls import TlsFiles, client_context
from agent.spool import Spool

__all__ = [
    "UIDS_PER_REQUEST",
    "QuerySession",
    "RetrieveOutcome",
    "RetrieveSession",
    "Scu",
    "SeriesMatch",
    "SourceAddress",
    "SourceError",
    "SpoolSink",
    "StudyMatch",
]

_log = structlog.get_logger(__name__)

# Larger receive PDUs mean fewer PDU decodes per instance received over C-GET.
_MAXIMUM_PDU_SIZE = 1 << 20
# A UID list in one IMAGE-level retrieve; keeps the identifier well under any peer's limits.
UIDS_PER_REQUEST = 200
_PENDING = frozenset({0xFF00, 0xFF01})
_SUCCESS = 0x0000
# A C-MOVE association only carries status messages while the images arrive elsewhere: its
# DUL thread may sleep longer when idle (pynetdicom's 1 ms default costs ~10% of a core).
_MOVE_DUL_LOOP_DELAY = 0.005
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


class SourceError(Exception):
    """Talking to a pull source failed (no association, no answer in time, a failure status).

    The message names the source and what went wrong, never a DICOM value: it goes to health.
    """


@dataclass(frozen=True, slots=True)
class SourceAddress:
    """Where a pull source listens."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


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
    (`StoreHandler`): same checks, statuses and log lines.

    `on_stored(series_instance_uid)` is called on the association thread after each instance
    that became durable (not for duplicates).
    """

    def __init__(self, spool: Spool, on_stored: Callable[[str], None] | None = None) -> None:
        self._spool = spool
        self._handler = StoreHandler(on_stored)

    def handle_store(self, event: Event) -> Dataset:
        """The EVT_C_STORE handler: make the instance durable, return the status to send."""
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


class Scu:
    """Query/retrieve user of one source; thread-safe, one association per session."""

    def __init__(
        self,
        source: SourceAddress,
        *,
        calling_ae_title: str,
        timeout: float,
        dul_loop_delay: float = DEFAULT_DUL_LOOP_DELAY,
        tls: TlsFiles | None = None,
    ) -> None:
        """`timeout` bounds the TCP connect, the association negotiation, each DIMSE answer
        and idle network time, in seconds. `tls`: associate over TLS, presenting that
        certificate and checking the source's against its CA; the files are read for each
        association, so a renewed certificate is used by the next one."""
        if timeout <= 0:
            raise ValueError(f"timeout must be more than 0 seconds, got {timeout}")
        self.source = source
        self._calling_ae_title = calling_ae_title
        self._timeout = timeout
        self._dul_loop_delay = dul_loop_delay
        self._tls = tls
        self._open: set[Association] = set()
        self._open_lock = threading.Lock()
        self._aborted = False
        # pynetdicom logs whole identifiers at DEBUG/INFO; stay quiet unless someone chose.
        library_logger = logging.getLogger("pynetdicom")
        if library_logger.level == logging.NOTSET:
            library_logger.setLevel(logging.WARNING)
        # Its C-FIND/C-MOVE/C-GET code also formats every request and response identifier
        # for that log whether or not a line is written (about a fifth of a query round's
        # CPU, measured), and an identifier is patient data: the agent never wants them.
        quiet_identifier_logging()

    def echo(self) -> None:
        """C-ECHO the source; raise `SourceError` unless it answers Success."""
        with self._association([(Verification, None)], "C-ECHO") as assoc:
            park_reactor(assoc)
            with _association_still_open(assoc, self.source, "C-ECHO"):
                status = assoc.send_c_echo()
            code = _status_code(status)
            if code is None:
                raise SourceError(f"{self.source} did not answer the C-ECHO {self._within}")
            if code != _SUCCESS:
                raise SourceError(f"{self.source} answered the C-ECHO with {_describe(code)}")

    @contextmanager
    def query(self) -> Iterator[QuerySession]:
        """An association for C-FINDs (Study Root)."""
        model = StudyRootQueryRetrieveInformationModelFind
        with self._association([(model, None)], "C-FIND") as assoc:
            yield QuerySession(self, assoc)

    @contextmanager
    def retrieve_by_move(self, destination_ae_title: str) -> Iterator[RetrieveSession]:
        """An association for C-MOVEs that send the images to `destination_ae_title`."""
        model = StudyRootQueryRetrieveInformationModelMove
        with self._association(
            [(model, None)], "C-MOVE", dul_loop_delay=_MOVE_DUL_LOOP_DELAY
        ) as assoc:
            yield RetrieveSession(self, assoc, destination_ae_title)

    @contextmanager
    def retrieve_by_get(self, sink: SpoolSink) -> Iterator[RetrieveSession]:
        """An association for C-GETs; the images arrive on it and go to `sink`."""
        contexts: list[tuple[str, Sequence[str] | None]] = [
            (StudyRootQueryRetrieveInformationModelGet, None)
        ]
        storage = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
        contexts += [(uid, _GET_TRANSFER_SYNTAXES) for uid in storage]
        roles = [build_role(uid, scp_role=True) for uid in storage]
        handlers: list[tuple[InterventionEvent, Callable[[Event], Dataset]]] = [
            (evt.EVT_C_STORE, sink.handle_store)
        ]
        with self._association(contexts, "C-GET", roles=roles, handlers=handlers) as assoc:
            yield RetrieveSession(self, assoc, None)

    def abort(self) -> None:
        """Abort every open association and refuse new ones (from any thread). For shutdown."""
        with self._open_lock:
            self._aborted = True
            open_now = list(self._open)
        for assoc in open_now:
            assoc.abort()

    @property
    def _within(self) -> str:
        return f"within {self._timeout:g} s"

    @contextmanager
    def _association(
        self,
        contexts: Sequence[tuple[str, Sequence[str] | None]],
        purpose: str,
        *,
        roles: Sequence[SCP_SCU_RoleSelectionNegotiation] = (),
        handlers: Sequence[tuple[InterventionEvent, Callable[[Event], Dataset]]] = (),
        dul_loop_delay: float | None = None,
    ) -> Iterator[Association]:
        ae = AE(ae_title=self._calling_ae_title)
        ae.acse_timeout = self._timeout
        ae.dimse_timeout = self._timeout
        ae.network_timeout = self._timeout
        ae.connection_timeout = self._timeout
        ae.maximum_pdu_size = _MAXIMUM_PDU_SIZE
        for abstract_syntax, syntaxes in contexts:
            if syntaxes is None:
                ae.add_requested_context(abstract_syntax)
            else:
                ae.add_requested_context(abstract_syntax, list(syntaxes))
        with self._open_lock:
            if self._aborted:
                raise SourceError(f"no {purpose} with {self.source}: the agent is stopping")
        try:
            tls_args = None
            if self._tls is not None:
                tls_args = (client_context(self._tls), self.source.host)
            assoc = ae.associate(
                self.source.host,
                self.source.port,
                ae_title=self.source.ae_title,
                ext_neg=list(roles) or None,
                evt_handlers=list(handlers) or None,
                tls_args=tls_args,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise SourceError(
                f"cannot open an association with {self.source} for {purpose}: {exc}"
            ) from exc
        if not assoc.is_established:
            raise SourceError(self._not_established(assoc, purpose))
        set_dul_loop_delay(
            assoc, self._dul_loop_delay if dul_loop_delay is None else dul_loop_delay
        )
        disable_nagle(assoc)
        unbind_logging_handlers(assoc)
        with self._open_lock:
            self._open.add(assoc)
        try:
            yield assoc
        finally:
            with self._open_lock:
                self._open.discard(assoc)
            if assoc.is_established:
                assoc.release()

    def _not_established(self, assoc: Association, purpose: str) -> str:
        if assoc.is_rejected:
            return (
                f"{self.source} rejected the association for {purpose}: check that it accepts "
                f"the AE title {self._calling_ae_title} (and that its AE title is "
                f"{self.source.ae_title})"
            )
        return (
            f"no association with {self.source} for {purpose} {self._within}: the source is "
            "down, unreachable, or refused the connection"
        )


class QuerySession:
    """C-FINDs on one open association (see `Scu.query`)."""

    def __init__(self, scu: Scu, assoc: Association) -> None:
        self._scu = scu
        self._assoc = assoc

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
        model = StudyRootQueryRetrieveInformationModelFind
        park_reactor(self._assoc)
        with _association_still_open(self._assoc, source, f"{level}-level C-FIND"):
            for status, found in self._assoc.send_c_find(query, model):
                code = _status_code(status)
                if code is None:
                    raise SourceError(
                        f"{source} did not answer a {level}-level C-FIND {self._scu._within} "
                        "(or the association was aborted)"
                    )
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

    def __init__(self, scu: Scu, assoc: Association, destination: str | None) -> None:
        self._scu = scu
        self._assoc = assoc
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
        park_reactor(self._assoc)
        with _association_still_open(self._assoc, source, f"{level}-level retrieval"):
            if self._destination is None:
                operation = "C-GET"
                responses = self._assoc.send_c_get(
                    identifier, StudyRootQueryRetrieveInformationModelGet
                )
            else:
                operation = "C-MOVE"
                responses = self._assoc.send_c_move(
                    identifier, self._destination, StudyRootQueryRetrieveInformationModelMove
                )
            for status, _ in responses:
                code = _status_code(status)
                if code is None:
                    raise SourceError(
                        f"{source} did not answer a {level}-level {operation} {self._scu._within} "
                        "(or the association was aborted)"
                    )
                if code in _PENDING:
                    continue
                problem = None
                if code != _SUCCESS:
                    problem = (
                        f"{source} answered a {level}-level {operation} with {_describe(code)}"
                    )
                return RetrieveOutcome(
                    completed=_count(status.get("NumberOfCompletedSuboperations")) or 0,
                    failed=_count(status.get("NumberOfFailedSuboperations")) or 0,
                    warning=_count(status.get("NumberOfWarningSuboperations")) or 0,
                    problem=problem,
                )
            raise SourceError(f"{source} ended a {level}-level {operation} without a final status")


@contextmanager
def _association_still_open(assoc: Association, source: object, request: str) -> Iterator[None]:
    """Turn pynetdicom's RuntimeError for a request on an association that is no longer
    established into a `SourceError`: the peer aborted between two requests, or `Scu.abort`
    (shutdown) did from another thread; neither is a bug of ours."""
    try:
        yield
    except RuntimeError as exc:
        if assoc.is_established:
            raise
        raise SourceError(
            f"the association with {source} ended before the {request} could be sent"
        ) from exc


def _identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _status_code(status: Dataset) -> int | None:
    """The status of a response, None when there was none (timeout, abort)."""
    value = status.get("Status") if status is not None else None
    return None if value is None else int(value)


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
