"""The import rules of docs/architecture.md, checked on the source so they stay true."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN: dict[str, set[str]] = {
    "common": {
        "agent",
        "control_plane",
        "cli",
        "fastapi",
        "starlette",
        "sqlalchemy",
        "pynetdicom",
        "pydicom",
        "httpx2",
        "websockets",
    },
    # The control plane reads DICOM files and the data dictionary (pydicom: de-identification
    # previews, config checks) but never speaks DICOM on the network.
    "control_plane": {"agent", "cli", "pynetdicom"},
    "agent": {"control_plane", "cli", "fastapi", "starlette", "sqlalchemy", "uvicorn"},
}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


# Sub-packages allowed what their package is not: de-identification works on DICOM files.
ALLOWED: dict[str, set[str]] = {"common/deid": {"pydicom"}}


def _forbidden_for(package: str, path: Path) -> set[str]:
    relative = path.relative_to(ROOT).as_posix()
    allowed = set().union(
        *(names for prefix, names in ALLOWED.items() if relative.startswith(prefix + "/"))
    )
    return FORBIDDEN[package] - allowed


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_the_other_side(package: str) -> None:
    offences = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(package)
        for name in sorted(_imported_roots(path) & _forbidden_for(package, path))
    ]
    assert offences == []


def test_only_agent_dicom_imports_pynetdicom() -> None:
    dicom_dir = ROOT / "agent" / "dicom"
    offences = [
        str(path.relative_to(ROOT))
        for path in _sources("agent")
        if "pynetdicom" in _imported_roots(path) and dicom_dir not in path.parents
    ]
    assert offences == []
