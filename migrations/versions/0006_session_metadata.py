"""Session metadata: values the site's metadata patterns extracted, first value current.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_metadata",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=1024), nullable=False),
        sa.Column("value_sha256", sa.String(length=64), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_session_metadata_session_id_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_metadata")),
        sa.UniqueConstraint(
            "session_id",
            "name",
            "value_sha256",
            name=op.f("uq_session_metadata_session_id_name_value_sha256"),
        ),
    )
    op.create_index(
        "ix_session_metadata_current",
        "session_metadata",
        ["session_id", "name"],
        unique=True,
        sqlite_where=sa.text("is_current"),
        postgresql_where=sa.text("is_current"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_session_metadata_current",
        table_name="session_metadata",
        sqlite_where=sa.text("is_current"),
        postgresql_where=sa.text("is_current"),
    )
    op.drop_table("session_metadata")
