"""The Store on PostgreSQL, for many nodes sharing one database: asyncpg and a pool.

Every method is one statement (one round trip, its own transaction) wherever the verb
allows it: a move along the lifecycle is an ``UPDATE … WHERE status = ANY(allowed)``
whose ``RETURNING`` is the new record, with the current row read in the same statement
so that a refusal can say why; publishing files, cutting slices and acknowledging
progress ride in data-modifying CTEs of that statement. PostgreSQL's own group commit
then lets concurrent commits share a WAL flush, which is what ``SQLiteStore``'s writer
thread does by hand. Times the store stamps come from the database's clock, the one
clock every node shares.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import orjson

from barge.domain.models import BatchRecord, FileRecord, KeyRecord, LineError, Principal, Slice
from barge.domain.permissions import Role, make_role
from barge.domain.status import CANCELLABLE, STAMPS, TERMINAL, Status, can_transition
from barge.domain.usage import MAX_TOKENS, NO_USAGE, Usage
from barge.exceptions import (
    BargeError,
    Conflict,
    Fenced,
    NotFound,
    StorageError,
    StoreUnavailable,
)
from barge.store.protocol import FINALIZING, Lease, Page, SliceProgress, Store

R = TypeVar("R")

# The key of the transaction-scoped advisory lock every migration runs under ("barge_db"
# in ASCII): nodes starting together on an empty database migrate one after another, and
# the later ones find the schema already current.
MIGRATION_LOCK = 0x62617267655F6462
MIGRATION_TIMEOUT = 600.0  # seconds a migration (lock wait included) may take
RETRIES = 3  # attempts of a transaction that lost to a deadlock or serialization failure

_BATCH_COLUMNS = (
    "id, account, endpoint, completion_window, input_file_id, status, created_at, updated_at,"
    " expires_at, metadata, model, total, completed, failed, errors, output_file_id,"
    " error_file_id, in_progress_at, finalizing_at, completed_at, failed_at, expired_at,"
    " cancelling_at, cancelled_at, output_expiry_seconds, hash, input_tokens, output_tokens,"
    " cached_tokens, reasoning_tokens, created_ms, metadata_json"
)
_FILE_COLUMNS = "id, account, filename, purpose, bytes, sha256, created_at, expires_at, lines"
_SLICE_COLUMNS = (
    "batch_id, no, start_line, n_lines, start_offset, end_offset, committed_bytes, completed,"
    " failed, done"
)
_LEASE_COLUMNS = f"{_SLICE_COLUMNS}, lease_token, lease_owner, lease_expires"
_S_LEASE_COLUMNS = ", ".join(f"s.{c}" for c in _LEASE_COLUMNS.split(", "))  # slices AS s
# Columns ``transition``/``finish`` may set besides status and timestamps, with the type
# each parameter is sent as.
_SETTABLE = {
    "output_file_id": "text", "error_file_id": "text", "model": "text", "total": "bigint",
    "completed": "bigint", "failed": "bigint", "errors": "jsonb",
}
# Unfinished batches: the condition of the partial index ``batches_unfinished``.
_UNFINISHED = (
    "status NOT IN ('hash_mismatch', 'validation_failed', 'cancelled', 'expired',"
    " 'completed', 'deleting')"
)
assert set(_UNFINISHED[15:-1].replace("'", "").split(", ")) == {*TERMINAL, Status.DELETING}

# The database's clock: Unix seconds with a fraction (``updated_at``) and whole seconds.
_NOW = "extract(epoch FROM statement_timestamp())::float8"
_NOW_S = "floor(extract(epoch FROM statement_timestamp()))::bigint"
# A batch's creation time in milliseconds (``created_ms`` may be NULL).
_CREATED_MS = "COALESCE(created_ms, created_at * 1000)"
_INT64 = (-(2**63), 2**63 - 1)


def migrations() -> list[tuple[int, str]]:
    """Every PostgreSQL migration as (version, SQL), in order."""
    folder = resources.files("barge.store") / "sql" / "postgres"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def newest_version() -> int:
    return max(v for v, _ in migrations())


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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


def _clamp(n: int) -> int:
    """A bound as a BIGINT parameter: an int beyond int64 means the same as its end."""
    return min(max(n, _INT64[0]), _INT64[1])


def _tokens(n: int) -> int:
    return min(max(n, 0), MAX_TOKENS)


def _batch(row: Any) -> BatchRecord:
    errors = [LineError(**e) for e in orjson.loads(row["errors"])] if row["errors"] else []
    metadata_json = row["metadata_json"]
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
        metadata_json=None if metadata_json is None else bool(metadata_json),
    )


def _file(row: Any) -> FileRecord:
    return FileRecord(
        id=row["id"], account=row["account"], filename=row["filename"],
        purpose=row["purpose"], bytes=row["bytes"], sha256=row["sha256"],
        created_at=row["created_at"], expires_at=row["expires_at"], lines=row["lines"],
    )


def _slice(row: Any) -> Slice:
    return Slice(
        batch_id=row["batch_id"], no=row["no"], start_line=row["start_line"],
        n_lines=row["n_lines"], start_offset=row["start_offset"],
        end_offset=row["end_offset"], committed_bytes=row["committed_bytes"],
        completed=row["completed"], failed=row["failed"], done=bool(row["done"]),
    )


def _lease(row: Any) -> Lease:
    return Lease(slice=_slice(row), token=row["lease_token"], node=row["lease_owner"],
                 expires_at=row["lease_expires"])


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, not {value!r}")


def _lease_arrays(leases: Sequence[Lease]) -> list[list[Any]]:
    """The leases as (batch ids, slice numbers, tokens), for ``unnest``."""
    return [[x.batch_id for x in leases], [x.slice_no for x in leases],
            [x.token for x in leases]]


def _role(row: Any) -> Role:
    return make_role(row["name"], orjson.loads(row["actions"]), orjson.loads(row["operations"]))


def _file_arrays(files: Sequence[FileRecord]) -> list[list[Any]]:
    """The files as one array per column, for ``unnest``."""
    return [
        [f.id for f in files], [f.account for f in files], [f.filename for f in files],
        [f.purpose for f in files], [f.bytes for f in files], [f.sha256 for f in files],
        [f.created_at for f in files], [f.expires_at for f in files],
        [f.lines for f in files],
    ]


class _Move:
    """One statement that moves a batch along ``path`` (each step checked as by
    ``transition``) and returns either the moved record (``moved`` true) or, when the
    move was not allowed, the record as it stands (``moved`` false); no row: no such
    batch. ``extra`` CTEs may follow, each seeing the CTE ``moved``. With ``fin_token``,
    the move is also fenced: only while that is the batch's finalisation token (the row
    returned carries ``fin_token`` either way)."""

    def __init__(
        self,
        path: Sequence[Status],
        only_from: Iterable[Status] | None,
        fields: dict[str, Any],
        *,
        account: str | None = None,
        fin_token: int | None = None,
    ) -> None:
        unknown = set(fields) - set(_SETTABLE)
        if unknown:
            raise ValueError(f"not settable: {sorted(unknown)}")
        self.path = list(path)
        self.only_from = None if only_from is None else set(only_from)
        allowed = {s for s in Status if can_transition(s, self.path[0])}
        if self.only_from is not None:
            allowed &= self.only_from
        if any(not can_transition(a, b) for a, b in zip(self.path, self.path[1:], strict=False)):
            allowed = set()
        self.allowed = allowed
        self.args: list[Any] = []
        batch_id = self.arg(None)  # $1, filled in by ``sql``
        sets = [f"status = {self.arg(self.path[-1].value)}", f"updated_at = {_NOW}"]
        for stamp in dict.fromkeys(STAMPS[s] for s in self.path if s in STAMPS):
            sets.append(f"{stamp} = COALESCE({stamp}, {_NOW_S})")
        for name, value in fields.items():
            if name == "errors":
                value = orjson.dumps([e.as_dict() for e in value]).decode()
            sets.append(f"{name} = {self.arg(value)}::{_SETTABLE[name]}")
        where = f"id = {batch_id}"
        if account is not None:
            where += f" AND account = {self.arg(account)} AND status <> 'deleting'"
        self.fin_token = fin_token
        fence = "" if fin_token is None else f" AND fin_token = {self.arg(fin_token)}::bigint"
        self._update = (
            f"UPDATE batches SET {', '.join(sets)}"
            f" WHERE {where} AND status = ANY({self.arg(sorted(s.value for s in allowed))}::text[])"
            f"{fence} RETURNING {_BATCH_COLUMNS}, fin_token"
        )
        self._current = f"SELECT FALSE, {_BATCH_COLUMNS}, fin_token FROM batches WHERE {where}"

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def sql(self, batch_id: str, *extra: str) -> tuple[str, list[Any]]:
        ctes = ",\n".join([f"moved AS ({self._update})", *extra])
        return (
            f"WITH {ctes}\n"
            f"SELECT TRUE AS moved, {_BATCH_COLUMNS}, fin_token FROM moved UNION ALL"
            f" {self._current} AND NOT EXISTS (SELECT 1 FROM moved)",
            [batch_id, *self.args[1:]],
        )

    def refusal(self, batch_id: str, current: Status) -> Conflict:
        """The Conflict a refused move raises: the first step that cannot be taken."""
        status = current
        for i, step in enumerate(self.path):
            refused = not can_transition(status, step) or (
                i == 0 and self.only_from is not None and current not in self.only_from
            )
            if refused:
                return Conflict(
                    f"Batch {batch_id} is {status.value}; it cannot become {step.value}.",
                    param="batch_id", code="invalid_status",
                )
            status = step
        return Conflict(f"Batch {batch_id} changed while it was being moved.",
                        param="batch_id", code="invalid_status")


class PostgresStore:
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
        """Apply every migration the database lacks, in one transaction under the
        migration lock; refuse a database newer than this code."""
        known = migrations()
        newest = known[-1][0]
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK,
                               timeout=MIGRATION_TIMEOUT)
            if self._schema is not None:
                name = quote_ident(self._schema)
                if await conn.fetchval("SELECT to_regnamespace($1) IS NULL", name):
                    await conn.execute(f"CREATE SCHEMA {name}")
                await conn.execute(f"SET LOCAL search_path TO {name}")
            if await conn.fetchval("SELECT to_regclass('barge_schema_migrations') IS NULL"):
                await conn.execute(
                    "CREATE TABLE barge_schema_migrations ("
                    " version INTEGER PRIMARY KEY,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
            current = int(await conn.fetchval(
                "SELECT COALESCE(max(version), 0) FROM barge_schema_migrations"))
            if current > newest:
                raise StoreUnavailable(
                    f"The database at {self.where} has schema version {current}, newer than"
                    f" this Barge knows (version {newest}): upgrade Barge, or point it at"
                    " another database."
                )
            applied = []
            for version, sql in known:
                if version > current:
                    await conn.execute(sql, timeout=MIGRATION_TIMEOUT)
                    await conn.execute(
                        "INSERT INTO barge_schema_migrations (version) VALUES ($1)", version)
                    applied.append(version)
        self.schema_version = max(current, newest)
        self.applied = applied

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

    async def _move(self, batch_id: str, move: _Move, *extra: str,
                    extra_args: Sequence[Any] = ()) -> tuple[bool, BatchRecord]:
        """Run ``move``; (whether it moved, the record). NotFound when no such batch;
        Fenced when the move is fenced and the batch's finalisation token is another."""
        sql, args = move.sql(batch_id, *extra)
        for _ in range(RETRIES):
            row = await self._fetchrow(sql, *args, *extra_args, read=False)
            if row is None:
                raise NotFound(f"No such batch: {batch_id}", param="batch_id")
            b = _batch(row)
            if not row["moved"] and move.fin_token is not None \
                    and row["fin_token"] != move.fin_token:
                raise Fenced(f"Batch {batch_id} is being finalised under another token.",
                             param="fin_token")
            if row["moved"] or b.status not in move.allowed:
                return bool(row["moved"]), b
            # The row read was older than the one the UPDATE found (another node moved
            # the batch in between): ask again.
        return False, b

    async def _transition(self, batch_id: str, move: _Move, *extra: str,
                          extra_args: Sequence[Any] = ()) -> BatchRecord:
        moved, b = await self._move(batch_id, move, *extra, extra_args=extra_args)
        if not moved:
            raise move.refusal(batch_id, b.status)
        return b

    # -- files ----------------------------------------------------------------

    async def create_file(self, f: FileRecord) -> None:
        await self._fetchrow(
            f"INSERT INTO files ({_FILE_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            f.id, f.account, f.filename, f.purpose, f.bytes, f.sha256, f.created_at,
            f.expires_at, f.lines, read=False,
        )

    async def get_file(self, account: str, file_id: str) -> FileRecord:
        row = await self._fetchrow(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE id=$1 AND account=$2", file_id, account
        )
        if row is None:
            raise NotFound(f"No such file: {file_id}", param="file_id")
        return _file(row)

    async def _page(
        self, table: str, columns: str, where: list[str], args: list[Any], *,
        account: str, after: str | None, ascending: bool, limit: int, param: str,
        what: str,
    ) -> tuple[list[Any], bool]:
        """One page of ``table`` in list order (``seq``), after the object ``after``
        (which may be gone: it pages on from where it stood), in one statement."""
        direction = "ASC" if ascending else "DESC"
        args = [account, *args, limit + 1]
        limit_arg = f"${len(args)}"
        if after is None:
            rows = await self._fetch(
                f"SELECT {columns} FROM {table} WHERE account = $1"
                f"{''.join(' AND ' + w for w in where)}"
                f" ORDER BY seq {direction} LIMIT {limit_arg}",
                *args,
            )
        else:
            args.append(after)
            cursor = f"${len(args)}"
            rows = await self._fetch(
                f"WITH place AS (SELECT seq FROM {table} WHERE id = {cursor} AND account = $1"
                f" UNION ALL SELECT seq FROM {table}_gone WHERE id = {cursor}"
                f" AND account = $1 LIMIT 1)"
                f" SELECT page.* FROM place LEFT JOIN LATERAL"
                f" (SELECT seq AS page_seq, {columns} FROM {table} WHERE account = $1"
                f"{''.join(' AND ' + w for w in where)}"
                f" AND seq {'>' if ascending else '<'} place.seq"
                f" ORDER BY seq {direction} LIMIT {limit_arg}) AS page ON TRUE"
                f" ORDER BY page.page_seq {direction}",
                *args,
            )
            if not rows:
                raise NotFound(f"No such {what}: {after}", param=param)
            if rows[0]["id"] is None:  # the place exists, the page is empty
                rows = []
        return rows[:limit], len(rows) > limit

    async def list_files(
        self, account: str, *, purpose: str | None, limit: int, order: str, after: str | None
    ) -> Page[FileRecord]:
        where, args = [], []
        if purpose is not None:
            where.append("purpose = $2")
            args.append(purpose)
        rows, more = await self._page(
            "files", _FILE_COLUMNS, where, args, account=account, after=after,
            ascending=order != "desc", limit=limit, param="after", what="file",
        )
        return Page([_file(r) for r in rows], more)

    async def delete_file(self, account: str, file_id: str) -> None:
        row = await self._fetchrow(
            "WITH f AS (SELECT id FROM files WHERE id = $1 AND account = $2 FOR UPDATE),"
            " busy AS (SELECT b.id FROM batches AS b JOIN f ON b.input_file_id = f.id"
            "  WHERE b.status <> ALL($3::text[]) LIMIT 1),"
            " gone AS (DELETE FROM files WHERE id IN (SELECT id FROM f)"
            "  AND NOT EXISTS (SELECT 1 FROM busy) RETURNING id)"
            " SELECT EXISTS (SELECT 1 FROM f) AS found, (SELECT id FROM busy) AS busy",
            file_id, account, sorted(s.value for s in {*TERMINAL, Status.DELETING}), read=False,
        )
        if not row["found"]:
            raise NotFound(f"No such file: {file_id}", param="file_id")
        if row["busy"] is not None:
            raise Conflict(
                f"The file is the input of batch {row['busy']}, which has not finished.",
                param="file_id",
            )

    async def expired_files(self, now: int, *, limit: int) -> list[FileRecord]:
        rows = await self._fetch(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE expires_at IS NOT NULL"
            " AND expires_at <= $1 ORDER BY expires_at, seq LIMIT $2",
            _clamp(now), limit,
        )
        return [_file(r) for r in rows]

    # -- batches --------------------------------------------------------------

    async def create_batch(self, b: BatchRecord) -> None:
        await self._fetchrow(
            "INSERT INTO batches (id, account, endpoint, completion_window, input_file_id,"
            " status, created_at, updated_at, expires_at, metadata, total,"
            " output_expiry_seconds, hash, created_ms, metadata_json)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10::json,$11,$12,$13,$14,$15)",
            b.id, b.account, b.endpoint, b.completion_window, b.input_file_id,
            b.status.value, b.created_at, b.updated_at, b.expires_at,
            orjson.dumps(b.metadata).decode() if b.metadata is not None else None,
            b.total, b.output_expiry_seconds, b.hash, b.created_ms, b.metadata_json,
            read=False,
        )

    async def get_batch(self, account: str | None, batch_id: str) -> BatchRecord:
        if account is None:
            row = await self._fetchrow(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id=$1", batch_id)
        else:
            row = await self._fetchrow(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id=$1 AND account=$2"
                " AND status <> 'deleting'", batch_id, account)
        if row is None:
            raise NotFound(f"No such batch: {batch_id}", param="batch_id")
        return _batch(row)

    async def list_batches(
        self,
        account: str,
        *,
        after: str | None,
        limit: int,
        created_after: int | None = None,
        created_before: int | None = None,
        oldest_first: bool = False,
        created_after_ms: int | None = None,
        created_before_ms: int | None = None,
    ) -> Page[BatchRecord]:
        where, args = ["status <> 'deleting'"], []
        bounds = (("created_at >=", created_after), ("created_at <=", created_before),
                  (f"{_CREATED_MS} >=", created_after_ms),
                  (f"{_CREATED_MS} <=", created_before_ms))
        for clause, bound in bounds:
            if bound is not None:
                args.append(_clamp(bound))
                where.append(f"{clause} ${len(args) + 1}")
        rows, more = await self._page(
            "batches", _BATCH_COLUMNS, where, args, account=account, after=after,
            ascending=oldest_first, limit=limit, param="after", what="batch",
        )
        return Page([_batch(r) for r in rows], more)

    async def transition(
        self, batch_id: str, to: Status, *, only_from: Iterable[Status] | None = None,
        **fields: Any,
    ) -> BatchRecord:
        return await self._transition(batch_id, _Move([to], only_from, fields))

    async def advance(self, batch_id: str, path: Sequence[Status]) -> BatchRecord:
        if not path:
            return await self.get_batch(None, batch_id)
        return await self._transition(batch_id, _Move(path, None, {}))

    async def request_cancel(self, account: str, batch_id: str) -> BatchRecord:
        move = _Move([Status.CANCEL], CANCELLABLE, {}, account=account)
        moved, b = await self._move(batch_id, move)
        if moved or b.status in (Status.CANCEL, Status.CANCELLING):
            return b
        raise Conflict(
            f"Batch {batch_id} is {b.status.value} and can no longer be cancelled.",
            param="batch_id",
            code="invalid_status",
        )

    async def start_processing(
        self, batch_id: str, *, slices: Sequence[Slice], total: int, model: str | None
    ) -> BatchRecord:
        if len({s.no for s in slices}) != len(slices):
            raise ValueError("two slices share a number")
        move = _Move([Status.PROCESSING], (Status.VALIDATING,), {"total": total, "model": model})
        n = len(move.args)
        # Slices left from an earlier start (none, by the lifecycle) give way to these.
        return await self._transition(
            batch_id, move,
            f"cleared AS (DELETE FROM slices WHERE batch_id = $1"
            f" AND EXISTS (SELECT 1 FROM moved) AND no <> ALL(${n + 1}::bigint[]))",
            f"cut AS (INSERT INTO slices (batch_id, no, start_line, n_lines, start_offset,"
            f" end_offset) SELECT $1, * FROM unnest(${n + 1}::bigint[], ${n + 2}::bigint[],"
            f" ${n + 3}::bigint[], ${n + 4}::bigint[], ${n + 5}::bigint[])"
            f" WHERE EXISTS (SELECT 1 FROM moved)"
            f" ON CONFLICT (batch_id, no) DO UPDATE SET start_line = excluded.start_line,"
            f" n_lines = excluded.n_lines, start_offset = excluded.start_offset,"
            f" end_offset = excluded.end_offset, committed_bytes = 0, completed = 0,"
            f" failed = 0, done = FALSE)",
            extra_args=[[s.no for s in slices], [s.start_line for s in slices],
                        [s.n_lines for s in slices], [s.start_offset for s in slices],
                        [s.end_offset for s in slices]],
        )

    async def fail_validation(
        self, batch_id: str, *, errors: Sequence[LineError], total: int
    ) -> BatchRecord:
        return await self.transition(batch_id, Status.VALIDATION_FAILED,
                                     only_from=(Status.VALIDATING,), total=total,
                                     errors=list(errors))

    async def list_slices(self, batch_id: str) -> list[Slice]:
        rows = await self._fetch(
            f"SELECT {_SLICE_COLUMNS} FROM slices WHERE batch_id=$1 ORDER BY no", batch_id)
        return [_slice(r) for r in rows]

    async def record_progress(self, batch_id: str, progress: Sequence[SliceProgress]) -> None:
        # One entry per slice, as if the list were applied in order: counts add up, the
        # last length and ``done`` stand.
        merged: dict[int, list[int]] = {}
        for p in progress:
            m = merged.setdefault(p.no, [0, 0, 0, 0])
            m[0] = p.committed_bytes
            m[1] += p.completed
            m[2] += p.failed
            m[3] = int(p.done)
        usage = sum((p.usage for p in progress), NO_USAGE)
        # Token sums saturate at MAX_TOKENS (far inside BIGINT): what an upstream reports
        # can never make this statement fail and wedge the batch.
        add = [_tokens(n) for n in (usage.input_tokens, usage.output_tokens,
                                     usage.cached_tokens, usage.reasoning_tokens)]
        if any(p.token is not None for p in progress):
            await self._record_fenced(batch_id, progress, merged, add)
            return
        await self._fetchrow(
            "WITH p AS (SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[],"
            "  $5::bigint[], $6::bool[]) AS p (no, committed_bytes, completed, failed, done)),"
            " s AS (UPDATE slices SET committed_bytes = p.committed_bytes,"
            "  completed = slices.completed + p.completed, failed = slices.failed + p.failed,"
            "  done = p.done FROM p WHERE slices.batch_id = $1 AND slices.no = p.no)"
            f" UPDATE batches SET completed = completed + $7, failed = failed + $8,"
            f" updated_at = {_NOW},"
            " input_tokens = LEAST(input_tokens + $9, $13),"
            " output_tokens = LEAST(output_tokens + $10, $13),"
            " cached_tokens = LEAST(cached_tokens + $11, $13),"
            " reasoning_tokens = LEAST(reasoning_tokens + $12, $13) WHERE id = $1",
            batch_id, list(merged), [m[0] for m in merged.values()],
            [m[1] for m in merged.values()], [m[2] for m in merged.values()],
            [bool(m[3]) for m in merged.values()],
            sum(p.completed for p in progress), sum(p.failed for p in progress),
            *add, MAX_TOKENS, read=False,
        )

    async def _record_fenced(
        self, batch_id: str, progress: Sequence[SliceProgress], merged: dict[int, list[int]],
        add: list[int],
    ) -> None:
        """``record_progress`` under lease tokens, in one statement: ``held`` locks the
        slices whose token is still current; only when that is every slice given a token
        (``ok``) do the slices and the batch change. A claimer that took a slice over
        first has changed its token, which the lock's re-check sees; one that comes
        after waits for this statement's commit."""
        tokens: dict[int, int] = {}
        for p in progress:
            if p.token is not None and tokens.setdefault(p.no, p.token) != p.token:
                raise Fenced(f"Slice {p.no} of batch {batch_id}: two tokens in one flush.",
                             param="token")
        row = await self._fetchrow(
            "WITH p AS (SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[],"
            "  $5::bigint[], $6::bool[], $14::bigint[])"
            "  AS p (no, committed_bytes, completed, failed, done, token)),"
            " held AS (SELECT slices.no FROM slices JOIN p ON slices.no = p.no"
            "  WHERE slices.batch_id = $1 AND slices.lease_token = p.token"
            "  FOR UPDATE OF slices),"
            " ok AS (SELECT count(*) = $15 AS ok FROM held),"
            " s AS (UPDATE slices SET committed_bytes = p.committed_bytes,"
            "  completed = slices.completed + p.completed, failed = slices.failed + p.failed,"
            "  done = p.done FROM p, ok WHERE ok.ok AND slices.batch_id = $1"
            "  AND slices.no = p.no"
            "  AND (p.token IS NULL OR slices.lease_token = p.token)),"
            " b AS (UPDATE batches SET completed = completed + $7, failed = failed + $8,"
            f" updated_at = {_NOW},"
            " input_tokens = LEAST(input_tokens + $9, $13),"
            " output_tokens = LEAST(output_tokens + $10, $13),"
            " cached_tokens = LEAST(cached_tokens + $11, $13),"
            " reasoning_tokens = LEAST(reasoning_tokens + $12, $13)"
            " WHERE id = $1 AND (SELECT ok FROM ok))"
            " SELECT ok FROM ok",
            batch_id, list(merged), [m[0] for m in merged.values()],
            [m[1] for m in merged.values()], [m[2] for m in merged.values()],
            [bool(m[3]) for m in merged.values()],
            sum(p.completed for p in progress), sum(p.failed for p in progress),
            *add, MAX_TOKENS, [tokens.get(no) for no in merged], len(tokens), read=False,
        )
        if not row["ok"]:
            raise Fenced(f"Batch {batch_id}: a lease given is no longer held under its"
                         " token; nothing was recorded.", param="token")

    async def finish(
        self, batch_id: str, to: Status, *, files: Sequence[FileRecord],
        fin_token: int | None = None, **fields: Any,
    ) -> BatchRecord:
        move = _Move([to], None, fields, fin_token=fin_token)
        if not files:
            return await self._transition(batch_id, move)
        n = len(move.args)
        casts = ("text", "text", "text", "text", "bigint", "text", "bigint", "bigint", "bigint")
        arrays = ", ".join(f"${n + i + 1}::{t}[]" for i, t in enumerate(casts))
        # A file of that id is replaced, and moves to the end of its list (SQLite's
        # INSERT OR REPLACE gives the new row a new seq too).
        return await self._transition(
            batch_id, move,
            f"published AS (INSERT INTO files ({_FILE_COLUMNS}) SELECT * FROM unnest({arrays})"
            " WHERE EXISTS (SELECT 1 FROM moved) ON CONFLICT (id) DO UPDATE SET"
            " seq = DEFAULT, account = excluded.account, filename = excluded.filename,"
            " purpose = excluded.purpose, bytes = excluded.bytes, sha256 = excluded.sha256,"
            " created_at = excluded.created_at, expires_at = excluded.expires_at,"
            " lines = excluded.lines)",
            extra_args=_file_arrays(files),
        )

    async def deleting_batches(self) -> list[BatchRecord]:
        rows = await self._fetch(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE status = 'deleting' ORDER BY seq")
        return [_batch(r) for r in rows]

    async def delete_batch(self, batch_id: str) -> None:
        row = await self._fetchrow(
            "WITH b AS (SELECT id, status, output_file_id, error_file_id FROM batches"
            "  WHERE id = $1 FOR UPDATE),"
            " dropped_files AS (DELETE FROM files WHERE id IN"
            "  (SELECT output_file_id FROM b WHERE status = 'deleting'"
            "   UNION ALL SELECT error_file_id FROM b WHERE status = 'deleting')),"
            " dropped_batch AS (DELETE FROM batches WHERE id IN"
            "  (SELECT id FROM b WHERE status = 'deleting'))"
            " SELECT status FROM b",
            batch_id, read=False,
        )
        if row is None:
            raise NotFound(f"No such batch: {batch_id}", param="batch_id")
        if row["status"] != Status.DELETING:
            raise Conflict(f"Batch {batch_id} is not being deleted.", param="batch_id")

    async def unfinished_batches(self) -> list[BatchRecord]:
        rows = await self._fetch(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE {_UNFINISHED} ORDER BY seq")
        return [_batch(r) for r in rows]

    # -- leases ---------------------------------------------------------------

    async def claim_slices(
        self, node: str, *, limit: int, lease_seconds: float
    ) -> list[Lease]:
        _positive("lease_seconds", lease_seconds)
        if limit <= 0:
            return []
        # SKIP LOCKED: a slice another claimer is taking right now is passed over, not
        # waited for; one taken over since this statement's snapshot fails the re-check
        # of its row (its lease is no longer free) and is left out.
        rows = await self._fetch(
            "WITH free AS (SELECT s.batch_id, s.no, b.seq FROM slices AS s"
            "  JOIN batches AS b ON b.id = s.batch_id"
            "  WHERE b.status = 'processing' AND NOT s.done"
            f"  AND (s.lease_expires IS NULL OR s.lease_expires <= {_NOW})"
            "  ORDER BY b.seq, s.no LIMIT $2 FOR UPDATE OF s SKIP LOCKED)"
            " UPDATE slices AS s SET lease_token = nextval('lease_tokens'), lease_owner = $1,"
            f" lease_expires = {_NOW} + $3"
            " FROM free WHERE s.batch_id = free.batch_id AND s.no = free.no"
            f" RETURNING free.seq AS batch_seq, {_S_LEASE_COLUMNS}",
            node, limit, float(lease_seconds), read=False,
        )
        rows.sort(key=lambda r: (r["batch_seq"], r["no"]))
        return [_lease(r) for r in rows]

    async def renew_leases(
        self, leases: Sequence[Lease], *, lease_seconds: float
    ) -> list[Lease]:
        _positive("lease_seconds", lease_seconds)
        if not leases:
            return []
        rows = await self._fetch(
            f"UPDATE slices AS s SET lease_expires = {_NOW} + $4"
            " FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS l (batch_id, no, token)"
            " WHERE s.batch_id = l.batch_id AND s.no = l.no AND s.lease_token = l.token"
            f" RETURNING {_S_LEASE_COLUMNS}",
            *_lease_arrays(leases), float(lease_seconds), read=False,
        )
        order = {(x.batch_id, x.slice_no): i for i, x in enumerate(leases)}
        rows.sort(key=lambda r: order[(r["batch_id"], r["no"])])
        return [_lease(r) for r in rows]

    async def release_leases(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        await self._fetch(
            "UPDATE slices AS s SET lease_token = NULL, lease_owner = NULL,"
            " lease_expires = NULL"
            " FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS l (batch_id, no, token)"
            " WHERE s.batch_id = l.batch_id AND s.no = l.no AND s.lease_token = l.token",
            *_lease_arrays(leases), read=False,
        )

    async def claim_finalize(
        self, batch_id: str, node: str, *, lease_seconds: float
    ) -> int | None:
        _positive("lease_seconds", lease_seconds)
        row = await self._fetchrow(
            "UPDATE batches SET fin_token = nextval('lease_tokens'), fin_owner = $2,"
            f" fin_expires = {_NOW} + $3"
            " WHERE id = $1 AND status = ANY($4::text[])"
            f" AND (fin_expires IS NULL OR fin_expires <= {_NOW})"
            " RETURNING fin_token",
            batch_id, node, float(lease_seconds), sorted(FINALIZING), read=False,
        )
        return None if row is None else int(row["fin_token"])

    # -- nodes ----------------------------------------------------------------

    async def heartbeat(self, node: str, *, ttl: float) -> int:
        _positive("ttl", ttl)
        # The final SELECT sees the table as it was before this statement: the other
        # nodes still alive, plus this one.
        row = await self._fetchrow(
            "WITH gone AS (DELETE FROM nodes WHERE node IN (SELECT node FROM nodes"
            f"  WHERE expires_at <= {_NOW} AND node <> $1 FOR UPDATE SKIP LOCKED)),"
            " me AS (INSERT INTO nodes (node, started_at, expires_at)"
            f"  VALUES ($1, {_NOW}, {_NOW} + $2)"
            "  ON CONFLICT (node) DO UPDATE SET expires_at = excluded.expires_at,"
            "  started_at = CASE WHEN nodes.expires_at <= excluded.started_at"
            "   THEN excluded.started_at ELSE nodes.started_at END)"
            f" SELECT 1 + count(*) AS live FROM nodes WHERE expires_at > {_NOW}"
            " AND node <> $1",
            node, float(ttl), read=False,
        )
        return int(row["live"])

    async def leave(self, node: str) -> None:
        await self._fetchrow("DELETE FROM nodes WHERE node = $1", node, read=False)

    # -- keys -----------------------------------------------------------------

    async def create_key(self, key: KeyRecord, key_hash: str) -> None:
        await self._fetchrow(
            "INSERT INTO api_keys (id, name, account, role, key_hash, created_at)"
            " VALUES ($1,$2,$3,$4,$5,$6)",
            key.id, key.name, key.account, key.role, key_hash, key.created_at, read=False,
        )

    async def principal_for(self, key_hash: str) -> Principal | None:
        row = await self._fetchrow(
            "SELECT id, account, role FROM api_keys WHERE key_hash=$1 AND revoked_at IS NULL",
            key_hash,
        )
        return None if row is None else Principal(row["account"], row["id"], row["role"])

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._fetch(
            "SELECT id, name, account, role, created_at, revoked_at FROM api_keys"
            ' ORDER BY created_at, id COLLATE "C"'
        )
        return [KeyRecord(r["id"], r["name"], r["account"], r["role"], r["created_at"],
                          r["revoked_at"]) for r in rows]

    async def revoke_key(self, key_id: str) -> None:
        row = await self._fetchrow(
            f"UPDATE api_keys SET revoked_at = {_NOW_S} WHERE id=$1 AND revoked_at IS NULL"
            " RETURNING id",
            key_id, read=False,
        )
        if row is None:
            raise NotFound(f"No such live key: {key_id}", param="key_id")

    # -- roles ----------------------------------------------------------------

    async def create_role(self, account: str, role: Role) -> None:
        row = await self._fetchrow(
            "INSERT INTO roles (account, name, actions, operations, created_at)"
            f" VALUES ($1, $2, $3::jsonb, $4::jsonb, {_NOW_S})"
            " ON CONFLICT (account, name) DO NOTHING RETURNING name",
            account, role.name, orjson.dumps(sorted(role.actions)).decode(),
            orjson.dumps(sorted(role.operations)).decode(), read=False,
        )
        if row is None:
            raise Conflict(f"A role named {role.name!r} exists.", param="name")

    async def get_role(self, account: str, name: str) -> Role | None:
        row = await self._fetchrow(
            "SELECT name, actions, operations FROM roles WHERE account=$1 AND name=$2",
            account, name,
        )
        return None if row is None else _role(row)

    async def list_roles(self, account: str | None) -> list[tuple[str, Role]]:
        if account is None:
            rows = await self._fetch(
                "SELECT account, name, actions, operations FROM roles"
                ' ORDER BY account COLLATE "C", name COLLATE "C"')
        else:
            rows = await self._fetch(
                "SELECT account, name, actions, operations FROM roles WHERE account=$1"
                ' ORDER BY name COLLATE "C"', account)
        return [(r["account"], _role(r)) for r in rows]


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
