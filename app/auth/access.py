"""Where a user may act: the one place that says "staff act only at their own clinic".

The staff member's clinic comes with the principal (read with the role when the request is
authenticated), so the rule costs no query wherever it is checked.
"""

from __future__ import annotations

import uuid

from app.auth.principals import Principal
from app.kit.errors import Forbidden
from app.models import Role


def require_own_clinic(principal: Principal, clinic_id: uuid.UUID, action: str) -> None:
    """`Forbidden` when a staff member would `action` at another clinic than their own; every
    other role passes (what those may do is their domain's rule)."""
    if principal.role is Role.STAFF and principal.clinic_id != clinic_id:
        raise Forbidden(f"Staff {action} at their own clinic only.")
