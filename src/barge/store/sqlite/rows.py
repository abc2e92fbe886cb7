"""What the SQLite verbs need of rows beyond what both stores share
(``barge.store.rows``): the columns ``transition``/``finish`` may set."""

from __future__ import annotations

# Columns ``transition``/``finish`` may set besides status and timestamps.
_SETTABLE = frozenset(
    {"output_file_id", "error_file_id", "total", "completed", "failed", "model", "errors"}
)
