"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("username", sa.String(length=31), nullable=False),
        sa.Column("display_name", sa.String(length=31), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("email_verified", sa.Boolean(), nullable=False),
        sa.Column("hashed_password", sa.String(length=255), nullable=True),
        sa.Column("otp_method", sa.String(length=16), nullable=False),
        sa.Column("otp_secret", sa.String(length=64), nullable=True),
        sa.Column("otp_last_timestep", sa.BigInteger(), nullable=True),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("is_external_only", sa.Boolean(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("user_history", sa.JSON(), nullable=False),
        sa.Column("blocked_uuids", sa.JSON(), nullable=False),
        sa.Column("profile_picture_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_user")),
        sa.UniqueConstraint("email", name=op.f("uq_user_email")),
        sa.UniqueConstraint("username", name=op.f("uq_user_username")),
    )
    op.create_table(
        "external_account",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("display_name", sa.String(length=255), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("picture_url", sa.String(length=2048), nullable=True),
        sa.Column("user_uuid", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_uuid"],
            ["user.uuid"],
            name=op.f("fk_external_account_user_uuid_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_external_account")),
        sa.UniqueConstraint(
            "provider", "external_id", name=op.f("uq_external_account_provider_external_id")
        ),
        sa.UniqueConstraint(
            "user_uuid", "provider", name=op.f("uq_external_account_user_uuid_provider")
        ),
    )
    op.create_table(
        "file",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("file_type", sa.String(length=127), nullable=False),
        sa.Column("file_path", sa.String(length=1024), nullable=False),
        sa.Column("description", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("created_by_uuid", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_uuid"],
            ["user.uuid"],
            name=op.f("fk_file_created_by_uuid_user"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file")),
        sa.UniqueConstraint("file_name", name=op.f("uq_file_file_name")),
    )
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_file_created_by_uuid"), ["created_by_uuid"], unique=False
        )
    # user -> file -> user is a cycle: the picture's key is added once both tables exist.
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_user_profile_picture_id_file"),
            "file",
            ["profile_picture_id"],
            ["id"],
            ondelete="SET NULL",
        )

    op.create_table(
        "oauth_token",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("oauth_version", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("oauth_token", sa.Text(), nullable=True),
        sa.Column("oauth_token_secret", sa.Text(), nullable=True),
        sa.Column("token_type", sa.String(length=40), nullable=True),
        sa.Column("access_token", sa.Text(), nullable=True),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("user_uuid", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_uuid"],
            ["user.uuid"],
            name=op.f("fk_oauth_token_user_uuid_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_token")),
        sa.UniqueConstraint(
            "user_uuid", "provider", name=op.f("uq_oauth_token_user_uuid_provider")
        ),
    )
    op.create_table(
        "session",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_uuid", sa.String(length=36), nullable=False),
        sa.Column("refresh_token_hash", sa.String(length=64), nullable=False),
        sa.Column("previous_refresh_token_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_used_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_uuid"], ["user.uuid"], name=op.f("fk_session_user_uuid_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session")),
        sa.UniqueConstraint("refresh_token_hash", name=op.f("uq_session_refresh_token_hash")),
    )
    with op.batch_alter_table("session", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_session_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_session_previous_refresh_token_hash"),
            ["previous_refresh_token_hash"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_session_user_uuid"), ["user_uuid"], unique=False)

    op.create_table(
        "user_file",
        sa.Column("user_uuid", sa.String(length=36), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"], ["file.id"], name=op.f("fk_user_file_file_id_file"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_uuid"],
            ["user.uuid"],
            name=op.f("fk_user_file_user_uuid_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_uuid", "file_id", name=op.f("pk_user_file")),
    )
    with op.batch_alter_table("user_file", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_file_file_id"), ["file_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("user_file", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_file_file_id"))

    op.drop_table("user_file")
    with op.batch_alter_table("session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_user_uuid"))
        batch_op.drop_index(batch_op.f("ix_session_previous_refresh_token_hash"))
        batch_op.drop_index(batch_op.f("ix_session_expires_at"))

    op.drop_table("session")
    op.drop_table("oauth_token")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_user_profile_picture_id_file"), type_="foreignkey")
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_file_created_by_uuid"))

    op.drop_table("file")
    op.drop_table("external_account")
    op.drop_table("user")
