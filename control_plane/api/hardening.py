"""What every HTTP request goes through before any route: a cap on its body, a request id, and
a last net that turns any unexpected failure into a generic 500 naming only that id.

A pure ASGI middleware (no buffering), so the ingest routes still stream their bodies. The
body cap is checked against `Content-Length` before the app runs and counted again as the body
arrives (chunked uploads have no length). Nothing from the exception reaches the client, and
only its class reaches the log: database messages can quote values that identify a patient.
"""

import json
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = structlog.get_logger(__name__)

INTERNAL_ERROR_DETAIL = "internal error; see control-plane log"
REQUEST_ID_HEADER = "X-Request-ID"
# What a validation error may show of itself: never `input` or `ctx`, which echo the request
# (query parameters of an upload carry subject and session labels).
_VALIDATION_FIELDS = ("loc", "msg", "type")


class BodyTooLargeError(HTTPException):
    """A request body over the route's cap (an HTTPException so FastAPI's body reading lets
    it through as 413 rather than "error parsing the body")."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"the request body is over this route's limit of {limit} bytes",
        )


class RequestGuard:
    """Caps request bodies (`limits` by exact path, else `default_limit`), gives every request an
    id (the `X-Request-ID` answer header), and answers 500 without internals on any failure."""

    def __init__(self, app: ASGIApp, default_limit: int, limits: Mapping[str, int]) -> None:
        self._app = app
        self._default_limit = default_limit
        self._limits = dict(limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        limit = self._limits.get(scope["path"], self._default_limit)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _answer(send_with_id, 413, BodyTooLargeError(limit).detail, request_id)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        try:
            await self._app(scope, counted_receive, send_with_id)
        except BodyTooLargeError as exc:
            if not started:
                await _answer(send_with_id, exc.status_code, exc.detail, request_id)
        except Exception as exc:
            logger.error(
                "unhandled error",
                request_id=request_id,
                method=scope.get("method"),
                path=scope["path"],
                error=type(exc).__name__,
            )
            if not started:
                await _answer(send_with_id, 500, INTERNAL_ERROR_DETAIL, request_id)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _answer(send: Send, status_code: int, detail: str, request_id: str) -> None:
    body = json.dumps({"detail": detail, "request_id": request_id}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = [
        {key: error[key] for key in _VALIDATION_FIELDS if key in error} for error in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


def harden(app: FastAPI, default_limit: int, limits: Mapping[str, int]) -> None:
    """Install the request guard and the validation-error handler on `app`."""
    app.add_middleware(RequestGuard, default_limit=default_limit, limits=limits)
    app.add_exception_handler(RequestValidationError, _validation_error)
