"""A de-identification salt per site, kept by the control plane and delivered with the config.

Existing sites get a fresh random salt each.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SALT_LENGTH = 64


def upgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("deid_salt", sa.String(length=_SALT_LENGTH), nullable=True))
    sites = sa.table("sites", sa.column("id", sa.Uuid()), sa.column("deid_salt", sa.String()))
    connection = op.get_bind()
    for (site_id,) in connection.execute(sa.select(sites.c.id)).all():
        connection.execute(
            sites.update()
            .where(sites.c.id == site_id)
            .values(deid_salt=secrets.token_hex(_SALT_LENGTH // 2))
        )
    with op.batch_alter_table("sites") as batch:
        batch.alter_column(
            "deid_salt", existing_type=sa.String(length=_SALT_LENGTH), nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("deid_salt")
