"""A webhook receiver for alert tests: a real HTTP server on 127.0.0.1 (port 0) that keeps
every JSON body it accepted, and can refuse the first N requests with 503 (to see retries)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from tests.support.served import served


class WebhookReceiver:
    """What the receiver got: `accepted` bodies in arrival order, and every request's count."""

    def __init__(self, refuse_first: int = 0) -> None:
        self.refuse_first = refuse_first
        self.requests = 0
        self.accepted: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.url = ""

    def app(self) -> FastAPI:
        """The ASGI app: `POST /hook` answers 503 while refusing, else 204 and keeps the body."""
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.json()
            with self._lock:
                self.requests += 1
                if self.requests <= self.refuse_first:
                    return Response(status_code=503)
                self.accepted.append(body)
            return Response(status_code=204)

        return app

    def events(self) -> list[tuple[str, str]]:
        """(site, event) of each accepted alert, in order."""
        with self._lock:
            return [(body["site"], body["event"]) for body in self.accepted]


@contextmanager
def webhook_receiver(refuse_first: int = 0) -> Iterator[WebhookReceiver]:
    """A running receiver whose `url` takes alerts; stopped when the block ends."""
    receiver = WebhookReceiver(refuse_first)
    with served(receiver.app()) as port:
        receiver.url = f"http://127.0.0.1:{port}/hook"
        yield receiver
