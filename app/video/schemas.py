from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel


class VideoState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"
    NOT_REQUIRED = "not_required"  # the visit was cancelled and its room deleted


class VideoOut(BaseModel):
    status: VideoState
    join_url: str | None = None
