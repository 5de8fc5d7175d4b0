"""Transport failures of the HTTP destinations, as the messages that reach health."""

from __future__ import annotations

import pytest

from agent.spool import Spool
from agent.state import AgentState
from agent.upload.base import UploadError
from agent.upload.builtin_store import BuiltinStoreDestination
from common.config import RoutingConfig
from common.hierarchy import HierarchyTarget
from common.routing import RoutingReason
from tests.agent.test_reaper import T0, series_datasets, spool_datasets
from tests.support.environment import free_port


async def test_a_store_that_is_down_is_named_without_the_request_url_even_with_fw_client_loaded(
    state: AgentState, spool: Spool
) -> None:
    # fw-client rewrites str() of every httpx2 error in the process to "METHOD URL - ...",
    # and the ingest URL's query holds the subject and session labels.
    import fw_client  # noqa: F401

    datasets = series_datasets(1, comments=None)
    spool_datasets(spool, datasets, T0)
    [row] = state.spooled_instances(datasets[0].SeriesInstanceUID)
    target = HierarchyTarget(
        group=None,
        project=None,
        subject="SECRET-SUBJECT",
        session="SECRET-SESSION",
        acquisition="T1",
        acquisition_key="k",
        routing_reason=RoutingReason.no_routing_string,
        routing_string=None,
    )
    destination = BuiltinStoreDestination(
        f"http://127.0.0.1:{free_port()}", "token", retry_attempts=1
    )
    try:
        with pytest.raises(UploadError) as raised:
            await destination.upload(row, target, RoutingConfig())
    finally:
        await destination.aclose()

    assert raised.value.retryable
    assert raised.value.message.startswith("request to the store failed (ConnectError): ")
    assert "SECRET" not in raised.value.message
    assert "127.0.0.1" not in raised.value.message
