"""the picture version that signed picture URLs name

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: added in place on SQLite too. Null is a version like any
    # other (the URL also hashes in the initials), until the next upload or removal.
    op.add_column("user", sa.Column("picture_version", sa.String(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column("user", "picture_version")
