"""One C-STORE's data set while it arrives: its Part-10 bytes in memory, or in its spool slot.

The command comes first, so the preamble and file meta group are put in front, then each PDV's
bytes are read from the socket straight into the instance's buffer (one copy, no re-encoding).
An instance that outgrows `spill_bytes` goes to a spool slot as it arrives: the buffer is
appended to the slot (`agent.spool.SlotWriter`, which hashes it on the way) each time it fills,
and reused, so an association holds at most `spill_bytes` of any instance however large. Most
instances (a CT or MR image is well under a megabyte) never reach it and are written in one go
once whole, which costs one write instead of one per fragment.

Nothing is acknowledged on the way: a spilled instance is checked through a read-only mapping
of its slot once whole, fsynced and recorded before Success (`agent.dicom.intake.store_spilled`).
An association that ends in the middle of one (A-ABORT, a closed connection, a protocol error)
`discard`s it, and its slot goes back to the pool empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.dicom.engine.commands import StoreRequest
from agent.dicom.engine.pdu import Reader
from agent.dicom.intake import Stored, StoreRefused, store_part10, store_spilled
from agent.dicom.status import Status
from agent.spool import SlotWriter, Spool, SpoolFull

__all__ = ["SPILL_BYTES", "IncomingInstance", "StoreRefusal"]

SPILL_BYTES = 4 << 20
"""An instance larger than this goes to its spool slot while it arrives, this much at a time."""


@dataclass(frozen=True, slots=True)
class StoreRefusal:
    """An answer decided before the data set arrived (its bytes are read and dropped)."""

    status: Status
    comment: str


class IncomingInstance:
    """A C-STORE whose data set is arriving; owned by its association's thread."""

    def __init__(
        self,
        *,
        request: StoreRequest,
        context_id: int,
        transfer_syntax: str,
        header: bytes,
        received_at: float,
        buffer: bytearray | None = None,
        spill_bytes: int = SPILL_BYTES,
        refusal: StoreRefusal | None = None,
    ) -> None:
        """`header` is the Part-10 preamble and file meta group; `refusal`, when set, is the
        answer whatever arrives. `buffer` is the association's buffer of its previous
        instance, reused (its contents do not matter): a new one is not allocated and
        zero-filled for every instance."""
        self.request = request
        self.context_id = context_id
        self.transfer_syntax = transfer_syntax
        self.received_at = received_at
        self.refusal = refusal
        # Refused on the way (the spool ran out of room): the rest is read and dropped.
        self.failure: StoreRefused | None = None
        self.buffer = bytearray() if buffer is None else buffer
        if len(self.buffer) < len(header):
            self.buffer.extend(bytes(len(header) - len(self.buffer)))
        self.buffer[: len(header)] = header
        self._used = len(header)
        self._dataset_offset = len(header)
        self._spill_bytes = max(spill_bytes, len(header) + 1)
        self._slot: SlotWriter | None = None

    def receive(self, reader: Reader, size: int, spool: Spool) -> None:
        """Read the next `size` bytes of the data set off `reader`."""
        if self.refusal is not None or self.failure is not None:
            reader.skip(size)
            return
        while size:
            if self._used == self._spill_bytes:
                try:
                    self._spill(spool)
                except SpoolFull as exc:
                    self.failure = StoreRefused(
                        Status.OUT_OF_RESOURCES, "agent spool is full; send again later", str(exc)
                    )
                    reader.skip(size)
                    return
            end = min(self._used + size, self._spill_bytes)
            if end > len(self.buffer):  # grow geometrically: large instances come in many PDUs
                grown = min(max(end, 2 * len(self.buffer)), self._spill_bytes)
                self.buffer.extend(bytes(grown - len(self.buffer)))
            with memoryview(self.buffer) as whole:
                reader.read_into(whole[self._used : end])
            size -= end - self._used
            self._used = end

    def store(self, spool: Spool) -> Stored:
        """Make the whole instance durable in `spool` (see `agent.dicom.intake`); raises
        `StoreRefused` with the status to answer."""
        request = self.request
        if self.failure is not None:
            raise self.failure
        if self._slot is None:
            with memoryview(self.buffer) as whole, whole[: self._used] as part10:
                return store_part10(
                    part10,
                    self._dataset_offset,
                    spool,
                    transfer_syntax_uid=self.transfer_syntax,
                    sop_class_uid=request.sop_class_uid,
                    sop_instance_uid=request.sop_instance_uid,
                    received_at=self.received_at,
                )
        try:
            self._spill(spool)
        except SpoolFull as exc:
            raise StoreRefused(
                Status.OUT_OF_RESOURCES, "agent spool is full; send again later", str(exc)
            ) from None
        slot, self._slot = self._slot, None
        return store_spilled(
            slot,
            self._dataset_offset,
            spool,
            transfer_syntax_uid=self.transfer_syntax,
            sop_class_uid=request.sop_class_uid,
            sop_instance_uid=request.sop_instance_uid,
            received_at=self.received_at,
        )

    def discard(self) -> None:
        """The instance will not be stored: give its slot back, if it has one. Idempotent."""
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.discard()

    def _spill(self, spool: Spool) -> None:
        """Append the buffer to the instance's slot (taken at the first spill) and empty it."""
        if self._slot is None:
            self._slot = spool.open_slot()
        with memoryview(self.buffer) as whole:
            try:
                self._slot.write(whole[: self._used])
            except BaseException:
                self._slot = None  # the writer gave the slot back
                raise
        self._used = 0
