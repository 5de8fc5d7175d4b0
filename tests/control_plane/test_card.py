"""The quick-reference card: generated from the site's config and the store's real groups."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx2
import pytest
from typer.testing import CliRunner

from cli.main import app
from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.support.served import served

ADMIN_TOKEN = "admin-token-for-card-tests-0123456789"


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return " ".join(" ".join(parser.parts).split())


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
    )
    with served(create_app(settings)) as port:
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx2.Client(base_url=url, headers=headers) as admin:
            admin.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro <b>science</b>"})
            for label in ("study-a", "study-b", "study-c"):
                admin.post("/api/v1/groups/neuro/projects", json={"label": label})
            admin.post("/api/v1/groups", json={"id": "empty", "label": "No projects"})
            admin.post("/api/v1/sites", json={"name": "north", "timezone": "Europe/Berlin"})
            config = {
                "routing": {"fields": ["PatientComments", "StudyComments"]},
                "upload_policy": {"mode": "opt-in", "strings": ["RESEARCH"]},
                "timing": {"working_hours": "18:00-06:00"},
            }
            assert admin.put("/api/v1/sites/north/config", json=config).status_code == 200
        yield url


def test_the_card_shows_the_sites_fields_examples_policy_window_and_fallbacks(
    base_url: str,
) -> None:
    with httpx2.Client(base_url=base_url) as client:
        response = client.get(
            "/api/v1/sites/north/card", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    text = _text(response.text)
    assert "Sending scans from north to the research store" in text
    assert "config revision 1" in text
    assert "Patient Comments ( PatientComments ), or else Study Comments" in text
    assert "fw://neuro/study-a group Neuro <b>science</b>, project study-a" in text
    assert "fw://neuro/study-b" in text
    assert "study-c" not in text  # two examples per group are enough
    assert "fw://neuro/study-a/SUBJECT01/VISIT1" in text
    assert "Nothing is sent unless Patient Comments ( PatientComments ) holds RESEARCH" in text
    assert "Uploads run from 18:00 to 06:00 (Europe/Berlin)" in text
    assert "group unknown , project Unsorted" in text
    # A label is text, never markup.
    assert "<b>science</b>" not in response.text
    assert "&lt;b&gt;science&lt;/b&gt;" in response.text


def test_admin_card_prints_the_page(base_url: str) -> None:
    result = CliRunner().invoke(
        app, ["admin", "--url", base_url, "--token", ADMIN_TOKEN, "card", "north"]
    )

    assert result.exit_code == 0, result.output
    assert result.output.startswith("<!doctype html>")
    assert "fw://neuro/study-a" in result.output
