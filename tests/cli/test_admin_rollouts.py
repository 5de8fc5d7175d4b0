"""`dicom-connector admin rollouts` and `admin sites labels` against a real control plane
(uvicorn in a thread, SQLite)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.support.served_control_plane import ADMIN_TOKEN, served_control_plane


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    with served_control_plane(tmp_path) as url:
        yield url


def _admin(base_url: str, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(
        app, ["admin", "--url", base_url, "--token", ADMIN_TOKEN, *args], env={"COLUMNS": "250"}
    )
    assert result.exit_code == code, result.output
    return result.output


def test_labels_are_set_listed_filtered_and_removed(base_url: str) -> None:
    _admin(base_url, "sites", "create", "paris", "--label", "region=eu")
    _admin(base_url, "sites", "create", "boston", "--label", "region=us")

    assert "region=eu, scanner=mr" in _admin(
        base_url, "sites", "labels", "set", "paris", "scanner=mr"
    )
    listed = _admin(base_url, "sites", "list", "--label", "region=eu")
    assert "paris" in listed
    assert "boston" not in listed
    assert "region=eu" in _admin(base_url, "sites", "labels", "remove", "paris", "scanner")
    assert "no labels" in _admin(base_url, "sites", "labels", "replace", "boston")
    refused = _admin(base_url, "sites", "labels", "set", "paris", "Bad=1", code=1)
    assert "label key" in refused
    # Sites without agents need attention: the ones the selector keeps are listed.
    fleet = _admin(base_url, "fleet", "--label", "region=eu")
    assert "paris" in fleet
    assert "boston" not in fleet


def test_a_rollout_is_created_watched_to_its_end_listed_and_shown(
    base_url: str, tmp_path: Path
) -> None:
    for name in ("paris", "berlin"):
        _admin(base_url, "sites", "create", name, "--label", "region=eu")
    patch = tmp_path / "patch.yaml"
    patch.write_text("timing:\n  sleep_time: 2m\n  working_hours: null\n", encoding="utf-8")

    created = _admin(
        base_url,
        "rollouts",
        "create",
        "--config",
        str(patch),
        "--label",
        "region=eu",
        "--stages",
        "50,100",
        "--soak",
        "0s",
        "--watch",
    )

    rollout_id = created.split()[1]
    assert "completed" in created
    assert "completed" in _admin(base_url, "rollouts", "list")
    shown = _admin(base_url, "rollouts", "show", rollout_id)
    assert "berlin" in shown
    assert "paris" in shown
    revisions = _admin(base_url, "config", "revisions", "paris")
    assert f"apply {rollout_id}" in revisions
    refused = _admin(base_url, "rollouts", "pause", rollout_id, code=1)
    assert "completed" in refused


def test_a_patch_that_breaks_a_site_is_refused_with_the_site_and_key(
    base_url: str, tmp_path: Path
) -> None:
    _admin(base_url, "sites", "create", "paris")
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps({"dicom": {"ae_title": "X" * 40}}), encoding="utf-8")

    refused = _admin(
        base_url, "rollouts", "create", "--config", str(patch), "--sites", "all", code=1
    )

    assert "site paris" in refused
    assert "dicom.ae_title" in refused
