"""Every deploy manifest parses and keeps its invariants: images, ports, volumes, probes, and
secrets only ever referenced (files, secret names), never written in.

- compose.yaml: parsed as YAML (the machine has no `docker compose` to run `config`);
- agent.service: parsed, checked by `systemd-analyze verify` (in a root of its own, no running
  systemd needed) and rated by `systemd-analyze security --offline` (exposure ≤ 2.5);
- the agent's arguments in both: read by the real CLI (tests/deploy/agent_command.py);
- the Helm chart: tests/deploy/test_chart.py renders it with the real helm.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.agent_command import agent_params
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


def test_the_compose_agent_serves_its_probe_where_its_healthcheck_looks() -> None:
    agent = _compose()["services"]["agent"]

    params = agent_params(agent["command"])

    assert params["data_dir"] == Path("/data")
    assert agent["volumes"] == ["spool:/data"]
    assert params["token_file"] == Path("/run/secrets/agent-token")
    assert agent["secrets"] == ["agent-token"]
    # Inside the container the healthcheck and the metrics port meet on 127.0.0.1; 0.0.0.0
    # lets a Prometheus on the compose network scrape it too.
    assert f"http://127.0.0.1:{params['metrics_port']}/healthz" in " ".join(
        agent["healthcheck"]["test"]
    )
    assert agent["environment"]["DICOM_CONNECTOR_AGENT_METRICS_HOST"] == "0.0.0.0"  # noqa: S104


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
    executable, *arguments = shlex.split(service["ExecStart"].replace("\\\n", " "))
    assert executable == "/opt/dicom-connector/.venv/bin/dicom-connector"
    params = agent_params(arguments)
    # The agent writes only its data directory and reads its token from the read-only /etc.
    assert params["data_dir"] == Path(service["ReadWritePaths"])
    assert params["data_dir"] == Path("/var/lib") / service["StateDirectory"]
    assert params["token_file"].parent == Path(service["ReadOnlyPaths"])
    assert params["metrics_port"] is not None


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


def test_systemd_analyze_verify_finds_nothing_to_say_about_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` in a root of its own (no running systemd needed): the unit
    installed under its documented name, the system's own units beside it for its
    dependencies, and the real `dicom-connector` entry point where ExecStart looks for it.
    Unknown keys and unparsable values are only warnings to systemd: any output fails."""
    analyze = require_executable("systemd-analyze")
    root = tmp_path / "root"
    shutil.copytree(Path("/usr/lib/systemd/system"), root / "usr/lib/systemd/system", symlinks=True)
    unit = root / "etc/systemd/system/dicom-connector-agent.service"
    unit.parent.mkdir(parents=True)
    shutil.copyfile(DEPLOY / "agent.service", unit)
    entry_point = root / "opt/dicom-connector/.venv/bin/dicom-connector"
    entry_point.parent.mkdir(parents=True)
    shutil.copy2(Path(sys.prefix) / "bin" / "dicom-connector", entry_point)

    result = subprocess.run(
        [analyze, "verify", f"--root={root}", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize("manifest", sorted(p.name for p in (DEPLOY / "examples").glob("*.yaml")))
def test_example_site_configs_are_valid(manifest: str) -> None:
    from common.config import validate_site_config

    validate_site_config(yaml.safe_load((DEPLOY / "examples" / manifest).read_text()))
