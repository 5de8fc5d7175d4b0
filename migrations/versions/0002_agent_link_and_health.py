"""Agent link state and health: what each agent's link last said, and a health history.

Agent tokens become nullable: a revoked token is NULL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite keeps UUIDs as 32 hex digits; PostgreSQL's text form has dashes.
_LOCK_OUT_REVOKED = {
    "sqlite": "UPDATE agents SET token_sha256 = 'revoked-' || id WHERE token_sha256 IS NULL",
    "postgresql": (
        "UPDATE agents SET token_sha256 = 'revoked-' || replace(CAST(id AS TEXT), '-', '')"
        " WHERE token_sha256 IS NULL"
    ),
}


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.alter_column("token_sha256", existing_type=sa.String(length=64), nullable=True)
        batch.add_column(sa.Column("agent_version", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("config_revision", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("config_failed_revision", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("config_failure_reason", sa.String(length=2000), nullable=True))
        batch.add_column(
            sa.Column("connected", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("connected_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("disconnected_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("health_report", _json(), nullable=True))
        batch.add_column(sa.Column("health_reported_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("health_status", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("health_reasons", _json(), nullable=True))
    op.create_table(
        "agent_health_reports",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reasons", _json(), nullable=False),
        sa.Column("report", _json(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_agent_health_reports_agent_id_agents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_health_reports")),
    )
    op.create_index(
        "ix_agent_health_reports_agent_id_received_at",
        "agent_health_reports",
        ["agent_id", "received_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_agent_health_reports_agent_id_received_at", table_name="agent_health_reports")
    op.drop_table("agent_health_reports")
    # A revoked agent gets a unique value no token hashes to ("revoked-" is not hexadecimal),
    # so the old schema's NOT NULL holds and the agent stays locked out.
    op.execute(sa.text(_LOCK_OUT_REVOKED[op.get_bind().dialect.name]))
    with op.batch_alter_table("agents") as batch:
        for column in (
            "health_reasons",
            "health_status",
            "health_reported_at",
            "health_report",
            "last_seen_at",
            "disconnected_at",
            "connected_at",
            "connected",
            "config_failure_reason",
            "config_failed_revision",
            "config_revision",
            "agent_version",
        ):
            batch.drop_column(column)
        batch.alter_column("token_sha256", existing_type=sa.String(length=64), nullable=False)
