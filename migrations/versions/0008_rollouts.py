"""Rollouts: site labels, staged config rollouts with a driver lease, and the rollout that
wrote a config revision.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_REASON_LENGTH = 2000
_LABEL_LENGTH = 255


def upgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("labels", _JSON, nullable=False, server_default=sa.text("'{}'")))
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("rollback_pending", sa.Boolean(), nullable=False),
        sa.Column("config", _JSON, nullable=False),
        sa.Column("config_mode", sa.String(length=16), nullable=False),
        sa.Column("target", _JSON, nullable=False),
        sa.Column("stages", _JSON, nullable=False),
        sa.Column("soak_s", sa.Float(), nullable=False),
        sa.Column("apply_timeout_s", sa.Float(), nullable=False),
        sa.Column("current_stage", sa.Integer(), nullable=False),
        sa.Column("reason", _JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_role", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.String(length=64), nullable=False),
        sa.Column("actor_name", sa.String(length=_LABEL_LENGTH), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("driver_id", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index("ix_rollouts_state", "rollouts", ["state"])
    op.create_table(
        "rollout_stages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("rollout_id", sa.Uuid(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("percent", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("soak_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_stages_rollout_id_rollouts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_stages")),
        sa.UniqueConstraint("rollout_id", "stage", name=op.f("uq_rollout_stages_rollout_id_stage")),
    )
    op.create_table(
        "rollout_sites",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("rollout_id", sa.Uuid(), nullable=False),
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("agents", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("previous_revision", sa.Integer(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("rollback_revision", sa.Integer(), nullable=True),
        sa.Column("detail", sa.String(length=_REASON_LENGTH), nullable=True),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_sites_rollout_id_rollouts")
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_rollout_sites_site_id_sites")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_sites")),
        sa.UniqueConstraint(
            "rollout_id", "site_id", name=op.f("uq_rollout_sites_rollout_id_site_id")
        ),
    )
    op.create_index("ix_rollout_sites_site_id", "rollout_sites", ["site_id"])
    with op.batch_alter_table("config_revisions") as batch:
        batch.add_column(sa.Column("rollout_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("rollout_action", sa.String(length=16), nullable=True))
        batch.create_foreign_key(
            "fk_config_revisions_rollout_id_rollouts", "rollouts", ["rollout_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("config_revisions") as batch:
        batch.drop_constraint("fk_config_revisions_rollout_id_rollouts", type_="foreignkey")
        batch.drop_column("rollout_action")
        batch.drop_column("rollout_id")
    op.drop_index("ix_rollout_sites_site_id", table_name="rollout_sites")
    op.drop_table("rollout_sites")
    op.drop_table("rollout_stages")
    op.drop_index("ix_rollouts_state", table_name="rollouts")
    op.drop_table("rollouts")
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("labels")
