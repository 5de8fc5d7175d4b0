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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, tuple[set[str], set[str]]]:
    """Each of our modules: (our modules it imports, third-party roots it imports).

    Only module-level imports count: a function-level import is lazy on purpose (the CLI) and
    loads nothing until it runs.
    """
    graph: dict[str, tuple[set[str], set[str]]] = {}
    ours = ("common", "agent", "control_plane", "cli")
    for package in ours:
        for path in _sources(package):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            internal: set[str] = set()
            external: set[str] = set()
            for node in tree.body:
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                for name in names:
                    if name.split(".")[0] in ours:
                        internal.add(name)
                    else:
                        external.add(name.split(".")[0])
            graph[_module_name(path)] = (internal, external)
    # `from agent.state import X` names a package or a module: keep the ones that exist, and
    # a module imports its packages' __init__ too.
    for module, (internal, _) in graph.items():
        resolved = {name for name in internal if name in graph}
        for name in list(resolved):
            parts = name.split(".")
            resolved |= {
                ".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in graph
            }
        internal.clear()
        internal.update(resolved - {module})
    return graph


def _loads(module: str, graph: dict[str, tuple[set[str], set[str]]]) -> set[str]:
    """Every third-party root that importing `module` loads, through our own modules too."""
    seen: set[str] = set()
    stack = [module]
    loaded: set[str] = set()
    while stack:
        current = stack.pop()
        if current in seen or current not in graph:
            continue
        seen.add(current)
        internal, external = graph[current]
        loaded |= external
        stack.extend(internal)
    return loaded


# DICOM transport code never loads HTTP code, HTTP code never loads DICOM transport code, not
# even through a module in between (issue: agent/pull loaded httpx2 through the config client).
TRANSITIVE_RULES: list[tuple[str, set[str]]] = [
    ("agent.dicom", {"httpx2", "websockets", "fastapi", "starlette"}),
    ("agent.pull", {"httpx2", "websockets", "fastapi", "starlette"}),
    ("agent.spool", {"httpx2", "websockets", "pynetdicom"}),
    ("agent.state", {"httpx2", "websockets", "pynetdicom"}),
    ("agent.upload", {"pynetdicom"}),
    ("agent.uploader", {"pynetdicom"}),
    ("agent.reaper", {"pynetdicom", "httpx2"}),
    ("agent.link", {"pynetdicom"}),
    ("agent.config_client", {"pynetdicom"}),
    ("common", {"fastapi", "sqlalchemy", "pynetdicom", "httpx2", "websockets"}),
    ("control_plane", {"pynetdicom", "websockets"}),
]


@pytest.mark.parametrize(("prefix", "forbidden"), TRANSITIVE_RULES)
def test_what_a_module_loads_indirectly_keeps_the_rules(prefix: str, forbidden: set[str]) -> None:
    graph = _import_graph()
    modules = [m for m in graph if m == prefix or m.startswith(prefix + ".")]
    assert modules, f"no module under {prefix}"
    offences = [
        f"{module} loads {name}"
        for module in sorted(modules)
        for name in sorted(_loads(module, graph) & forbidden)
    ]
    assert offences == []
