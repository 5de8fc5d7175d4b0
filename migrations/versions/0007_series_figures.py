"""Series figures: the raw facts of the operational figures, one row per upload batch.

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "series_figures",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("series_key", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("routing_reason", sa.String(length=32), nullable=False),
        sa.Column("instances_received", sa.Integer(), nullable=False),
        sa.Column("instances_announced", sa.Integer(), nullable=True),
        sa.Column("instances_stored", sa.Integer(), nullable=False),
        sa.Column("instances_failed", sa.Integer(), nullable=False),
        sa.Column("instances_retrying", sa.Integer(), nullable=False),
        sa.Column("bytes_uploaded", sa.BigInteger(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deferred_s", sa.Float(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_series_figures_agent_id_agents")
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_series_figures_site_id_sites")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series_figures")),
    )
    op.create_index(
        "ix_series_figures_site_id_stored_at", "series_figures", ["site_id", "stored_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_series_figures_site_id_stored_at", table_name="series_figures")
    op.drop_table("series_figures")
