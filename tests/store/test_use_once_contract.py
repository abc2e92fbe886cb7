"""The Store contract, continued: ``use_once``, names that may be used once (an upload
link, the making of the first admin key) across every node sharing the data. Every store
of ``STORE_FACTORIES`` (test_store_contract.py) runs it, with that module's fixtures
(through conftest.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from pg_support import database_url, schema_for

from barge.store.postgres import PostgresStore
from barge.store.protocol import USE_ONCE_SLACK, Store
from barge.store.sqlite import SQLiteStore

FAR = 2**40  # an expiry no test reaches (Unix seconds)
LONG_AGO = 1  # an expiry far more than USE_ONCE_SLACK past


class TestUseOnce:
    @pytest.mark.asyncio
    async def test_the_first_use_wins_and_every_later_one_loses(
        self, store: Store, second: Store
    ) -> None:
        assert await store.use_once("upload:file-a", expires_at=FAR) is True
        assert await store.use_once("upload:file-a", expires_at=FAR) is False
        assert await second.use_once("upload:file-a", expires_at=FAR) is False
        # Another key is another use; a longer expiry given later changes nothing.
        assert await second.use_once("upload:file-b", expires_at=FAR) is True
        assert await store.use_once("upload:file-b", expires_at=FAR + 1) is False

    @pytest.mark.asyncio
    async def test_a_use_outlasts_a_restart(self, make_store: Callable[[], Store]) -> None:
        first = make_store()
        await first.open()
        try:
            assert await first.use_once("first-admin-key", expires_at=FAR) is True
        finally:
            await first.close()
        again = make_store()
        await again.open()
        try:
            assert await again.use_once("first-admin-key", expires_at=FAR) is False
        finally:
            await again.close()

    @pytest.mark.asyncio
    async def test_concurrent_callers_on_two_stores_make_exactly_one_winner(
        self, store: Store, second: Store
    ) -> None:
        for round_ in range(5):
            key = f"race-{round_}"
            got = await asyncio.gather(*(
                s.use_once(key, expires_at=FAR)
                for _ in range(8) for s in (store, second)
            ))
            assert got.count(True) == 1, got
            assert await second.use_once(key, expires_at=FAR) is False

    @pytest.mark.asyncio
    async def test_an_unexpired_use_is_kept_through_the_slack(
        self, store: Store, second: Store
    ) -> None:
        """Within USE_ONCE_SLACK past its expiry a use still counts: a node whose clock
        lags the store's finds it."""
        just_past = int(time.time()) - USE_ONCE_SLACK // 2
        assert await store.use_once("lagging", expires_at=just_past) is True
        assert await store.use_once("other", expires_at=FAR) is True  # purges what it may
        assert await second.use_once("lagging", expires_at=just_past) is False

    @pytest.mark.asyncio
    async def test_a_use_long_expired_counts_as_unused_again(
        self, store: Store, second: Store
    ) -> None:
        assert await store.use_once("old", expires_at=LONG_AGO) is True
        # On its own key: the row is past its time, so the key is free again, once.
        got = await asyncio.gather(*(s.use_once("old", expires_at=FAR)
                                     for _ in range(4) for s in (store, second)))
        assert got.count(True) == 1, got
        assert await store.use_once("old", expires_at=FAR) is False

    @pytest.mark.asyncio
    async def test_later_calls_purge_long_expired_rows(
        self, store: Store, second: Store, tmp_path: Path
    ) -> None:
        for i in range(20):
            assert await store.use_once(f"gone-{i}", expires_at=LONG_AGO) is True
        assert await store.use_once("kept", expires_at=int(time.time())) is True
        assert await second.use_once("trigger", expires_at=FAR) is True  # purges them
        assert sorted(await _names(store, tmp_path)) == ["kept", "trigger"]
        # Each of them is unused again; the fresh ones stay used.
        for i in range(20):
            assert await second.use_once(f"gone-{i}", expires_at=FAR) is True
        assert await store.use_once("trigger", expires_at=FAR) is False
        assert await store.use_once("kept", expires_at=FAR) is False


async def _names(store: Store, tmp_path: Path) -> list[str]:
    """The names the store keeps a row for, read behind its back."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(tmp_path / "barge.db") as db:
            return [r[0] for r in db.execute("SELECT name FROM used_once")]
    assert isinstance(store, PostgresStore)
    conn = await asyncpg.connect(database_url(),
                                 server_settings={"search_path": schema_for(tmp_path)})
    try:
        return [r["name"] for r in await conn.fetch("SELECT name FROM used_once")]
    finally:
        await conn.close()
