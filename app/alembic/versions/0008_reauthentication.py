"""re-authentication, pending email changes and the address an undo returns to

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain nullable columns: added in place on SQLite too, no table rebuild.
    op.add_column("session", sa.Column("reauthenticated_at", sa.BigInteger(), nullable=True))
    op.add_column("user", sa.Column("pending_email", sa.String(length=320), nullable=True))
    op.add_column("user", sa.Column("previous_email", sa.String(length=320), nullable=True))
    op.add_column("user", sa.Column("previous_email_until", sa.BigInteger(), nullable=True))
    op.create_index("ix_user_previous_email", "user", ["previous_email"])


def downgrade() -> None:
    op.drop_index("ix_user_previous_email", table_name="user")
    op.drop_column("user", "previous_email_until")
    op.drop_column("user", "previous_email")
    op.drop_column("user", "pending_email")
    op.drop_column("session", "reauthenticated_at")
