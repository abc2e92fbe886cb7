"""``/v1/batches``: create, retrieve, list, cancel, delete; results so far, retry."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from barge.api.auth import require
from barge.api.downloads import download_object
from barge.api.requests import app_of, json_object
from barge.api.responses import JSON
from barge.api.retry import retry_failed
from barge.api.submit import BatchRequest, submit_batch
from barge.domain.permissions import Action, Caller
from barge.domain.projection import batch_object, list_object
from barge.domain.status import TERMINAL, Status, project
from barge.domain.validation import MAX_EXPIRY_SECONDS, MIN_EXPIRY_SECONDS
from barge.engine.live_results import DEFAULT_LIMIT, MAX_LIMIT, NEXT_AFTER, read_results
from barge.engine.purge import purge_batch
from barge.exceptions import Conflict, InvalidRequest
from barge.logs import batch_event

router = APIRouter(prefix="/v1/batches")
log = logging.getLogger("barge.api")


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
    body = await json_object(request)
    record = await submit_batch(
        app_of(request),
        caller,
        BatchRequest(
            input_file_id=_required_str(body, "input_file_id"),
            endpoint=_required_str(body, "endpoint"),
            completion_window=_required_str(body, "completion_window"),
            metadata=body.get("metadata"),
            output_expiry_seconds=_output_expiry(body.get("output_expires_after")),
            hash=body.get("hash"),
        ),
    )
    return JSON(batch_object(record))


@router.get("")
async def list_batches(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.GET_BATCHES))],
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    created_after: Annotated[int | None, Query(ge=0)] = None,
    created_before: Annotated[int | None, Query(ge=0)] = None,
) -> JSON:
    page = await app_of(request).store.list_batches(
        caller.account, after=after, limit=limit, created_after=created_after,
        created_before=created_before,
    )
    now = time.time()  # one clock reading: every batch's barge_eta from the same moment
    return JSON(list_object([batch_object(b, now=now) for b in page.items],
                            has_more=page.has_more))


@router.get("/{batch_id}")
async def retrieve_batch(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.GET_BATCH))],
    batch_id: str,
    download: bool = False,
) -> JSON:
    record = await app_of(request).store.get_batch(caller.account, batch_id)
    body = batch_object(record)
    if download:
        body["download"] = download_object(request, caller, record)
    return JSON(body)


@router.get("/{batch_id}/results")
async def batch_results(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.GET_BATCH))],
    batch_id: str,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Response:
    """The results committed so far after the cursor ``after``, in commit order, as the
    output and error files' lines; the next cursor in the ``barge-next-after`` header
    (empty once the batch has ended and none is left)."""
    app = app_of(request)
    page = await read_results(app.store, app.blobs, batch_id, account=caller.account,
                              after=after, limit=limit, work_dir=app.settings.work_dir,
                              shared=app.settings.shared)
    return Response(b"".join(page.lines), media_type="application/jsonl",
                    headers={NEXT_AFTER: page.next_after})


@router.post("/{batch_id}/retry")
async def retry_batch(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.CREATE_BATCH))],
    batch_id: str,
) -> JSON:
    """A new batch of the ended batch's requests that have no line in its output file."""
    return JSON(batch_object(await retry_failed(app_of(request), caller, batch_id)))


@router.post("/{batch_id}/cancel")
async def cancel_batch(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.CANCEL_BATCH))],
    batch_id: str,
) -> JSON:
    app = app_of(request)
    before = await app.store.get_batch(caller.account, batch_id)
    record = await app.store.request_cancel(caller.account, batch_id)
    if before.status not in (Status.CANCEL, Status.CANCELLING):  # not a repeat
        batch_event(log, "batch.cancel_requested", record,
                    "batch %s: cancel requested (was %s)", batch_id,
                    project(before.status).value, was=project(before.status).value)
    if app.engine is not None:
        app.engine.poke(batch_id, cancel=True)
    return JSON(batch_object(record))


@router.delete("/{batch_id}")
async def delete_batch(
    request: Request,
    caller: Annotated[Caller, Depends(require(Action.DELETE_BATCH))],
    batch_id: str,
) -> JSON:
    """Delete a finished batch with its output and error files (and so their links)."""
    app = app_of(request)
    b = await app.store.get_batch(caller.account, batch_id)
    if b.status not in TERMINAL:
        raise Conflict(
            f"Batch {batch_id} is {project(b.status).value}; only a finished batch can be "
            "deleted (cancel it first).",
            param="batch_id", code="invalid_status",
        )
    b = await app.store.transition(batch_id, Status.DELETING, only_from=(b.status,))
    if await purge_batch(app.store, app.blobs, app.settings.work_dir, b):
        batch_event(log, "batch.deleted", b, "batch %s deleted", batch_id)
    return JSON({"id": batch_id, "object": "batch.deleted", "deleted": True})
