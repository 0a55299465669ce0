from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.auth.dependencies import CurrentPrincipal
from app.integrations.videosdk import VideoSdk
from app.kit.db import PrimaryReadSession
from app.video import service
from app.video.schemas import VideoOut

router = APIRouter(tags=["video"])


async def get_videosdk(request: Request) -> VideoSdk:
    video: VideoSdk = request.app.state.videosdk
    return video


@router.get("/v1/appointments/{appointment_id}/video", response_model=VideoOut)
async def get_video(
    appointment_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: PrimaryReadSession,
    video: Annotated[VideoSdk, Depends(get_videosdk)],
) -> VideoOut:
    return await service.video_for(session, video, principal, appointment_id)
