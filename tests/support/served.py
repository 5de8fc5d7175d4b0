"""Serve an ASGI app with uvicorn on a free loopback port, in a thread, for the test's duration."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def served(app: Any, **config: Any) -> Iterator[int]:
    """Run `app` on 127.0.0.1 (port chosen by the OS) until the block ends; yield the port.

    `config` goes to `uvicorn.Config` (e.g. `ssl_certfile`, `ssl_keyfile` for HTTPS).
    """
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", access_log=False, **config
        )
    )
    thread = threading.Thread(target=server.run, name="served-app", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the app stopped before it started serving")
            thread.join(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join()
