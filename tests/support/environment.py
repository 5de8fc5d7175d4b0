"""What the test machine offers: external tools and free ports.

Outside CI a missing tool skips the tests that need it; with `CI` set it fails them, so a
CI machine without dcmtk or Orthanc can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest


def require_executable(name: str) -> str:
    """Return the path of `name`, or skip (outside CI) / fail (in CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (run `make test`, which installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


PROJECT_TOOLS = Path(__file__).resolve().parents[2] / ".tools"
"""Tools that are no Debian package, fetched by the Makefile (`make helm`: .tools/helm/helm)."""


def require_project_tool(name: str) -> str:
    """The project's pinned `name` under .tools/ (its make target fetches it), else the one on
    PATH; skip (outside CI) / fail (in CI) when neither is there."""
    pinned = PROJECT_TOOLS / name / name
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return str(pinned)
    path = shutil.which(name)
    if path is None:
        message = (
            f"{name} is not installed: `make {name}` fetches the pinned one into {pinned}"
            " (it is no Debian package)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_file(path: Path, package: str) -> Path:
    """Return `path`, or skip (outside CI) / fail (in CI) when the file is missing."""
    if not path.exists():
        message = f"{path} is missing: install the Debian package {package} (make system-deps)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def tool_env() -> dict[str, str]:
    """Environment for dcmtk and Orthanc: Debian's builds leave Nagle on and crawl without this."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS just handed out (for servers that need it up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
