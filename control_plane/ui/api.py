"""The dashboard's way to the data: the control plane's own HTTP API, called in-process.

Each page calls the API through an ASGI transport with the bearer token of the person logged
in, so every access rule (roles, a site-admin's one site, read-only) is the API's own and the
dashboard cannot show or do more than that token may. Must not import FastAPI.
"""

from __future__ import annotations

from typing import Any

import httpx2

INTERNAL_BASE = "http://control-plane.internal"


class ApiError(Exception):
    """The API refused a call; `status` and its `detail` as a sentence."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Api:
    """Calls of the API as one token."""

    def __init__(self, app: Any, token: str) -> None:
        self._client = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app),
            base_url=INTERNAL_BASE,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def get(self, path: str, **params: Any) -> Any:
        """GET a JSON answer; `ApiError` for anything but 2xx."""
        response = await self._client.get(path, params={k: v for k, v in params.items() if v})
        return _answer(response)

    async def text(self, path: str) -> str:
        """GET a text answer (the card); `ApiError` for anything but 2xx."""
        response = await self._client.get(path)
        if not response.is_success:
            _answer(response)
        return response.text

    async def post(self, path: str, body: Any = None) -> Any:
        """POST (JSON body) and return the JSON answer; `ApiError` for anything but 2xx."""
        response = await self._client.post(path, json=body)
        return _answer(response)


def _answer(response: httpx2.Response) -> Any:
    if response.is_success:
        return response.json() if response.content else None
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, dict):
        detail = detail.get("message", str(detail))
    raise ApiError(response.status_code, str(detail))
