"""The refusals of booking, rescheduling and status changes."""

from __future__ import annotations

from app.kit.errors import AppError


class SlotUnavailable(AppError):
    status, code, title = 409, "slot_unavailable", "Slot unavailable"


class NotASlot(AppError):
    status, code, title = 422, "not_a_slot", "Not a bookable slot"


class InvalidTransition(AppError):
    status, code, title = 409, "invalid_transition", "Invalid status transition"
