"""refresh token family: every replaced refresh token, not only the last one

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
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
        "rotated_refresh_token",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("rotated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["session.id"],
            name=op.f("fk_rotated_refresh_token_session_id_session"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_rotated_refresh_token")),
    )
    op.create_index(
        op.f("ix_rotated_refresh_token_session_id"),
        "rotated_refresh_token",
        ["session_id"],
        unique=False,
    )
    # The one replaced token each session remembered so far stays a reuse.
    op.execute(
        "INSERT INTO rotated_refresh_token (token_hash, session_id, rotated_at)"
        " SELECT previous_refresh_token_hash, id, last_used_at FROM session"
        " WHERE previous_refresh_token_hash IS NOT NULL"
    )
    op.drop_index(op.f("ix_session_previous_refresh_token_hash"), table_name="session")
    # Not a batch: on SQLite a batch copies ``session`` into a new table and drops the
    # old one, and that drop deletes (ON DELETE CASCADE) the rows copied just above.
    # SQLite 3.35+ drops a column in place.
    op.drop_column("session", "previous_refresh_token_hash")


def downgrade() -> None:
    op.add_column(
        "session",
        sa.Column("previous_refresh_token_hash", sa.String(length=64), nullable=True),
    )
    op.create_index(
        op.f("ix_session_previous_refresh_token_hash"),
        "session",
        ["previous_refresh_token_hash"],
        unique=False,
    )
    # The old column holds one token: the most recently replaced one survives.
    op.execute(
        "UPDATE session SET previous_refresh_token_hash = ("
        " SELECT rotated.token_hash FROM rotated_refresh_token AS rotated"
        " WHERE rotated.session_id = session.id"
        " ORDER BY rotated.rotated_at DESC, rotated.token_hash LIMIT 1)"
    )
    op.drop_index(op.f("ix_rotated_refresh_token_session_id"), table_name="rotated_refresh_token")
    op.drop_table("rotated_refresh_token")
