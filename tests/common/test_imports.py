"""common/ stays pure: importing it never pulls in a web, database or DICOM library.

The exception is `common.deid.engine` (and the modules it alone uses), which reads DICOM with
pydicom; `common.config` uses only the pydicom-free part of `common.deid`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

COMMON = Path(__file__).resolve().parents[2] / "common"
DEID_WITHOUT_PYDICOM = (
    "common.deid.table",
    "common.deid.basic",
    "common.deid.uids",
    "common.deid.flywheel",
)
FORBIDDEN = ("fastapi", "starlette", "sqlalchemy", "pynetdicom", "pydicom", "httpx2", "websockets")


def test_importing_every_common_module_loads_no_forbidden_library() -> None:
    top_level = (f"common.{path.stem}" for path in COMMON.glob("*.py") if path.stem != "__init__")
    modules = [*sorted(top_level), *DEID_WITHOUT_PYDICOM]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=COMMON.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "common.config" in modules
    assert result.stdout.strip() == "[]"
