"""One received instance into the spool: what the C-STORE handler of the listener (PUSH) and the
C-GET receive path of the SCU (PULL) share.

`store_received` checks the encoded data set (without decoding it), writes the Part-10 bytes
to the spool and either returns what was stored or raises `StoreRefused` with the status to
send; `status_dataset` builds that answer. Logging, tallies and the `on_stored` hand-over stay
with the callers. Part of the one package that imports pynetdicom; messages carry no DICOM
value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from agent.dicom.dataset_scan import DatasetSummary, MalformedDatasetError, scan_dataset
from agent.dicom.file_meta import part10_header, read_file_meta
from agent.dicom.status import Status
from agent.spool import SlotWriter, Spool, SpoolFull, SpoolIdentity
from agent.state import AddOutcome

__all__ = [
    "StoreRefused",
    "Stored",
    "identify_spooled",
    "status_dataset",
    "store_part10",
    "store_received",
    "store_spilled",
]

_ERROR_COMMENT_LIMIT = 64  # (0000,0902) Error Comment is an LO


class StoreRefused(Exception):
    """A C-STORE that gets a failure status.

    The message goes to the peer as the error comment; `detail` (default: the message) goes
    to the log. Both are free of DICOM values.
    """

    def __init__(self, status: Status, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or message


@dataclass(frozen=True, slots=True)
class Stored:
    """An instance that is durable in the spool (or already was: `AddOutcome.duplicate`)."""

    outcome: AddOutcome
    series_instance_uid: str
    size: int


def store_received(
    event: Event, spool: Spool, *, source_ae_title: str | None, received_at: float
) -> Stored:
    """Make the instance of a C-STORE request durable in `spool`.

    Raises `StoreRefused` when the data set cannot be filed (no data set, malformed, no study
    or series UID, identity differing from the request) or the spool is full; anything else
    that escapes is a processing failure for the caller to log.
    """
    request = cast(C_STORE, event.request)
    if request.DataSet is None:
        raise StoreRefused(Status.CANNOT_UNDERSTAND, "the C-STORE request has no data set")
    syntax = str(event.context.transfer_syntax)
    sop_class = str(request.AffectedSOPClassUID)
    sop_instance = str(request.AffectedSOPInstanceUID)
    part10 = bytearray(
        part10_header(
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=syntax,
            implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
            implementation_version_name=PYNETDICOM_IMPLEMENTATION_VERSION,
            source_ae_title=source_ae_title,
        )
    )
    offset = len(part10)
    # getbuffer() is a view of pynetdicom's receive buffer: the only copy made of the data
    # set is the one into the Part-10 bytes.
    with request.DataSet.getbuffer() as encoded:
        part10 += encoded
    return store_part10(
        part10,
        offset,
        spool,
        transfer_syntax_uid=syntax,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        received_at=received_at,
    )


def store_part10(
    part10: bytes | bytearray | memoryview,
    dataset_offset: int,
    spool: Spool,
    *,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    received_at: float,
) -> Stored:
    """Make durable a Part-10 file whose data set (from `dataset_offset`) came in a C-STORE
    request for `sop_class_uid` / `sop_instance_uid` on a context of `transfer_syntax_uid`.

    Raises `StoreRefused` as `store_received` does.
    """
    with memoryview(part10) as whole:
        try:
            summary = scan_dataset(whole[dataset_offset:], transfer_syntax_uid)
        except MalformedDatasetError as exc:
            raise StoreRefused(Status.CANNOT_UNDERSTAND, str(exc)) from None
    study_uid, series_uid = _check_identity(summary, sop_class_uid, sop_instance_uid)
    try:
        outcome = spool.store(
            part10,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            series_instance_uid=series_uid,
            study_instance_uid=study_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            received_at=received_at,
        )
    except SpoolFull as exc:
        raise StoreRefused(
            Status.OUT_OF_RESOURCES, "agent spool is full; send again later", str(exc)
        ) from None
    return Stored(outcome, series_uid, len(part10))


def store_spilled(
    slot: SlotWriter,
    dataset_offset: int,
    spool: Spool,
    *,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    received_at: float,
) -> Stored:
    """Make durable a Part-10 file written into `slot` as it arrived (a large instance, see
    `agent.dicom.engine.incoming`): check it as `store_part10` does, through a read-only
    mapping of the slot, then fsync and record it (`Spool.record`). The slot goes back to the
    pool on any refusal or error.

    Raises `StoreRefused` as `store_received` does.
    """
    try:
        problem: str | None = None
        with slot.mapped() as whole, whole[dataset_offset:] as dataset:
            try:
                summary = scan_dataset(dataset, transfer_syntax_uid)
            except MalformedDatasetError as exc:
                # Kept as text: the exception's traceback would hold views of the mapping.
                problem = str(exc)
        if problem is not None:
            raise StoreRefused(Status.CANNOT_UNDERSTAND, problem)
        study_uid, series_uid = _check_identity(summary, sop_class_uid, sop_instance_uid)
    except BaseException:
        slot.discard()
        raise
    size = slot.size
    try:
        outcome = spool.record(
            slot,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            series_instance_uid=series_uid,
            study_instance_uid=study_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            received_at=received_at,
        )
    except SpoolFull as exc:
        raise StoreRefused(
            Status.OUT_OF_RESOURCES, "agent spool is full; send again later", str(exc)
        ) from None
    return Stored(outcome, series_uid, size)


def identify_spooled(part10: memoryview) -> SpoolIdentity | None:
    """The UIDs of a spooled Part-10 file, for `Spool.recover`; None unless its meta group and
    data set parse to the last byte (a file cut short by a crash) and name every UID."""
    meta = read_file_meta(part10)
    if meta is None:
        return None
    try:
        summary = scan_dataset(part10[meta.dataset_offset :], meta.transfer_syntax_uid)
    except MalformedDatasetError:
        return None
    if summary.study_instance_uid is None or summary.series_instance_uid is None:
        return None
    return SpoolIdentity(
        sop_instance_uid=meta.sop_instance_uid,
        sop_class_uid=meta.sop_class_uid,
        series_instance_uid=summary.series_instance_uid,
        study_instance_uid=summary.study_instance_uid,
        transfer_syntax_uid=meta.transfer_syntax_uid,
    )


def status_dataset(status: Status, comment: str | None = None) -> Dataset:
    """The answer to a C-STORE: `status`, with `comment` as its (truncated) error comment."""
    response = Dataset()
    response.Status = int(status)
    if comment is not None:
        response.ErrorComment = comment[:_ERROR_COMMENT_LIMIT]
    return response


def _check_identity(summary: DatasetSummary, sop_class: str, sop_instance: str) -> tuple[str, str]:
    """Return (study UID, series UID) or refuse when the data set cannot be filed."""
    if summary.study_instance_uid is None:
        raise StoreRefused(Status.CANNOT_UNDERSTAND, "data set lacks (0020,000D) Study UID")
    if summary.series_instance_uid is None:
        raise StoreRefused(Status.CANNOT_UNDERSTAND, "data set lacks (0020,000E) Series UID")
    if summary.sop_class_uid is not None and summary.sop_class_uid != sop_class:
        raise StoreRefused(
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "data set (0008,0016) differs from the request's SOP Class",
        )
    if summary.sop_instance_uid is not None and summary.sop_instance_uid != sop_instance:
        raise StoreRefused(
            Status.CANNOT_UNDERSTAND, "data set (0008,0018) differs from the request's SOP UID"
        )
    return summary.study_instance_uid, summary.series_instance_uid
