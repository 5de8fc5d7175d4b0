"""Migration 0002 (agent link state, health history, revocable tokens) in both directions."""

from __future__ import annotations

import uuid

from alembic import command
from sqlalchemy import create_engine, pool, text

from control_plane.database_url import sync_database_url
from control_plane.migrate import alembic_config, upgrade


def _execute(database_url: str, statement: str, **params: object) -> list[tuple[object, ...]]:
    engine = create_engine(sync_database_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def test_downgrade_keeps_a_revoked_agent_locked_out(empty_database_url: str) -> None:
    url = empty_database_url
    command.upgrade(alembic_config(url), "0002")
    site_id, revoked_id, active_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    _execute(
        url,
        "INSERT INTO sites (id, name, timezone, created_at)"
        " VALUES (:id, 'hospital-a', 'UTC', CURRENT_TIMESTAMP)",
        id=site_id.hex if url.startswith("sqlite") else site_id,
    )
    for agent_id, name, digest in ((revoked_id, "revoked", None), (active_id, "active", "a" * 64)):
        _execute(
            url,
            "INSERT INTO agents (id, site_id, name, deployment, token_sha256, created_at)"
            " VALUES (:id, :site, :name, 'edge', :digest, CURRENT_TIMESTAMP)",
            id=agent_id.hex if url.startswith("sqlite") else agent_id,
            site=site_id.hex if url.startswith("sqlite") else site_id,
            name=name,
            digest=digest,
        )

    command.downgrade(alembic_config(url), "0001")

    tokens = dict(_execute(url, "SELECT name, token_sha256 FROM agents"))
    assert tokens["active"] == "a" * 64
    assert tokens["revoked"] == f"revoked-{revoked_id.hex}"
    upgrade(url)
    assert dict(_execute(url, "SELECT name, connected FROM agents")) == {
        "revoked": False,
        "active": False,
    }
    ((salt,),) = _execute(url, "SELECT deid_salt FROM sites")
    assert len(salt) == 64
