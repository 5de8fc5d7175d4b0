"""A control plane on SQLite served by uvicorn in a thread, for tests of HTTP clients (the CLI)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings

ADMIN_TOKEN = "served-admin-token-0123456789"


@contextmanager
def served_control_plane(directory: Path) -> Iterator[str]:
    """Serve a fresh control plane on a free port of 127.0.0.1; yield its base URL."""
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{directory / 'cp.db'}",
        blob_dir=directory / "blobs",
        admin_token=ADMIN_TOKEN,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="control-plane")
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the control plane did not start")
            thread.join(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
