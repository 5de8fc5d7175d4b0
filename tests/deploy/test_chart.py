"""The Helm chart of in-cluster agents, rendered by the real helm (`make helm` fetches the pinned
one into .tools/helm; without it the tests skip, and fail when `CI` is set).

`helm lint --strict` and `helm template` run with the default values and with each variant the
chart documents (a private CA of the control plane, own secret names and keys, a storage class
and size for the spool, another image, ports, Service type and port, extra environment from a
secret). Every rendered document is parsed with PyYAML, validated against the Kubernetes API
schemas (kubernetes-validate, strict: an unknown or misspelt field fails), and held to the
chart's invariants: the image and tag from the values, the ports, the spool on a
PersistentVolumeClaim, the probes on the agent's own /healthz, the container's arguments and
environment as the real CLI and AgentSettings read them, secrets only referenced by name, and a
non-root pod with a read-only root filesystem.

`kubectl apply --dry-run=client` is not used: it asks an API server for the resource mapping
even when it validates nothing, so it cannot run without a cluster.
"""

from __future__ import annotations

import http.client
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agent.metrics import AgentMetricsServer
from agent.settings import AgentSettings
from tests.deploy.agent_command import agent_params
from tests.support.environment import require_project_tool

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "dicom-connector-agent"
DOCKERFILE = CHART.parents[1] / "Dockerfile"
RELEASE = "site-a"
URL = {"controlPlane": {"url": "https://connector.example.org"}}
SECRET_WORDS = re.compile(r"TOKEN|PASSWORD|SECRET|PASSPHRASE|API_KEY|HEADERS", re.IGNORECASE)
# helm 3.17 supports Kubernetes 1.29 to 1.32: the oldest and the newest are checked.
KUBERNETES_VERSIONS = ("1.29", "1.32")

# Each variant the chart's values.yaml documents, merged over the defaults (plus the URL,
# which the chart requires).
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "control-plane-ca": {"controlPlane": {"caSecret": "connector-ca"}},
    "own-secret-names": {
        "agentToken": {"secretName": "north-agent-token", "key": "agent-token"},
        "tls": {"secretName": "north-dicom-tls"},
    },
    "spool-storage-class": {"spool": {"size": "200Gi", "storageClassName": "fast-ssd"}},
    "image-ports-service": {
        "image": {"repository": "registry.example.org/dicom-connector", "tag": "0.2.0"},
        "dicom": {"port": 4242, "service": {"type": "LoadBalancer", "port": 104}},
        "metrics": {"port": 9500},
    },
    "extra-env-from-secret": {
        "env": [
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector:4318"},
            {
                "name": "OTEL_EXPORTER_OTLP_HEADERS",
                "valueFrom": {"secretKeyRef": {"name": "otel", "key": "headers"}},
            },
        ]
    },
}


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _values(variant: str) -> dict[str, Any]:
    """The values helm renders the variant with: the chart's defaults, then the overrides."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return _merged(_merged(defaults, URL), VARIANTS[variant])


def _helm(*arguments: str) -> subprocess.CompletedProcess[str]:
    helm = require_project_tool("helm")
    return subprocess.run(
        [helm, *arguments], capture_output=True, text=True, timeout=120, check=False
    )


def _values_file(tmp_path: Path, variant: str) -> Path:
    path = tmp_path / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(_merged(URL, VARIANTS[variant])))
    return path


def _render(tmp_path: Path, variant: str) -> list[dict[str, Any]]:
    result = _helm(
        "template", RELEASE, str(CHART), "--values", str(_values_file(tmp_path, variant))
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_passes_strictly(tmp_path: Path, variant: str) -> None:
    values = _values_file(tmp_path, variant)

    result = _helm("lint", "--strict", str(CHART), "--values", str(values))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


def test_the_chart_refuses_to_render_without_a_control_plane_url() -> None:
    result = _helm("template", RELEASE, str(CHART))

    assert result.returncode != 0
    assert "controlPlane.url: set the control plane's base URL" in result.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_valid_for_the_kubernetes_api(
    tmp_path: Path, variant: str
) -> None:
    documents = _render(tmp_path, variant)

    assert sorted(document["kind"] for document in documents) == ["Service", "StatefulSet"]
    for document in documents:
        assert document["metadata"]["name"] == RELEASE
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_secrets_are_only_referenced_never_inline(tmp_path: Path, variant: str) -> None:
    values = _values(variant)
    documents = _render(tmp_path, variant)

    for document in documents:
        assert document["kind"] not in {"Secret", "ConfigMap"}
        for path, node in _walk(document):
            assert not path.endswith((".stringData", ".data")), path
            if re.search(r"\.env\[\d+\]$", path) and SECRET_WORDS.search(node["name"]):
                # A secret-looking variable comes from a Secret, never as a value.
                assert "value" not in node, (path, node["name"])
                assert set(node["valueFrom"]) == {"secretKeyRef"}, (path, node)
    pod = _statefulset(documents)["spec"]["template"]["spec"]
    secrets = {volume["name"]: volume["secret"] for volume in pod["volumes"] if "secret" in volume}
    expected = {
        "token": values["agentToken"]["secretName"],
        "tls": values["tls"]["secretName"],
    }
    if values["controlPlane"]["caSecret"]:
        expected["control-plane-ca"] = values["controlPlane"]["caSecret"]
    assert {name: secret["secretName"] for name, secret in secrets.items()} == expected
    # Owner-read only (kubelet adds group read for fsGroup): the token and the TLS key.
    assert secrets["token"]["defaultMode"] == secrets["tls"]["defaultMode"] == 0o400
    (container,) = pod["containers"]
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    for name in secrets:
        assert mounts[name]["readOnly"] is True, name


def test_chart_metadata_and_values_parse_and_name_secrets_only() -> None:
    # Needs no helm: the chart's files themselves.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    assert (chart["apiVersion"], chart["name"]) == ("v2", "dicom-connector-agent")
    # The default image is the release the chart describes (its version label).
    assert values["image"]["tag"] == chart["appVersion"]
    assert values["image"]["tag"] != "latest"
    assert set(values["agentToken"]) == {"secretName", "key"}
    assert set(values["tls"]) == {"secretName"}
    assert values["spool"]["size"]
    templates = "".join(path.read_text() for path in (CHART / "templates").iterdir())
    assert "stringData" not in templates
    assert "kind: Secret" not in templates


def _statefulset(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (statefulset,) = [d for d in documents if d["kind"] == "StatefulSet"]
    return statefulset


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_agent_pod_keeps_its_invariants(tmp_path: Path, variant: str) -> None:
    values = _values(variant)
    documents = _render(tmp_path, variant)
    statefulset = _statefulset(documents)
    (service,) = [d for d in documents if d["kind"] == "Service"]
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    params = agent_params(container["args"])
    env = {variable["name"]: variable for variable in container["env"]}

    # One agent owns one data directory: one replica, its spool on a claim of its own.
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    selector = statefulset["spec"]["selector"]["matchLabels"]
    assert selector.items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector
    # The image and tag are the values', never a floating tag.
    image = values["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    assert not container["image"].endswith(":latest")
    assert container["imagePullPolicy"] == image["pullPolicy"]
    # Ports: the listener the agent is told to open is the one the pod and Service expose.
    assert ports == {"dicom": values["dicom"]["port"], "metrics": values["metrics"]["port"]}
    assert env["DICOM_CONNECTOR_AGENT_DICOM_PORT_OVERRIDE"]["value"] == str(ports["dicom"])
    assert params["metrics_port"] == ports["metrics"]
    assert service["spec"]["type"] == values["dicom"]["service"]["type"]
    # Scanners may send to another port of the Service (104) than the pod's unprivileged one.
    service_port = values["dicom"]["service"]["port"] or ports["dicom"]
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("dicom", service_port, "dicom"),
        ("metrics", ports["metrics"], "metrics"),
    }
    annotations = statefulset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    # Probes: the agent's own /healthz (ready) and /livez (alive) on the metrics port, which
    # listens on every address (its default, 127.0.0.1, is out of the kubelet's reach).
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert env["DICOM_CONNECTOR_AGENT_METRICS_HOST"]["value"] == "0.0.0.0"  # noqa: S104
    # Every DICOM_CONNECTOR_AGENT_* variable is a setting the agent has.
    for name in env:
        if name.startswith("DICOM_CONNECTOR_AGENT_"):
            field = name.removeprefix("DICOM_CONNECTOR_AGENT_").lower()
            assert field in AgentSettings.model_fields, name
    # The files the agent is pointed at are the mounted ones.
    assert params["data_dir"] == Path(mounts["spool"])
    assert params["token_file"] == Path(mounts["token"]) / values["agentToken"]["key"]
    assert params["control_plane_url"] == values["controlPlane"]["url"]
    if values["controlPlane"]["caSecret"]:
        assert params["ca_file"] == Path(mounts["control-plane-ca"]) / "ca.crt"
    else:
        assert params["ca_file"] is None
        assert "control-plane-ca" not in mounts
    # Volumes: every mount has its volume or claim, the spool on a PersistentVolumeClaim.
    claims = {
        claim["metadata"]["name"]: claim for claim in statefulset["spec"]["volumeClaimTemplates"]
    }
    volumes = {volume["name"] for volume in pod["volumes"]}
    assert set(mounts) == volumes | set(claims)
    assert "spool" not in volumes
    spool = claims["spool"]["spec"]
    assert spool["accessModes"] == ["ReadWriteOnce"]
    assert spool["resources"]["requests"]["storage"] == values["spool"]["size"]
    assert spool.get("storageClassName", "") == values["spool"]["storageClassName"]
    # Non-root (the image's own user), nothing to escalate, a read-only root filesystem
    # with /tmp writable, no service-account token, no service links in the environment.
    uid = int(re.search(r"--uid (\d+)", DOCKERFILE.read_text()).group(1))  # type: ignore[union-attr]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["runAsGroup"] == security["fsGroup"] == uid
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert mounts["tmp"] == "/tmp"
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert container["resources"] == values["resources"]
    for extra in values["env"]:
        assert env[extra["name"]] == extra


def _status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_probed_path_is_served_by_the_agents_metrics_server(tmp_path: Path) -> None:
    """The paths the rendered probes ask are ones the agent's metrics server judges, not a
    404 that would keep the pod unready and restart it for ever: before the agent runs (say,
    waiting for a valid config) it is not ready (503, 200 once its listener is up:
    tests/agent/test_agent_metrics.py) but alive, so the kubelet does not restart it."""
    (container,) = _statefulset(_render(tmp_path, "defaults"))["spec"]["template"]["spec"][
        "containers"
    ]
    readiness = container["readinessProbe"]["httpGet"]["path"]
    liveness = container["livenessProbe"]["httpGet"]["path"]

    def not_running() -> Any:
        raise RuntimeError("not running")

    server = AgentMetricsServer("127.0.0.1", 0, not_running)
    port = server.start()
    try:
        assert _status(port, readiness) == 503
        assert _status(port, liveness) == 200
        assert _status(port, "/no-such-probe") == 404
    finally:
        server.close()
