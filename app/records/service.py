"""Medical records: metadata in PostgreSQL, files in object storage behind pre-signed URLs.

Every read is audited in the request's own transaction (DESIGN §3 `audit_log`): a list writes
one `records.list` row naming the records it showed, a detail one `record.read`, a download
through the local file route one `record.download`, a new record one `record.create`.
"""

from __future__ import annotations

import hashlib
import mimetypes
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.dependencies import Principal
from app.integrations import storage as storage_module
from app.integrations.storage import (
    KEY_PATTERN,
    LocalStorage,
    S3Storage,
    Storage,
    record_key,
)
from app.kit import audit
from app.kit.cache import Cache
from app.kit.db import AnyRow
from app.kit.errors import (
    Forbidden,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.kit.pagination import PageParams, build_page, parse_datetime, parse_uuid
from app.models import MedicalRecord, Role, new_id
from app.records import repository
from app.records.errors import AlreadyUploaded, UrlExpired, UrlSignatureInvalid
from app.records.repository import RecordAccess
from app.records.schemas import RecordIn, RecordOut, RecordWithUrl, UploadOut
from app.settings import Settings

URL_CACHE = "record_url"
_NO_PATIENT = "No such patient, or no records you may see."


@dataclass(frozen=True)
class Context:
    """What the record operations need besides the session: settings, storage, URL cache and
    the base URL the local backend's links start with (the request's, unless configured)."""

    settings: Settings
    storage: Storage
    cache: Cache
    base_url: str

    @property
    def url_ttl(self) -> int:
        return self.settings.presigned_url_ttl_seconds


def _access(principal: Principal, patient_id: uuid.UUID) -> RecordAccess:
    return RecordAccess(role=principal.role, user_id=principal.user_id, patient_id=patient_id)


def _out(record: MedicalRecord) -> RecordOut:
    return RecordOut.model_validate(record, from_attributes=True)


class StoredFile(Protocol):
    """What naming and signing a record's download needs: an ORM record or a listed row."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def title(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def storage_key(self) -> str: ...


def filename_for(record: StoredFile) -> str:
    extension = mimetypes.guess_extension(record.content_type, strict=False) or ""
    title = record.title
    return title if not extension or title.lower().endswith(extension) else title + extension


def _presign(context: Context, principal: Principal, record: StoredFile) -> str:
    return context.storage.presign_download(
        record.storage_key,
        content_type=record.content_type,
        filename=filename_for(record),
        actor_id=principal.user_id,
        expires_in=context.url_ttl,
        base_url=context.base_url,
    ).url


async def download_urls(
    context: Context, principal: Principal, records: Sequence[StoredFile]
) -> list[str]:
    """A download URL per record. Cached in Redis for half the URL lifetime, so a cached URL
    always has at least half its life left, and a page asks for all of them in one MGET (one
    more round trip stores the ones that were missing). Repeated listings hand out the same
    URLs, which clients can recognise. Without Redis every URL is signed afresh: signing is
    local computation, so an outage costs nothing but the stability of the URLs."""
    if not records:
        return []
    # A URL names who it was issued to (local downloads are audited per actor) and, for the
    # local backend, the base it was built on.
    base = hashlib.sha256(context.base_url.encode()).hexdigest()[:16]
    keys = [f"{r.id}:{principal.user_id}:{context.storage.name}:{base}" for r in records]
    cached = await context.cache.get_many(URL_CACHE, keys)
    urls: list[str] = []
    missing: dict[str, bytes] = {}
    for key, record, value in zip(keys, records, cached, strict=True):
        if value is None:
            url = _presign(context, principal, record)
            missing[key] = url.encode()
        else:
            url = value.decode()
        urls.append(url)
    await context.cache.set_many(URL_CACHE, missing, ttl_seconds=max(1, context.url_ttl // 2))
    return urls


def _listed(row: AnyRow, url: str) -> dict[str, Any]:
    """RecordWithUrl's shape and key order, from a row of repository.LISTED_COLUMNS."""
    return {
        "id": row.id,
        "patient_id": row.patient_id,
        "uploaded_by": row.uploaded_by,
        "record_type": row.record_type,
        "title": row.title,
        "content_type": row.content_type,
        "size_bytes": row.size_bytes,
        "uploaded_at": row.uploaded_at,
        "download_url": url,
    }


async def list_records(
    session: AsyncSession,
    context: Context,
    principal: Principal,
    patient_id: uuid.UUID,
    params: PageParams,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of RecordWithUrl-shaped dicts (for `page_response`) and the next cursor."""
    after = params.position(parse_datetime, parse_uuid)
    allowed, rows = await repository.page(
        session, _access(principal, patient_id), after=after, limit=params.limit
    )
    if not allowed:
        raise NotFound(_NO_PATIENT)
    records, cursor = build_page(rows, params.limit, lambda r: (r.uploaded_at, r.id))
    urls = await download_urls(context, principal, records)
    ids = [str(record.id) for record in records]
    await audit.record(
        session,
        principal.user_id,
        "records.list",
        "patient",
        [patient_id],
        {"record_ids": ids, "count": len(ids), "first_page": params.cursor is None},
    )
    items = [_listed(record, url) for record, url in zip(records, urls, strict=True)]
    return items, cursor


async def get_record(
    session: AsyncSession,
    context: Context,
    principal: Principal,
    patient_id: uuid.UUID,
    record_id: uuid.UUID,
) -> RecordWithUrl:
    record = await repository.get(session, _access(principal, patient_id), record_id)
    if record is None:
        raise NotFound("No such record.")
    (url,) = await download_urls(context, principal, [record])
    await audit.record(
        session,
        principal.user_id,
        "record.read",
        "medical_record",
        [record.id],
        {"patient_id": str(patient_id)},
    )
    return RecordWithUrl(**_out(record).model_dump(), download_url=url)


def _check_upload(settings: Settings, data: RecordIn) -> None:
    if data.content_type not in {t.lower() for t in settings.record_content_types}:
        allowed = ", ".join(settings.record_content_types)
        raise ValidationFailed(
            f"content_type must be one of: {allowed}.", loc=("body", "content_type")
        )
    if data.size_bytes > settings.record_max_bytes:
        raise ValidationFailed(
            f"size_bytes must be at most {settings.record_max_bytes}.", loc=("body", "size_bytes")
        )


async def create_record(
    session: AsyncSession,
    context: Context,
    principal: Principal,
    patient_id: uuid.UUID,
    data: RecordIn,
) -> UploadOut:
    """The record's row and a URL to upload its file to. Patients do not add records: their
    own file is a role-level refusal (403); anyone else's is not theirs to know of (404)."""
    if principal.role is Role.PATIENT:
        if principal.user_id == patient_id:
            raise Forbidden("Patients cannot add records; their care team does.")
        raise NotFound(_NO_PATIENT)
    _check_upload(context.settings, data)
    record_id = new_id()
    key = record_key(patient_id, record_id)
    record = await repository.insert_if_allowed(
        session,
        _access(principal, patient_id),
        {
            "id": record_id,
            "patient_id": patient_id,
            "uploaded_by": principal.user_id,
            "record_type": data.record_type,
            "title": data.title,
            "storage_key": key,
            "content_type": data.content_type,
            "size_bytes": data.size_bytes,
        },
    )
    if record is None:
        raise NotFound(_NO_PATIENT)
    upload = context.storage.presign_upload(
        key,
        content_type=data.content_type,
        size_bytes=data.size_bytes,
        expires_in=context.url_ttl,
        base_url=context.base_url,
    )
    await audit.record(
        session,
        principal.user_id,
        "record.create",
        "medical_record",
        [record.id],
        {"patient_id": str(patient_id), "size_bytes": data.size_bytes},
    )
    return UploadOut(
        record=_out(record),
        upload_url=upload.url,
        upload_headers=upload.headers,
        upload_expires_at=upload.expires_at,
    )


# --- the local backend's file routes ----------------------------------------------------------


def _local(storage: LocalStorage | S3Storage) -> LocalStorage:
    # With S3 the files are S3's: these routes do not exist.
    if not isinstance(storage, LocalStorage):
        raise NotFound("Files are served by the object store.")
    return storage


def _signature_error(exc: Exception) -> UrlExpired | UrlSignatureInvalid:
    if isinstance(exc, storage_module.SignatureExpired):
        return UrlExpired("This link has expired; fetch a new one from the records list.")
    return UrlSignatureInvalid("This link is not valid.")


async def receive_upload(
    storage: LocalStorage | S3Storage,
    key: str,
    *,
    expires: str,
    ctype: str,
    size: str,
    sig: str,
    content_type: str | None,
    declared_length: str | None,
    body: AsyncIterator[bytes],
) -> None:
    local = _local(storage)
    try:
        expected_size = local.verify_upload(
            key, expires=expires, size=size, content_type=ctype, sig=sig
        )
    except (storage_module.SignatureInvalid, storage_module.SignatureExpired) as exc:
        raise _signature_error(exc) from exc
    # The media type exactly as signed (parameters such as charset included).
    if (content_type or "").strip().lower() != ctype:
        raise UnsupportedMediaType(f"This upload URL is for Content-Type {ctype}.")
    if declared_length is not None and declared_length.isdigit():
        if int(declared_length) > expected_size:
            raise PayloadTooLarge(f"This upload is for exactly {expected_size} bytes.")
        if int(declared_length) < expected_size:
            raise ValidationFailed(
                f"This upload is for exactly {expected_size} bytes.", loc=("body",)
            )
    try:
        await local.write(key, body, expected_size)
    except storage_module.UploadTooLarge as exc:
        raise PayloadTooLarge(f"This upload is for exactly {expected_size} bytes.") from exc
    except storage_module.AlreadyUploaded as exc:
        raise AlreadyUploaded("This record's file was uploaded already.") from exc
    except storage_module.UploadIncomplete as exc:
        raise ValidationFailed(
            f"This upload is for exactly {expected_size} bytes; {exc.received} arrived.",
            loc=("body",),
        ) from exc


async def open_download(
    session: AsyncSession,
    storage: LocalStorage | S3Storage,
    key: str,
    *,
    expires: str,
    ctype: str,
    name: str,
    actor: str,
    sig: str,
) -> tuple[Path, storage_module.VerifiedDownload]:
    """Check a download URL, audit the download in the request's transaction (committed before
    the first byte is sent), and return the file to stream."""
    local = _local(storage)
    try:
        download = local.verify_download(
            key, expires=expires, content_type=ctype, filename=name, actor=actor, sig=sig
        )
    except (storage_module.SignatureInvalid, storage_module.SignatureExpired) as exc:
        raise _signature_error(exc) from exc
    path = local.path_for(download.key)
    if not await anyio.Path(path).is_file():
        raise NotFound("This record's file has not been uploaded.")
    match = KEY_PATTERN.fullmatch(download.key)
    assert match is not None  # verify_download checked it
    await audit.record(
        session,
        download.actor_id,
        "record.download",
        "medical_record",
        [match["record_id"]],
        {"patient_id": match["patient_id"]},
    )
    return path, download
