"""Every deploy manifest parses and keeps its invariants: images, ports, volumes, probes, and
secrets only ever referenced (files, secret names), never written in.

- compose.yaml: parsed as YAML (the machine has no `docker compose` to run `config`);
- agent.service: parsed, and rated by `systemd-analyze security --offline` (exposure ≤ 2.5);
- the Helm chart: Chart.yaml and values.yaml parsed and the templates checked for inline
  secrets; rendered with `helm template` and the rendered objects checked where `helm` is
  installed (it is no Debian package, so `make system-deps` cannot provide it: without it
  that one test skips, in CI too).
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.environment import require_executable

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHART = DEPLOY / "helm" / "dicom-connector-agent"
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


def test_chart_metadata_and_values_parse_and_name_secrets_only() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    assert (chart["apiVersion"], chart["name"]) == ("v2", "dicom-connector-agent")
    assert values["image"]["tag"]
    assert values["image"]["tag"] != "latest"
    assert set(values["agentToken"]) == {"secretName", "key"}
    assert set(values["tls"]) == {"secretName"}
    assert values["spool"]["size"]
    templates = "".join(path.read_text() for path in (CHART / "templates").iterdir())
    assert "stringData" not in templates
    assert "kind: Secret" not in templates


def _render(**values: str) -> list[dict[str, Any]]:
    # Unlike dcmtk or Orthanc, helm is no Debian package `make system-deps` could install, so
    # its absence skips this test even in CI (the static checks above still run).
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("helm is not installed (not a Debian package); the chart is not rendered")
    arguments = [helm, "template", "site-a", str(CHART)]
    for key, value in values.items():
        arguments += ["--set", f"{key}={value}"]
    rendered = subprocess.run(arguments, capture_output=True, text=True, timeout=60, check=True)
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def test_the_rendered_chart_keeps_its_invariants() -> None:
    objects = {
        document["kind"]: document for document in _render(**{"controlPlane.caSecret": "ca"})
    }

    statefulset = objects["StatefulSet"]
    assert statefulset["spec"]["replicas"] == 1
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "dicom-connector:0.1.0"
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {
        "dicom": 11112,
        "metrics": 9400,
    }
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["spool"] == "/data"
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {
        "token": "dicom-connector-agent-token",
        "tls": "dicom-connector-agent-tls",
        "control-plane-ca": "ca",
    }
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    for variable in container["env"]:
        assert not SECRET_WORDS.search(variable["name"]), variable
    service = objects["Service"]
    assert {port["name"]: port["port"] for port in service["spec"]["ports"]} == {
        "dicom": 11112,
        "metrics": 9400,
    }


@pytest.mark.parametrize("manifest", sorted(p.name for p in (DEPLOY / "examples").glob("*.yaml")))
def test_example_site_configs_are_valid(manifest: str) -> None:
    from common.config import validate_site_config

    validate_site_config(yaml.safe_load((DEPLOY / "examples" / manifest).read_text()))
