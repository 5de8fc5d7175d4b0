"""`dicom-connector admin` fleet commands against a real control plane (uvicorn in a thread)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import uvicorn
from typer.testing import CliRunner
from websockets.sync.client import connect

from cli.main import app
from common.messages import (
    DicomRejectionCount,
    Health,
    Hello,
    Welcome,
    encode_message,
    parse_message,
)
from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.harness import ADMIN_TOKEN, HEALTHY, bearer
from tests.support.dicom_factory import encode_part10, make_instance


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    """A control plane on SQLite, served on a free port until the test ends."""
    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="control-plane")
    thread.start()
    try:
        started = threading.Event()
        while not started.wait(0.01):
            if server.started:
                started.set()
            elif not thread.is_alive():
                pytest.fail("the control plane did not start")
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()


def _admin(base_url: str, *args: str) -> str:
    result = CliRunner().invoke(
        app, ["admin", "--url", base_url, "--token", ADMIN_TOKEN, *args], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return result.output


def _register(base_url: str) -> tuple[str, str]:
    with httpx2.Client(base_url=base_url, headers=bearer(ADMIN_TOKEN)) as client:
        client.post("/api/v1/sites", json={"name": "hospital-a", "timezone": "UTC"})
        created = client.post(
            "/api/v1/sites/hospital-a/agents", json={"name": "edge-1", "deployment": "edge"}
        ).json()
    return created["id"], created["token"]


def test_health_lists_each_agent_with_its_status_and_reasons(base_url: str) -> None:
    _register(base_url)

    output = _admin(base_url, "health", "hospital-a")

    assert "site hospital-a: missing" in output
    assert "edge-1" in output
    assert "has never connected" in output


def test_fleet_shows_counts_and_the_sites_needing_attention(base_url: str) -> None:
    _register(base_url)

    output = _admin(base_url, "fleet")

    assert "fleet: missing" in output
    assert "sites needing attention" in output
    assert "hospital-a" in output


def test_token_rotate_prints_a_new_token_that_replaces_the_old_one(base_url: str) -> None:
    agent_id, old_token = _register(base_url)

    output = _admin(base_url, "agents", "token-rotate", agent_id)

    new_token = output.rsplit(":", 1)[1].strip()
    with httpx2.Client(base_url=base_url) as client:
        assert client.get("/api/v1/agent/config", headers=bearer(old_token)).status_code == 401
        assert client.get("/api/v1/agent/config", headers=bearer(new_token)).status_code == 200


def test_token_revoke_locks_the_agent_out(base_url: str) -> None:
    agent_id, token = _register(base_url)

    output = _admin(base_url, "agents", "token-revoke", agent_id)

    assert "revoked" in output
    with httpx2.Client(base_url=base_url) as client:
        assert client.get("/api/v1/agent/config", headers=bearer(token)).status_code == 401


def test_token_rotate_of_an_unknown_agent_fails_naming_the_problem(base_url: str) -> None:
    result = CliRunner().invoke(
        app,
        [
            "admin",
            "--url",
            base_url,
            "--token",
            ADMIN_TOKEN,
            "agents",
            "token-rotate",
            "00000000-0000-0000-0000-000000000000",
        ],
    )

    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_deid_preview_prints_each_changed_attribute(base_url: str, tmp_path: Path) -> None:
    with httpx2.Client(base_url=base_url, headers=bearer(ADMIN_TOKEN)) as client:
        client.post("/api/v1/sites", json={"name": "hospital-a", "timezone": "UTC"})
        stored = client.put(
            "/api/v1/sites/hospital-a/config",
            json={"deid": {"profile": "basic", "options": ["retain_uids"]}},
        )
        assert stored.status_code == 200, stored.text
    dicom_file = tmp_path / "one.dcm"
    dicom_file.write_bytes(
        encode_part10(
            make_instance(
                patient_id="CLI-PREVIEW-PID",
                study_uid="1.2.826.0.1.3680043.10.548.1",
                series_uid="1.2.826.0.1.3680043.10.548.1.1",
                series_description="S",
                study_description="T",
            )
        )
    )

    output = _admin(base_url, "deid-preview", "--site", "hospital-a", str(dicom_file))

    assert "profile basic with retain_uids (config revision 1)" in output
    assert "PatientID" in output
    assert "CLI-PREVIEW-PID" in output
    assert "removed" in output
    assert "SOPInstanceUID" not in output


def test_deid_preview_of_a_file_that_is_not_dicom_fails_naming_why(
    base_url: str, tmp_path: Path
) -> None:
    with httpx2.Client(base_url=base_url, headers=bearer(ADMIN_TOKEN)) as client:
        client.post("/api/v1/sites", json={"name": "hospital-a", "timezone": "UTC"})
        client.put("/api/v1/sites/hospital-a/config", json={"deid": {"profile": "basic"}})
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image\n" * 20)

    result = CliRunner().invoke(
        app,
        ["admin", "--url", base_url, "--token", ADMIN_TOKEN, "deid-preview", "--site",
         "hospital-a", str(text_file)],
        env={"COLUMNS": "200"},
    )  # fmt: skip

    assert result.exit_code == 1
    assert "not a DICOM Part-10 instance" in result.output


def test_health_shows_refused_associations_by_source_and_the_tls_certificate(
    base_url: str,
) -> None:
    _, token = _register(base_url)
    report = HEALTHY.model_copy(
        update={
            "dicom_rejections": [
                DicomRejectionCount(reason="unlisted_address", source="203.0.113.7", count=42),
                DicomRejectionCount(reason="tls_handshake_failed", source="10.1.2.3", count=3),
            ],
            "tls_certificate_expires_at": dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
            "tls_certificate_days_left": 12.4,
        }
    )
    link = base_url.replace("http://", "ws://") + "/api/v1/agent/link"
    with connect(link, additional_headers=bearer(token), proxy=None) as websocket:
        hello = Hello(
            agent_id=None, agent_version="1.0", applied_revision=None, protocol_versions=[1]
        )
        websocket.send(encode_message(hello))
        assert isinstance(parse_message(websocket.recv()), Welcome)
        websocket.send(encode_message(Health(report=report)))
        deadline = time.monotonic() + 30
        output = _admin(base_url, "health", "hospital-a")
        while "203.0.113.7" not in output and time.monotonic() < deadline:
            time.sleep(0.1)
            output = _admin(base_url, "health", "hospital-a")

    assert "refused DICOM associations" in output
    assert "unlisted_address" in output
    assert "203.0.113.7" in output
    assert "42" in output
    assert "tls_handshake_failed" in output
    assert "DICOM TLS certificates" in output
    assert "2027-01-01" in output
    assert "expires in 12 day(s)" in output
