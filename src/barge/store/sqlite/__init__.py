"""The default Store: one SQLite file in WAL mode, driven from one worker thread.

One concept a module: ``store`` (``SQLiteStore``: its connections, writer thread and
error translation), ``migrations`` (the schema's SQL files, split into statements),
``rows`` (columns and rows as records), ``base`` (what every verb shares), and the verbs
by domain: ``files``, ``batches``, ``work`` (slices, progress and results, leases,
finalisation, nodes), ``access`` (keys, roles and shared secrets) and ``webhooks``
(endpoints and the outbox of batch events).
"""

from barge.store.rows import _BATCH_COLUMNS as _BATCH_COLUMNS
from barge.store.rows import _UNFINISHED as _UNFINISHED
from barge.store.sqlite.migrations import migrations, split_statements
from barge.store.sqlite.store import MAX_GROUP, SQLiteStore

__all__ = ["MAX_GROUP", "SQLiteStore", "migrations", "split_statements"]
