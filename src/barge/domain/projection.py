"""The OpenAI wire shapes of Barge's records (what the official SDK parses)."""

from __future__ import annotations

import time
from typing import Any

from barge.domain.models import BatchRecord, FileRecord
from barge.domain.status import OpenAIStatus, project


def list_object(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """A cursor page as the SDK's auto-pagination reads it."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def file_object(f: FileRecord) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "expires_at": f.expires_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
        "sha256": f.sha256,
    }


def eta(b: BatchRecord, now: float) -> int | None:
    """When the batch should be done (whole Unix seconds), at the pace it has kept since
    it went in progress: ``now + remaining * (now - in_progress_at) / done``, where
    ``done`` is its requests with a result (completed + failed). ``now`` when it is
    finalizing; None when it is in progress with nothing done yet, or in any other state."""
    shown = project(b.status)
    if shown is OpenAIStatus.FINALIZING:
        return int(now)
    done = b.completed + b.failed
    if shown is not OpenAIStatus.IN_PROGRESS or b.in_progress_at is None or done <= 0:
        return None
    remaining = max(0, b.total - done)
    elapsed = max(0.0, now - b.in_progress_at)  # a node's clock may lag the store's
    return int(now + remaining * elapsed / done)


def batch_object(b: BatchRecord, *, now: float | None = None) -> dict[str, Any]:
    """The Batch object, plus Barge's fine-grained ``barge_status``, ``updated_at`` (whole
    Unix seconds, like ``created_at``) and ``barge_eta`` (see ``eta``; ``now`` defaults to
    the clock), and ``hash`` when one was given at create."""
    now = time.time() if now is None else now
    obj = {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "model": b.model,
        "errors": (
            {"object": "list", "data": [e.as_dict() for e in b.errors]} if b.errors else None
        ),
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": project(b.status).value,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_at,
        "in_progress_at": b.in_progress_at,
        "expires_at": b.expires_at,
        "finalizing_at": b.finalizing_at,
        "completed_at": b.completed_at,
        "failed_at": b.failed_at,
        "expired_at": b.expired_at,
        "cancelling_at": b.cancelling_at,
        "cancelled_at": b.cancelled_at,
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "usage": b.usage.as_openai() if b.usage else None,
        "metadata": b.metadata,
        "barge_status": b.status.value,
        "updated_at": int(b.updated_at),
        "barge_eta": eta(b, now),
    }
    if b.hash is not None:
        obj["hash"] = b.hash
    return obj
