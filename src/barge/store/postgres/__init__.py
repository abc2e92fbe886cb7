"""The Store on PostgreSQL, for many nodes sharing one database: asyncpg and a pool.

Every method is one statement (one round trip, its own transaction) wherever the verb
allows it: a move along the lifecycle is an ``UPDATE … WHERE status = ANY(allowed)``
whose ``RETURNING`` is the new record, with the current row read in the same statement
so that a refusal can say why; publishing files, cutting slices and acknowledging
progress ride in data-modifying CTEs of that statement. PostgreSQL's own group commit
then lets concurrent commits share a WAL flush, which is what ``SQLiteStore``'s writer
thread does by hand. Times the store stamps come from the database's clock, the one
clock every node shares.

One concept a module: ``store`` (``PostgresStore``: its pool, statements and error
translation), ``migrations`` (the schema's SQL files, applied under a lock), ``rows``
(columns and rows as records), ``moves`` (the statement that moves a batch), ``base``
(what every verb shares), and the verbs by domain: ``files``, ``batches``, ``work``
(slices, progress and results, leases, finalisation, nodes), ``access`` (keys, roles
and shared secrets) and ``webhooks`` (endpoints and the outbox of batch events).
"""

from barge.store.postgres.base import RETRIES
from barge.store.postgres.migrations import (
    MIGRATION_LOCK,
    MIGRATION_TIMEOUT,
    migrations,
    newest_version,
    quote_ident,
)
from barge.store.postgres.store import PostgresStore, describe_url

__all__ = [
    "MIGRATION_LOCK",
    "MIGRATION_TIMEOUT",
    "RETRIES",
    "PostgresStore",
    "describe_url",
    "migrations",
    "newest_version",
    "quote_ident",
]
