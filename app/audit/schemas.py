from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, field_serializer


class AuditEntryOut(BaseModel):
    id: int
    actor_id: uuid.UUID | None
    action: str
    entity: str
    entity_id: str
    at: datetime
    details: dict[str, Any]

    @field_serializer("id")
    def _id_as_string(self, value: int) -> str:
        return str(value)  # ids are strings on the wire (DESIGN §4)
