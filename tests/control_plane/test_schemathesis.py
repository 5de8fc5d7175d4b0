"""Schemathesis against the running control plane's own OpenAPI document: for inputs generated
from the schema, no answer is a server error and every answer matches its documented schema.

Bounded (`EXAMPLES` per operation) so the whole run stays well under a minute per database.
"""

from __future__ import annotations

import httpx2
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from control_plane.main import create_app
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.harness import ADMIN_TOKEN, bearer
from tests.support.served import served

EXAMPLES = 25
CHECKS = [not_a_server_error, response_schema_conformance]


@schemathesis.serializer("application/dicom", "multipart/related")
def _raw_bytes(_context: schemathesis.SerializationContext, value: object) -> bytes:
    # The ingest routes document their bodies as binary strings: send them as they are.
    return value if isinstance(value, bytes) else str(value).encode()


def _seed(base_url: str) -> None:
    # Something for generated names to find now and then (ids are random, so mostly 404s).
    with httpx2.Client(base_url=base_url, headers=bearer(ADMIN_TOKEN)) as client:
        client.post("/api/v1/sites", json={"name": "a", "timezone": "UTC"})
        client.post("/api/v1/groups", json={"id": "a", "label": "A"})


def test_generated_requests_never_get_a_server_error_or_an_undocumented_answer(
    settings: ControlPlaneSettings,
) -> None:
    failures: dict[str, str] = {}
    with served(create_app(settings)) as port:
        base_url = f"http://127.0.0.1:{port}"
        _seed(base_url)
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            @hypothesis_settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    base_url=base_url, headers=bearer(ADMIN_TOKEN), checks=CHECKS, timeout=30
                )

            try:
                check()
            except Exception as exc:
                failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:2000]}"

    assert failures == {}
