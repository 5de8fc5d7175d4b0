"""Which intake engine listens: `make_listener` builds the one the agent setting
`intake_engine` names, with the same options for both.

`lean` (the default) is `agent.dicom.engine`: one loop per association on pynetdicom's codec.
`pynetdicom` is `agent.dicom.scp.DicomListener` on pynetdicom's own association threads; it
stays for one release, and the SCP acceptance tests run against both.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from agent.dicom.engine import LeanListener
from agent.dicom.scp import DicomListener
from agent.rejections import RejectionCounter

__all__ = ["ENGINES", "IntakeEngine", "Listener", "make_listener"]

IntakeEngine = Literal["lean", "pynetdicom"]
ENGINES: tuple[IntakeEngine, ...] = ("lean", "pynetdicom")


class Listener(Protocol):
    """What the agent uses of a DICOM listener, whichever engine runs it."""

    rejections: RejectionCounter

    @property
    def port(self) -> int:
        """The bound TCP port."""
        ...

    def start(self) -> int:
        """Bind and serve; return the bound port."""
        ...

    def stop(self, timeout: float) -> None:
        """Stop accepting, drain for up to `timeout` seconds, abort the rest."""
        ...


def make_listener(
    engine: IntakeEngine, *, dul_loop_delay: float | None = None, **options: Any
) -> Listener:
    """A listener of `engine` with `options` (those of `DicomListener`). `dul_loop_delay`
    tunes pynetdicom's DUL thread, which the lean engine does not have: given with it, it
    is refused rather than ignored."""
    if engine == "lean":
        if dul_loop_delay is not None:
            raise ValueError(
                "dul_loop_delay tunes intake_engine 'pynetdicom' only; unset it or choose that "
                "engine"
            )
        return LeanListener(**options)
    if engine == "pynetdicom":
        if dul_loop_delay is not None:
            options["dul_loop_delay"] = dul_loop_delay
        return DicomListener(**options)
    raise ValueError(f"intake_engine must be one of {', '.join(ENGINES)}, got {engine!r}")
