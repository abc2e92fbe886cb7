"""SQLite-specific checks: the migrations, what they leave in a fresh file, and closing."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from barge.exceptions import StoreUnavailable
from barge.store.sqlite import SQLiteStore, migrations, split_statements

TABLES = ("files", "batches", "slices", "api_keys")
_CONSTRAINT_WORDS = {"PRIMARY", "FOREIGN", "UNIQUE", "CHECK", "CONSTRAINT"}


_TABLE_CHANGE = re.compile(
    r"CREATE TABLE\s+(?P<create>\w+)\s*\((?P<body>.*?)\n\);"
    r"|ALTER TABLE\s+(?P<alter>\w+)\s+ADD COLUMN\s+(?P<column>\w+)"
    r"|ALTER TABLE\s+(?P<old>\w+)\s+RENAME TO\s+(?P<new>\w+)"
    r"|DROP TABLE\s+(?P<drop>\w+)",
    re.S,
)


def columns_named_in_sql() -> dict[str, list[str]]:
    """Every ``CREATE TABLE``, ``ALTER TABLE … ADD COLUMN``, ``ALTER TABLE … RENAME TO``
    and ``DROP TABLE`` of every migration, applied in order, as table -> column names in
    order."""
    tables: dict[str, list[str]] = {}
    for _, sql in migrations():
        no_comments = "\n".join(
            line for line in sql.splitlines() if not line.lstrip().startswith("--")
        )
        for m in _TABLE_CHANGE.finditer(no_comments):
            if m["create"]:
                names = []
                for line in m["body"].splitlines():
                    words = line.strip().rstrip(",").split()
                    if words and words[0].upper() not in _CONSTRAINT_WORDS:
                        names.append(words[0])
                tables[m["create"]] = names
            elif m["alter"]:
                tables[m["alter"]].append(m["column"])
            elif m["old"]:
                tables[m["new"]] = tables.pop(m["old"])
            else:
                del tables[m["drop"]]
    return tables


def _open_raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    found = migrations()
    versions = [v for v, _ in found]
    assert versions, "there must be at least one migration"
    assert versions == list(range(1, len(versions) + 1))
    for _, sql in found:
        statements = split_statements(sql)
        assert statements, "a migration must change the schema"
        # Schema changes, and the data moves a rebuilt table needs (INSERT … SELECT).
        assert all(s.upper().startswith(("CREATE", "ALTER", "DROP", "INSERT"))
                   for s in statements), statements
        assert any(s.upper().startswith(("CREATE", "ALTER", "DROP"))
                   for s in statements), statements


def test_parser_finds_the_four_tables() -> None:
    tables = columns_named_in_sql()
    assert set(TABLES) <= set(tables)
    assert "committed_bytes" in tables["slices"]
    assert "key_hash" in tables["api_keys"]
    assert {"lease_token", "lease_owner", "lease_expires"} <= set(tables["slices"])
    assert {"fin_token", "fin_owner", "fin_expires"} <= set(tables["batches"])
    assert {"lease_tokens", "nodes"} <= set(tables)
    assert tables["results"] == ["batch_id", "slice_no", "idx", "ok", "line", "commit_no"]
    assert tables["result_log"] == ["batch_id", "commit_no", "slice_no", "n_ok", "n_err",
                                    "ok_bytes", "err_bytes", "part_start", "part_end",
                                    "ok_offset", "err_offset"]
    assert tables["batches"][-1] == "result_commits"
    assert tables["secrets"] == ["name", "value"]
    assert tables["account_weights"] == ["account", "weight", "updated_at",
                                         "max_in_flight", "tokens_per_minute"]


@pytest.mark.asyncio
async def test_leases_migration_keeps_existing_slices(tmp_path: Path) -> None:
    """A file at version 7 with a batch being processed: version 8 adds the lease
    columns as NULL and the token counter at 0, the slices read as before, and they can
    be claimed."""
    path = tmp_path / "barge.db"
    db = _open_raw(path)
    try:
        for version, sql in migrations():
            if version > 7:
                break
            for statement in split_statements(sql):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={version}")
        db.execute(
            "INSERT INTO batches (id, account, endpoint, completion_window, input_file_id,"
            " status, created_at, updated_at, expires_at) VALUES ('batch_old', 'acct',"
            " '/v1/chat/completions', '24h', 'file-old', 'processing', 1, 1, 9999999999)")
        db.execute(
            "INSERT INTO slices (batch_id, no, start_line, n_lines, start_offset, end_offset,"
            " committed_bytes, completed) VALUES ('batch_old', 0, 0, 2, 0, 20, 7, 1)")
        db.commit()
    finally:
        db.close()
    s = SQLiteStore(path)
    await s.open()
    try:
        (old,) = await s.list_slices("batch_old")
        assert (old.committed_bytes, old.completed, old.done) == (7, 1, False)
        db = _open_raw(path)
        try:
            row = db.execute("SELECT lease_token, lease_owner, lease_expires FROM slices")
            assert row.fetchone() == (None, None, None)
            assert db.execute("SELECT last FROM lease_tokens").fetchall() == [(0,)]
        finally:
            db.close()
        (lease,) = await s.claim_slices("n", limit=5, lease_seconds=30)
        assert (lease.slice, lease.token) == (old, 1)
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_fresh_database_has_newest_version_and_every_table(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "barge.db"  # the parent folder does not exist yet
    s = SQLiteStore(path)
    await s.open()
    await s.close()
    assert path.exists()

    highest = max(v for v, _ in migrations())
    db = _open_raw(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == highest
        present = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in TABLES:
            assert table in present, table
        for table, expected in columns_named_in_sql().items():
            got = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            assert got == expected, table
        assert db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        db.close()


@pytest.mark.asyncio
async def test_reopening_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "barge.db"
    for _ in range(3):
        s = SQLiteStore(path)
        await s.open()
        await s.close()
    db = _open_raw(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == max(v for v, _ in migrations())
        # one table per CREATE TABLE, not duplicated or rebuilt
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert sorted(set(names)) == sorted(names)
    finally:
        db.close()


@pytest.mark.asyncio
async def test_indexes_exist(tmp_path: Path) -> None:
    path = tmp_path / "barge.db"
    s = SQLiteStore(path)
    await s.open()
    await s.close()
    expected = set()
    for _, sql in migrations():
        expected |= set(re.findall(r"CREATE INDEX\s+(\w+)", sql))
    db = _open_raw(path)
    try:
        present = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        db.close()
    assert expected
    assert expected <= present


@pytest.mark.asyncio
async def test_a_closed_store_is_unavailable(tmp_path: Path) -> None:
    """After ``close`` a call is refused with StoreUnavailable (HTTP 503), as ``_call``'s
    "The store is closed." branch intends, not with an internal RuntimeError (HTTP 500)."""
    s = SQLiteStore(tmp_path / "barge.db")
    await s.open()
    await s.close()
    with pytest.raises(StoreUnavailable):
        await s.get_file("acct", "file-x")


@pytest.mark.asyncio
async def test_unfinished_batches_reads_only_the_partial_index(tmp_path: Path) -> None:
    """The engine lists unfinished batches at every poll and whenever a slot frees: the
    query must use the partial index of migration 6, not scan every finished batch."""
    from barge.store.sqlite import _BATCH_COLUMNS, _UNFINISHED

    path = tmp_path / "barge.db"
    s = SQLiteStore(path)
    await s.open()
    await s.close()
    db = _open_raw(path)
    try:
        plan = db.execute(f"EXPLAIN QUERY PLAN SELECT {_BATCH_COLUMNS} FROM batches"
                          f" WHERE {_UNFINISHED} ORDER BY seq").fetchall()
    finally:
        db.close()
    assert any("USING INDEX batches_unfinished" in str(row[-1]) for row in plan), plan
