"""The OpenAI wire shapes of Barge's records (what the official SDK parses)."""

from __future__ import annotations

from typing import Any

from barge.domain.models import BatchRecord, FileRecord
from barge.domain.status import project


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


def batch_object(b: BatchRecord) -> dict[str, Any]:
    """The Batch object, plus Barge's fine-grained ``barge_status`` and ``updated_at``
    (whole Unix seconds, like ``created_at``), and ``hash`` when one was given at create."""
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
    }
    if b.hash is not None:
        obj["hash"] = b.hash
    return obj
