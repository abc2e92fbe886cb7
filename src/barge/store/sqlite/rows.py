"""The SQLite verbs' view of rows: what both stores share (``barge.store.rows``) and the
columns ``transition``/``finish`` may set."""

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
    "_BATCH_COLUMNS", "_CREATED_MS", "_FILE_COLUMNS", "_LEASE_COLUMNS", "_SETTABLE",
    "_SLICE_COLUMNS", "_UNFINISHED", "_batch", "_clamp", "_file", "_lease", "_slice",
    "_tokens",
]

# Columns ``transition``/``finish`` may set besides status and timestamps.
_SETTABLE = frozenset(
    {"output_file_id", "error_file_id", "total", "completed", "failed", "model", "errors"}
)
