"""``/v1/files``: upload, list, retrieve, content, delete."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import StreamingResponse

from barge.api.auth import require
from barge.api.requests import app_of
from barge.api.responses import JSON
from barge.api.uploads import Upload, receive_upload
from barge.domain.ids import new_file_id
from barge.domain.models import UPLOAD_PURPOSES, FileRecord
from barge.domain.permissions import Action, Caller
from barge.domain.projection import file_object, list_object
from barge.domain.validation import MAX_EXPIRY_SECONDS, MIN_EXPIRY_SECONDS
from barge.exceptions import InvalidRequest, NotFound

router = APIRouter(prefix="/v1/files")


def _expiry(upload: Upload, purpose: str, now: int, default: int) -> int | None:
    anchor = upload.fields.get("expires_after[anchor]")
    seconds = upload.fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return now + default if purpose == "batch" else None
    if anchor != "created_at":
        raise InvalidRequest("expires_after[anchor] must be 'created_at'.",
                             param="expires_after.anchor")
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    if not MIN_EXPIRY_SECONDS <= value <= MAX_EXPIRY_SECONDS:
        raise InvalidRequest(
            f"expires_after[seconds] must be an integer from {MIN_EXPIRY_SECONDS} to "
            f"{MAX_EXPIRY_SECONDS}.",
            param="expires_after.seconds",
        )
    return now + value


@router.post("")
async def create_file(
    request: Request, caller: Annotated[Caller, Depends(require(Action.UPLOAD_FILE))]
) -> JSON:
    app = app_of(request)
    s = app.settings
    file_id = new_file_id()
    upload, writer = await receive_upload(request, app.blobs, file_id, max_bytes=s.max_file_bytes)
    try:
        purpose = upload.fields.get("purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(
                f"'purpose' must be one of {sorted(UPLOAD_PURPOSES)}.", param="purpose",
                code="invalid_purpose",
            )
        now = int(time.time())
        expires_at = _expiry(upload, purpose, now, s.file_expiry_seconds)
        if purpose == "batch" and not upload.utf8:
            raise InvalidRequest("A batch file must be UTF-8 encoded JSONL.", param="file",
                                 code="invalid_file_encoding")
    except BaseException:
        writer.abort()
        raise
    info = await writer.commit()
    if purpose == "batch" and info.bytes == 0:
        await app.blobs.delete(file_id)
        raise InvalidRequest("The file is empty.", param="file", code="empty_file")
    record = FileRecord(
        id=file_id,
        account=caller.account,
        filename=_safe_name(upload.filename),
        purpose=purpose,
        bytes=info.bytes,
        sha256=info.sha256,
        created_at=now,
        expires_at=expires_at,
        lines=info.lines,
    )
    try:
        await app.store.create_file(record)
    except BaseException:
        await app.blobs.delete(file_id)
        raise
    return JSON(file_object(record))


def _safe_name(name: str | None) -> str:
    """The client's filename, kept only as a label (never a path): last path component,
    no control characters, at most 255 characters."""
    if not name:
        return "upload.jsonl"
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isprintable())[:255]
    return cleaned or "upload.jsonl"


@router.get("")
async def list_files(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.GET_FILES))],
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    after: str | None = None,
) -> JSON:
    page = await app_of(request).store.list_files(
        caller.account, purpose=purpose, limit=limit, order=order, after=after
    )
    return JSON(list_object([file_object(f) for f in page.items], has_more=page.has_more))


@router.get("/{file_id}")
async def retrieve_file(
    request: Request, caller: Annotated[Caller, Depends(require(Action.GET_FILE))], file_id: str
) -> JSON:
    return JSON(file_object(await app_of(request).store.get_file(caller.account, file_id)))


@router.get("/{file_id}/content")
async def file_content(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.DOWNLOAD_FILE))],
    file_id: str,
) -> StreamingResponse:
    app = app_of(request)
    record = await app.store.get_file(caller.account, file_id)
    if not await app.blobs.exists(record.id):  # 404 now rather than a broken stream later
        raise NotFound(f"The bytes of file {record.id} are missing.")
    return StreamingResponse(
        app.blobs.stream(record.id),
        media_type="application/octet-stream",
        headers={"Content-Length": str(record.bytes)},
    )


@router.delete("/{file_id}")
async def delete_file(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.DELETE_FILE))],
    file_id: str,
) -> JSON:
    app = app_of(request)
    await app.store.delete_file(caller.account, file_id)
    await app.blobs.delete(file_id)
    return JSON({"id": file_id, "object": "file", "deleted": True})
