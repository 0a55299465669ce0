from __future__ import annotations

import itertools
import uuid
from datetime import datetime, time
from typing import Annotated

from pydantic import BaseModel, Field, PlainSerializer, field_validator, model_validator

from app.kit.schemas import Instant

# "HH:MM", local wall-clock time in the provider's zone.
WallClock = Annotated[
    time,
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str),
]

_MAX_TIME_OFF_DAYS = 366


class ScheduleRuleIn(BaseModel):
    weekday: Annotated[int, Field(ge=1, le=7, description="ISO weekday: 1 Monday … 7 Sunday")]
    start: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["09:00"])]
    end: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["17:00"])]

    @property
    def start_time(self) -> time:
        return time.fromisoformat(self.start)

    @property
    def end_time(self) -> time:
        return time.fromisoformat(self.end)

    @model_validator(mode="after")
    def _start_before_end(self) -> ScheduleRuleIn:
        if self.start_time >= self.end_time:
            raise ValueError("start must be before end")
        return self


class ScheduleIn(BaseModel):
    rules: Annotated[list[ScheduleRuleIn], Field(max_length=100)]

    @field_validator("rules")
    @classmethod
    def _no_overlap(cls, rules: list[ScheduleRuleIn]) -> list[ScheduleRuleIn]:
        ordered = sorted(rules, key=lambda r: (r.weekday, r.start_time))
        for previous, current in itertools.pairwise(ordered):
            if previous.weekday == current.weekday and current.start_time < previous.end_time:
                raise ValueError(
                    f"rules overlap on weekday {current.weekday}: "
                    f"{previous.start}-{previous.end} and {current.start}-{current.end}"
                )
        return rules


class ScheduleRuleOut(BaseModel):
    weekday: int
    start: WallClock
    end: WallClock


class ScheduleOut(BaseModel):
    provider_id: uuid.UUID
    timezone: str
    slot_minutes: int
    rules: list[ScheduleRuleOut]


class TimeOffIn(BaseModel):
    starts_at: Instant
    ends_at: Instant
    reason: Annotated[str, Field(max_length=500)] = ""

    @model_validator(mode="after")
    def _valid_span(self) -> TimeOffIn:
        if self.starts_at >= self.ends_at:
            raise ValueError("starts_at must be before ends_at")
        if (self.ends_at - self.starts_at).days > _MAX_TIME_OFF_DAYS:
            raise ValueError(f"time off is limited to {_MAX_TIME_OFF_DAYS} days")
        return self


class TimeOffOut(BaseModel):
    id: uuid.UUID
    provider_id: uuid.UUID
    starts_at: datetime
    ends_at: datetime
    reason: str
