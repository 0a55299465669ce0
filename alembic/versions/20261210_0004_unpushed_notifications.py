"""The pushes still owed, for the worker's recovery pass: a partial index on notifications.

A push whose job was lost with Redis is found again from PostgreSQL alone: notifications with
`pushed_at` NULL, oldest first. Only those rows are indexed, so the pass stays cheap however
large the feed grows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_notifications_unpushed",
        "notifications",
        ["created_at", "id"],
        unique=False,
        postgresql_where="pushed_at IS NULL",
    )


def downgrade() -> None:
    op.drop_index(
        "ix_notifications_unpushed",
        table_name="notifications",
        postgresql_where="pushed_at IS NULL",
    )
