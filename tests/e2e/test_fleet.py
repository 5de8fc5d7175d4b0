"""Fleet control end to end: a real `dicom-connector control-plane` process and real
`dicom-connector agent` processes over a real websocket.

On PostgreSQL, the fleet's production database; the config path and a control plane restarted
on its database also on SQLite. (Every process start costs seconds of CPU on a suite that keeps
the cores busy; the control plane's fleet logic runs on both databases in tests/control_plane,
and the all-in-one end-to-end tests run it on SQLite with real agents.)

Every process runs on free loopback ports and is stopped by the test that started it (SIGTERM,
SIGKILL as the last resort). The control plane's heartbeat interval is made short through its
settings (`DICOM_CONNECTOR_HEARTBEAT_INTERVAL_S`) so "missing" arrives in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from tests.support.cli_process import START_TIMEOUT_S, Process
from tests.support.dicom_factory import make_instance
from tests.support.environment import free_port
from tests.support.fleet_processes import AGENT_ENV
from tests.support.postgres import on_databases, reset_schema, temporary_database
from tests.support.scu import send_datasets

ADMIN_TOKEN = "e2e-fleet-admin-token-0123456789"
SITE = "default"
FAST = {"timing": {"acquisition_delay": "0.5s"}}
CONTROL_PLANE_ENV = {
    "DICOM_CONNECTOR_HEARTBEAT_INTERVAL_S": "0.5",
    "DICOM_CONNECTOR_FLEET_FLUSH_INTERVAL_S": "0.1",
    "DICOM_CONNECTOR_FLEET_RECONCILE_INTERVAL_S": "0.5",
}


class Fleet:
    """A control plane on a fixed port (so it can be restarted there) and its agents."""

    def __init__(self, database_url: str, root: Path, stack: ExitStack) -> None:
        self.database_url = database_url
        self.root = root
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self._stack = stack
        self.admin = httpx2.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )
        stack.callback(self.admin.close)
        self.control_plane: Process | None = None

    def start_control_plane(self) -> None:
        args = ["control-plane", "--db", self.database_url, "--http-port", str(self.http_port)]
        args += ["--blob-dir", str(self.root / "blobs"), "--admin-token", ADMIN_TOKEN]
        args += ["--host", "127.0.0.1"]
        process = Process(args, CONTROL_PLANE_ENV, lambda _line: False)
        self._stack.callback(process.stop)
        process.wait_ready(self._healthy)
        self.control_plane = process

    def stop_control_plane(self) -> None:
        assert self.control_plane is not None
        self.control_plane.stop()

    def _healthy(self) -> bool:
        try:
            return httpx2.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def register_agent(self, name: str) -> tuple[str, Path]:
        """Register an agent of the site; return its id and its token file."""
        created = self.call(
            "POST", f"/api/v1/sites/{SITE}/agents", json={"name": name, "deployment": "edge"}
        )
        token_file = self.root / f"{name}.token"
        token_file.write_text(created["token"], encoding="utf-8")
        return created["id"], token_file

    def start_agent(self, name: str, token_file: Path, *, wait: bool = True) -> tuple[Process, int]:
        """Start an agent process; return it and its DICOM port, once it accepts DICOM unless
        `wait` is false."""
        port = free_port()
        args = ["agent", "--control-plane", self.url, "--token-file", str(token_file)]
        args += ["--data-dir", str(self.root / name)]
        env = AGENT_ENV | {"DICOM_CONNECTOR_AGENT_DICOM_PORT_OVERRIDE": str(port)}
        process = Process(args, env, lambda line: line.startswith("agent-ready"))
        self._stack.callback(process.stop)
        if wait:
            process.wait_ready()
        return process, port

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.admin.request(method, path, **kwargs)
        assert response.status_code < 300, (path, response.status_code, response.text)
        return response.json() if response.content else None

    def eventually(self, path: str, holds: Callable[[Any], bool], within: float = 60) -> Any:
        """Poll GET `path` until `holds(answer)`; return that answer."""
        deadline = time.monotonic() + within
        while True:
            answer = self.call("GET", path)
            if holds(answer):
                return answer
            if time.monotonic() > deadline:
                raise AssertionError(f"GET {path} still does not hold after {within} s: {answer}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    with temporary_database() as url:
        yield url


ON_POSTGRESQL = on_databases("fleet", sqlite=False)
ON_BOTH = on_databases("fleet", sqlite=True)


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'control-plane.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        reset_schema(url)
    with ExitStack() as stack:
        fleet = Fleet(url, tmp_path, stack)
        fleet.start_control_plane()
        fleet.call("POST", "/api/v1/sites", json={"name": SITE, "timezone": "UTC"})
        fleet.call("PUT", f"/api/v1/sites/{SITE}/config", json=FAST)
        yield fleet


def _series(n: int, comments: str | None) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    return [
        make_instance(
            patient_id="SYNTH-FLEET",
            study_uid=study,
            series_uid=series,
            series_description="T1",
            study_description="Synthetic",
            patient_comments=comments,
            instance_number=number,
        )
        for number in range(1, n + 1)
    ]


@ON_BOTH
def test_a_config_put_reaches_the_agent_process_which_applies_it(fleet: Fleet) -> None:
    agent_id, token_file = fleet.register_agent("edge-1")
    _, port = fleet.start_agent("edge-1", token_file)
    fleet.eventually(
        f"/api/v1/agents/{agent_id}", lambda a: a["connected"] and a["config_revision"] == 1
    )

    revision = fleet.call(
        "PUT", f"/api/v1/sites/{SITE}/config", json=FAST | {"dicom": {"ae_title": "RENAMED"}}
    )["revision"]

    fleet.eventually(f"/api/v1/agents/{agent_id}", lambda a: a["config_revision"] == revision)
    assert send_datasets(port, _series(1, None), called_ae="RENAMED") == [0]


@ON_BOTH
def test_a_series_received_while_the_control_plane_is_down_lands_after_it_returns(
    fleet: Fleet,
) -> None:
    fleet.call("POST", "/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
    fleet.call("POST", "/api/v1/groups/neuro/projects", json={"label": "study-a"})
    agent_id, token_file = fleet.register_agent("edge-1")
    _, port = fleet.start_agent("edge-1", token_file)
    fleet.eventually(f"/api/v1/agents/{agent_id}", lambda a: a["connected"])

    fleet.stop_control_plane()
    series = _series(3, "fw://neuro/study-a")
    assert send_datasets(port, series) == [0, 0, 0]
    fleet.start_control_plane()

    landed = fleet.eventually(
        "/api/v1/acquisitions?group=neuro&project=study-a",
        lambda answer: sum(len(item["files"]) for item in answer["items"]) == 3,
    )
    assert landed["items"][0]["series_instance_uid"] == series[0].SeriesInstanceUID
    fleet.eventually(f"/api/v1/agents/{agent_id}", lambda a: a["connected"])


@ON_POSTGRESQL
def test_a_rotated_token_closes_the_old_link_and_the_new_token_reconnects(fleet: Fleet) -> None:
    agent_id, token_file = fleet.register_agent("edge-1")
    agent, _ = fleet.start_agent("edge-1", token_file)
    fleet.eventually(f"/api/v1/agents/{agent_id}", lambda a: a["connected"])

    rotated = fleet.call("POST", f"/api/v1/agents/{agent_id}/token")

    fleet.eventually(f"/api/v1/agents/{agent_id}", lambda a: not a["connected"], within=10)
    token_file.write_text(rotated["token"], encoding="utf-8")
    agent.stop()
    fleet.start_agent("edge-1", token_file)
    fleet.eventually(f"/api/v1/agents/{agent_id}", lambda a: a["connected"])


@ON_POSTGRESQL
def test_an_agent_that_stops_turns_its_site_missing(fleet: Fleet) -> None:
    agent_id, token_file = fleet.register_agent("edge-1")
    agent, _ = fleet.start_agent("edge-1", token_file)
    fleet.eventually(f"/api/v1/sites/{SITE}/health", lambda site: site["status"] == "ok")

    agent.stop()

    site = fleet.eventually(f"/api/v1/sites/{SITE}/health", lambda s: s["status"] == "missing")
    assert site["reasons"]
    assert not fleet.call("GET", f"/api/v1/agents/{agent_id}")["connected"]


@ON_POSTGRESQL
def test_a_config_the_agent_cannot_apply_is_rejected_with_its_reason_and_the_old_one_runs_on(
    fleet: Fleet,
) -> None:
    agent_id, token_file = fleet.register_agent("edge-1")
    _, port = fleet.start_agent("edge-1", token_file)
    fleet.eventually(f"/api/v1/agents/{agent_id}", lambda a: a["config_revision"] == 1)
    # Valid for the control plane; the agent cannot resolve the peer host, so its listener
    # cannot start as configured.
    unresolvable = {"ae_title": "SCANNER", "host": "no-such-scanner.invalid"}
    revision = fleet.call(
        "PUT", f"/api/v1/sites/{SITE}/config", json=FAST | {"dicom": {"peers": [unresolvable]}}
    )["revision"]

    site = fleet.eventually(
        f"/api/v1/sites/{SITE}/health",
        lambda s: any(f"config revision {revision} was rejected" in r for r in s["reasons"]),
    )
    assert site["status"] == "degraded"
    assert any("no-such-scanner.invalid" in reason for reason in site["reasons"])
    assert fleet.call("GET", f"/api/v1/agents/{agent_id}")["config_revision"] == 1
    assert send_datasets(port, _series(1, None)) == [0]  # revision 1: any peer is accepted


@ON_POSTGRESQL
def test_a_revoked_token_closes_the_link_within_ten_seconds_and_intake_goes_on(
    fleet: Fleet,
) -> None:
    agent_id, token_file = fleet.register_agent("edge-1")
    _, port = fleet.start_agent("edge-1", token_file)
    fleet.eventually(f"/api/v1/agents/{agent_id}", lambda a: a["connected"])

    fleet.call("DELETE", f"/api/v1/agents/{agent_id}/token")

    fleet.eventually(f"/api/v1/agents/{agent_id}", lambda a: not a["connected"], within=10)
    site = fleet.eventually(f"/api/v1/sites/{SITE}/health", lambda s: s["status"] == "missing")
    assert any("token is revoked" in reason for reason in site["reasons"])
    assert send_datasets(port, _series(2, None)) == [0, 0]


@ON_POSTGRESQL
def test_an_agent_with_a_bad_token_is_refused_and_says_why(fleet: Fleet) -> None:
    agent_id, token_file = fleet.register_agent("edge-1")
    token_file.write_text("not-the-token-of-any-agent", encoding="utf-8")

    agent, _ = fleet.start_agent("edge-1", token_file, wait=False)

    deadline = time.monotonic() + START_TIMEOUT_S
    while not any("refused the agent token (HTTP 401)" in line for line in agent.output):
        assert time.monotonic() < deadline, "".join(agent.output)
        assert agent.proc.poll() is None, "".join(agent.output)
        time.sleep(0.1)
    assert not fleet.call("GET", f"/api/v1/agents/{agent_id}")["connected"]


@ON_POSTGRESQL
def test_a_reap_over_the_sites_threshold_turns_the_agent_degraded(fleet: Fleet) -> None:
    fleet.call(
        "PUT",
        f"/api/v1/sites/{SITE}/config",
        json={"timing": {"acquisition_delay": "0.5s", "reap_time_threshold": "1ms"}},
    )
    agent_id, token_file = fleet.register_agent("edge-1")
    _, port = fleet.start_agent("edge-1", token_file)
    fleet.eventually(f"/api/v1/agents/{agent_id}", lambda a: a["connected"])

    assert send_datasets(port, _series(3, None)) == [0, 0, 0]

    agent = fleet.eventually(
        f"/api/v1/agents/{agent_id}", lambda a: a["health"]["status"] == "degraded"
    )
    assert any("over the reap_time_threshold" in r for r in agent["health"]["reasons"])
