"""user history in a table of its own

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

The history was a JSON list on the user row, read, appended and written back, so
parallel events overwrote each other. Each event becomes a row of ``user_event``;
existing entries are carried over in their order.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000


def _event_table() -> sa.TableClause:
    return sa.table(
        "user_event",
        sa.column("id", sa.BigInteger),
        sa.column("user_uuid", sa.String),
        sa.column("action", sa.String),
        sa.column("at", sa.BigInteger),
        sa.column("by", sa.String),
        sa.column("ip", sa.String),
        sa.column("details", sa.JSON),
    )


def _text(value: object, length: int) -> str | None:
    return None if value is None else str(value)[:length]


def _row(uuid: str, entry: dict) -> dict:
    """An old entry as a row; odd values (hand-edited JSON) are kept as well as they fit."""
    try:
        at = int(entry.get("at") or 0)
    except (TypeError, ValueError):
        at = 0
    details = entry.get("details")
    return {
        "user_uuid": uuid,
        "action": _text(entry.get("action"), 64) or "unknown",
        "at": at,
        "by": _text(entry.get("by"), 36),
        "ip": _text(entry.get("ip"), 64),
        "details": details if isinstance(details, dict) else {"value": details} if details else {},
    }


def _entries(value: object) -> list[dict]:
    if isinstance(value, str):  # some drivers hand JSON back as text
        value = json.loads(value or "[]")
    if not isinstance(value, list):  # null, or JSON that was never a list of entries
        return []
    return [entry for entry in value if isinstance(entry, dict)]


def upgrade() -> None:
    op.create_table(
        "user_event",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("user_uuid", sa.String(length=36), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("by", sa.String(length=36), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_uuid"],
            ["user.uuid"],
            name=op.f("fk_user_event_user_uuid_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_event")),
    )
    op.create_index("ix_user_event_user_uuid_id", "user_event", ["user_uuid", "id"])

    connection = op.get_bind()
    user = sa.table("user", sa.column("uuid", sa.String), sa.column("user_history", sa.JSON))
    events = _event_table()
    last = ""
    while True:  # a page of users at a time: histories can be large
        page = connection.execute(
            sa.select(user.c.uuid, user.c.user_history)
            .where(user.c.uuid > last)
            .order_by(user.c.uuid)
            .limit(_BATCH)
        ).all()
        if not page:
            break
        rows = [_row(uuid, entry) for uuid, history in page for entry in _entries(history)]
        if rows:
            connection.execute(events.insert(), rows)
        last = page[-1][0]

    # A plain column: SQLite (3.35+) drops it in place, no table rebuild.
    op.drop_column("user", "user_history")


def downgrade() -> None:
    op.add_column("user", sa.Column("user_history", sa.JSON(), nullable=False, server_default="[]"))
    connection = op.get_bind()
    events = _event_table()
    user = sa.table("user", sa.column("uuid", sa.String), sa.column("user_history", sa.JSON))
    histories: dict[str, list[dict]] = {}
    query = sa.select(
        events.c.user_uuid,
        events.c.action,
        events.c.at,
        events.c.by,
        events.c.ip,
        events.c.details,
    ).order_by(events.c.id)
    for uuid, action, at, by, ip, details in connection.execute(query):
        histories.setdefault(uuid, []).append(
            {"action": action, "at": at, "by": by, "ip": ip, "details": details}
        )
    for uuid, history in histories.items():
        connection.execute(
            user.update().where(user.c.uuid == uuid).values(user_history=history[-500:])
        )
    op.drop_index("ix_user_event_user_uuid_id", table_name="user_event")
    op.drop_table("user_event")
