"""The agent's config client against a real HTTP peer (the store double of the control plane)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.config_client import ConfigClient, ConfigUnavailable
from agent.site import ConfigRefused, parse_snapshot
from tests.agent.test_upload_store_double import AGENT_TOKEN, StoreDouble
from tests.support.environment import free_port


def _answer(revision: int = 3, **config: Any) -> dict[str, Any]:
    return {
        "site": "default",
        "revision": revision,
        "timezone": "Europe/Berlin",
        "config": {"dicom": {"ae_title": "CONNECTOR", "port": 11112}, **config},
    }


@pytest.fixture
def store() -> Iterator[StoreDouble]:
    double = StoreDouble(config_answer=_answer())
    double.start()
    yield double
    double.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent-token"
    path.write_text(AGENT_TOKEN + "\n", encoding="utf-8")
    return path


class _Sleeps:
    """Records the waits instead of sleeping, so backoff is tested without time passing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
async def client_factory(tmp_path: Path, token_file: Path) -> AsyncIterator[Any]:
    clients: list[ConfigClient] = []

    def make(base_url: str, sleep: _Sleeps | None = None) -> ConfigClient:
        client = ConfigClient(
            base_url, token_file, tmp_path / "data", timeout=10, sleep=sleep or _Sleeps()
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_initial_config_is_validated_and_kept_as_last_known_good(
    store: StoreDouble, client_factory: Any, tmp_path: Path
) -> None:
    client = client_factory(store.base_url)

    snapshot = await client.initial()

    assert (snapshot.site, snapshot.revision, snapshot.timezone) == ("default", 3, "Europe/Berlin")
    assert snapshot.config.dicom.ae_title == "CONNECTOR"
    stored = json.loads((tmp_path / "data" / "config.json").read_text())
    assert (stored["site"], stored["revision"], stored["timezone"]) == (
        "default",
        3,
        "Europe/Berlin",
    )
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["config.json"]


async def test_initial_runs_on_last_known_good_without_asking_the_control_plane(
    store: StoreDouble, client_factory: Any
) -> None:
    await client_factory(store.base_url).initial()
    offline = client_factory(f"http://127.0.0.1:{free_port()}")

    with capture_logs() as logs:
        snapshot = await offline.initial()

    assert snapshot.revision == 3
    assert "config.last_known_good" in [entry["event"] for entry in logs]
    assert offline.last_error is None


async def test_initial_waits_with_backoff_when_there_is_no_config_anywhere(
    store: StoreDouble, client_factory: Any
) -> None:
    store.config_status.extend([503, 503, 503])
    sleeps = _Sleeps()
    client = client_factory(store.base_url, sleeps)

    with capture_logs() as logs:
        snapshot = await client.initial()

    assert snapshot.revision == 3
    assert len(sleeps.waits) == 3
    assert all(0 <= wait <= 60 for wait in sleeps.waits)
    waiting = [entry for entry in logs if entry["event"] == "config.waiting_for_control_plane"]
    assert [entry["attempt"] for entry in waiting] == [1, 2, 3]
    assert "HTTP 503" in waiting[0]["error"]


def test_a_config_with_an_invalid_duration_is_refused_with_its_location() -> None:
    with pytest.raises(ConfigRefused, match=r"timing\.acquisition_delay"):
        parse_snapshot(_answer(revision=4, timing={"acquisition_delay": "30 parsecs"}))


def test_a_config_naming_a_field_that_is_no_dicom_keyword_is_refused() -> None:
    with pytest.raises(ConfigRefused, match="PatientComentz"):
        parse_snapshot(_answer(revision=4, routing={"field": "PatientComentz"}))


async def test_a_refused_token_is_reported_with_the_token_file(
    store: StoreDouble, client_factory: Any, token_file: Path
) -> None:
    await asyncio.to_thread(token_file.write_text, "not-the-token", encoding="utf-8")
    client = client_factory(store.base_url)

    with pytest.raises(ConfigUnavailable) as refused:
        await client.fetch()

    assert "HTTP 401" in str(refused.value)
    assert str(token_file) in str(refused.value)


async def test_an_unusable_last_known_good_is_ignored_in_favour_of_the_control_plane(
    store: StoreDouble, client_factory: Any, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "config.json").write_text("{ not json", encoding="utf-8")
    client = client_factory(store.base_url)

    with capture_logs() as logs:
        snapshot = await client.initial()

    assert snapshot.revision == 3
    assert "config.last_known_good_unusable" in [entry["event"] for entry in logs]


async def test_an_answer_without_timezone_runs_in_utc(
    store: StoreDouble, client_factory: Any
) -> None:
    answer = _answer()
    del answer["timezone"]
    store.config_answer = answer

    snapshot = await client_factory(store.base_url).initial()

    assert snapshot.timezone == "UTC"
