"""The PostgreSQL verbs' view of rows: what both stores share (``barge.store.rows``),
the columns ``transition``/``finish`` may set with their types, and SQL for the
database's clock."""

from __future__ import annotations

from barge.store.rows import (
    _BATCH_COLUMNS,
    _CREATED_MS,
    _FILE_COLUMNS,
    _LEASE_COLUMNS,
    _SLICE_COLUMNS,
    _UNFINISHED,
    _batch,
    _clamp,
    _file,
    _lease,
    _slice,
    _tokens,
)

__all__ = [
    "_BATCH_COLUMNS", "_CREATED_MS", "_FILE_COLUMNS", "_LEASE_COLUMNS", "_NOW", "_NOW_S",
    "_SETTABLE", "_SLICE_COLUMNS", "_S_LEASE_COLUMNS", "_UNFINISHED", "_batch", "_clamp",
    "_file", "_lease", "_slice", "_tokens",
]

_S_LEASE_COLUMNS = ", ".join(f"s.{c}" for c in _LEASE_COLUMNS.split(", "))  # slices AS s

# Columns ``transition``/``finish`` may set besides status and timestamps, with the type
# each parameter is sent as.
_SETTABLE = {
    "output_file_id": "text", "error_file_id": "text", "model": "text", "total": "bigint",
    "completed": "bigint", "failed": "bigint", "errors": "jsonb",
}

# The database's clock: Unix seconds with a fraction (``updated_at``) and whole seconds.
_NOW = "extract(epoch FROM statement_timestamp())::float8"
_NOW_S = "floor(extract(epoch FROM statement_timestamp()))::bigint"
