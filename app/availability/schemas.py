from __future__ import annotations

import uuid

from pydantic import BaseModel

from app.catalog.schemas import ProviderSummary


class Slot(BaseModel):
    start: str
    end: str


class ProviderAvailability(BaseModel):
    provider_id: uuid.UUID
    timezone: str
    slot_minutes: int
    slots: list[Slot]


class ProviderSlots(BaseModel):
    provider: ProviderSummary
    timezone: str
    slot_minutes: int
    slots: list[Slot]


class AvailabilitySearch(BaseModel):
    items: list[ProviderSlots]
    next_cursor: str | None
