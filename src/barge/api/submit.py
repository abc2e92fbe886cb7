"""Creating a batch, shared by the OpenAI routes and the compact dialect: every check,
then one record in the Store, then a poke to the engine."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from barge.api.auth import require_operation
from barge.domain.ids import new_batch_id
from barge.domain.models import BatchRecord
from barge.domain.permissions import Caller
from barge.domain.status import Status
from barge.domain.validation import metadata_problem, window_seconds
from barge.exceptions import InvalidRequest, NotFound
from barge.logs import batch_event

if TYPE_CHECKING:
    from barge.app import App

log = logging.getLogger("barge.api")

HASH = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True, slots=True)
class BatchRequest:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Any = None
    output_expiry_seconds: int | None = None
    hash: Any = None
    metadata_json: bool = False  # metadata values are JSON texts (compact batch_dict)


async def submit_batch(
    app: App, caller: Caller, req: BatchRequest, *, names: Mapping[str, str] | None = None
) -> BatchRecord:
    """Check ``req`` and create its batch. ``names`` renames parameters in error
    messages for a dialect whose fields are called differently."""
    s = app.settings

    def name(param: str) -> str:
        return (names or {}).get(param, param)

    if req.endpoint not in s.endpoints:
        raise InvalidRequest(
            f"Unsupported endpoint {req.endpoint!r}; this server accepts {list(s.endpoints)}.",
            param=name("endpoint"), code="invalid_value",
        )
    require_operation(caller, req.endpoint)
    seconds = window_seconds(req.completion_window)
    if req.completion_window not in s.completion_windows or seconds is None:
        raise InvalidRequest(
            f"Unsupported completion_window {req.completion_window!r}; this server accepts "
            f"{list(s.completion_windows)}.",
            param=name("completion_window"), code="invalid_value",
        )
    if req.metadata is not None:
        if not isinstance(req.metadata, dict):
            raise InvalidRequest("'metadata' must be an object.", param=name("metadata"),
                                 code="invalid_type")
        problem = metadata_problem(req.metadata)
        if problem:
            raise InvalidRequest(problem, param=name("metadata"), code="invalid_value")
    if req.hash is not None and (not isinstance(req.hash, str) or not HASH.fullmatch(req.hash)):
        raise InvalidRequest("'hash' must be a SHA-256 of 64 lowercase hex characters.",
                             param=name("hash"), code="invalid_hash")
    try:
        source = await app.store.get_file(caller.account, req.input_file_id)
    except NotFound as e:
        raise NotFound(e.message, param=name("input_file_id")) from e
    if source.purpose != "batch":
        raise InvalidRequest(
            f"File {req.input_file_id} has purpose {source.purpose!r}; a batch needs 'batch'.",
            param=name("input_file_id"), code="invalid_value",
        )
    now_ms = time.time_ns() // 1_000_000
    created_at = now_ms // 1000  # the whole seconds of created_ms, never one more
    record = BatchRecord(
        id=new_batch_id(),
        account=caller.account,
        endpoint=req.endpoint,
        completion_window=req.completion_window,
        input_file_id=req.input_file_id,
        status=Status.NEW,
        created_at=created_at,
        updated_at=now_ms / 1000,
        expires_at=created_at + seconds,
        metadata=req.metadata,
        total=0,
        output_expiry_seconds=req.output_expiry_seconds,
        hash=req.hash,
        created_ms=now_ms,
        metadata_json=req.metadata_json,
    )
    await app.store.create_batch(record)
    batch_event(log, "batch.created", record, "batch %s created (%s, window %s, input %s)",
                record.id, record.endpoint, record.completion_window, record.input_file_id,
                endpoint=record.endpoint, completion_window=record.completion_window,
                input_file_id=record.input_file_id)
    if app.engine is not None:
        app.engine.poke(record.id)
    return record
