"""one-time tokens and deactivation reason

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "used_token",
        sa.Column("token_id", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("user_uuid", sa.String(length=36), nullable=True),
        sa.Column("used_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_used_token")),
    )
    with op.batch_alter_table("used_token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_used_token_expires_at"), ["expires_at"], unique=False)

    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deactivated_reason", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_column("deactivated_reason")

    with op.batch_alter_table("used_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_used_token_expires_at"))

    op.drop_table("used_token")
