"""Temporary download links: ``GET /v1/batches/{id}?download=true`` hands out signed,
expiring URLs to the batch's output and error files, and ``GET /v1/downloads/{file_id}``
serves them with no API key.

A link is ``{base}v1/downloads/{file_id}?account=...&expires=...&signature=...``: the
signature (HMAC-SHA256, see ``barge.domain.signing``) covers the file id, the account and
the expiry, so it opens that one file of that one account until then, and nothing else.
Every refusal (bad or expired link, file gone) is the same 403 with the same message.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from barge.api.requests import app_of, public_base
from barge.domain.models import BatchRecord
from barge.domain.permissions import Action, Caller
from barge.domain.signing import expiry, sign, verify
from barge.exceptions import NotFound, PermissionDenied

router = APIRouter(prefix="/v1/downloads")

INVALID_LINK = "This download link is invalid or has expired."


def _denied() -> PermissionDenied:
    return PermissionDenied(INVALID_LINK, code="invalid_download_link")


def _link(base: str, secret: str, file_id: str, account: str, expires: int) -> str:
    query = urlencode(
        {"account": account, "expires": str(expires),
         "signature": sign(secret, file_id, account, expires)},
        quote_via=quote,
    )
    return f"{base}v1/downloads/{file_id}?{query}"


def download_object(request: Request, caller: Caller, record: BatchRecord) -> dict[str, Any]:
    """The ``download`` attribute of a Batch object: links to its output and error files
    (each null when the batch has none) and when they stop working (Unix seconds). Handing
    out links is downloading by proxy, so the key's role must allow ``download_file``."""
    if not caller.role.allows(Action.DOWNLOAD_FILE):
        raise PermissionDenied(
            f"This key's role '{caller.role.name}' does not allow "
            f"'{Action.DOWNLOAD_FILE.value}'.",
            param="download", code="permission_denied",
        )
    app = app_of(request)
    expires = expiry(time.time(), app.settings.download_url_ttl)
    base = public_base(request)

    def link(file_id: str | None) -> str | None:
        if file_id is None:
            return None
        return _link(base, app.signing_secret, file_id, record.account, expires)

    return {
        "url": link(record.output_file_id),
        "error_url": link(record.error_file_id),
        "validity_ts": expires,
    }


@router.get("/{file_id}")
async def download(
    request: Request,
    file_id: str,
    account: str | None = None,
    expires: str | None = None,
    signature: str | None = None,
) -> StreamingResponse:
    app = app_of(request)
    if account is None or expires is None or signature is None or not verify(
        app.signing_secret, file_id, account, expires, signature, now=time.time()
    ):
        raise _denied()
    try:
        record = await app.store.get_file(account, file_id)
        if record.expires_at is not None and record.expires_at <= time.time():
            raise _denied()
        if not await app.blobs.exists(record.id):  # refuse now, not break the stream later
            raise _denied()
    except NotFound:
        raise _denied() from None
    return StreamingResponse(
        app.blobs.stream(record.id),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(record.bytes),
            "Content-Disposition": f'attachment; filename="{record.id}.jsonl"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
