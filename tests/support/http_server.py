"""Serving an ASGI app for a test: uvicorn on 127.0.0.1 (port 0) in a thread of its own."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn


class UvicornThread:
    """Serves an ASGI app with uvicorn on 127.0.0.1 (port 0) in a thread of its own."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)

    def start(self) -> str:
        """Start serving (lifespan included); return the base URL."""
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start; see its log above")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop serving and wait for the thread; idempotent."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)
