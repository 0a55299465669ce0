"""Audit-log indexes that match its keyset order (`id`), for filters by entity and by actor.

`GET /v1/audit` pages newest first by `id`. The old indexes ended in `at`, so a filtered page
was a backward scan of the primary key with a filter: slow for a rare entity or actor.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 07:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_audit_log_entity_entity_id_at", table_name="audit_log")
    op.drop_index("ix_audit_log_actor_id_at", table_name="audit_log")
    op.create_index("ix_audit_log_entity_entity_id_id", "audit_log", ["entity", "entity_id", "id"])
    op.create_index("ix_audit_log_actor_id_id", "audit_log", ["actor_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_actor_id_id", table_name="audit_log")
    op.drop_index("ix_audit_log_entity_entity_id_id", table_name="audit_log")
    op.create_index("ix_audit_log_actor_id_at", "audit_log", ["actor_id", "at"])
    op.create_index("ix_audit_log_entity_entity_id_at", "audit_log", ["entity", "entity_id", "at"])
