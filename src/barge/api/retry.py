"""``POST /v1/batches/{id}/retry``: a new batch of the requests of an ended batch that have
no line in its output file — failed, expired or never run — with a new input file of
exactly those lines (``barge.engine.resubmit``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from barge.api.auth import require_operation
from barge.api.submit import BatchRequest, submit_batch
from barge.domain.ids import new_file_id
from barge.domain.models import BatchRecord, FileRecord
from barge.domain.permissions import Caller
from barge.domain.status import Status, project
from barge.domain.validation import metadata_problem
from barge.engine.resubmit import failed_requests
from barge.exceptions import Conflict, NotFound
from barge.logs import batch_event

if TYPE_CHECKING:
    from barge.app import App

log = logging.getLogger("barge.api")

# Ended with results: some requests ran (or none did, and all are to be retried).
RETRYABLE = frozenset({Status.COMPLETED, Status.EXPIRED, Status.CANCELLED})
# Ended before any request could run: the input itself is at fault.
NO_REQUESTS_RAN = frozenset({Status.HASH_MISMATCH, Status.VALIDATION_FAILED})
RETRY_OF = "retry_of"  # the metadata key naming the batch retried


async def retry_failed(app: App, caller: Caller, batch_id: str) -> BatchRecord:
    """Create the retry of ``caller``'s batch ``batch_id`` (its endpoint, completion
    window and metadata, plus ``retry_of``). Conflict when it has not ended, failed
    before running anything, or has nothing to retry."""
    b = await app.store.get_batch(caller.account, batch_id)
    if b.status in NO_REQUESTS_RAN:
        raise Conflict(f"Batch {batch_id} failed before any of its requests ran "
                       f"({b.status.value}): fix its input file and create a new batch.",
                       param="batch_id", code="no_request_results")
    if b.status not in RETRYABLE:
        raise Conflict(f"Batch {batch_id} is {project(b.status).value}; only an ended batch "
                       "can be retried (cancel it first).", param="batch_id",
                       code="invalid_status")
    require_operation(caller, b.endpoint)
    metadata = _metadata(b)
    input_path = await _local(app, b.input_file_id, f"The input file of batch {batch_id} is "
                              "gone: there is nothing to retry from.", "input_file_gone")
    output_path = None
    if b.output_file_id is not None:
        output_path = await _local(app, b.output_file_id, f"The output file of batch "
                                   f"{batch_id} is gone: which requests succeeded is no "
                                   "longer known.", "output_file_gone")
    s = app.settings
    s.tmp_dir.mkdir(parents=True, exist_ok=True)
    file_id = new_file_id()
    dest = s.tmp_dir / f"{file_id}.retry"
    try:
        retried = await asyncio.to_thread(failed_requests, input_path, output_path, dest,
                                          s.tmp_dir)
        if retried.lines == 0:
            raise Conflict(f"Every request of batch {batch_id} completed: there is nothing "
                           "to retry.", param="batch_id", code="nothing_to_retry")
        await app.blobs.publish(file_id, dest)
    finally:
        dest.unlink(missing_ok=True)  # published: moved away already
    now = int(time.time())
    record = FileRecord(
        id=file_id, account=b.account, filename=f"{batch_id}_retry.jsonl", purpose="batch",
        bytes=retried.bytes, sha256=retried.sha256, created_at=now,
        expires_at=now + s.file_expiry_seconds, lines=retried.lines,
    )
    try:
        await app.store.create_file(record)
        new = await submit_batch(app, caller, BatchRequest(
            input_file_id=file_id, endpoint=b.endpoint, completion_window=b.completion_window,
            metadata=metadata, output_expiry_seconds=b.output_expiry_seconds,
            metadata_json=bool(b.metadata_json)))
    except BaseException:
        with contextlib.suppress(Exception):
            await app.store.delete_file(b.account, file_id)
        with contextlib.suppress(Exception):
            await app.blobs.delete(file_id)
        raise
    batch_event(log, "batch.retried", new, "batch %s retries %d requests of batch %s",
                new.id, retried.lines, batch_id, retry_of=batch_id, requests=retried.lines)
    return new


def _metadata(b: BatchRecord) -> dict[str, Any]:
    """The retry's metadata: the batch's, and ``retry_of`` its id (a JSON text where its
    values are JSON texts, the compact dialect's)."""
    value = orjson.dumps(b.id).decode() if b.metadata_json else b.id
    metadata = {**(b.metadata or {}), RETRY_OF: value}
    problem = metadata_problem(metadata)
    if problem:
        raise Conflict(f"Batch {b.id}'s metadata leaves no room for '{RETRY_OF}': {problem}",
                       param="metadata", code="invalid_metadata")
    return metadata


async def _local(app: App, file_id: str, gone: str, code: str) -> Path:
    try:
        return await app.blobs.local_path(file_id)
    except NotFound:
        raise Conflict(gone, param="batch_id", code=code) from None
