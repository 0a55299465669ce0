"""VideoSDK adapter: one room per appointment, created idempotently, deactivated on cancel.

The appointment id is sent as the room's `customRoomId`, on which VideoSDK's room creation is
idempotent: a retried or repeated create returns the same room, so a job that runs twice (or a
response lost to a timeout) never makes a second room.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote
from uuid import UUID

from app.kit.resilience import (
    InvalidResponse,
    ResiliencePolicy,
    ResilientClient,
    ServiceAdapter,
    json_or_none,
)
from app.settings import Settings

logger = logging.getLogger(__name__)

SERVICE = "videosdk"


class VideoSdk(ServiceAdapter):
    """Rooms on VideoSDK's REST API. Disabled (`enabled` False) while no base URL is set.

    Construct in the lifespan, `await aclose()` on shutdown (or use `async with`).
    """

    def __init__(self, settings: Settings, *, policy: ResiliencePolicy | None = None) -> None:
        headers: dict[str, str] = {}
        if settings.videosdk_token is not None:
            headers["Authorization"] = settings.videosdk_token.get_secret_value()
        elif settings.videosdk_base_url is not None:
            logger.warning("videosdk: no token configured (CAREBOOK_VIDEOSDK_TOKEN)")
        self.http = ResilientClient(
            SERVICE,
            settings.videosdk_base_url,
            policy or ResiliencePolicy.from_settings(settings),
            headers=headers,
            disabled_reason="CAREBOOK_VIDEOSDK_BASE_URL is not set",
        )
        self._join_url_template = settings.videosdk_join_url_template

    async def create_room(self, appointment_id: UUID | str) -> str:
        """The room id for this appointment, creating the room on the first call."""
        response = await self.http.request(
            "POST", "/v2/rooms", json={"customRoomId": str(appointment_id)}
        )
        room_id = _field(json_or_none(response), "roomId")
        if room_id is None:
            raise InvalidResponse(SERVICE, "room creation answered without a roomId")
        return room_id

    async def delete_room(self, room_id: str) -> bool:
        """Deactivate the room; False when VideoSDK no longer knows it (already gone)."""
        response = await self.http.request(
            "POST", "/v2/rooms/deactivate", json={"roomId": room_id}, accept={404}
        )
        return response.status_code != 404

    def join_url(self, room_id: str) -> str:
        return self._join_url_template.replace("{room_id}", quote(room_id, safe=""))


def _field(body: Any, name: str) -> str | None:
    value = body.get(name) if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else None
