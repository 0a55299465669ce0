from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import FileResponse

from app.auth.dependencies import CurrentPrincipal
from app.integrations.storage import FILES_PREFIX, LocalStorage, S3Storage, get_storage
from app.kit.cache import CacheDep
from app.kit.db import WriteSession
from app.kit.pagination import Page, Pagination, page_response
from app.records import service
from app.records.schemas import RecordIn, RecordWithUrl, UploadOut

router = APIRouter(tags=["records"])

StorageDep = Annotated[LocalStorage | S3Storage, Depends(get_storage)]


async def get_context(request: Request, storage: StorageDep, cache: CacheDep) -> service.Context:
    return service.Context(
        settings=request.app.state.settings,
        storage=storage,
        cache=cache,
        base_url=str(request.base_url),
    )


Context = Annotated[service.Context, Depends(get_context)]
# Signed-URL parameters: absent or overlong ones simply fail the signature check (403).
_Signed = Annotated[str, Query(max_length=512)]


@router.get("/v1/patients/{patient_id}/records", response_model=Page[RecordWithUrl])
async def list_records(
    patient_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: WriteSession,  # the audit row commits with the read
    context: Context,
    page: Pagination,
) -> Response:
    items, cursor = await service.list_records(session, context, principal, patient_id, page)
    # Built from rows and serialised once; response_model above documents the same shape.
    return page_response(items, cursor)


@router.post(
    "/v1/patients/{patient_id}/records",
    response_model=UploadOut,
    status_code=status.HTTP_201_CREATED,
)
async def create_record(
    patient_id: uuid.UUID,
    data: RecordIn,
    principal: CurrentPrincipal,
    session: WriteSession,
    context: Context,
) -> UploadOut:
    return await service.create_record(session, context, principal, patient_id, data)


@router.get("/v1/patients/{patient_id}/records/{record_id}", response_model=RecordWithUrl)
async def get_record(
    patient_id: uuid.UUID,
    record_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: WriteSession,
    context: Context,
) -> RecordWithUrl:
    return await service.get_record(session, context, principal, patient_id, record_id)


# The local backend's own file routes: authorised by the URL's signature, not a bearer token.


@router.put(FILES_PREFIX + "{key:path}", status_code=status.HTTP_204_NO_CONTENT)
async def upload_file(
    key: str,
    request: Request,
    storage: StorageDep,
    expires: _Signed = "",
    ctype: _Signed = "",
    size: _Signed = "",
    sig: _Signed = "",
) -> Response:
    await service.receive_upload(
        storage,
        key,
        expires=expires,
        ctype=ctype,
        size=size,
        sig=sig,
        content_type=request.headers.get("content-type"),
        declared_length=request.headers.get("content-length"),
        body=request.stream(),
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(FILES_PREFIX + "{key:path}", response_class=FileResponse)
async def download_file(
    key: str,
    session: WriteSession,  # the download's audit row commits before the file is sent
    storage: StorageDep,
    expires: _Signed = "",
    ctype: _Signed = "",
    name: _Signed = "",
    actor: _Signed = "",
    sig: _Signed = "",
) -> FileResponse:
    path, download = await service.open_download(
        session, storage, key, expires=expires, ctype=ctype, name=name, actor=actor, sig=sig
    )
    return FileResponse(
        path,
        media_type=download.content_type,
        # `X-Content-Type-Options: nosniff` comes with every response (RequestContextMiddleware).
        headers={"Content-Disposition": LocalStorage.content_disposition(download.filename)},
    )
