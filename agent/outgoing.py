"""What leaves the agent: the de-identified copies of spooled instances (`DATA/outgoing/`).

A spooled file is what the scanner sent and stays the record of truth until the destination
confirms it. Under a de-identifying profile the uploader sends a copy made here instead: the
copy's path, size, sha256 and UIDs replace the spooled ones in the `InstanceRow` handed to the
destination, so destinations never see the original and need not know about de-identification.

Copies are derived data. They are written without fsync, wiped when the agent starts, and made
again from the spooled file when missing; a crash costs only the work of making them again.
De-identification is deterministic for one profile and salt (UIDs and hashes are keyed by the
site's salt), so a copy made again after a crash carries the same UIDs and the destination's
idempotency (by SOP Instance UID) still holds. A copy is tied to the profile it was made with
(`Profile.fingerprint`): after a config change the next upload makes it again.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.state import InstanceRow
from common.config import DeidConfig
from common.deid.engine import Deidentifier
from common.deid.errors import DeidError

__all__ = ["DeidProfile", "Outgoing", "OutgoingError"]

_log = structlog.get_logger(__name__)


class OutgoingError(Exception):
    """An instance could not be made ready to leave; `reason` is PHI-free."""

    def __init__(self, instance_id: int, reason: str) -> None:
        super().__init__(reason)
        self.instance_id = instance_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DeidProfile:
    """A site's de-identification, built once per config and salt."""

    deidentifier: Deidentifier
    fingerprint: str

    @classmethod
    def of(cls, deid: DeidConfig, salt: str | None) -> DeidProfile | None:
        """The profile of `deid` keyed by `salt`; None when the site does not de-identify.

        Raises `DeidError` when the profile needs a salt and there is none (a last-known-good
        config written by an agent older than salt delivery) or cannot be built.
        """
        if deid.profile == "none":
            return None
        if not salt:
            raise DeidError(
                "the site's de-identification salt is missing (the config was stored by an "
                "older agent); connect the agent to the control plane to receive it"
            )
        deidentifier = Deidentifier.from_config(deid, salt)
        if deidentifier is None:
            return None
        digest = hashlib.sha256()
        digest.update(deid.model_dump_json().encode())
        digest.update(b"\0" + salt.encode())
        return cls(deidentifier, digest.hexdigest())


class Outgoing:
    """Makes, keeps and removes the de-identified copies the uploader sends."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._copies: dict[int, tuple[str, InstanceRow]] = {}

    def reset(self) -> None:
        """Remove every copy left by an earlier run (they are made again when needed)."""
        shutil.rmtree(self._root, ignore_errors=True)
        self._root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._copies.clear()

    def prepare(self, instances: Sequence[InstanceRow], profile: DeidProfile) -> list[InstanceRow]:
        """The rows to send for `instances`: each one's de-identified copy (blocking).

        Every instance is made ready before any row is returned, so a series that cannot be
        de-identified is known before anything of it is sent. Raises `OutgoingError` naming
        the first instance that failed.
        """
        return [self._ready(instance, profile) for instance in instances]

    def discard(self, instance_id: int) -> None:
        """Remove the copy of an instance that is finished (uploaded, failed, superseded)."""
        with self._lock:
            known = self._copies.pop(instance_id, None)
        if known is not None:
            known[1].path.unlink(missing_ok=True)

    def _ready(self, instance: InstanceRow, profile: DeidProfile) -> InstanceRow:
        with self._lock:
            known = self._copies.get(instance.id)
        if known is not None and known[0] == profile.fingerprint and known[1].path.exists():
            return dataclasses.replace(
                known[1],
                attempts=instance.attempts,
                next_attempt_at=instance.next_attempt_at,
                last_error=instance.last_error,
            )
        try:
            original = instance.path.read_bytes()
        except OSError as exc:
            raise OutgoingError(
                instance.id,
                f"spool file of instance {instance.id} cannot be read: {exc.strerror}",
            ) from exc
        try:
            result = profile.deidentifier.deidentify(original)
        except DeidError as exc:
            raise OutgoingError(instance.id, f"de-identification failed: {exc}") from exc
        path = self._root / f"{instance.id}.dcm"
        try:
            path.write_bytes(result.data)
        except OSError as exc:
            raise OutgoingError(
                instance.id,
                f"the de-identified copy of instance {instance.id} cannot be written: "
                f"{exc.strerror}",
            ) from exc
        copy = dataclasses.replace(
            instance,
            sop_instance_uid=result.sop_instance_uid,
            series_instance_uid=result.series_instance_uid,
            study_instance_uid=result.study_instance_uid,
            sha256=hashlib.sha256(result.data).hexdigest(),
            size=len(result.data),
            path=path,
        )
        with self._lock:
            self._copies[instance.id] = (profile.fingerprint, copy)
        return copy
