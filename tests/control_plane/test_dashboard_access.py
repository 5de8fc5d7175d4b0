"""The dashboard shows and does exactly what the logged-in token may through the API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.support.served import served

ADMIN_TOKEN = "admin-token-for-dashboard-tests-0123456789"


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
    )
    with served(create_app(settings)) as port:
        url = f"http://127.0.0.1:{port}"
        with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
            for site in ("north", "south"):
                c.post("/api/v1/sites", json={"name": site, "timezone": "UTC"})
        yield url


def _token(base_url: str, role: str, site: str | None) -> str:
    with httpx2.Client(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        body = {"role": role, "name": f"{role} of {site}", **({"site": site} if site else {})}
        created = c.post("/api/v1/tokens", json=body)
        assert created.status_code == 201, created.text
        return str(created.json()["token"])


@contextmanager
def _logged_in(base_url: str, token: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=base_url, follow_redirects=False) as client:
        answer = client.post("/ui/login", data={"token": token, "next": "/ui/"})
        assert answer.status_code == 303, answer.text
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower()
        yield client


def test_pages_need_a_login_and_never_redirect_elsewhere(base_url: str) -> None:
    with httpx2.Client(base_url=base_url, follow_redirects=False) as client:
        page = client.get("/ui/sites/north")
        assert page.status_code == 303
        assert page.headers["location"] == "/ui/login?next=/ui/sites/north"
        bad = client.post("/ui/login", data={"token": "nope", "next": "/ui/"})
        assert bad.status_code == 401
        away = client.post(
            "/ui/login", data={"token": ADMIN_TOKEN, "next": "https://evil.example/"}
        )
        assert away.headers["location"] == "/ui/"


def test_a_site_admin_sees_its_site_only(base_url: str) -> None:
    with _logged_in(base_url, _token(base_url, "site-admin", "north")) as client:
        fleet = client.get("/ui/")
        assert fleet.status_code == 200
        assert "/ui/sites/north" in fleet.text
        assert "south" not in fleet.text
        other = client.get("/ui/sites/south")
        assert other.status_code == 404


def test_a_read_only_token_cannot_retry(base_url: str) -> None:
    with _logged_in(base_url, _token(base_url, "read-only", None)) as client:
        assert client.get("/ui/sites/north").status_code == 200
        answer = client.post(
            "/ui/sites/north/series/0123456789abcdef/retry", headers={"HX-Request": "true"}
        )
        assert "retry-result" in answer.text
        assert "error" in answer.text
        assert "queued" not in answer.text
