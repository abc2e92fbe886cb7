"""``/v1/batches``: create, retrieve, list, cancel."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request

from barge.api.auth import require, require_operation
from barge.api.responses import JSON
from barge.domain.ids import new_batch_id
from barge.domain.models import BatchRecord
from barge.domain.permissions import Action, Caller
from barge.domain.projection import batch_object
from barge.domain.status import Status
from barge.domain.validation import (
    MAX_EXPIRY_SECONDS,
    MIN_EXPIRY_SECONDS,
    metadata_problem,
    window_seconds,
)
from barge.exceptions import InvalidRequest, NotFound

if TYPE_CHECKING:
    from barge.app import App

router = APIRouter(prefix="/v1/batches")


def _app(request: Request) -> App:
    app: App = request.app.state.barge
    return app


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest("The request body is not valid JSON.") from e
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name,
                             code="missing_required_parameter")
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' must be a non-empty string.", param=name,
                             code="invalid_type")
    return value


def _output_expiry(value: Any) -> int | None:
    """Seconds the output and error files live, from ``output_expires_after``."""
    if value is None:
        return None
    param = "output_expires_after"
    if not isinstance(value, dict) or value.get("anchor") != "created_at":
        raise InvalidRequest("output_expires_after.anchor must be 'created_at'.",
                             param=f"{param}.anchor", code="invalid_value")
    seconds = value.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not (
        MIN_EXPIRY_SECONDS <= seconds <= MAX_EXPIRY_SECONDS
    ):
        raise InvalidRequest(
            f"output_expires_after.seconds must be an integer from {MIN_EXPIRY_SECONDS} to "
            f"{MAX_EXPIRY_SECONDS}.",
            param=f"{param}.seconds", code="invalid_value",
        )
    return seconds


@router.post("")
async def create_batch(
    request: Request, caller: Annotated[Caller, Depends(require(Action.CREATE_BATCH))]
) -> JSON:
    app = _app(request)
    s = app.settings
    body = await _json_body(request)
    input_file_id = _required_str(body, "input_file_id")
    endpoint = _required_str(body, "endpoint")
    window = _required_str(body, "completion_window")
    if endpoint not in s.endpoints:
        raise InvalidRequest(
            f"Unsupported endpoint {endpoint!r}; this server accepts {list(s.endpoints)}.",
            param="endpoint", code="invalid_value",
        )
    require_operation(caller, endpoint)
    seconds = window_seconds(window)
    if window not in s.completion_windows or seconds is None:
        raise InvalidRequest(
            f"Unsupported completion_window {window!r}; this server accepts "
            f"{list(s.completion_windows)}.",
            param="completion_window", code="invalid_value",
        )
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise InvalidRequest("'metadata' must be an object.", param="metadata",
                                 code="invalid_type")
        problem = metadata_problem(metadata)
        if problem:
            raise InvalidRequest(problem, param="metadata", code="invalid_value")
    output_expiry = _output_expiry(body.get("output_expires_after"))
    try:
        source = await app.store.get_file(caller.account, input_file_id)
    except NotFound as e:
        raise NotFound(e.message, param="input_file_id") from e
    if source.purpose != "batch":
        raise InvalidRequest(
            f"File {input_file_id} has purpose {source.purpose!r}; a batch needs 'batch'.",
            param="input_file_id", code="invalid_value",
        )
    now = time.time()
    record = BatchRecord(
        id=new_batch_id(),
        account=caller.account,
        endpoint=endpoint,
        completion_window=window,
        input_file_id=input_file_id,
        status=Status.NEW,
        created_at=int(now),
        updated_at=now,
        expires_at=int(now) + seconds,
        metadata=metadata,
        total=0,
        output_expiry_seconds=output_expiry,
    )
    await app.store.create_batch(record)
    if app.engine is not None:
        app.engine.poke(record.id)
    return JSON(batch_object(record))


@router.get("")
async def list_batches(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.GET_BATCHES))],
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JSON:
    page = await _app(request).store.list_batches(caller.account, after=after, limit=limit)
    data = [batch_object(b) for b in page.items]
    return JSON(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": page.has_more,
        }
    )


@router.get("/{batch_id}")
async def retrieve_batch(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.GET_BATCH))],
    batch_id: str,
) -> JSON:
    return JSON(batch_object(await _app(request).store.get_batch(caller.account, batch_id)))


@router.post("/{batch_id}/cancel")
async def cancel_batch(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.CANCEL_BATCH))],
    batch_id: str,
) -> JSON:
    app = _app(request)
    record = await app.store.request_cancel(caller.account, batch_id)
    if app.engine is not None:
        app.engine.poke(batch_id, cancel=True)
    return JSON(batch_object(record))
