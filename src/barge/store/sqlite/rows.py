"""The columns the SQLite verbs read, rows as records, and parameters kept in range."""

from __future__ import annotations

import sqlite3

import orjson

from barge.domain.models import BatchRecord, FileRecord, LineError, Slice
from barge.domain.status import TERMINAL, Status
from barge.domain.usage import MAX_TOKENS, Usage
from barge.store.protocol import Lease

_BATCH_COLUMNS = (
    "id, account, endpoint, completion_window, input_file_id, status, created_at, updated_at,"
    " expires_at, metadata, model, total, completed, failed, errors, output_file_id,"
    " error_file_id, in_progress_at, finalizing_at, completed_at, failed_at, expired_at,"
    " cancelling_at, cancelled_at, output_expiry_seconds, hash, input_tokens, output_tokens,"
    " cached_tokens, reasoning_tokens, created_ms, metadata_json"
)
_FILE_COLUMNS = "id, account, filename, purpose, bytes, sha256, created_at, expires_at, lines"
# Columns ``transition``/``finish`` may set besides status and timestamps.
_SETTABLE = frozenset(
    {"output_file_id", "error_file_id", "total", "completed", "failed", "model", "errors"}
)


# Unfinished batches: the condition of the partial index ``batches_unfinished``
# (migration 6), spelled as there so that SQLite uses the index.
_UNFINISHED = (
    "status NOT IN ('hash_mismatch', 'validation_failed', 'cancelled', 'expired',"
    " 'completed', 'deleting')"
)
assert set(_UNFINISHED[15:-1].replace("'", "").split(", ")) == {*TERMINAL, Status.DELETING}


def _batch(row: sqlite3.Row) -> BatchRecord:
    errors = [LineError(**e) for e in orjson.loads(row["errors"])] if row["errors"] else []
    return BatchRecord(
        id=row["id"],
        account=row["account"],
        endpoint=row["endpoint"],
        completion_window=row["completion_window"],
        input_file_id=row["input_file_id"],
        status=Status(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        metadata=orjson.loads(row["metadata"]) if row["metadata"] is not None else None,
        model=row["model"],
        total=row["total"],
        completed=row["completed"],
        failed=row["failed"],
        errors=errors,
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        in_progress_at=row["in_progress_at"],
        finalizing_at=row["finalizing_at"],
        completed_at=row["completed_at"],
        failed_at=row["failed_at"],
        expired_at=row["expired_at"],
        cancelling_at=row["cancelling_at"],
        cancelled_at=row["cancelled_at"],
        output_expiry_seconds=row["output_expiry_seconds"],
        hash=row["hash"],
        usage=Usage(row["input_tokens"], row["output_tokens"], row["cached_tokens"],
                    row["reasoning_tokens"]),
        created_ms=row["created_ms"],
        metadata_json=None if row["metadata_json"] is None else bool(row["metadata_json"]),
    )


# A batch's creation time in milliseconds; batches from before migration 7 have only
# whole seconds.
_CREATED_MS = "COALESCE(created_ms, created_at * 1000)"
_INT64 = (-(2**63), 2**63 - 1)


def _clamp(n: int) -> int:
    """A bound as a parameter SQLite takes: an int beyond int64 means the same as its
    end of the range (no creation time comes near either)."""
    return min(max(n, _INT64[0]), _INT64[1])


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118


def _tokens(n: int) -> int:
    """A token count as a parameter SQLite takes: within 0..MAX_TOKENS."""
    return min(max(n, 0), MAX_TOKENS)


def _slice(row: sqlite3.Row) -> Slice:
    return Slice(**{k: row[k] for k in row.keys()} | {"done": bool(row["done"])})  # noqa: SIM118


_SLICE_COLUMNS = (
    "batch_id, no, start_line, n_lines, start_offset, end_offset, committed_bytes, completed,"
    " failed, done"
)
_LEASE_COLUMNS = f"{_SLICE_COLUMNS}, lease_token, lease_owner, lease_expires"


def _lease(row: sqlite3.Row) -> Lease:
    return Lease(
        slice=Slice(row["batch_id"], row["no"], row["start_line"], row["n_lines"],
                    row["start_offset"], row["end_offset"], row["committed_bytes"],
                    row["completed"], row["failed"], bool(row["done"])),
        token=row["lease_token"], node=row["lease_owner"], expires_at=row["lease_expires"],
    )
