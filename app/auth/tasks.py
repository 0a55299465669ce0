from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from app.auth import repository
from app.kit.db import Database

logger = logging.getLogger("carebook.auth")

# Spent tokens are kept a while after revocation so a late reuse is still recognised as reuse.
REUSE_DETECTION_WINDOW = timedelta(days=7)


async def purge_refresh_tokens(ctx: dict[str, Any]) -> int:
    """Cron job: drop refresh tokens dead for longer than the reuse-detection window."""
    database: Database = ctx["database"]
    async with database.unit_of_work() as session:
        deleted = await repository.delete_dead_refresh_tokens(
            session, datetime.now(UTC) - REUSE_DETECTION_WINDOW
        )
    logger.info("purged refresh tokens", extra={"deleted": deleted})
    return deleted
