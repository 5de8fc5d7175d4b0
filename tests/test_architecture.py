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
    "control_plane": {"agent", "cli", "pynetdicom", "pydicom"},
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


# common/deid/ is the one part of common allowed to read DICOM: it de-identifies instances.
ALLOWED_IN: dict[Path, set[str]] = {ROOT / "common" / "deid": {"pydicom"}}


def _allowed(path: Path) -> set[str]:
    return set().union(*(names for folder, names in ALLOWED_IN.items() if folder in path.parents))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_the_other_side(package: str) -> None:
    offences = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(package)
        for name in sorted(_imported_roots(path) & FORBIDDEN[package] - _allowed(path))
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
