"""The requestor of pull mode on pynetdicom's own association machinery (an AE, its DUL and
reactor threads): kept for one release behind the agent setting `requestor_engine`, as
`agent.dicom.scp` is for the intake.

`open_link` opens one association for one purpose and returns its `SourceLink`. pynetdicom
runs a reader thread beside the calling one and hands every message over through queues; the
lean requestor (`agent.dicom.requestor_lean`) does not. Part of the package that imports
pynetdicom; errors carry the source's address, statuses and counts, never a DICOM value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, InterventionEvent
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from agent.dicom.pynetdicom_adapter import (
    disable_nagle,
    park_reactor,
    quiet_identifier_logging,
    set_dul_loop_delay,
    unbind_logging_handlers,
)
from agent.dicom.source import Purpose, RetrieveCounts, SourceAddress, SourceError
from agent.dicom.tls import TlsFiles, client_context

__all__ = ["PynetdicomLink", "open_link"]


# A C-MOVE association only carries status messages while the images arrive elsewhere: its
# DUL thread may sleep longer when idle (pynetdicom's 1 ms default costs ~10% of a core).
_MOVE_DUL_LOOP_DELAY = 0.005


class PynetdicomLink:
    """A `SourceLink` on a pynetdicom association."""

    def __init__(self, assoc: Association, source: SourceAddress, timeout: float) -> None:
        self._assoc = assoc
        self._source = source
        self._within = f"within {timeout:g} s"

    def echo(self) -> int:
        park_reactor(self._assoc)
        with self._still_open("C-ECHO"):
            status = self._assoc.send_c_echo()
        return self._code(status, "C-ECHO")

    def find(self, query: Dataset, what: str) -> Iterator[tuple[int, Dataset | None]]:
        park_reactor(self._assoc)
        with self._still_open(what):
            responses = self._assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            for status, found in responses:
                yield self._code(status, what), found

    def retrieve(
        self, identifier: Dataset, destination: str | None, what: str
    ) -> Iterator[tuple[int, RetrieveCounts]]:
        park_reactor(self._assoc)
        with self._still_open(what):
            if destination is None:
                responses = self._assoc.send_c_get(
                    identifier, StudyRootQueryRetrieveInformationModelGet
                )
            else:
                responses = self._assoc.send_c_move(
                    identifier, destination, StudyRootQueryRetrieveInformationModelMove
                )
            for status, _ in responses:
                code = self._code(status, what)
                yield (
                    code,
                    RetrieveCounts(
                        _int(status.get("NumberOfCompletedSuboperations")),
                        _int(status.get("NumberOfFailedSuboperations")),
                        _int(status.get("NumberOfWarningSuboperations")),
                    ),
                )

    def release(self) -> None:
        if self._assoc.is_established:
            self._assoc.release()

    def abort(self) -> None:
        self._assoc.abort()

    def _code(self, status: Dataset | None, what: str) -> int:
        value = status.get("Status") if status is not None else None
        if value is None:
            raise SourceError(
                f"{self._source} did not answer the {what} {self._within} "
                "(or the association was aborted)"
            )
        return int(value)

    @contextmanager
    def _still_open(self, request: str) -> Iterator[None]:
        """Turn pynetdicom's RuntimeError for a request on an association that is no longer
        established into a `SourceError`: the peer aborted between two requests, or an abort
        (shutdown) came from another thread; neither is a bug of ours."""
        try:
            yield
        except RuntimeError as exc:
            if self._assoc.is_established:
                raise
            raise SourceError(
                f"the association with {self._source} ended before the {request} could be sent"
            ) from exc


def open_link(
    source: SourceAddress,
    purpose: Purpose,
    *,
    calling_ae_title: str,
    timeout: float,
    maximum_pdu: int,
    dul_loop_delay: float,
    get_transfer_syntaxes: Sequence[str],
    tls: TlsFiles | None,
    store: Callable[[Event], Dataset] | None,
) -> PynetdicomLink:
    """Associate with `source` for `purpose`; raise `SourceError` when no association
    results. `store` is the EVT_C_STORE handler of a C-GET."""
    # pynetdicom logs whole identifiers at DEBUG/INFO; stay quiet unless someone chose.
    library_logger = logging.getLogger("pynetdicom")
    if library_logger.level == logging.NOTSET:
        library_logger.setLevel(logging.WARNING)
    # Its C-FIND/C-MOVE/C-GET code also formats every request and response identifier for
    # that log whether or not a line is written (about a fifth of a query round's CPU,
    # measured), and an identifier is patient data: the agent never wants them.
    quiet_identifier_logging()
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = maximum_pdu
    roles = []
    handlers: list[tuple[InterventionEvent, Callable[[Event], Dataset]]] = []
    if purpose == "C-ECHO":
        ae.add_requested_context(Verification)
    elif purpose == "C-FIND":
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    elif purpose == "C-MOVE":
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    else:
        if store is None:
            raise ValueError("a C-GET association needs the C-STORE handler")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        storage = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
        for uid in storage:
            ae.add_requested_context(uid, list(get_transfer_syntaxes))
        roles = [build_role(uid, scp_role=True) for uid in storage]
        handlers = [(evt.EVT_C_STORE, store)]
    try:
        tls_args = None if tls is None else (client_context(tls), source.host)
        assoc = ae.associate(
            source.host,
            source.port,
            ae_title=source.ae_title,
            ext_neg=list(roles) or None,
            evt_handlers=list(handlers) or None,
            tls_args=tls_args,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        raise SourceError(f"cannot open an association with {source} for {purpose}: {exc}") from exc
    if not assoc.is_established:
        if assoc.is_rejected:
            raise SourceError(
                f"{source} rejected the association for {purpose}: check that it accepts "
                f"the AE title {calling_ae_title} (and that its AE title is {source.ae_title})"
            )
        raise SourceError(
            f"no association with {source} for {purpose} within {timeout:g} s: the source is "
            "down, unreachable, or refused the connection"
        )
    set_dul_loop_delay(assoc, _MOVE_DUL_LOOP_DELAY if purpose == "C-MOVE" else dul_loop_delay)
    disable_nagle(assoc)
    unbind_logging_handlers(assoc)
    return PynetdicomLink(assoc, source, timeout)


def _int(value: object) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None
