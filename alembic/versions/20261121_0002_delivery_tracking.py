"""Delivery tracking for the worker: notifications.pushed_at, the video reconciler's index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 21:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIDEO_TO_RECONCILE = (
    "(status IN ('booked', 'checked_in') AND video_status IN ('pending', 'failed'))"
    " OR (status = 'cancelled' AND video_room_id IS NOT NULL)"
)


def upgrade() -> None:
    op.add_column(
        "notifications", sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "ix_appointments_video_to_reconcile",
        "appointments",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text(VIDEO_TO_RECONCILE),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_appointments_video_to_reconcile",
        table_name="appointments",
        postgresql_where=sa.text(VIDEO_TO_RECONCILE),
    )
    op.drop_column("notifications", "pushed_at")
