"""the admin audit log: one row per staff action

Revision ID: 0017
Revises: 0015
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("actor_uuid", sa.String(length=36), nullable=True),
        sa.Column("actor_name", sa.String(length=100), nullable=False),
        sa.Column("actor_role", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=255), nullable=True),
        sa.Column("target_display", sa.String(length=255), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_event")),
    )
    op.create_index("ix_audit_event_at_id", "audit_event", ["at", "id"])
    op.create_index("ix_audit_event_actor_uuid_at_id", "audit_event", ["actor_uuid", "at", "id"])
    op.create_index(
        "ix_audit_event_action_at_id",
        "audit_event",
        ["action", "at", "id"],
        postgresql_ops={"action": "varchar_pattern_ops"},
    )
    op.create_index("ix_audit_event_target_id_at_id", "audit_event", ["target_id", "at", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_event_target_id_at_id", table_name="audit_event")
    op.drop_index("ix_audit_event_action_at_id", table_name="audit_event")
    op.drop_index("ix_audit_event_actor_uuid_at_id", table_name="audit_event")
    op.drop_index("ix_audit_event_at_id", table_name="audit_event")
    op.drop_table("audit_event")
