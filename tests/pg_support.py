"""PostgreSQL for the tests: a database of its own for this run, one schema per test.

The server comes from ``BARGE_TEST_DATABASE_URL`` (default: the local one ``.ci/run``
starts). A run creates ``barge_test_<random>`` at its start and drops it at its end; each
test's stores live in a schema named after the test's ``tmp_path``, so two stores made
for one test share their data and no two tests see each other's. PostgreSQL being down
fails these tests: it is never a reason to skip them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
HOW_TO_START = (
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main "
    "start` (what .ci/run does), or point BARGE_TEST_DATABASE_URL at a PostgreSQL server "
    "whose user may create databases"
)

_database_url: str | None = None


def server_url() -> str:
    return os.environ.get("BARGE_TEST_DATABASE_URL") or DEFAULT_URL


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def schema_for(tmp_path: Path) -> str:
    """The schema of the test whose ``tmp_path`` this is: readable, at most 63 bytes, and
    the same for every store the test makes."""
    digest = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:10]
    tail = re.sub(r"[^a-z0-9_]+", "_", tmp_path.name.lower())[-40:]
    return f"t_{digest}_{tail}"


def database_url() -> str:
    """The URL of this run's database; only inside a test that uses ``pg_database``."""
    assert _database_url is not None, "request the pg_database fixture first"
    return _database_url


async def _admin(url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Create this run's database; drop it (and every schema in it) at the end."""
    global _database_url
    url = server_url()
    name = f"barge_test_{secrets.token_hex(6)}"
    problem = None
    try:
        asyncio.run(_admin(url, f"CREATE DATABASE {name}"))
    except Exception as e:
        problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        where = f"{urlsplit(url).hostname}:{urlsplit(url).port or 5432}"
        pytest.fail(f"PostgreSQL is needed for these tests and is not usable at {where}"
                    f" ({problem}); {HOW_TO_START}.", pytrace=False)
    _database_url = with_database(url, name)
    try:
        yield _database_url
    finally:
        _database_url = None
        asyncio.run(_admin(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
