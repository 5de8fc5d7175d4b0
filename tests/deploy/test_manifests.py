"""Every deploy manifest parses and keeps its invariants: images, ports, volumes, probes, and
secrets only ever referenced (files, secret names), never written in.

- compose.yaml: parsed as YAML (the machine has no `docker compose` to run `config`);
- agent.service: parsed, and rated by `systemd-analyze security --offline` (exposure ≤ 2.5);
- the Helm chart: tests/deploy/test_chart.py renders it with the real helm.
"""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.environment import require_executable

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SECRET_WORDS = re.compile(r"TOKEN|PASSWORD|SECRET|PASSPHRASE|API_KEY", re.IGNORECASE)
IMAGE = re.compile(r"^[\w.\-/:${}]+:[\w.\-${}:]+$")


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def test_compose_runs_postgres_and_the_control_plane_from_pinned_images() -> None:
    services = _compose()["services"]

    assert {"postgres", "control-plane", "agent"} <= set(services)
    for name, service in services.items():
        assert IMAGE.match(service["image"]), (name, service["image"])
        assert not service["image"].endswith(":latest"), name
        assert "healthcheck" in service, name
    assert services["control-plane"]["ports"] == ["8080:8080"]
    assert services["agent"]["ports"] == ["11112:11112"]
    assert services["control-plane"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_volumes_are_named_and_declared() -> None:
    document = _compose()
    declared = set(document["volumes"])
    used = {
        volume.split(":", 1)[0]
        for service in document["services"].values()
        for volume in service.get("volumes", [])
    }

    assert used == declared == {"pgdata", "blobs", "spool"}


def test_compose_never_holds_a_secret_value() -> None:
    document = _compose()
    for name, service in document["services"].items():
        for key, value in service.get("environment", {}).items():
            if SECRET_WORDS.search(key):
                # Only where a secret is, never the secret.
                assert key.endswith("_FILE"), (name, key)
                assert str(value).startswith("/run/secrets/"), (name, key)
        for argument in service.get("command", []):
            # A database URL names its user, never a password (libpq reads PGPASSFILE).
            match = re.match(r"^postgres(?:ql)?(?:\+\w+)?://([^@/]*)@", str(argument))
            if match:
                assert ":" not in match.group(1), (name, argument)
        for secret in service.get("secrets", []):
            assert secret in document["secrets"], (name, secret)
    for secret in document["secrets"].values():
        assert set(secret) == {"file"}
        assert secret["file"].startswith("./secrets/")
    ignored = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert ignored[-2:] == ["*", "!.gitignore"]


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "agent.service").read_text())
    return parser


def test_the_systemd_unit_runs_the_agent_as_its_own_user_with_hardening() -> None:
    service = _unit()["Service"]

    assert service["User"] == "dicom-connector"
    assert service["NoNewPrivileges"] == "true"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "true"
    assert service["PrivateTmp"] == "true"
    assert service["ReadWritePaths"] == "/var/lib/dicom-connector"
    assert service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    command = " ".join(service["ExecStart"].split())
    assert " agent " in command
    assert "--token-file /etc/dicom-connector/agent-token" in command
    assert "--metrics-port" in command


def test_the_systemd_unit_is_rated_well_by_systemd_analyze() -> None:
    analyze = require_executable("systemd-analyze")

    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(DEPLOY / "agent.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5


@pytest.mark.parametrize("manifest", sorted(p.name for p in (DEPLOY / "examples").glob("*.yaml")))
def test_example_site_configs_are_valid(manifest: str) -> None:
    from common.config import validate_site_config

    validate_site_config(yaml.safe_load((DEPLOY / "examples" / manifest).read_text()))
