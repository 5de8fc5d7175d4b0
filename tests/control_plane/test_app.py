"""App-level behaviour: OpenAPI, and no traceback ever reaching a client."""

from __future__ import annotations

from pathlib import Path

import httpx2
from sqlalchemy import text

from control_plane.main import INTERNAL_ERROR_DETAIL, create_app
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.harness import ADMIN_TOKEN, BASE_URL, ControlPlane, bearer


async def test_openapi_lists_the_contract_paths(control_plane: ControlPlane) -> None:
    response = await control_plane.anonymous.get("/openapi.json")

    paths = response.json()["paths"]
    for path in (
        "/api/v1/groups",
        "/api/v1/groups/{group}/projects",
        "/api/v1/acquisitions",
        "/api/v1/files/{file_id}",
        "/api/v1/sites",
        "/api/v1/sites/{site}/config",
        "/api/v1/sites/{site}/agents",
        "/api/v1/agents/{agent_id}",
        "/api/v1/agent/config",
        "/api/v1/ingest",
        "/healthz",
    ):
        assert path in paths


async def test_unexpected_failure_answers_generic_500_without_internals(
    empty_database_url: str, tmp_path: Path
) -> None:
    # A database of its own, because the test breaks its schema on purpose.
    settings = ControlPlaneSettings(
        database_url=empty_database_url, blob_dir=tmp_path / "blobs", admin_token=ADMIN_TOKEN
    )
    app = create_app(settings)
    # The transport would otherwise re-raise the app's exception into the test.
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(
            transport=transport, base_url=BASE_URL, headers=bearer(ADMIN_TOKEN)
        ) as client,
    ):
        async with app.state.resources.sessionmaker() as session:
            await session.execute(text("DROP TABLE config_revisions"))
            await session.commit()
        await client.post("/api/v1/sites", json={"name": "hospital-a", "timezone": "UTC"})
        response = await client.get("/api/v1/sites/hospital-a/config")

    assert response.status_code == 500
    answer = response.json()
    assert answer == {"detail": INTERNAL_ERROR_DETAIL, "request_id": answer["request_id"]}
    assert response.headers["X-Request-ID"] == answer["request_id"]
    assert "config_revisions" not in response.text
