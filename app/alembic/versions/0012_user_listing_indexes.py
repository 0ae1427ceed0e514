"""indexes for the user listing: its order (cursor pages) and prefix search

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_user_created_at_uuid", "user", ["created_at", "uuid"])
    op.create_index(
        "ix_user_display_name_lower",
        "user",
        [sa.text("lower(display_name) text_pattern_ops")]
        if op.get_bind().dialect.name == "postgresql"
        else [sa.text("lower(display_name)")],
    )
    if op.get_bind().dialect.name == "postgresql":
        # LIKE 'prefix%' uses an index under any collation only with pattern operators.
        op.create_index(
            "ix_user_username_pattern",
            "user",
            ["username"],
            postgresql_ops={"username": "varchar_pattern_ops"},
        )
        op.create_index(
            "ix_user_email_pattern",
            "user",
            ["email"],
            postgresql_ops={"email": "varchar_pattern_ops"},
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_user_email_pattern", table_name="user")
        op.drop_index("ix_user_username_pattern", table_name="user")
    op.drop_index("ix_user_display_name_lower", table_name="user")
    op.drop_index("ix_user_created_at_uuid", table_name="user")
