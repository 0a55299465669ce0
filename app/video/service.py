from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.appointments import service as appointments
from app.auth.dependencies import Principal
from app.integrations.videosdk import VideoSdk
from app.kit.errors import Forbidden
from app.video.schemas import VideoOut, VideoState


async def video_for(
    session: AsyncSession, video: VideoSdk, principal: Principal, appointment_id: uuid.UUID
) -> VideoOut:
    """The room of a visit for its participants. Staff and admins who can see the visit are
    refused (403): they run the clinic, they do not join the call."""
    row = await appointments.visible_row(session, principal, appointment_id)
    appointment = row.Appointment
    if principal.user_id not in (appointment.patient_id, appointment.provider_id):
        raise Forbidden("Only the patient and the provider of a visit may join its video room.")
    state = VideoState(appointment.video_status)
    if state is VideoState.READY and appointment.video_room_id:
        return VideoOut(status=state, join_url=video.join_url(appointment.video_room_id))
    return VideoOut(status=state)
