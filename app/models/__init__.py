"""All SQLAlchemy models, in one place. Relationships, where any exist, are `lazy="raise"`."""

from app.models.analytics import ClinicDailyStat
from app.models.appointments import (
    ACTIVE_STATUSES,
    Appointment,
    AppointmentStatus,
    IdempotencyKey,
    VideoStatus,
)
from app.models.audit import AuditLog
from app.models.base import Base, new_id
from app.models.catalog import Clinic, Provider, Specialty
from app.models.notifications import Device, Notification
from app.models.outbox import OutboxEvent
from app.models.records import MedicalRecord
from app.models.schedules import ScheduleRule, TimeOff
from app.models.users import RefreshToken, Role, User

__all__ = [
    "ACTIVE_STATUSES",
    "Appointment",
    "AppointmentStatus",
    "AuditLog",
    "Base",
    "Clinic",
    "ClinicDailyStat",
    "Device",
    "IdempotencyKey",
    "MedicalRecord",
    "Notification",
    "OutboxEvent",
    "Provider",
    "RefreshToken",
    "Role",
    "ScheduleRule",
    "Specialty",
    "TimeOff",
    "User",
    "VideoStatus",
    "new_id",
]
