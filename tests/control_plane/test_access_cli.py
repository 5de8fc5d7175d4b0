"""`dicom-connector admin tokens …` and `admin audit` against a served control plane."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.harness import ADMIN_TOKEN
from tests.support.served import served


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
    )
    with served(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


def _admin(base_url: str, *args: str, token: str = ADMIN_TOKEN, code: int = 0) -> str:
    result = CliRunner().invoke(
        app, ["admin", "--url", base_url, "--token", token, *args], env={"COLUMNS": "250"}
    )
    assert result.exit_code == code, result.output
    return result.output


def test_a_token_created_on_the_command_line_works_lists_and_revokes(base_url: str) -> None:
    _admin(base_url, "sites", "create", "hospital-a")

    created = _admin(
        base_url, "tokens", "create", "alice", "--role", "site-admin", "--site", "hospital-a"
    )
    token = re.search(r"store it now\): (\S+)", created)
    token_id = re.search(r"token id: (\S+)", created)
    assert token is not None
    assert token_id is not None
    sites = _admin(base_url, "sites", "list", token=token.group(1))
    listed = _admin(base_url, "tokens", "list")
    _admin(base_url, "tokens", "revoke", token_id.group(1))
    refused = _admin(base_url, "sites", "list", token=token.group(1), code=1)

    assert "hospital-a" in sites
    assert "alice" in listed
    assert "site-admin" in listed
    assert "active" in listed
    assert token.group(1) not in listed
    assert "HTTP 401" in refused
    assert "revoked" in refused


def test_audit_shows_who_changed_what(base_url: str, tmp_path: Path) -> None:
    _admin(base_url, "sites", "create", "hospital-a")
    config = tmp_path / "config.yaml"
    config.write_text("dicom:\n  ae_title: SCP1\n", encoding="utf-8")
    _admin(base_url, "config", "set", "hospital-a", str(config))

    output = _admin(base_url, "audit")
    only_sites = _admin(base_url, "audit", "--action", "site.create")

    assert "config.update" in output
    assert "dicom.ae_title" in output
    assert "SCP1" in output
    assert "admin" in output
    assert "site.create" in only_sites
    assert "config.update" not in only_sites
