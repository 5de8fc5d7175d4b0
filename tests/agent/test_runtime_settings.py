"""Agent settings: passed in or read from `DICOM_CONNECTOR_AGENT_*`, refused when unusable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.settings import AgentSettings


def test_settings_are_read_from_prefixed_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DICOM_CONNECTOR_AGENT_CONTROL_PLANE_URL", "https://cp.example.org/")
    monkeypatch.setenv("DICOM_CONNECTOR_AGENT_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("DICOM_CONNECTOR_AGENT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DICOM_CONNECTOR_AGENT_UPLOAD_CONCURRENCY", "8")

    settings = AgentSettings()

    assert settings.control_plane_url == "https://cp.example.org"
    assert settings.upload_concurrency == 8
    assert settings.dicom_port_override is None
    assert settings.spool_reserve_bytes == 512 * 1024 * 1024


def test_a_control_plane_url_without_scheme_is_refused_with_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must start with http:// or https://"):
        AgentSettings(control_plane_url="cp:8080", token_file=tmp_path, data_dir=tmp_path)


def test_an_unknown_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="upload_concurency"):
        AgentSettings(
            control_plane_url="http://cp",
            token_file=tmp_path,
            data_dir=tmp_path,
            upload_concurency=2,  # type: ignore[call-arg]
        )


def test_the_lean_intake_engine_is_the_default_and_pynetdicom_can_be_chosen(
    tmp_path: Path,
) -> None:
    common = {"control_plane_url": "http://cp", "token_file": tmp_path, "data_dir": tmp_path}

    assert AgentSettings(**common).intake_engine == "lean"  # type: ignore[arg-type]
    chosen = AgentSettings(**common, intake_engine="pynetdicom", dul_loop_delay=0.001)  # type: ignore[arg-type]
    assert (chosen.intake_engine, chosen.dul_loop_delay) == ("pynetdicom", 0.001)


def test_a_dul_loop_delay_with_the_lean_engine_is_refused_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="dul_loop_delay tunes intake_engine 'pynetdicom'"):
        AgentSettings(
            control_plane_url="http://cp",
            token_file=tmp_path,
            data_dir=tmp_path,
            dul_loop_delay=0.001,
        )


def test_the_lean_requestor_is_the_default_and_pynetdicom_can_be_chosen(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    common = {"control_plane_url": "http://cp", "token_file": tmp_path, "data_dir": tmp_path}
    assert AgentSettings(**common).requestor_engine == "lean"  # type: ignore[arg-type]

    monkeypatch.setenv("DICOM_CONNECTOR_AGENT_REQUESTOR_ENGINE", "pynetdicom")
    assert AgentSettings(**common).requestor_engine == "pynetdicom"  # type: ignore[arg-type]

    monkeypatch.setenv("DICOM_CONNECTOR_AGENT_REQUESTOR_ENGINE", "dcmtk")
    with pytest.raises(ValidationError, match="requestor_engine"):
        AgentSettings(**common)  # type: ignore[arg-type]
