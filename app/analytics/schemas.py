from __future__ import annotations

import uuid
from datetime import date

from pydantic import BaseModel, ConfigDict, Field


class ClinicFigures(BaseModel):
    """One clinic's figures over the asked local dates (see app/analytics/endpoints.py)."""

    clinic_id: uuid.UUID
    clinic_name: str
    booked: int
    completed: int
    cancelled: int
    no_show: int
    # no_show / (completed + no_show); null when no visit of the range has an outcome yet.
    no_show_rate: float | None


class ClinicAnalytics(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from")
    to: date
    items: list[ClinicFigures]
    next_cursor: str | None


# The CSV rendering's columns, in order: the JSON item's members.
CSV_COLUMNS = tuple(ClinicFigures.model_fields)
