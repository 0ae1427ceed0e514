"""file names per owner

Every file gets an explicit owner (the user whose folder holds its bytes) and a kind
(a plain file or a profile picture); names become unique per owner and kind instead
of across all users.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The tables as this migration finds them (only the columns it reads or writes).
_file = sa.table(
    "file",
    sa.column("id", sa.Integer),
    sa.column("file_name", sa.String),
    sa.column("file_path", sa.String),
    sa.column("owner_uuid", sa.String),
    sa.column("kind", sa.String),
)
_user = sa.table("user", sa.column("uuid", sa.String), sa.column("profile_picture_id", sa.Integer))
_user_file = sa.table("user_file", sa.column("file_id", sa.Integer))


def upgrade() -> None:
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_uuid", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=True))
    # Files were always stored as users/{owner uuid (36 characters)}/{generated name}.
    op.execute(
        _file.update()
        .where(sa.func.substr(_file.c.file_path, 1, 6) == "users/")
        .values(owner_uuid=sa.func.substr(_file.c.file_path, 7, 36))
    )
    # A row whose owner no longer exists belonged to an account deleted by hand (the
    # service deletes the files first): nobody can own it, so it goes, as the deletion
    # would have done. Its bytes are left to the orphan sweep. Foreign keys are not
    # enforced while migrating on SQLite, so the references to it are removed here.
    orphans = sa.select(_file.c.id).where(
        sa.or_(_file.c.owner_uuid.is_(None), _file.c.owner_uuid.not_in(sa.select(_user.c.uuid)))
    )
    op.execute(_user_file.delete().where(_user_file.c.file_id.in_(orphans)))
    op.execute(
        _user.update()
        .where(_user.c.profile_picture_id.in_(orphans))
        .values(profile_picture_id=None)
    )
    op.execute(_file.delete().where(_file.c.id.in_(orphans)))
    pictures = sa.select(_user.c.profile_picture_id).where(_user.c.profile_picture_id.is_not(None))
    op.execute(
        _file.update().values(kind=sa.case((_file.c.id.in_(pictures), "picture"), else_="file"))
    )

    # Names were unique across all users, so they are unique per owner and kind too.
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.alter_column("owner_uuid", existing_type=sa.String(length=36), nullable=False)
        batch_op.alter_column("kind", existing_type=sa.String(length=16), nullable=False)
        batch_op.drop_constraint(batch_op.f("uq_file_file_name"), type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_file_owner_uuid_kind_file_name"), ["owner_uuid", "kind", "file_name"]
        )
        batch_op.create_check_constraint(batch_op.f("ck_file_kind"), "kind IN ('file', 'picture')")
        batch_op.create_foreign_key(
            batch_op.f("fk_file_owner_uuid_user"),
            "user",
            ["owner_uuid"],
            ["uuid"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    # Names must be unique across users again: a name held more than once keeps it on
    # its oldest row; the others get their id in front ("12_report.pdf").
    older = _file.alias("older")
    op.execute(
        _file.update()
        .where(sa.exists().where(older.c.file_name == _file.c.file_name, older.c.id < _file.c.id))
        .values(file_name=sa.cast(_file.c.id, sa.String(12)) + "_" + _file.c.file_name)
    )
    with op.batch_alter_table("file", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_file_owner_uuid_user"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("ck_file_kind"), type_="check")
        batch_op.drop_constraint(batch_op.f("uq_file_owner_uuid_kind_file_name"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_file_file_name"), ["file_name"])
        batch_op.drop_column("kind")
        batch_op.drop_column("owner_uuid")
