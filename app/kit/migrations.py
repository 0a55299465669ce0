"""Run Alembic programmatically: the only way Carebook's schema is created, tests included."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.config import Config
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import command
from app.kit.db import async_url

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# A fixed advisory-lock key so replicas starting together migrate one at a time.
_MIGRATION_LOCK_KEY = 0x6361726562


def alembic_config(url: str | None = None) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    if url is not None:
        config.attributes["url"] = url
    return config


def _upgrade_sync(url: str, revision: str) -> None:
    command.upgrade(alembic_config(url), revision)


def _downgrade_sync(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


async def _with_lock(url: str, action: str, revision: str) -> None:
    engine = create_async_engine(async_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.execute(
                text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY}
            )
            try:
                await connection.commit()
                runner = _upgrade_sync if action == "upgrade" else _downgrade_sync
                # Alembic's env.py runs its own event loop, so it gets a worker thread.
                await asyncio.to_thread(runner, url, revision)
            finally:
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY}
                )
                await connection.commit()
    finally:
        await engine.dispose()


async def upgrade(url: str, revision: str = "head") -> None:
    await _with_lock(url, "upgrade", revision)


async def downgrade(url: str, revision: str = "base") -> None:
    await _with_lock(url, "downgrade", revision)


async def current_revision(url: str) -> str | None:
    """The database's Alembic revision, or None when it has no Carebook schema."""
    engine = create_async_engine(async_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            exists = await connection.scalar(text("SELECT to_regclass('public.alembic_version')"))
            if exists is None:
                return None
            revision = await connection.scalar(text("SELECT version_num FROM alembic_version"))
            return str(revision) if revision is not None else None
    finally:
        await engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head
