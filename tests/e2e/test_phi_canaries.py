"""PHI canaries through every path of the agent, searched for where they must never be.

The real control plane (`create_app` on SQLite, under uvicorn) and the real agent runtime run
in this process, so everything they log is captured at DEBUG (the product's own logging set-up
at its most verbose: `common.logging.configure_logging("DEBUG")`), and every span goes to an
in-memory exporter. Instances carry a distinct canary in every text, date and UID attribute of
PS3.15 Table E.1-1 (`tests.support.phi_canaries`), nested and private elements included.

Paths: success (stored under `basic`), opt-out (held back by the upload policy), failure (the
agent's C-STORE refuses an instance it cannot file), rejection (an unlisted calling AE title:
the association is refused), de-identification error (a profile that cannot shift a date that
is not one: the series fails as a whole), and PULL (C-FIND and C-MOVE from a real Orthanc,
then upload). Then no canary may be in any log line, span (name,
attribute, event), health report (the agent's own and the API's), failed-series reason or API
error answer. The agent has no metrics endpoint yet; its counters travel in the health report,
which is searched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydicom import Dataset
from pynetdicom import AE

from agent.runtime import AgentRuntime
from agent.settings import AgentSettings
from common.logging import configure_logging
from common.telemetry import configure_tracing
from tests.agent.test_runtime import Running
from tests.support.orthanc import running_orthanc
from tests.support.phi_canaries import Canary, CanaryInstance, canary_series, canary_uid
from tests.support.scu import send_datasets
from tests.support.served import served

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ADMIN_TOKEN = "admin-token-for-phi-canary-tests-0123"
# Text, date and UID canaries: numbers (IS, DS), times and ages are short digit strings that
# can turn up in any byte count or timestamp by chance, so they are not searched for.
_SEARCHED_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR", "DA", "DT", "UI"}
_ROUTE = "fw://neuro/study-a/sub-canary/ses-canary"
_BAD_DATE_PROFILE: dict[str, Any] = {
    "version": 1,
    "name": "shift dates",
    "dicom": {"date-increment": -10, "fields": [{"name": "StudyDate", "increment-date": True}]},
}


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line of both sides, at DEBUG, through the product's own handler."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libraries = {name: logging.getLogger(name).level for name in ("pynetdicom", "pydicom")}
    buffer = io.StringIO()
    configure_logging("DEBUG", stream=buffer)
    try:
        yield buffer
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
        for name, library_level in libraries.items():
            logging.getLogger(name).setLevel(library_level)
        structlog.reset_defaults()


@pytest.fixture
def control_plane_url(tmp_path: Path, captured_logs: io.StringIO) -> Iterator[str]:
    from control_plane.main import create_app
    from control_plane.settings import ControlPlaneSettings

    settings = ControlPlaneSettings(
        database_url=f"sqlite:///{tmp_path / 'control-plane.db'}",
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
    )
    with served(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def admin(control_plane_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        base_url=control_plane_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


async def _call(client: httpx2.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, (path, response.status_code, response.text)
    return response.json()


def _series(first: int, count: int, comment: str) -> list[CanaryInstance]:
    series = canary_series(count, study_uid=canary_uid(first), series_uid=canary_uid(first + 1))
    for instance in series:
        instance.dataset.PatientComments = f"{comment} {instance.dataset.PatientComments}"
    return series


def _searched(instances: list[CanaryInstance]) -> list[Canary]:
    return [c for i in instances for c in i.canaries if c.vr in _SEARCHED_VRS]


def _found(canaries: list[Canary], text: str) -> list[str]:
    return sorted({f"{c.where} = {c.value}" for c in canaries if c.value in text})


def _associate_as(port: int, calling: str, datasets: list[Dataset]) -> bool:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 10
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CONNECTOR")
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    return established


async def _eventually(check: Any, what: str, within: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_no_canary_reaches_a_log_span_health_report_or_api_answer_on_any_push_path(
    admin: httpx2.AsyncClient,
    control_plane_url: str,
    captured_logs: io.StringIO,
    tmp_path: Path,
) -> None:
    await _call(admin, "POST", "/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
    await _call(admin, "POST", "/api/v1/groups/neuro/projects", json={"label": "study-a"})
    await _call(admin, "POST", "/api/v1/sites", json={"name": "default", "timezone": "UTC"})
    config: dict[str, Any] = {
        "dicom": {"peers": [{"ae_title": "TEST_SCU", "host": "127.0.0.1"}]},
        "timing": {"acquisition_delay": "0.5s"},
        "upload_policy": {"mode": "opt-out", "strings": ["NOFW"], "field": "PatientComments"},
        "deid": {"profile": "basic"},
    }
    await _call(admin, "PUT", "/api/v1/sites/default/config", json=config)
    spans = InMemorySpanExporter()
    running, agent_id = await _start_agent(admin, control_plane_url, tmp_path, spans)
    sent: list[CanaryInstance] = []
    answers: list[str] = []
    try:
        port = await running.started()
        runtime = running.runtime
        await _eventually(
            lambda: asyncio.sleep(0, runtime.link.connected), "the agent's link", within=30
        )

        # Success: stored under basic.
        stored = _series(910001, 2, _ROUTE)
        # Opt-out: held back by the upload policy.
        opted_out = _series(910011, 2, f"{_ROUTE} NOFW")
        # Failure: the C-STORE is refused (no Series Instance UID: the instance cannot be filed).
        refused = _series(910021, 1, _ROUTE)
        del refused[0].dataset.SeriesInstanceUID
        sent += stored + opted_out + refused
        statuses = await asyncio.to_thread(
            send_datasets, port, [i.dataset for i in stored + opted_out + refused]
        )
        assert statuses[:4] == [0, 0, 0, 0]
        assert statuses[4] not in (0, -1)

        # Rejection: an unlisted calling AE title never gets an association.
        rejected = _series(910031, 1, _ROUTE)
        sent += rejected
        assert not await asyncio.to_thread(
            _associate_as, port, "INTRUDER", [i.dataset for i in rejected]
        )

        async def uploaded() -> bool:
            items = (await _call(admin, "GET", "/api/v1/acquisitions"))["items"]
            return sum(len(item["files"]) for item in items) == 2

        await _eventually(uploaded, "the stored series uploaded")

        # De-identification error: a profile that shifts StudyDate meets one that is no date.
        await _call(
            admin,
            "PUT",
            "/api/v1/sites/default/config",
            json=config | {"deid": {"profile": _BAD_DATE_PROFILE}},
        )
        await _eventually(
            lambda: asyncio.sleep(0, runtime.applied_revision == 2), "revision 2 applied"
        )
        broken = _series(910041, 2, _ROUTE)
        broken[1].dataset.StudyDate = "CANARYNOTADATE"
        sent += broken
        statuses = await asyncio.to_thread(send_datasets, port, [i.dataset for i in broken])
        assert statuses == [0, 0]

        async def failed() -> bool:
            answer = await admin.get("/api/v1/sites/default/series", params={"state": "failed"})
            answers.append(answer.text)
            return len(answer.json()["items"]) == 1

        await _eventually(failed, "the series failed as a whole")
        health = await asyncio.to_thread(runtime.health_report)
        answers.append(health.model_dump_json())
        answers += await _api_answers(admin, agent_id)
    finally:
        await running.stop()

    canaries = [*_searched(sent), Canary("CANARYNOTADATE", "the date that is not one", "DA", None)]
    assert len(canaries) > 100
    _assert_nowhere(canaries, captured_logs.getvalue(), spans, answers)
    # The paths were taken, and their traces are in the log: it was searched for something.
    log = captured_logs.getvalue()
    assert "association rejected" in log
    assert "c-store refused" in log


async def test_no_canary_reaches_a_log_span_health_report_or_api_answer_when_pulling(
    admin: httpx2.AsyncClient,
    control_plane_url: str,
    captured_logs: io.StringIO,
    tmp_path: Path,
) -> None:
    """PULL from a real Orthanc: C-FIND of today's studies, C-MOVE to the agent, upload."""
    today = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%d")
    pulled = _series(920001, 2, _ROUTE)
    for instance in pulled:
        # Dated today, so the pull's lookback finds the study; these two are then no canaries.
        instance.dataset.StudyDate = instance.dataset.SeriesDate = today
    with running_orthanc(tmp_path / "orthanc") as pacs:
        pacs.upload([i.dataset for i in pulled])
        await _call(admin, "POST", "/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
        await _call(admin, "POST", "/api/v1/groups/neuro/projects", json={"label": "study-a"})
        await _call(admin, "POST", "/api/v1/sites", json={"name": "default", "timezone": "UTC"})
        source = {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}
        config: dict[str, Any] = {
            "mode": "pull",
            "pull": {"sources": [source]},
            "timing": {"acquisition_delay": "1s", "sleep_time": "1s"},
            "deid": {"profile": "basic"},
        }
        await _call(admin, "PUT", "/api/v1/sites/default/config", json=config)
        spans = InMemorySpanExporter()
        running, agent_id = await _start_agent(admin, control_plane_url, tmp_path, spans)
        answers: list[str] = []
        try:
            port = await running.started()
            await asyncio.to_thread(pacs.register_modality, "agent", "CONNECTOR", "127.0.0.1", port)

            async def uploaded() -> bool:
                items = (await _call(admin, "GET", "/api/v1/acquisitions"))["items"]
                return sum(len(item["files"]) for item in items) == 2

            await _eventually(uploaded, "the pulled series uploaded", within=90)
            answers.append(
                (await asyncio.to_thread(running.runtime.health_report)).model_dump_json()
            )
            answers += await _api_answers(admin, agent_id)
        finally:
            await running.stop()

    canaries = [c for c in _searched(pulled) if c.value != today]
    _assert_nowhere(canaries, captured_logs.getvalue(), spans, answers)
    assert "pull" in captured_logs.getvalue()


async def _start_agent(
    admin: httpx2.AsyncClient, control_plane_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> tuple[Running, str]:
    created = await _call(
        admin, "POST", "/api/v1/sites/default/agents", json={"name": "edge", "deployment": "edge"}
    )
    token_file = tmp_path / "agent-token"
    token_file.write_text(created["token"], encoding="utf-8")
    settings = AgentSettings(
        control_plane_url=control_plane_url,
        token_file=token_file,
        data_dir=tmp_path / "agent",
        dicom_host="127.0.0.1",
        dicom_port_override=0,
        reap_interval=0.05,
        spool_reserve_bytes=0,
        intake_processes=1,
        association_drain_timeout=5,
        upload_drain_timeout=5,
    )
    runtime = AgentRuntime(settings, tracer_provider=configure_tracing("agent", spans))
    return Running(runtime), str(created["id"])


async def _api_answers(admin: httpx2.AsyncClient, agent_id: str) -> list[str]:
    """What the API says about the site and its agent, and two error answers."""
    answers = []
    for path in (
        "/api/v1/sites/default/health",
        "/api/v1/sites/default/agents",
        f"/api/v1/agents/{agent_id}",
        "/api/v1/fleet/health",
        "/api/v1/acquisitions",
        "/api/v1/audit",
        "/api/v1/sites/default/series?state=failed",
    ):
        answers.append((await admin.get(path)).text)
    answers.append((await admin.post("/api/v1/sites/default/series/nope/retry")).text)
    answers.append((await admin.get("/api/v1/files/00000000-0000-0000-0000-000000000000")).text)
    return answers


def _assert_nowhere(
    canaries: list[Canary], log: str, spans: InMemorySpanExporter, answers: list[str]
) -> None:
    finished = spans.get_finished_spans()
    span_text = "\n".join(
        f"{span.name} {dict(span.attributes or {})} {[e.name for e in span.events]}"
        f" {[dict(e.attributes or {}) for e in span.events]} {span.status.description}"
        for span in finished
    )
    assert finished
    assert _found(canaries, log) == []
    assert _found(canaries, span_text) == []
    assert _found(canaries, "\n".join(answers)) == []
