"""Two control-plane replicas on one PostgreSQL database, end to end: real
`dicom-connector control-plane` processes and a real `dicom-connector agent` on replica B,
changes made through replica A.

The replicas' periodic reconcile is set to an hour, so only the replica bus (LISTEN/NOTIFY)
can carry a change from A to B's agent within the test. The measured latency is printed (run
with `-s` to see it) and written down in docs/benchmarks.md; the test only asserts that the
change arrived long before any reconcile could have carried it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydicom.uid import generate_uid

from tests.support.cli_process import Process
from tests.support.dicom_factory import encode_part10, make_instance
from tests.support.environment import free_port
from tests.support.postgres import temporary_database
from tests.support.s3_server import s3_server

pytestmark = pytest.mark.postgres

ADMIN_TOKEN = "e2e-replicas-admin-token-0123456789"
SITE = "default"
FAST = {"timing": {"acquisition_delay": "0.5s"}}
RECONCILE_INTERVAL_S = 3600.0
# Far under the reconcile interval, far over what the bus takes (milliseconds): a loaded
# test machine does not fail it, a change carried by nothing does.
WITHIN_S = 30.0
CONTROL_PLANE_ENV = {
    "DICOM_CONNECTOR_HEARTBEAT_INTERVAL_S": "0.5",
    "DICOM_CONNECTOR_FLEET_FLUSH_INTERVAL_S": "0.05",
    "DICOM_CONNECTOR_FLEET_RECONCILE_INTERVAL_S": str(RECONCILE_INTERVAL_S),
}
AGENT_ENV = {
    "DICOM_CONNECTOR_AGENT_DICOM_HOST": "127.0.0.1",
    "DICOM_CONNECTOR_AGENT_SPOOL_RESERVE_BYTES": "0",
    "DICOM_CONNECTOR_AGENT_LINK_BACKOFF_BASE": "0.1",
    "DICOM_CONNECTOR_AGENT_LINK_BACKOFF_CAP": "1",
    "DICOM_CONNECTOR_AGENT_LINK_UNAUTHORIZED_RETRY_INTERVAL": "0.5",
}


class Replica:
    """One control-plane process of the pair, with an admin client."""

    def __init__(
        self,
        database_url: str,
        blob_args: list[str],
        stack: ExitStack,
        env: dict[str, str] | None = None,
    ) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        args = ["control-plane", "--db", database_url, "--http-port", port, "--host", "127.0.0.1"]
        args += [*blob_args, "--admin-token", ADMIN_TOKEN]
        self.process = Process(args, CONTROL_PLANE_ENV | (env or {}), lambda _line: False)
        stack.callback(self.process.stop)
        self.admin = httpx2.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )
        stack.callback(self.admin.close)

    def healthy(self) -> bool:
        try:
            return httpx2.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.admin.request(method, path, **kwargs)
        assert response.status_code < 300, (path, response.status_code, response.text)
        return response.json() if response.content else None

    def until(self, path: str, holds: Callable[[Any], bool], within: float) -> float:
        """Poll GET `path` every 10 ms until `holds(answer)`; the seconds it took."""
        started = time.perf_counter()
        while True:
            answer = self.call("GET", path)
            if holds(answer):
                return time.perf_counter() - started
            if time.perf_counter() - started > within:
                raise AssertionError(f"GET {path} still does not hold after {within} s: {answer}")
            time.sleep(0.01)


class Pair:
    """Replicas A and B on one database, and agents started against B."""

    def __init__(self, database_url: str, root: Path, stack: ExitStack) -> None:
        self.root = root
        self._stack = stack
        # One blob directory: the replicas share a store, as in production.
        blob_args = ["--blob-dir", str(root / "blobs")]
        self.a = Replica(database_url, blob_args, stack)
        self.b = Replica(database_url, blob_args, stack)
        self.a.process.wait_ready(self.a.healthy)
        self.b.process.wait_ready(self.b.healthy)

    def start_agent_on_b(self, name: str) -> tuple[str, Path, Process]:
        """Register an agent through A, start it against B; its id, token file and process."""
        created = self.a.call(
            "POST", f"/api/v1/sites/{SITE}/agents", json={"name": name, "deployment": "edge"}
        )
        token_file = self.root / f"{name}.token"
        token_file.write_text(created["token"], encoding="utf-8")
        args = ["agent", "--control-plane", self.b.url, "--token-file", str(token_file)]
        args += ["--data-dir", str(self.root / name)]
        env = AGENT_ENV | {"DICOM_CONNECTOR_AGENT_DICOM_PORT_OVERRIDE": str(free_port())}
        process = Process(args, env, lambda line: line.startswith("agent-ready"))
        self._stack.callback(process.stop)
        process.wait_ready()
        return created["id"], token_file, process


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    # A database of its own: the replicas migrate it, and no other test shares its rows.
    with temporary_database() as url, ExitStack() as stack:
        pair = Pair(url, tmp_path, stack)
        pair.a.call("POST", "/api/v1/sites", json={"name": SITE, "timezone": "UTC"})
        pair.a.call("PUT", f"/api/v1/sites/{SITE}/config", json=FAST)
        yield pair


def test_a_config_put_through_one_replica_reaches_an_agent_on_the_other_at_once(
    pair: Pair,
) -> None:
    agent_id, _, _ = pair.start_agent_on_b("edge-1")
    pair.b.until(
        f"/api/v1/agents/{agent_id}",
        lambda a: a["connected"] and a["config_revision"] == 1,
        within=60,
    )

    # Through B itself first: the baseline of what applying a config takes the agent.
    through = {"B (the agent's own)": pair.b, "A (the other)": pair.a}
    latencies: dict[str, list[float]] = {name: [] for name in through}
    for round_number in range(6):
        name = list(through)[round_number % 2]
        document = FAST | {"dicom": {"ae_title": f"RENAMED{round_number}"}}
        put = through[name].call("PUT", f"/api/v1/sites/{SITE}/config", json=document)
        latencies[name].append(
            pair.b.until(
                f"/api/v1/agents/{agent_id}",
                lambda a, revision=put["revision"]: a["config_revision"] == revision,
                within=WITHIN_S,
            )
        )

    # A's view hears of B's agent's results through B's notice, not the hourly resync.
    shown_on_a = pair.a.until(
        f"/api/v1/agents/{agent_id}",
        lambda a: a["connected"] and a["config_revision"] == put["revision"],
        within=WITHIN_S,
    )

    print(
        f"\nconfig PUT until replica B shows the agent applied it (reconcile every"
        f" {RECONCILE_INTERVAL_S:.0f} s):"
    )
    for name, seconds in latencies.items():
        print(f"  through replica {name}: {', '.join(f'{s * 1000:.0f} ms' for s in seconds)}")
    print(f"  then until replica A shows it too: {shown_on_a * 1000:.0f} ms")


def test_a_token_rotated_through_one_replica_closes_the_link_on_the_other(pair: Pair) -> None:
    agent_id, _, _ = pair.start_agent_on_b("edge-1")
    pair.b.until(f"/api/v1/agents/{agent_id}", lambda a: a["connected"], within=60)

    pair.a.call("POST", f"/api/v1/agents/{agent_id}/token")

    took = pair.b.until(f"/api/v1/agents/{agent_id}", lambda a: not a["connected"], within=WITHIN_S)
    print(f"\ntoken rotated on replica A until replica B closed the link: {took * 1000:.0f} ms")


def test_a_token_revoked_through_one_replica_closes_the_link_on_the_other(pair: Pair) -> None:
    agent_id, _, _ = pair.start_agent_on_b("edge-1")
    pair.b.until(f"/api/v1/agents/{agent_id}", lambda a: a["connected"], within=60)

    pair.a.call("DELETE", f"/api/v1/agents/{agent_id}/token")

    pair.b.until(f"/api/v1/agents/{agent_id}", lambda a: not a["connected"], within=WITHIN_S)


def test_a_file_uploaded_through_one_replica_downloads_through_the_other_from_one_bucket(
    tmp_path: Path,
) -> None:
    with s3_server() as s3, temporary_database() as url, ExitStack() as stack:
        blob_args = ["--blob-url", s3.url("connector")]
        a = Replica(url, blob_args, stack, s3.env)
        b = Replica(url, blob_args, stack, s3.env)
        a.process.wait_ready(a.healthy)
        b.process.wait_ready(b.healthy)
        sop = generate_uid()
        body = encode_part10(
            make_instance(
                patient_id="SYNTH-REPLICAS",
                study_uid=generate_uid(),
                series_uid=generate_uid(),
                sop_uid=sop,
                series_description="T1",
                study_description="Synthetic",
            )
        )
        sha256 = hashlib.sha256(body).hexdigest()

        stored = a.admin.post(
            "/api/v1/ingest",
            params={
                "subject": "SUBJ-1",
                "session": "SESSION-1",
                "acquisition": "T1w",
                "series_instance_uid": generate_uid(),
                "sop_instance_uid": sop,
                "sha256": sha256,
            },
            content=body,
            headers={"Content-Type": "application/dicom"},
        )
        assert stored.status_code < 300, stored.text
        downloaded = b.admin.get(f"/api/v1/files/{stored.json()['file_id']}")

        assert downloaded.status_code == 200
        assert downloaded.content == body
        assert s3.keys("connector/") == [f"connector/{sha256[:2]}/{sha256}"]


def test_each_replica_reports_its_bus_listening_in_its_metrics(pair: Pair) -> None:
    for replica in (pair.a, pair.b):
        exposition = httpx2.get(f"{replica.url}/metrics", timeout=30).text
        assert "dicom_connector_replica_bus_listening 1.0" in exposition
        assert "dicom_connector_replica_bus_connects_total 1.0" in exposition
