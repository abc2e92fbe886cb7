"""The PostgreSQL schema's migrations: the SQL files in order, and applying those a
database lacks, safely when many nodes start at once."""

from __future__ import annotations

from importlib import resources
from typing import Any

from barge.exceptions import StoreUnavailable

# The key of the transaction-scoped advisory lock every migration runs under ("barge_db"
# in ASCII): nodes starting together on an empty database migrate one after another, and
# the later ones find the schema already current.
MIGRATION_LOCK = 0x62617267655F6462
MIGRATION_TIMEOUT = 600.0  # seconds a migration (lock wait included) may take


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


async def migrate(conn: Any, schema: str | None, where: str) -> tuple[int, list[int]]:
    """Apply every migration the database lacks, in one transaction under the
    migration lock; refuse a database newer than this code. Returns the schema version
    and the migrations applied."""
    known = migrations()
    newest = known[-1][0]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK,
                           timeout=MIGRATION_TIMEOUT)
        if schema is not None:
            name = quote_ident(schema)
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
                f"The database at {where} has schema version {current}, newer than"
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
    return max(current, newest), applied
