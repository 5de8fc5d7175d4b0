"""What a spool holds on disk, for assertions: its slot files that hold an instance."""

from __future__ import annotations

from pathlib import Path


def filled_slots(spool_root: Path) -> list[Path]:
    """Slot files holding bytes, sorted; an empty slot is free and holds nothing."""
    return sorted(path for path in (spool_root / "slots").iterdir() if path.stat().st_size)
