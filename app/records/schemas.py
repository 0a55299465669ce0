from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

# A short label such as "lab_result" or "imaging"; not free text.
RecordType = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=50, pattern=r"^[A-Za-z0-9][\w .-]*$"
    ),
]
# A title also names the downloaded file: no control characters (PostgreSQL refuses NUL).
Title = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"
    ),
]
# Checked against CAREBOOK_RECORD_CONTENT_TYPES by the service; bounded here.
ContentType = Annotated[
    str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=3, max_length=100)
]


class RecordIn(BaseModel):
    record_type: RecordType
    title: Title
    content_type: ContentType
    # Strict: a size is a JSON integer, not a string or a boolean. The upper bound is a
    # setting (CAREBOOK_RECORD_MAX_BYTES), checked by the service.
    size_bytes: Annotated[int, Field(strict=True, ge=1)]


class RecordOut(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    uploaded_by: uuid.UUID
    record_type: str
    title: str
    content_type: str
    size_bytes: int
    uploaded_at: datetime


class RecordWithUrl(RecordOut):
    download_url: str


class UploadOut(BaseModel):
    record: RecordOut
    upload_url: str
    upload_method: Literal["PUT"] = "PUT"
    # Send exactly these headers with the upload (the URL's signature covers them).
    upload_headers: dict[str, str]
    upload_expires_at: datetime
