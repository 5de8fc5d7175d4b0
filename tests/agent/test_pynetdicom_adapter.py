"""The pynetdicom adapter is the only place that reaches into pynetdicom's internals, and it was
written for one release: an upgrade fails here first, so someone re-reads it."""

from __future__ import annotations

import re
from pathlib import Path

import pynetdicom

from agent.dicom.pynetdicom_adapter import WRITTEN_FOR_PYNETDICOM

_DICOM = Path(__file__).resolve().parents[2] / "agent" / "dicom"
# Private attributes of pynetdicom objects, its process-wide flags, socket tuning of its
# transports: what `agent.dicom.pynetdicom_adapter` holds for everyone.
_INTERNALS = re.compile(
    r"pynetdicom\._config|import _config|\.dul\._|\._servers\b|\._reactor_checkpoint|"
    r"\._is_paused|\._run_loop_delay|transport\.recv\s*="
)


def test_the_installed_pynetdicom_is_the_one_the_adapter_was_written_for() -> None:
    assert pynetdicom.__version__ == WRITTEN_FOR_PYNETDICOM, (
        "pynetdicom changed: check every function of agent/dicom/pynetdicom_adapter.py against "
        "its new source, then update WRITTEN_FOR_PYNETDICOM"
    )


def test_no_other_module_reaches_into_pynetdicom_internals() -> None:
    offenders = [
        str(path.relative_to(_DICOM))
        for path in sorted(_DICOM.rglob("*.py"))
        if path.name != "pynetdicom_adapter.py" and _INTERNALS.search(path.read_text())
    ]

    assert offenders == []
