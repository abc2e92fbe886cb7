"""PostgreSQL-specific checks: migrations (many nodes at once, a newer schema, ``barge db
upgrade``), the schema against SQLite's, and what a lost or refused connection becomes.
What every Store must do is in ``test_store_contract.py``."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
import pytest_asyncio
from pg_support import schema_for

from barge.domain.models import FileRecord, KeyRecord
from barge.exceptions import BargeError, Conflict, StoreUnavailable
from barge.store.postgres import PostgresStore, migrations, newest_version, quote_ident
from barge.store.sqlite import SQLiteStore

pytestmark = pytest.mark.usefixtures("pg_database")


@pytest.fixture
def schema(tmp_path: Path) -> str:
    return schema_for(tmp_path)


@pytest_asyncio.fixture
async def admin(pg_database: str, schema: str) -> AsyncIterator[Any]:
    """A plain connection to this run's database, looking at the test's schema."""
    conn = await asyncpg.connect(pg_database, server_settings={"search_path": schema})
    try:
        yield conn
    finally:
        await conn.close()


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    versions = [v for v, _ in migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert newest_version() == versions[-1]


@pytest.mark.asyncio
async def test_many_nodes_migrate_an_empty_database_at_once(
    pg_database: str, schema: str, admin: Any
) -> None:
    """Five stores open together on a schema that does not exist yet: all succeed, the
    migrations run once (under the advisory lock), one version row each."""
    stores = [PostgresStore(pg_database, schema=schema, max_size=2) for _ in range(5)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert sorted(len(s.applied) for s in stores) == [0, 0, 0, 0, len(migrations())]
        assert {s.schema_version for s in stores} == {newest_version()}
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    rows = await admin.fetch("SELECT version, count(*) AS n FROM barge_schema_migrations"
                             " GROUP BY version ORDER BY version")
    assert [(r["version"], r["n"]) for r in rows] == [(v, 1) for v, _ in migrations()]


@pytest.mark.asyncio
async def test_reopening_applies_nothing(pg_database: str, schema: str) -> None:
    for expected in ([v for v, _ in migrations()], [], []):
        s = PostgresStore(pg_database, schema=schema)
        await s.open()
        await s.close()
        assert s.applied == expected
        assert s.schema_version == newest_version()


@pytest.mark.asyncio
async def test_a_newer_schema_is_refused(pg_database: str, schema: str, admin: Any) -> None:
    s = PostgresStore(pg_database, schema=schema)
    await s.open()
    await s.close()
    newer = newest_version() + 5
    await admin.execute("INSERT INTO barge_schema_migrations (version) VALUES ($1)", newer)
    with pytest.raises(StoreUnavailable) as refused:
        await PostgresStore(pg_database, schema=schema).open()
    message = refused.value.message
    assert f"schema version {newer}" in message
    assert f"version {newest_version()}" in message
    assert "upgrade Barge" in message
    # nothing was changed by the refused open
    assert await admin.fetchval("SELECT max(version) FROM barge_schema_migrations") == newer


@pytest.mark.asyncio
async def test_schema_matches_sqlite(pg_database: str, schema: str, admin: Any,
                                     tmp_path: Path) -> None:
    """The PostgreSQL schema is SQLite's newest, table for table and column for column."""
    s = PostgresStore(pg_database, schema=schema)
    await s.open()
    await s.close()
    lite = SQLiteStore(tmp_path / "barge.db")
    await lite.open()
    await lite.close()
    db = sqlite3.connect(tmp_path / "barge.db")
    try:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        expected = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in tables}
        indexes = {r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
    finally:
        db.close()
    rows = await admin.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = $1 ORDER BY table_name, ordinal_position", schema)
    got: dict[str, list[str]] = {}
    for r in rows:
        got.setdefault(r["table_name"], []).append(r["column_name"])
    assert got.pop("barge_schema_migrations") == ["version", "applied_at"]
    # SQLite keeps the last lease token in a one-row table; PostgreSQL has a sequence of
    # that name, which every node's claims draw from.
    assert expected.pop("lease_tokens") == ["last"]
    assert await admin.fetchval(
        "SELECT count(*) FROM pg_sequences WHERE schemaname = $1"
        " AND sequencename = 'lease_tokens' AND cache_size = 1", schema) == 1
    assert got == expected
    pg_indexes = {r["indexname"] for r in await admin.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema)}
    assert indexes <= pg_indexes


@pytest.mark.asyncio
async def test_schemas_keep_stores_apart(pg_database: str, schema: str) -> None:
    a = PostgresStore(pg_database, schema=schema)
    b = PostgresStore(pg_database, schema=schema + "_b")
    await a.open()
    await b.open()
    try:
        await a.create_key(KeyRecord("key_1", "k", "acct", "admin", 1), "h1")
        assert [k.id for k in await a.list_keys()] == ["key_1"]
        assert await b.list_keys() == []
    finally:
        await a.close()
        await b.close()


def _barge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "barge.cli", *args], capture_output=True, text=True,
        timeout=60, env={**os.environ, **(env or {})}, check=False,
    )


def test_db_upgrade_is_idempotent(pg_database: str, schema: str) -> None:
    first = _barge("db", "upgrade", "--database-url", pg_database, "--schema", schema)
    assert first.returncode == 0, first.stderr
    assert f"schema version {newest_version()} (applied 0001" in first.stdout
    # again, from the environment this time: nothing left to do
    again = _barge("db", "upgrade",
                   env={"BARGE_DATABASE_URL": pg_database, "BARGE_DATABASE_SCHEMA": schema})
    assert again.returncode == 0, again.stderr
    assert f"schema version {newest_version()} (already up to date)" in again.stdout

    async def versions() -> list[int]:
        conn = await asyncpg.connect(pg_database)
        try:
            rows = await conn.fetch(
                f"SELECT version FROM {quote_ident(schema)}.barge_schema_migrations")
            return [r["version"] for r in rows]
        finally:
            await conn.close()

    assert asyncio.run(versions()) == [v for v, _ in migrations()]


def test_db_upgrade_names_an_unreachable_database() -> None:
    r = _barge("db", "upgrade", "--database-url", "postgresql://u:secret@127.0.0.1:1/x")
    assert r.returncode == 1
    assert "Cannot connect to PostgreSQL at 127.0.0.1:1/x" in r.stderr
    assert "secret" not in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.asyncio
async def test_connection_refused_is_store_unavailable() -> None:
    s = PostgresStore("postgresql://barge:hunter2@127.0.0.1:1/barge", connect_timeout=5)
    with pytest.raises(StoreUnavailable) as refused:
        await s.open()
    message = refused.value.message
    assert "Cannot connect to PostgreSQL at 127.0.0.1:1/barge" in message
    assert "connection refused" in message
    assert "hunter2" not in message
    with pytest.raises(StoreUnavailable, match="closed"):
        await s.get_file("acct", "file-x")


@pytest.mark.asyncio
async def test_an_unknown_database_is_store_unavailable(pg_database: str) -> None:
    url = pg_database.rsplit("/", 1)[0] + "/barge_no_such_database"
    with pytest.raises(StoreUnavailable, match="barge_no_such_database"):
        await PostgresStore(url).open()


@pytest.mark.asyncio
async def test_a_closed_store_is_unavailable(pg_database: str, schema: str) -> None:
    s = PostgresStore(pg_database, schema=schema)
    await s.open()
    await s.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await s.list_keys()


@pytest.mark.asyncio
async def test_a_lost_connection(pg_database: str, schema: str, admin: Any) -> None:
    """The server ends the store's session: a read is tried again on a new connection; a
    write cut off mid-statement fails with StoreUnavailable (it may or may not have
    committed, so it is not tried again) and the next one works."""
    s = PostgresStore(pg_database, schema=schema, max_size=1)
    await s.open()
    store_backend = ("FROM pg_stat_activity WHERE datname = current_database()"
                     " AND application_name = 'barge' AND pid <> pg_backend_pid()")
    kill = f"SELECT count(pg_terminate_backend(pid, 5000)) {store_backend}"
    try:
        await s.list_keys()
        assert await admin.fetchval(kill) == 1
        assert await s.list_keys() == []

        async with admin.transaction():  # hold the write up, then end its session
            await admin.execute("LOCK TABLE api_keys IN EXCLUSIVE MODE")
            write = asyncio.create_task(
                s.create_key(KeyRecord("key_1", "k", "acct", "admin", 1), "h1"))
            for _ in range(200):
                if await admin.fetchval(f"SELECT count(*) {store_backend}"
                                        " AND wait_event_type = 'Lock'"):
                    break
                await asyncio.sleep(0.01)
            assert await admin.fetchval(kill) == 1
            with pytest.raises(StoreUnavailable, match="connection to PostgreSQL"):
                await write
        await s.create_key(KeyRecord("key_2", "k", "acct", "admin", 1), "h2")
        assert [k.id for k in await s.list_keys()] == ["key_2"]
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_duplicates_are_conflicts(pg_database: str, schema: str) -> None:
    s = PostgresStore(pg_database, schema=schema)
    await s.open()
    try:
        await s.create_key(KeyRecord("key_1", "k", "acct", "admin", 1), "same")
        with pytest.raises(Conflict):
            await s.create_key(KeyRecord("key_2", "k", "acct", "admin", 1), "same")
        f = FileRecord("file-1", "acct", "a.jsonl", "batch", 1, "0" * 64, 1, None)
        await s.create_file(f)
        with pytest.raises(Conflict):
            await s.create_file(f)
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_places_of_deleted_objects_are_kept_30_days(
    pg_database: str, schema: str, admin: Any
) -> None:
    s = PostgresStore(pg_database, schema=schema)
    await s.open()
    try:
        await admin.execute("INSERT INTO files_gone VALUES ('file-old', 'acct', 1, 0)")
        f = FileRecord("file-1", "acct", "a.jsonl", "batch", 1, "0" * 64, 1, None)
        await s.create_file(f)
        await s.delete_file("acct", f.id)
        rows = await admin.fetch("SELECT id, account FROM files_gone")
        assert [(r["id"], r["account"]) for r in rows] == [("file-1", "acct")]
    finally:
        await s.close()


def test_a_bad_schema_name_is_refused() -> None:
    with pytest.raises(BargeError, match="schema"):
        PostgresStore("postgresql://127.0.0.1/x", schema="s" * 64)


@pytest.mark.asyncio
async def test_leases_migration_keeps_existing_slices(
    pg_database: str, schema: str, admin: Any
) -> None:
    """A database at version 1 with a batch being processed: version 2 adds the lease
    columns as NULL, the slices read as before, and they can be claimed."""
    (first_version, first_sql), *_ = migrations()
    await admin.execute(f"CREATE SCHEMA {quote_ident(schema)}")
    async with admin.transaction():
        await admin.execute(first_sql)
        await admin.execute(
            "CREATE TABLE barge_schema_migrations (version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        await admin.execute("INSERT INTO barge_schema_migrations (version) VALUES ($1)",
                            first_version)
        await admin.execute(
            "INSERT INTO batches (id, account, endpoint, completion_window, input_file_id,"
            " status, created_at, updated_at, expires_at) VALUES ('batch_old', 'acct',"
            " '/v1/chat/completions', '24h', 'file-old', 'processing', 1, 1, 9999999999)")
        await admin.execute(
            "INSERT INTO slices (batch_id, no, start_line, n_lines, start_offset, end_offset,"
            " committed_bytes, completed) VALUES ('batch_old', 0, 0, 2, 0, 20, 7, 1)")
    s = PostgresStore(pg_database, schema=schema)
    await s.open()
    try:
        assert s.applied == [v for v, _ in migrations()][1:]
        (old,) = await s.list_slices("batch_old")
        assert (old.committed_bytes, old.completed, old.done) == (7, 1, False)
        row = await admin.fetchrow("SELECT lease_token, lease_owner, lease_expires"
                                   " FROM slices")
        assert tuple(row) == (None, None, None)
        (lease,) = await s.claim_slices("n", limit=5, lease_seconds=30)
        assert lease.slice == old
    finally:
        await s.close()
