"""What the PostgreSQL verbs need of rows beyond what both stores share
(``barge.store.rows``): the lease columns of ``slices AS s``, the columns
``transition``/``finish`` may set with their types, and SQL for the database's clock."""

from __future__ import annotations

from barge.store.rows import _LEASE_COLUMNS

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
