"""The compact dialect at ``/batches``: the batch-operations reference API's shapes over
the same domain, Store and engine as ``/v1/batches``, under the same roles.

- ``POST /batches/upload_url`` → ``{"handler", "url", "validity_ts"}``: a one-time signed
  target; ``PUT`` the JSONL file's bytes to ``url`` (no API key) and the file is stored
  under the id ``handler``. The first upload to finish wins the link; a concurrent or
  later one gets 409 and its bytes are dropped.
- ``POST /batches`` ``{"handler", "operation", "hash"?, "batch_dict"?}``: ``operation``
  is the endpoint every line runs (``/v1/chat/completions`` or ``chat/completions``).
- ``GET /batches/{batch}[?download=true]``, ``GET /batches?cursor=&ge=&le=&limit=``,
  ``POST /batches/{batch}/cancel``, ``DELETE /batches/{batch}``.

Where the reference is silent Barge follows its OpenAI behaviour: batch ids are Barge's
``batch_…`` ids, not UUIDs; statuses are the fine-grained ones; the completion window is
the server's first accepted one; errors have the OpenAI shape; a page of ``GET /batches``
also carries ``cursor``, the value to pass for the next page (null on the last)."""

from __future__ import annotations

import math
import re
import time
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlencode

import orjson
from fastapi import APIRouter, Depends, Query, Request

from barge.api.auth import require
from barge.api.batches import cancel_batch, delete_batch
from barge.api.downloads import download_object
from barge.api.requests import app_of, json_object, public_base
from barge.api.responses import JSON
from barge.api.submit import BatchRequest, submit_batch
from barge.domain.ids import new_file_id
from barge.domain.models import BatchRecord, FileRecord
from barge.domain.permissions import Action, Caller
from barge.domain.signing import UPLOAD_PURPOSE, expiry, sign, verify
from barge.exceptions import Conflict, InvalidRequest, NotFound, PermissionDenied

if TYPE_CHECKING:
    from barge.app import App

router = APIRouter(prefix="/batches")
DICT_KEY = re.compile(r"[a-z_][0-9a-z_]{0,63}")
MAX_LIMIT = 1000
MAX_TS = Decimal(10**12)  # seconds: year 33658; any later bound means the same
INVALID_UPLOAD = "This upload link is invalid, used or expired."


def _ts(seconds: float) -> float:
    return round(float(seconds), 3)


def _created_ts(b: BatchRecord) -> float:
    """Seconds to three decimals; a batch stored before milliseconds were kept has its
    whole seconds."""
    return _ts(b.created_at if b.created_ms is None else b.created_ms / 1000)


def _dict_value(value: str, is_json: bool | None) -> Any:
    """A batch_dict value: JSON as given through this dialect, or an OpenAI metadata
    value, which is a plain string. A batch stored before Barge kept which (None) shows
    JSON where the value parses as JSON, else the string."""
    if is_json is not False:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
    return value


def compact_view(b: BatchRecord) -> dict[str, Any]:
    view: dict[str, Any] = {
        "batch": b.id,
        "status": b.status.value,
        "created_ts": _created_ts(b),
        "updated_ts": _ts(b.updated_at),
        "operation": b.endpoint,
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
    }
    if b.metadata:
        view["batch_dict"] = {k: _dict_value(v, b.metadata_json) for k, v in b.metadata.items()}
    if b.hash is not None:
        view["hash"] = b.hash
    if b.errors:
        view["errors"] = [e.as_dict() for e in b.errors]
    return view


def _operation(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'operation' must be an endpoint such as /v1/chat/completions.",
                             param="operation", code="invalid_value")
    return value if value.startswith("/v1/") else "/v1/" + value.lstrip("/")


def _batch_dict(value: Any) -> dict[str, str] | None:
    """``batch_dict`` pairs, kept as metadata with JSON-encoded values."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("'batch_dict' must be an object.", param="batch_dict",
                             code="invalid_type")
    for key in value:
        if not DICT_KEY.fullmatch(key):
            raise InvalidRequest(
                "Each batch_dict key must match ^[a-z_][0-9a-z_]{0,63}$.",
                param="batch_dict", code="invalid_value",
            )
    return {k: orjson.dumps(v).decode() for k, v in value.items()}


@router.post("/upload_url")
async def create_upload_url(
    request: Request, caller: Annotated[Caller, Depends(require(Action.UPLOAD_FILE))]
) -> JSON:
    app = app_of(request)
    handler = new_file_id()
    expires = expiry(time.time(), app.settings.download_url_ttl)
    query = urlencode(
        {"account": caller.account, "expires": str(expires),
         "signature": sign(app.signing_secret, handler, caller.account, expires,
                           purpose=UPLOAD_PURPOSE)},
        quote_via=quote,
    )
    url = f"{public_base(request)}batches/uploads/{handler}?{query}"
    return JSON({"handler": handler, "url": url, "validity_ts": expires})


def _link_used() -> Conflict:
    return Conflict("This upload link was already used; the upload was dropped.",
                    param="handler", code="upload_link_used")


async def _already_stored(app: App, account: str, handler: str) -> bool:
    try:
        await app.store.get_file(account, handler)
    except NotFound:
        return False
    return True


@router.put("/uploads/{handler}")
async def upload(
    request: Request,
    handler: str,
    account: str | None = None,
    expires: str | None = None,
    signature: str | None = None,
) -> JSON:
    """The body is the file's bytes; the signed link stands in for the API key, once.
    Every upload streams into a temporary file of its own; the first to finish wins the
    link (``Store.use_once``, which every node shares), and a concurrent or later upload,
    through this node or another, is refused with 409, its bytes dropped. A link whose
    won upload then fails to be stored is spent: the client asks for another."""
    app = app_of(request)
    if account is None or expires is None or signature is None or not verify(
        app.signing_secret, handler, account, expires, signature, now=time.time(),
        purpose=UPLOAD_PURPOSE,
    ):
        raise PermissionDenied(INVALID_UPLOAD, code="invalid_upload_link")
    if await _already_stored(app, account, handler):
        raise _link_used()  # refused before reading the body
    s = app.settings
    writer = app.blobs.writer(handler, max_bytes=s.max_file_bytes)
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            writer.write(chunk)
        if size == 0:
            raise InvalidRequest("The file is empty.", param="file", code="empty_file")
        # The link's expiry (verified above) is when its use stops mattering.
        if not await app.store.use_once(f"upload:{handler}", expires_at=int(expires)):
            raise _link_used()
    except BaseException:
        writer.abort()
        raise
    info = await writer.commit()
    now = int(time.time())
    record = FileRecord(handler, account, f"{handler}.jsonl", "batch", info.bytes,
                        info.sha256, now, now + s.file_expiry_seconds, info.lines)
    try:
        await app.store.create_file(record)
    except BaseException:
        await app.blobs.delete(handler)
        raise
    return JSON({"handler": handler, "bytes": info.bytes, "sha256": info.sha256})


@router.post("")
async def create(
    request: Request, caller: Annotated[Caller, Depends(require(Action.CREATE_BATCH))]
) -> JSON:
    body = await json_object(request)
    handler = body.get("handler")
    if not isinstance(handler, str) or not handler:
        raise InvalidRequest("Missing required parameter: 'handler'.", param="handler",
                             code="missing_required_parameter")
    app = app_of(request)
    record = await submit_batch(
        app,
        caller,
        BatchRequest(
            input_file_id=handler,
            endpoint=_operation(body.get("operation")),
            completion_window=app.settings.completion_windows[0],
            metadata=_batch_dict(body.get("batch_dict")),
            hash=body.get("hash"),
            metadata_json=True,
        ),
        names={"input_file_id": "handler", "endpoint": "operation", "metadata": "batch_dict"},
    )
    return JSON(compact_view(record))


@router.get("/{batch}")
async def get(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.GET_BATCH))],
    batch: str,
    download: bool = False,
) -> JSON:
    record = await app_of(request).store.get_batch(caller.account, batch)
    view = compact_view(record)
    if download:
        links = download_object(request, caller, record)
        view["download"] = {"url": links["url"], "error_url": links["error_url"],
                            "validity_ts": _ts(links["validity_ts"])}
    return JSON(view)


def _timestamp(value: str, param: str) -> Decimal:
    """A ``ge``/``le`` timestamp: a finite, non-negative number of seconds, read exactly
    (decimals are milliseconds, not binary fractions). Values past MAX_TS mean the same as
    MAX_TS, later than any batch."""
    try:
        seconds = Decimal(value)
    except InvalidOperation:
        seconds = Decimal("NaN")
    if not seconds.is_finite() or seconds < 0:
        raise InvalidRequest(
            f"Invalid value for '{param}': it must be a timestamp, a finite number of "
            "seconds since the Unix epoch, at least 0.",
            param=param, code="invalid_value",
        )
    return min(seconds, MAX_TS)


@router.get("")
async def list_(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.GET_BATCHES))],
    cursor: str | None = None,
    ge: str | None = None,
    le: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
) -> JSON:
    """With only ``ge``, counting starts at ``ge`` (oldest first); otherwise it starts at
    ``le`` or now (newest first). ``ge``/``le`` are Unix seconds, compared with the
    batches' creation times to the millisecond, bounds included."""
    after_ms = None if ge is None else math.ceil(_timestamp(ge, "ge") * 1000)
    before_ms = None if le is None else math.floor(_timestamp(le, "le") * 1000)
    page = await app_of(request).store.list_batches(
        caller.account, after=cursor, limit=limit,
        created_after_ms=after_ms, created_before_ms=before_ms,
        oldest_first=ge is not None and le is None,
    )
    return JSON({
        "batches": {b.id: b.status.value for b in page.items},
        "cursor": page.items[-1].id if page.has_more else None,
    })


@router.post("/{batch}/cancel")
async def cancel(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.CANCEL_BATCH))],
    batch: str,
) -> JSON:
    await cancel_batch(request, caller, batch)
    return JSON(compact_view(await app_of(request).store.get_batch(caller.account, batch)))


@router.delete("/{batch}")
async def delete(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.DELETE_BATCH))],
    batch: str,
) -> JSON:
    await delete_batch(request, caller, batch)
    return JSON({"batch": batch, "deleted": True})
