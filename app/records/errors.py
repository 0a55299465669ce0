"""The refusals of a record's file and its signed URLs."""

from __future__ import annotations

from app.kit.errors import AppError


class UrlSignatureInvalid(AppError):
    """A signed file URL that this server did not sign, or that was changed (0002)."""

    status, code, title = 403, "signature_invalid", "Invalid signed URL"


class AlreadyUploaded(AppError):
    """A record's file exists already: files are written once (0002)."""

    status, code, title = 409, "already_uploaded", "File already uploaded"


class UrlExpired(AppError):
    """A genuine signed file URL whose lifetime is over (0002)."""

    status, code, title = 403, "url_expired", "Signed URL expired"
