from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints


class Platform(StrEnum):
    ANDROID = "android"
    IOS = "ios"
    WEB = "web"


# FCM registration tokens are opaque printable ASCII, ~150-200 characters today: leave room,
# refuse anything else (a NUL byte could not even be stored).
DeviceToken = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=4096, pattern=r"^[\x21-\x7e]+$"
    ),
]


class DeviceIn(BaseModel):
    token: DeviceToken
    platform: Platform


class DeviceOut(BaseModel):
    id: uuid.UUID
    platform: Platform
    created_at: datetime
    last_seen_at: datetime


class NotificationOut(BaseModel):
    id: uuid.UUID
    kind: str
    title: str
    body: str
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None
