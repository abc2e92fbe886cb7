"""``PostgresStore``: its pool, the statements every verb runs through, and the
translation of driver errors; the verbs come from its mixins."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from barge.exceptions import BargeError, Conflict, StorageError, StoreUnavailable
from barge.store.postgres.access import AccessVerbs
from barge.store.postgres.base import RETRIES
from barge.store.postgres.batches import BatchVerbs
from barge.store.postgres.files import FileVerbs
from barge.store.postgres.migrations import migrate, quote_ident
from barge.store.postgres.webhooks import WebhookVerbs
from barge.store.postgres.work import WorkVerbs
from barge.store.protocol import PING_TIMEOUT, Store

R = TypeVar("R")


def describe_url(url: str) -> str:
    """Where ``url`` points, for messages: host, port and database, never the password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "the configured PostgreSQL URL"
    database = parts.path.lstrip("/") or parts.username or "(default database)"
    return f"{host}:{port}/{database}"


class PostgresStore(FileVerbs, BatchVerbs, WorkVerbs, AccessVerbs, WebhookVerbs):
    """The Store on a PostgreSQL database (``url``: ``postgresql://user@host:port/db``),
    optionally inside one PostgreSQL ``schema`` (created when missing). ``open`` brings
    the schema up to date, safely when many nodes start at once."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float | None = 60.0,
    ) -> None:
        if schema is not None and not 0 < len(schema.encode()) <= 63:
            raise BargeError(f"A PostgreSQL schema name is 1 to 63 bytes, not {schema!r}.")
        self._url = url
        self._schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: Any = None
        self.where = describe_url(url) + (f" (schema {schema})" if schema else "")
        self.schema_version: int | None = None  # after ``open``
        self.applied: list[int] = []  # the migrations ``open`` applied

    # -- plumbing -------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        settings = {"application_name": "barge"}
        if self._schema is not None:
            settings["search_path"] = quote_ident(self._schema)

        async def no_reset(_conn: Any) -> None:
            """Nothing to reset: the store keeps no session state (no LISTEN, no session
            locks, only ``SET LOCAL``); an open transaction is still rolled back."""

        try:
            pool = await asyncpg.create_pool(
                self._url, min_size=self._min_size, max_size=self._max_size,
                timeout=self._connect_timeout, command_timeout=self._command_timeout,
                server_settings=settings, reset=no_reset,
            )
        except Exception as e:
            raise StoreUnavailable(
                f"Cannot connect to PostgreSQL at {self.where}: {_reason(e)}"
            ) from e
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException as e:
            pool.terminate()
            if isinstance(e, BargeError | asyncio.CancelledError):
                raise
            raise _translate(e, self.where) from e
        self._pool = pool

    async def _migrate(self, conn: Any) -> None:
        """Bring the schema up to date (``migrations.migrate``); keep its version and the
        migrations applied."""
        self.schema_version, self.applied = await migrate(conn, self._schema, self.where)

    async def ping(self, timeout: float = PING_TIMEOUT) -> None:
        """``SELECT 1`` on a pooled connection (a new one when the pool has none, as
        after a restart of PostgreSQL), all within ``timeout`` seconds."""

        async def q(conn: Any) -> None:
            await conn.fetchval("SELECT 1", timeout=timeout)

        try:
            await asyncio.wait_for(self._call(q, read=True), timeout)
        except TimeoutError:
            raise StoreUnavailable(
                f"PostgreSQL at {self.where} did not answer within {timeout:g}s.") from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except (TimeoutError, asyncpg.PostgresError, OSError):
            pool.terminate()

    async def _call(self, fn: Callable[[Any], Awaitable[R]], *, read: bool = False) -> R:
        """Run ``fn`` (one statement) on a pooled connection, translating driver errors.
        A read that lost its connection is tried once more on another; a statement that
        lost to a deadlock or a serialization failure is tried again, up to ``RETRIES``
        times (it changed nothing). A write whose connection broke is not: it may have
        committed."""
        attempt = 0
        while True:
            attempt += 1
            pool = self._pool
            if pool is None:
                raise StoreUnavailable("The store is closed.")
            try:
                async with pool.acquire() as conn:
                    return await fn(conn)
            except BargeError:
                raise
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as e:
                if attempt >= RETRIES:
                    raise _translate(e, self.where) from e
            except Exception as e:
                if not (read and attempt == 1 and _lost_connection(e)):
                    raise _translate(e, self.where) from e

    async def _fetch(self, sql: str, *args: Any, read: bool = True) -> list[Any]:
        async def q(conn: Any) -> list[Any]:
            return list(await conn.fetch(sql, *args))

        return await self._call(q, read=read)

    async def _fetchrow(self, sql: str, *args: Any, read: bool = True) -> Any:
        async def q(conn: Any) -> Any:
            return await conn.fetchrow(sql, *args)

        return await self._call(q, read=read)


# -- errors --------------------------------------------------------------------------------

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
    asyncpg.OperatorInterventionError,  # the server shutting down, or our session killed
)


def _lost_connection(e: BaseException) -> bool:
    return isinstance(e, _CONNECTION_ERRORS)


def _reason(e: BaseException) -> str:
    """A driver error in one line, for messages."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running and listening there?)"
    if isinstance(e, TimeoutError):
        return "timed out"
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.sub(r"\s+", " ", text)


def _translate(e: BaseException, where: str) -> BaseException:
    """A driver error as Barge's own; Barge's own errors pass as they are."""
    if isinstance(e, BargeError):
        return e
    if isinstance(e, asyncpg.UniqueViolationError):
        detail = getattr(e, "detail", None) or _reason(e)
        return Conflict(f"That already exists: {detail}")
    if isinstance(e, asyncpg.IntegrityConstraintViolationError):
        return BargeError(f"The database refused the record: {_reason(e)}")
    if isinstance(e, asyncpg.DiskFullError):
        return StorageError("The disk holding the database is full.")
    if isinstance(e, TimeoutError):
        return StoreUnavailable(f"PostgreSQL at {where} did not answer in time.")
    if _lost_connection(e):
        return StoreUnavailable(f"Lost the connection to PostgreSQL at {where}: {_reason(e)}")
    if isinstance(e, asyncpg.PostgresError):
        return StoreUnavailable(f"The database failed: {_reason(e)}")
    return e


if TYPE_CHECKING:  # mypy checks that PostgresStore is a Store, method for method

    def _is_a_store(s: PostgresStore) -> Store:
        return s
