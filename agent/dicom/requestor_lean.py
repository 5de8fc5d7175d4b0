"""The requestor of pull mode on the lean engine (`agent.dicom.engine.requestor`): one
association per purpose, read on the calling thread, no thread or queue of its own.

`open_link` proposes what the pynetdicom requestor proposes (the same AE titles, maximum PDU,
Study Root contexts in pynetdicom's default transfer syntaxes; for a C-GET every storage SOP
class in the syntaxes PACS hold, with the SCP role) and returns a `SourceLink` whose errors
read as the pynetdicom one's do. Errors name the source, statuses and counts, never a DICOM
value.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydicom.dataset import Dataset
from pynetdicom import DEFAULT_TRANSFER_SYNTAXES, StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from agent.dicom.engine.requestor import (
    AssociationAborted,
    AssociationClosed,
    AssociationRejected,
    ConnectFailed,
    PeerTimeout,
    RequestedContext,
    Requestor,
    RequestorError,
    StoreCallback,
)
from agent.dicom.source import Purpose, RetrieveCounts, SourceAddress, SourceError
from agent.dicom.tls import TlsFiles, client_context

__all__ = ["LeanLink", "open_link"]

_FIND = str(StudyRootQueryRetrieveInformationModelFind)
_MOVE = str(StudyRootQueryRetrieveInformationModelMove)
_GET = str(StudyRootQueryRetrieveInformationModelGet)
_VERIFICATION = str(Verification)
_DEFAULT_SYNTAXES = tuple(str(uid) for uid in DEFAULT_TRANSFER_SYNTAXES)
_MODEL = {"C-ECHO": _VERIFICATION, "C-FIND": _FIND, "C-MOVE": _MOVE, "C-GET": _GET}


class LeanLink:
    """A `SourceLink` on the lean engine's requestor."""

    def __init__(self, requestor: Requestor, source: SourceAddress, timeout: float) -> None:
        self._requestor = requestor
        self._source = source
        self._timeout = timeout

    def echo(self) -> int:
        with self._errors("C-ECHO"):
            status = self._requestor.echo(_VERIFICATION)
        assert status is not None  # the requestor refuses a response without one
        return status

    def find(self, query: Dataset, what: str) -> Iterator[tuple[int, Dataset | None]]:
        with self._errors(what):
            for response, found in self._requestor.find(query, _FIND):
                assert response.status is not None
                yield response.status, found

    def retrieve(
        self, identifier: Dataset, destination: str | None, what: str
    ) -> Iterator[tuple[int, RetrieveCounts]]:
        with self._errors(what):
            if destination is None:
                responses = self._requestor.get(identifier, _GET)
            else:
                responses = self._requestor.move(identifier, _MOVE, destination)
            for response, _ in responses:
                assert response.status is not None
                yield (
                    response.status,
                    RetrieveCounts(response.completed, response.failed, response.warning),
                )

    def release(self) -> None:
        self._requestor.release()

    def abort(self) -> None:
        self._requestor.abort()

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        source = self._source
        try:
            yield
        except PeerTimeout:
            raise SourceError(
                f"{source} did not answer the {what} within {self._timeout:g} s "
                "(the association was aborted)"
            ) from None
        except AssociationClosed:
            raise SourceError(
                f"the association with {source} ended before the {what} could be sent "
                "or answered (the agent is stopping)"
            ) from None
        except RequestorError as exc:
            raise SourceError(f"{source} failed the {what}: {exc}") from None


def open_link(
    source: SourceAddress,
    purpose: Purpose,
    *,
    calling_ae_title: str,
    timeout: float,
    maximum_pdu: int,
    get_transfer_syntaxes: Sequence[str],
    tls: TlsFiles | None,
    store: StoreCallback | None,
) -> LeanLink:
    """Associate with `source` for `purpose`; raise `SourceError` when no association
    results. `store` makes the C-STOREs of a C-GET durable."""
    contexts = [RequestedContext(_MODEL[purpose], _DEFAULT_SYNTAXES)]
    if purpose == "C-GET":
        if store is None:
            raise ValueError("a C-GET association needs the store callback")
        contexts += [
            RequestedContext(str(cx.abstract_syntax), tuple(get_transfer_syntaxes), scp_role=True)
            for cx in StoragePresentationContexts
        ]
    try:
        requestor = Requestor.open(
            source.host,
            source.port,
            calling_ae_title=calling_ae_title,
            called_ae_title=source.ae_title,
            contexts=contexts,
            timeout=timeout,
            maximum_pdu=maximum_pdu,
            tls=None if tls is None else client_context(tls),
            store=store,
        )
    except AssociationRejected as exc:
        raise SourceError(
            f"{source} rejected the association for {purpose} ({exc}): check that it accepts "
            f"the AE title {calling_ae_title} (and that its AE title is {source.ae_title})"
        ) from None
    except (ConnectFailed, PeerTimeout, AssociationAborted) as exc:
        raise SourceError(
            f"no association with {source} for {purpose} within {timeout:g} s: the source is "
            f"down, unreachable, or refused the connection ({exc})"
        ) from None
    except RequestorError as exc:
        raise SourceError(f"no association with {source} for {purpose}: {exc}") from None
    if _MODEL[purpose] not in requestor.accepted_abstract_syntaxes():
        requestor.release()
        raise SourceError(
            f"{source} accepted the association for {purpose} but not its SOP class: it does "
            f"not offer {purpose} (Study Root) to the AE title {calling_ae_title}"
        )
    return LeanLink(requestor, source, timeout)
