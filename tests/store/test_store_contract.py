"""The Store contract: what every implementation of ``barge.store.protocol.Store`` must do.

The suite talks to the protocol only. To run it against another implementation, add one entry
to ``STORE_FACTORIES``: a callable taking the test's ``tmp_path`` and returning an unopened
store. Calling the factory twice with the same ``tmp_path`` must give two stores on the same
data (the durability tests rely on it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pg_support import database_url, schema_for

from barge.domain.models import BatchRecord, FileRecord, KeyRecord, LineError, Principal, Slice
from barge.domain.status import Status
from barge.domain.usage import Usage
from barge.exceptions import Conflict, Fenced, NotFound
from barge.store.postgres import PostgresStore
from barge.store.protocol import Lease, Page, SliceProgress, Store
from barge.store.sqlite import SQLiteStore

S = Status

STORE_FACTORIES: dict[str, Callable[[Path], Store]] = {
    "sqlite": lambda tmp_path: SQLiteStore(tmp_path / "barge.db"),
    # One schema per test in this run's database (the pg_database fixture).
    "postgres": lambda tmp_path: PostgresStore(
        database_url(), schema=schema_for(tmp_path), max_size=4
    ),
}
# Factories that need a fixture first (a server, a database): its name.
NEEDS: dict[str, str] = {"postgres": "pg_database"}


@pytest.fixture(params=sorted(STORE_FACTORIES))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """A factory of unopened stores that all share this test's data."""
    if request.param in NEEDS:
        request.getfixturevalue(NEEDS[request.param])
    return functools.partial(STORE_FACTORIES[request.param], tmp_path)


@pytest_asyncio.fixture
async def store(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# -- helpers -------------------------------------------------------------------------------

T0 = 1_700_000_000
ACCT = "acct-a"
OTHER = "acct-b"
_counter = 0


def _next() -> int:
    global _counter
    _counter += 1
    return _counter


def new_file(account: str = ACCT, *, purpose: str = "batch", **changes: Any) -> FileRecord:
    n = _next()
    fields: dict[str, Any] = {
        "id": f"file-{n:024x}",
        "account": account,
        "filename": f"input-{n}.jsonl",
        "purpose": purpose,
        "bytes": 100 + n,
        "sha256": f"{n:064x}",
        "created_at": T0 + n,
        "expires_at": T0 + n + 30 * 86400,
        "lines": n % 7,
    }
    fields.update(changes)
    return FileRecord(**fields)


def new_batch(
    account: str = ACCT, *, input_file_id: str | None = None, **changes: Any
) -> BatchRecord:
    n = _next()
    return BatchRecord(
        id=f"batch_{n:024x}",
        account=account,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        input_file_id=input_file_id or f"file-{n:024x}",
        status=S.NEW,
        created_at=T0 + n,
        updated_at=T0 + n + 0.25,
        expires_at=T0 + n + 86400,
    ).replace(**changes)


# How to walk a new batch to each status, one allowed move at a time.
_TO_VALIDATING = [S.COPYING, S.COPIED, S.VALIDATING]
PATHS: dict[Status, list[Status]] = {
    S.NEW: [],
    S.COPYING: [S.COPYING],
    S.COPIED: [S.COPYING, S.COPIED],
    S.HASH_MISMATCH: [S.COPYING, S.HASH_MISMATCH],
    S.VALIDATING: _TO_VALIDATING,
    S.VALIDATION_FAILED: [*_TO_VALIDATING, S.VALIDATION_FAILED],
    S.PROCESSING: [*_TO_VALIDATING, S.PROCESSING],
    S.PROCESSED: [*_TO_VALIDATING, S.PROCESSING, S.PROCESSED],
    S.WRITING_RESULTS: [*_TO_VALIDATING, S.PROCESSING, S.PROCESSED, S.WRITING_RESULTS],
    S.COMPLETED: [*_TO_VALIDATING, S.PROCESSING, S.PROCESSED, S.WRITING_RESULTS, S.COMPLETED],
    S.CANCEL: [S.CANCEL],
    S.CANCELLING: [S.CANCEL, S.CANCELLING],
    S.CANCELLED: [S.CANCEL, S.CANCELLING, S.CANCELLED],
    S.EXPIRED: [S.EXPIRED],
    S.DELETING: [S.EXPIRED, S.DELETING],
}
assert set(PATHS) == set(Status)

TERMINAL = [S.HASH_MISMATCH, S.VALIDATION_FAILED, S.CANCELLED, S.EXPIRED, S.COMPLETED]
UNFINISHED = [s for s in Status if s not in TERMINAL and s is not S.DELETING]
CANCELLABLE = [S.NEW, S.COPYING, S.COPIED, S.VALIDATING, S.PROCESSING]

# Every allowed move (the lifecycle table, written out independently of the code).
ALLOWED: set[tuple[Status, Status]] = {
    (S.NEW, S.COPYING), (S.NEW, S.CANCEL), (S.NEW, S.EXPIRED),
    (S.COPYING, S.COPIED), (S.COPYING, S.HASH_MISMATCH), (S.COPYING, S.CANCEL),
    (S.COPYING, S.EXPIRED),
    (S.COPIED, S.VALIDATING), (S.COPIED, S.CANCEL), (S.COPIED, S.EXPIRED),
    (S.VALIDATING, S.PROCESSING), (S.VALIDATING, S.VALIDATION_FAILED),
    (S.VALIDATING, S.CANCEL), (S.VALIDATING, S.EXPIRED),
    (S.PROCESSING, S.PROCESSED), (S.PROCESSING, S.CANCEL), (S.PROCESSING, S.EXPIRED),
    (S.PROCESSED, S.WRITING_RESULTS),
    (S.WRITING_RESULTS, S.COMPLETED),
    (S.CANCEL, S.CANCELLING),
    (S.CANCELLING, S.CANCELLED),
    *((t, S.DELETING) for t in TERMINAL),
}

STAMP_FIELDS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


async def walk(store: Store, batch_id: str, target: Status) -> BatchRecord:
    b = await store.get_batch(None, batch_id)
    for step in PATHS[target]:
        b = await store.transition(batch_id, step)
    assert b.status is target
    return b


async def batch_in(store: Store, status: Status, account: str = ACCT, **changes: Any) -> str:
    b = new_batch(account, **changes)
    await store.create_batch(b)
    await walk(store, b.id, status)
    return b.id


def slices_for(batch_id: str, sizes: list[int]) -> list[Slice]:
    out, line, offset = [], 0, 0
    for no, n in enumerate(sizes):
        out.append(Slice(batch_id, no, line, n, offset, offset + 100 * n))
        line += n
        offset += 100 * n
    return out


async def all_files(store: Store, account: str, **kw: Any) -> list[str]:
    page: Page[FileRecord] = await store.list_files(
        account, purpose=kw.get("purpose"), limit=kw.get("limit", 100),
        order=kw.get("order", "asc"), after=kw.get("after"),
    )
    return [f.id for f in page.items]


# -- files ---------------------------------------------------------------------------------


class TestFiles:
    @pytest.mark.asyncio
    async def test_create_and_get(self, store: Store) -> None:
        f = new_file()
        await store.create_file(f)
        assert await store.get_file(ACCT, f.id) == f

    @pytest.mark.asyncio
    async def test_round_trips_null_expiry_and_zero_lines(self, store: Store) -> None:
        f = new_file(expires_at=None, lines=0, filename="naïve name (1).jsonl")
        await store.create_file(f)
        assert await store.get_file(ACCT, f.id) == f

    @pytest.mark.asyncio
    async def test_get_unknown_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.get_file(ACCT, "file-nope")

    @pytest.mark.asyncio
    async def test_get_another_accounts_file_is_not_found(self, store: Store) -> None:
        f = new_file(OTHER)
        await store.create_file(f)
        with pytest.raises(NotFound):
            await store.get_file(ACCT, f.id)
        assert await store.get_file(OTHER, f.id) == f

    @pytest.mark.asyncio
    async def test_list_order_asc_and_desc(self, store: Store) -> None:
        files = [new_file() for _ in range(5)]
        for f in files:
            await store.create_file(f)
        ids = [f.id for f in files]
        asc = await store.list_files(ACCT, purpose=None, limit=100, order="asc", after=None)
        assert [f.id for f in asc.items] == ids
        assert asc.items == files
        assert asc.has_more is False
        desc = await store.list_files(ACCT, purpose=None, limit=100, order="desc", after=None)
        assert [f.id for f in desc.items] == ids[::-1]
        assert desc.has_more is False

    @pytest.mark.asyncio
    async def test_list_empty(self, store: Store) -> None:
        page = await store.list_files(ACCT, purpose=None, limit=10, order="desc", after=None)
        assert page.items == []
        assert page.has_more is False

    @pytest.mark.asyncio
    async def test_list_purpose_filter(self, store: Store) -> None:
        a = new_file(purpose="batch")
        b = new_file(purpose="batch_output")
        c = new_file(purpose="batch")
        d = new_file(purpose="user_data")
        for f in (a, b, c, d):
            await store.create_file(f)
        assert await all_files(store, ACCT, purpose="batch") == [a.id, c.id]
        assert await all_files(store, ACCT, purpose="batch_output") == [b.id]
        assert await all_files(store, ACCT, purpose="vision") == []
        assert await all_files(store, ACCT) == [a.id, b.id, c.id, d.id]

    @pytest.mark.asyncio
    async def test_list_after_cursor(self, store: Store) -> None:
        files = [new_file() for _ in range(5)]
        for f in files:
            await store.create_file(f)
        ids = [f.id for f in files]
        assert await all_files(store, ACCT, order="asc", after=ids[1]) == ids[2:]
        assert await all_files(store, ACCT, order="desc", after=ids[3]) == ids[:3][::-1]
        assert await all_files(store, ACCT, order="asc", after=ids[-1]) == []
        assert await all_files(store, ACCT, order="desc", after=ids[0]) == []

    @pytest.mark.asyncio
    async def test_list_after_with_purpose(self, store: Store) -> None:
        a = new_file(purpose="batch")
        b = new_file(purpose="batch_output")
        c = new_file(purpose="batch")
        for f in (a, b, c):
            await store.create_file(f)
        # the cursor may be a file of another purpose; it only fixes the position
        assert await all_files(store, ACCT, purpose="batch", after=b.id) == [c.id]

    @pytest.mark.asyncio
    async def test_list_limit_and_has_more(self, store: Store) -> None:
        files = [new_file() for _ in range(5)]
        for f in files:
            await store.create_file(f)
        ids = [f.id for f in files]
        for order, expected in (("asc", ids), ("desc", ids[::-1])):
            page = await store.list_files(ACCT, purpose=None, limit=2, order=order, after=None)
            assert [f.id for f in page.items] == expected[:2]
            assert page.has_more is True
            exact = await store.list_files(ACCT, purpose=None, limit=5, order=order, after=None)
            assert [f.id for f in exact.items] == expected
            assert exact.has_more is False
            one = await store.list_files(ACCT, purpose=None, limit=1, order=order, after=None)
            assert [f.id for f in one.items] == expected[:1]
            assert one.has_more is True

    @pytest.mark.asyncio
    @pytest.mark.parametrize("order", ["asc", "desc"])
    async def test_paging_sees_every_file_once(self, store: Store, order: str) -> None:
        files = [new_file() for _ in range(7)]
        for f in files:
            await store.create_file(f)
        seen: list[str] = []
        after = None
        pages = 0
        while True:
            page = await store.list_files(ACCT, purpose=None, limit=3, order=order, after=after)
            pages += 1
            seen += [f.id for f in page.items]
            if not page.has_more:
                break
            after = page.items[-1].id
        ids = [f.id for f in files]
        assert seen == (ids if order == "asc" else ids[::-1])
        assert pages == 3

    @pytest.mark.asyncio
    async def test_list_is_per_account(self, store: Store) -> None:
        mine = new_file(ACCT)
        theirs = new_file(OTHER)
        await store.create_file(mine)
        await store.create_file(theirs)
        assert await all_files(store, ACCT) == [mine.id]
        assert await all_files(store, OTHER) == [theirs.id]
        assert await all_files(store, "nobody") == []

    @pytest.mark.asyncio
    async def test_list_after_another_accounts_file_is_not_found(self, store: Store) -> None:
        mine = new_file(ACCT)
        theirs = new_file(OTHER)
        await store.create_file(mine)
        await store.create_file(theirs)
        with pytest.raises(NotFound):
            await store.list_files(ACCT, purpose=None, limit=10, order="asc", after=theirs.id)

    @pytest.mark.asyncio
    async def test_delete(self, store: Store) -> None:
        f = new_file()
        keep = new_file()
        await store.create_file(f)
        await store.create_file(keep)
        await store.delete_file(ACCT, f.id)
        with pytest.raises(NotFound):
            await store.get_file(ACCT, f.id)
        assert await all_files(store, ACCT) == [keep.id]
        with pytest.raises(NotFound):
            await store.delete_file(ACCT, f.id)

    @pytest.mark.asyncio
    async def test_delete_unknown_and_foreign_are_not_found(self, store: Store) -> None:
        theirs = new_file(OTHER)
        await store.create_file(theirs)
        with pytest.raises(NotFound):
            await store.delete_file(ACCT, "file-nope")
        with pytest.raises(NotFound):
            await store.delete_file(ACCT, theirs.id)
        assert await store.get_file(OTHER, theirs.id) == theirs

    @pytest.mark.asyncio
    @pytest.mark.parametrize("status", UNFINISHED, ids=str)
    async def test_delete_conflicts_while_an_unfinished_batch_reads_it(
        self, store: Store, status: Status
    ) -> None:
        f = new_file()
        await store.create_file(f)
        await batch_in(store, status, input_file_id=f.id)
        with pytest.raises(Conflict):
            await store.delete_file(ACCT, f.id)
        assert await store.get_file(ACCT, f.id) == f

    @pytest.mark.asyncio
    @pytest.mark.parametrize("status", TERMINAL, ids=str)
    async def test_delete_allowed_once_the_batch_is_terminal(
        self, store: Store, status: Status
    ) -> None:
        f = new_file()
        await store.create_file(f)
        await batch_in(store, status, input_file_id=f.id)
        await store.delete_file(ACCT, f.id)
        with pytest.raises(NotFound):
            await store.get_file(ACCT, f.id)

    @pytest.mark.asyncio
    async def test_delete_allowed_after_the_batch_finishes(self, store: Store) -> None:
        f = new_file()
        await store.create_file(f)
        bid = await batch_in(store, S.WRITING_RESULTS, input_file_id=f.id)
        with pytest.raises(Conflict):
            await store.delete_file(ACCT, f.id)
        await store.transition(bid, S.COMPLETED)
        await store.delete_file(ACCT, f.id)
        with pytest.raises(NotFound):
            await store.get_file(ACCT, f.id)


# -- batches -------------------------------------------------------------------------------


class TestBatches:
    @pytest.mark.asyncio
    async def test_create_and_get(self, store: Store) -> None:
        b = new_batch(metadata={"project": "x", "note": "ü"})
        await store.create_batch(b)
        assert await store.get_batch(ACCT, b.id) == b
        assert await store.get_batch(None, b.id) == b

    @pytest.mark.asyncio
    async def test_create_and_get_defaults(self, store: Store) -> None:
        b = new_batch()
        await store.create_batch(b)
        got = await store.get_batch(ACCT, b.id)
        assert got == b
        assert got.metadata is None
        assert got.model is None
        assert got.errors == []
        assert (got.total, got.completed, got.failed) == (0, 0, 0)
        for name in STAMP_FIELDS:
            assert getattr(got, name) is None, name
        assert got.output_file_id is None
        assert got.error_file_id is None

    @pytest.mark.asyncio
    async def test_empty_metadata_is_not_null(self, store: Store) -> None:
        b = new_batch(metadata={})
        await store.create_batch(b)
        assert (await store.get_batch(ACCT, b.id)).metadata == {}

    @pytest.mark.asyncio
    async def test_get_unknown_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.get_batch(ACCT, "batch_nope")
        with pytest.raises(NotFound):
            await store.get_batch(None, "batch_nope")

    @pytest.mark.asyncio
    async def test_get_another_accounts_batch_is_not_found(self, store: Store) -> None:
        b = new_batch(OTHER)
        await store.create_batch(b)
        with pytest.raises(NotFound):
            await store.get_batch(ACCT, b.id)
        assert (await store.get_batch(OTHER, b.id)).id == b.id
        assert (await store.get_batch(None, b.id)).id == b.id  # the engine sees everything

    @pytest.mark.asyncio
    async def test_list_newest_first(self, store: Store) -> None:
        batches = [new_batch() for _ in range(4)]
        for b in batches:
            await store.create_batch(b)
        page = await store.list_batches(ACCT, after=None, limit=20)
        assert [b.id for b in page.items] == [b.id for b in batches][::-1]
        assert page.items == batches[::-1]
        assert page.has_more is False

    @pytest.mark.asyncio
    async def test_list_empty(self, store: Store) -> None:
        page = await store.list_batches(ACCT, after=None, limit=20)
        assert page.items == []
        assert page.has_more is False

    @pytest.mark.asyncio
    async def test_list_after_limit_has_more(self, store: Store) -> None:
        batches = [new_batch() for _ in range(5)]
        for b in batches:
            await store.create_batch(b)
        newest_first = [b.id for b in batches][::-1]
        page = await store.list_batches(ACCT, after=None, limit=2)
        assert [b.id for b in page.items] == newest_first[:2]
        assert page.has_more is True
        page = await store.list_batches(ACCT, after=newest_first[1], limit=2)
        assert [b.id for b in page.items] == newest_first[2:4]
        assert page.has_more is True
        page = await store.list_batches(ACCT, after=newest_first[3], limit=2)
        assert [b.id for b in page.items] == newest_first[4:]
        assert page.has_more is False
        page = await store.list_batches(ACCT, after=None, limit=5)
        assert len(page.items) == 5
        assert page.has_more is False
        page = await store.list_batches(ACCT, after=newest_first[-1], limit=5)
        assert page.items == []
        assert page.has_more is False

    @pytest.mark.asyncio
    @pytest.mark.parametrize("limit", [1, 2, 3, 7, 8, 100])
    async def test_paging_sees_every_batch_once(self, store: Store, limit: int) -> None:
        batches = [new_batch() for _ in range(7)]
        for b in batches:
            await store.create_batch(b)
        # another account's batches are interleaved and must never show up
        for _ in range(3):
            await store.create_batch(new_batch(OTHER))
        seen: list[str] = []
        after = None
        for _ in range(20):
            page = await store.list_batches(ACCT, after=after, limit=limit)
            assert len(page.items) <= limit
            seen += [b.id for b in page.items]
            if not page.has_more:
                break
            after = page.items[-1].id
        assert seen == [b.id for b in batches][::-1]

    @pytest.mark.asyncio
    async def test_list_is_per_account(self, store: Store) -> None:
        mine = new_batch(ACCT)
        theirs = new_batch(OTHER)
        await store.create_batch(mine)
        await store.create_batch(theirs)
        assert [b.id for b in (await store.list_batches(ACCT, after=None, limit=20)).items] == [
            mine.id
        ]
        assert [b.id for b in (await store.list_batches(OTHER, after=None, limit=20)).items] == [
            theirs.id
        ]

    @pytest.mark.asyncio
    async def test_list_after_unknown_or_foreign_is_not_found(self, store: Store) -> None:
        theirs = new_batch(OTHER)
        await store.create_batch(theirs)
        with pytest.raises(NotFound):
            await store.list_batches(ACCT, after="batch_nope", limit=20)
        with pytest.raises(NotFound):
            await store.list_batches(ACCT, after=theirs.id, limit=20)

    @pytest.mark.asyncio
    async def test_deleting_batches_are_hidden_from_clients(self, store: Store) -> None:
        keep = await batch_in(store, S.NEW)
        gone = await batch_in(store, S.DELETING)
        with pytest.raises(NotFound):
            await store.get_batch(ACCT, gone)
        page = await store.list_batches(ACCT, after=None, limit=20)
        assert [b.id for b in page.items] == [keep]
        assert (await store.get_batch(None, gone)).status is S.DELETING
        with pytest.raises(NotFound):
            await store.request_cancel(ACCT, gone)


# -- the lifecycle -------------------------------------------------------------------------


class TestTransition:
    @pytest.mark.asyncio
    async def test_every_move_from_every_status(self, store: Store) -> None:
        """All 15 x 15 moves: allowed exactly when in the lifecycle table; a refused move
        leaves the batch as it was."""
        for current in Status:
            for target in Status:
                bid = await batch_in(store, current)
                before = await store.get_batch(None, bid)
                if (current, target) in ALLOWED:
                    after = await store.transition(bid, target)
                    assert after.status is target, (current, target)
                    assert (await store.get_batch(None, bid)).status is target
                else:
                    with pytest.raises(Conflict):
                        await store.transition(bid, target)
                    assert await store.get_batch(None, bid) == before, (current, target)

    @pytest.mark.asyncio
    async def test_unknown_batch_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.transition("batch_nope", S.COPYING)

    @pytest.mark.asyncio
    async def test_returns_the_new_record(self, store: Store) -> None:
        bid = await batch_in(store, S.NEW)
        b = await store.transition(bid, S.COPYING)
        assert b == await store.get_batch(None, bid)
        assert b.status is S.COPYING

    @pytest.mark.asyncio
    async def test_only_from_is_respected(self, store: Store) -> None:
        bid = await batch_in(store, S.COPIED)
        # an allowed move, but the batch is not in one of the given statuses
        with pytest.raises(Conflict):
            await store.transition(bid, S.CANCEL, only_from=[S.PROCESSING, S.VALIDATING])
        assert (await store.get_batch(None, bid)).status is S.COPIED
        b = await store.transition(bid, S.VALIDATING, only_from=[S.COPIED])
        assert b.status is S.VALIDATING
        b = await store.transition(bid, S.CANCEL, only_from=iter([S.VALIDATING, S.NEW]))
        assert b.status is S.CANCEL

    @pytest.mark.asyncio
    async def test_only_from_does_not_widen_the_lifecycle(self, store: Store) -> None:
        bid = await batch_in(store, S.NEW)
        with pytest.raises(Conflict):
            await store.transition(bid, S.COMPLETED, only_from=[S.NEW])
        assert (await store.get_batch(None, bid)).status is S.NEW

    @pytest.mark.asyncio
    async def test_sets_fields(self, store: Store) -> None:
        bid = await batch_in(store, S.WRITING_RESULTS)
        b = await store.transition(
            bid, S.COMPLETED, output_file_id="file-out", error_file_id="file-err",
            completed=5, failed=2, total=7,
        )
        assert (b.output_file_id, b.error_file_id) == ("file-out", "file-err")
        assert (b.total, b.completed, b.failed) == (7, 5, 2)
        assert await store.get_batch(ACCT, bid) == b

    @pytest.mark.asyncio
    async def test_updated_at_moves_forward(self, store: Store) -> None:
        bid = await batch_in(store, S.NEW)
        before = (await store.get_batch(None, bid)).updated_at
        after = (await store.transition(bid, S.COPYING)).updated_at
        assert isinstance(after, float)
        assert after > before

    @pytest.mark.asyncio
    async def test_each_status_stamps_its_timestamp(self, store: Store) -> None:
        expected = {
            S.PROCESSING: {"in_progress_at"},
            S.PROCESSED: {"in_progress_at", "finalizing_at"},
            S.COMPLETED: {"in_progress_at", "finalizing_at", "completed_at"},
            S.HASH_MISMATCH: {"failed_at"},
            S.VALIDATION_FAILED: {"failed_at"},
            S.EXPIRED: {"expired_at"},
            S.CANCEL: {"cancelling_at"},
            S.CANCELLED: {"cancelling_at", "cancelled_at"},
            S.NEW: set(),
            S.VALIDATING: set(),
        }
        for status, stamped in expected.items():
            bid = await batch_in(store, status)
            b = await store.get_batch(None, bid)
            for name in STAMP_FIELDS:
                value = getattr(b, name)
                if name in stamped:
                    assert isinstance(value, int), (status, name)
                    assert abs(value - b.updated_at) < 5, (status, name)
                else:
                    assert value is None, (status, name)

    @pytest.mark.asyncio
    async def test_timestamps_are_stamped_once(self, store: Store) -> None:
        """A timestamp is set when the batch first enters its status and never moves after,
        even when a later status maps to the same field."""
        done = await batch_in(store, S.PROCESSING)
        cancelled = await batch_in(store, S.CANCEL)
        b = await store.get_batch(None, done)
        c = await store.get_batch(None, cancelled)
        in_progress_at, cancelling_at = b.in_progress_at, c.cancelling_at
        assert in_progress_at is not None
        assert cancelling_at is not None

        await asyncio.sleep(1.05)  # timestamps are whole seconds
        b = await store.transition(done, S.PROCESSED)
        c = await store.transition(cancelled, S.CANCELLING)
        assert b.in_progress_at == in_progress_at
        assert c.cancelling_at == cancelling_at
        finalizing_at = b.finalizing_at
        assert finalizing_at is not None
        assert finalizing_at > in_progress_at

        await asyncio.sleep(1.05)
        b = await store.transition(done, S.WRITING_RESULTS)
        assert b.finalizing_at == finalizing_at
        b = await store.transition(done, S.COMPLETED)
        c = await store.transition(cancelled, S.CANCELLED)
        assert b.in_progress_at == in_progress_at
        assert b.finalizing_at == finalizing_at
        assert b.completed_at is not None
        assert b.completed_at > finalizing_at
        assert c.cancelling_at == cancelling_at
        assert c.cancelled_at is not None
        assert c.cancelled_at > cancelling_at
        assert b.failed_at is None
        assert b.cancelled_at is None
        assert c.completed_at is None
        assert await store.get_batch(ACCT, done) == b
        assert await store.get_batch(ACCT, cancelled) == c


class TestRequestCancel:
    @pytest.mark.asyncio
    @pytest.mark.parametrize("status", CANCELLABLE, ids=str)
    async def test_from_each_cancellable_status(self, store: Store, status: Status) -> None:
        bid = await batch_in(store, status)
        b = await store.request_cancel(ACCT, bid)
        assert b.status is S.CANCEL
        assert b.cancelling_at is not None
        assert await store.get_batch(ACCT, bid) == b

    @pytest.mark.asyncio
    async def test_idempotent_while_cancel(self, store: Store) -> None:
        bid = await batch_in(store, S.PROCESSING)
        first = await store.request_cancel(ACCT, bid)
        again = await store.request_cancel(ACCT, bid)
        assert again.status is S.CANCEL
        assert again.cancelling_at == first.cancelling_at
        assert await store.get_batch(ACCT, bid) == again

    @pytest.mark.asyncio
    async def test_idempotent_while_cancelling(self, store: Store) -> None:
        bid = await batch_in(store, S.CANCELLING)
        before = await store.get_batch(ACCT, bid)
        again = await store.request_cancel(ACCT, bid)
        assert again.status is S.CANCELLING
        assert again.cancelling_at == before.cancelling_at
        assert (await store.get_batch(ACCT, bid)).status is S.CANCELLING

    @pytest.mark.asyncio
    @pytest.mark.parametrize("status", TERMINAL, ids=str)
    async def test_conflict_once_terminal(self, store: Store, status: Status) -> None:
        bid = await batch_in(store, status)
        before = await store.get_batch(ACCT, bid)
        with pytest.raises(Conflict):
            await store.request_cancel(ACCT, bid)
        assert await store.get_batch(ACCT, bid) == before

    @pytest.mark.asyncio
    @pytest.mark.parametrize("status", [S.PROCESSED, S.WRITING_RESULTS], ids=str)
    async def test_conflict_while_finalizing(self, store: Store, status: Status) -> None:
        bid = await batch_in(store, status)
        with pytest.raises(Conflict):
            await store.request_cancel(ACCT, bid)
        assert (await store.get_batch(ACCT, bid)).status is status

    @pytest.mark.asyncio
    async def test_another_account_cannot_cancel(self, store: Store) -> None:
        bid = await batch_in(store, S.PROCESSING, OTHER)
        with pytest.raises(NotFound):
            await store.request_cancel(ACCT, bid)
        assert (await store.get_batch(OTHER, bid)).status is S.PROCESSING

    @pytest.mark.asyncio
    async def test_unknown_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.request_cancel(ACCT, "batch_nope")


class TestStartProcessing:
    @pytest.mark.asyncio
    async def test_sets_slices_total_and_model(self, store: Store) -> None:
        bid = await batch_in(store, S.VALIDATING)
        slices = slices_for(bid, [3, 3, 2])
        b = await store.start_processing(bid, slices=slices, total=8, model="gpt-test")
        assert b.status is S.PROCESSING
        assert b.total == 8
        assert b.model == "gpt-test"
        assert b.in_progress_at is not None
        assert await store.get_batch(ACCT, bid) == b
        assert await store.list_slices(bid) == slices
        for s in await store.list_slices(bid):
            assert (s.committed_bytes, s.completed, s.failed, s.done) == (0, 0, 0, False)

    @pytest.mark.asyncio
    async def test_model_may_be_none(self, store: Store) -> None:
        bid = await batch_in(store, S.VALIDATING)
        b = await store.start_processing(bid, slices=slices_for(bid, [1]), total=1, model=None)
        assert b.model is None
        assert b.status is S.PROCESSING

    @pytest.mark.asyncio
    async def test_slices_are_ordered_and_per_batch(self, store: Store) -> None:
        a = await batch_in(store, S.VALIDATING)
        b = await batch_in(store, S.VALIDATING)
        sa = slices_for(a, [2, 2, 2, 2])
        sb = slices_for(b, [5])
        await store.start_processing(a, slices=list(reversed(sa)), total=8, model="m")
        await store.start_processing(b, slices=sb, total=5, model="m")
        assert await store.list_slices(a) == sa
        assert await store.list_slices(b) == sb
        assert await store.list_slices("batch_nope") == []

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "status", [S.NEW, S.COPIED, S.CANCEL, S.PROCESSING, S.COMPLETED, S.EXPIRED], ids=str
    )
    async def test_conflict_unless_validating_leaves_no_slices(
        self, store: Store, status: Status
    ) -> None:
        bid = await batch_in(store, status)
        before = await store.get_batch(None, bid)
        with pytest.raises(Conflict):
            await store.start_processing(
                bid, slices=slices_for(bid, [2, 2]), total=4, model="gpt-test"
            )
        assert await store.list_slices(bid) == []
        assert await store.get_batch(None, bid) == before

    @pytest.mark.asyncio
    async def test_second_start_is_refused_and_keeps_the_first_slices(
        self, store: Store
    ) -> None:
        bid = await batch_in(store, S.VALIDATING)
        first = slices_for(bid, [2, 2])
        await store.start_processing(bid, slices=first, total=4, model="m")
        with pytest.raises(Conflict):
            await store.start_processing(bid, slices=slices_for(bid, [4]), total=4, model="x")
        assert await store.list_slices(bid) == first
        assert (await store.get_batch(None, bid)).model == "m"


    @pytest.mark.asyncio
    async def test_bad_slices_roll_the_move_back(self, store: Store) -> None:
        """Slices and status go in one transaction: when the slices cannot be stored, the
        batch is still validating and holds no slices."""
        bid = await batch_in(store, S.VALIDATING)
        before = await store.get_batch(None, bid)
        s0, s1 = slices_for(bid, [2, 2])
        duplicate = dataclasses.replace(s1, no=0)  # two slices numbered 0
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do
            await store.start_processing(bid, slices=[s0, duplicate], total=4, model="m")
        assert await store.get_batch(None, bid) == before
        assert await store.list_slices(bid) == []
        # and the batch can still start properly
        b = await store.start_processing(bid, slices=[s0, s1], total=4, model="m")
        assert b.status is S.PROCESSING


class TestFailValidation:
    @pytest.mark.asyncio
    async def test_stores_errors_with_lines(self, store: Store) -> None:
        bid = await batch_in(store, S.VALIDATING)
        errors = [
            LineError("invalid_json_line", "Line is not valid JSON.", 1),
            LineError("missing_model", "The 'body' needs a string 'model'.", 4, "body.model"),
            LineError("too_many_requests", "Too many.", None),
        ]
        b = await store.fail_validation(bid, errors=errors, total=4)
        assert b.status is S.VALIDATION_FAILED
        assert b.total == 4
        assert b.failed_at is not None
        assert b.errors == errors
        got = await store.get_batch(ACCT, bid)
        assert got.errors == errors
        assert [e.line for e in got.errors] == [1, 4, None]
        assert got.status is S.VALIDATION_FAILED
        assert got == b
        assert await store.list_slices(bid) == []

    @pytest.mark.asyncio
    async def test_errors_survive_listing(self, store: Store) -> None:
        bid = await batch_in(store, S.VALIDATING)
        errors = [LineError("duplicate_custom_id", "Twice.", 2, "custom_id")]
        await store.fail_validation(bid, errors=errors, total=2)
        page = await store.list_batches(ACCT, after=None, limit=10)
        assert page.items[0].errors == errors

    @pytest.mark.asyncio
    @pytest.mark.parametrize("status", [S.COPIED, S.PROCESSING, S.CANCEL], ids=str)
    async def test_conflict_unless_validating(self, store: Store, status: Status) -> None:
        bid = await batch_in(store, status)
        before = await store.get_batch(None, bid)
        with pytest.raises(Conflict):
            await store.fail_validation(bid, errors=[LineError("x", "y", 1)], total=1)
        after = await store.get_batch(None, bid)
        assert after == before
        assert after.errors == []


class TestRecordProgress:
    @pytest.mark.asyncio
    async def test_advances_slices_and_batch_together(self, store: Store) -> None:
        bid = await batch_in(store, S.VALIDATING)
        slices = slices_for(bid, [3, 3, 2])
        await store.start_processing(bid, slices=slices, total=8, model="m")
        await store.record_progress(
            bid,
            [SliceProgress(0, 300, 2, 1, True), SliceProgress(2, 120, 1, 0, False)],
        )
        got = {s.no: s for s in await store.list_slices(bid)}
        assert (got[0].committed_bytes, got[0].completed, got[0].failed, got[0].done) == (
            300, 2, 1, True,
        )
        assert (got[1].committed_bytes, got[1].completed, got[1].failed, got[1].done) == (
            0, 0, 0, False,
        )
        assert (got[2].committed_bytes, got[2].completed, got[2].failed, got[2].done) == (
            120, 1, 0, False,
        )
        b = await store.get_batch(ACCT, bid)
        assert (b.total, b.completed, b.failed) == (8, 3, 1)
        assert b.status is S.PROCESSING

        # counts are deltas and add up; committed_bytes is the new length
        await store.record_progress(
            bid, [SliceProgress(2, 200, 0, 1, True), SliceProgress(1, 50, 1, 0, False)]
        )
        got = {s.no: s for s in await store.list_slices(bid)}
        assert (got[2].committed_bytes, got[2].completed, got[2].failed, got[2].done) == (
            200, 1, 1, True,
        )
        assert (got[1].committed_bytes, got[1].completed, got[1].failed) == (50, 1, 0)
        # the slice geometry is never touched
        assert [dataclasses.replace(s, committed_bytes=0, completed=0, failed=0, done=False)
                for s in await store.list_slices(bid)] == slices
        b = await store.get_batch(ACCT, bid)
        assert (b.completed, b.failed) == (4, 2)

    @pytest.mark.asyncio
    async def test_updates_updated_at(self, store: Store) -> None:
        bid = await batch_in(store, S.VALIDATING)
        b = await store.start_processing(bid, slices=slices_for(bid, [2]), total=2, model="m")
        await store.record_progress(bid, [SliceProgress(0, 10, 1, 0, False)])
        assert (await store.get_batch(None, bid)).updated_at >= b.updated_at

    @pytest.mark.asyncio
    async def test_other_batches_untouched(self, store: Store) -> None:
        a = await batch_in(store, S.VALIDATING)
        other = await batch_in(store, S.VALIDATING)
        await store.start_processing(a, slices=slices_for(a, [2]), total=2, model="m")
        await store.start_processing(other, slices=slices_for(other, [2]), total=2, model="m")
        await store.record_progress(a, [SliceProgress(0, 10, 2, 0, True)])
        assert (await store.get_batch(None, other)).completed == 0
        assert (await store.list_slices(other))[0].completed == 0


class TestFinish:
    @pytest.mark.asyncio
    async def test_publishes_files_and_moves_status(self, store: Store) -> None:
        bid = await batch_in(store, S.WRITING_RESULTS)
        out = new_file(purpose="batch_output", filename=f"{bid}_output.jsonl")
        err = new_file(purpose="batch_output", filename=f"{bid}_error.jsonl")
        b = await store.finish(
            bid, S.COMPLETED, files=[out, err], output_file_id=out.id, error_file_id=err.id,
            completed=3, failed=1,
        )
        assert b.status is S.COMPLETED
        assert b.completed_at is not None
        assert (b.output_file_id, b.error_file_id, b.completed, b.failed) == (
            out.id, err.id, 3, 1,
        )
        assert await store.get_file(ACCT, out.id) == out
        assert await store.get_file(ACCT, err.id) == err
        assert await store.get_batch(ACCT, bid) == b

    @pytest.mark.asyncio
    async def test_without_files(self, store: Store) -> None:
        bid = await batch_in(store, S.CANCELLING)
        b = await store.finish(bid, S.CANCELLED, files=[])
        assert b.status is S.CANCELLED
        assert b.output_file_id is None

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("status", "to"),
        [
            (S.PROCESSING, S.COMPLETED),
            (S.COMPLETED, S.COMPLETED),
            (S.CANCELLED, S.CANCELLED),
            (S.PROCESSED, S.CANCELLED),
        ],
        ids=str,
    )
    async def test_forbidden_move_inserts_no_files(
        self, store: Store, status: Status, to: Status
    ) -> None:
        bid = await batch_in(store, status)
        before = await store.get_batch(None, bid)
        out = new_file(purpose="batch_output")
        with pytest.raises(Conflict):
            await store.finish(bid, to, files=[out], output_file_id=out.id)
        with pytest.raises(NotFound):
            await store.get_file(ACCT, out.id)
        assert await all_files(store, ACCT) == []
        assert await store.get_batch(None, bid) == before

    @pytest.mark.asyncio
    async def test_a_file_that_cannot_be_stored_rolls_everything_back(
        self, store: Store
    ) -> None:
        bid = await batch_in(store, S.WRITING_RESULTS)
        before = await store.get_batch(None, bid)
        good = new_file(purpose="batch_output")
        bad = new_file(purpose="batch_output", filename=None)  # violates NOT NULL
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do
            await store.finish(bid, S.COMPLETED, files=[good, bad], output_file_id=good.id)
        with pytest.raises(NotFound):
            await store.get_file(ACCT, good.id)
        assert await store.get_batch(None, bid) == before

    @pytest.mark.asyncio
    async def test_expired_with_an_error_file(self, store: Store) -> None:
        bid = await batch_in(store, S.PROCESSING)
        err = new_file(purpose="batch_output")
        b = await store.finish(bid, S.EXPIRED, files=[err], error_file_id=err.id, failed=5)
        assert b.status is S.EXPIRED
        assert b.expired_at is not None
        assert b.error_file_id == err.id
        assert await store.get_file(ACCT, err.id) == err


class TestUnfinished:
    @pytest.mark.asyncio
    async def test_excludes_terminal_and_deleting_oldest_first(self, store: Store) -> None:
        expected = []
        for i, status in enumerate(Status):
            account = ACCT if i % 2 else OTHER
            bid = await batch_in(store, status, account)
            if status in UNFINISHED:
                expected.append(bid)
        got = await store.unfinished_batches()
        assert [b.id for b in got] == expected
        assert {b.status for b in got} == set(UNFINISHED)

    @pytest.mark.asyncio
    async def test_empty(self, store: Store) -> None:
        assert await store.unfinished_batches() == []

    @pytest.mark.asyncio
    async def test_batch_leaves_once_finished(self, store: Store) -> None:
        bid = await batch_in(store, S.WRITING_RESULTS)
        assert [b.id for b in await store.unfinished_batches()] == [bid]
        await store.transition(bid, S.COMPLETED)
        assert await store.unfinished_batches() == []


# -- keys ----------------------------------------------------------------------------------


def new_key(account: str = ACCT, role: str = "member") -> KeyRecord:
    n = _next()
    return KeyRecord(
        id=f"key_{n:024x}", name=f"key {n}", account=account, role=role, created_at=T0 + n
    )


class TestKeys:
    @pytest.mark.asyncio
    async def test_principal_for_hash(self, store: Store) -> None:
        k = new_key(role="admin")
        await store.create_key(k, "hash-1")
        p = await store.principal_for("hash-1")
        assert p == Principal(account=ACCT, key_id=k.id, role="admin")
        assert await store.principal_for("hash-2") is None
        assert await store.principal_for("") is None

    @pytest.mark.asyncio
    async def test_revoke(self, store: Store) -> None:
        k = new_key()
        other = new_key(OTHER)
        await store.create_key(k, "hash-a")
        await store.create_key(other, "hash-b")
        await store.revoke_key(k.id)
        assert await store.principal_for("hash-a") is None
        assert await store.principal_for("hash-b") == Principal(OTHER, other.id, "member")
        with pytest.raises(NotFound):
            await store.revoke_key(k.id)  # already revoked

    @pytest.mark.asyncio
    async def test_revoke_unknown_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.revoke_key("key_nope")

    @pytest.mark.asyncio
    async def test_list_keys(self, store: Store) -> None:
        assert await store.list_keys() == []
        a = new_key(ACCT, "admin")
        b = new_key(OTHER, "member")
        await store.create_key(a, "h-a")
        await store.create_key(b, "h-b")
        assert await store.list_keys() == [a, b]
        await store.revoke_key(a.id)
        listed = await store.list_keys()
        assert [k.id for k in listed] == [a.id, b.id]
        assert isinstance(listed[0].revoked_at, int)
        assert listed[0] == dataclasses.replace(a, revoked_at=listed[0].revoked_at)
        assert listed[1].revoked_at is None

    @pytest.mark.asyncio
    async def test_hashes_are_unique(self, store: Store) -> None:
        await store.create_key(new_key(), "same")
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do
            await store.create_key(new_key(), "same")
        assert len(await store.list_keys()) == 1


# -- durability ----------------------------------------------------------------------------


class TestDurability:
    @pytest.mark.asyncio
    async def test_second_store_sees_committed_data(
        self, store: Store, make_store: Callable[[], Store]
    ) -> None:
        f = new_file()
        await store.create_file(f)
        bid = await batch_in(store, S.VALIDATING, input_file_id=f.id)
        await store.start_processing(bid, slices=slices_for(bid, [2, 1]), total=3, model="m")
        await store.record_progress(bid, [SliceProgress(0, 40, 2, 0, True)])
        await store.create_key(new_key(), "h")
        expected_batch = await store.get_batch(ACCT, bid)
        expected_slices = await store.list_slices(bid)

        second = make_store()
        await second.open()
        try:
            assert await second.get_file(ACCT, f.id) == f
            assert await second.get_batch(ACCT, bid) == expected_batch
            assert await second.list_slices(bid) == expected_slices
            assert (await second.principal_for("h")) is not None
            # and writes by the second are seen by the first
            await second.transition(bid, S.PROCESSED)
            assert (await store.get_batch(ACCT, bid)).status is S.PROCESSED
        finally:
            await second.close()

    @pytest.mark.asyncio
    async def test_reopen_after_close(self, make_store: Callable[[], Store]) -> None:
        first = make_store()
        await first.open()
        f = new_file()
        await first.create_file(f)
        bid = await batch_in(first, S.VALIDATING, input_file_id=f.id)
        errors = [LineError("invalid_json_line", "bad", 3)]
        await first.fail_validation(bid, errors=errors, total=3)
        expected = await first.get_batch(ACCT, bid)
        await first.close()

        again = make_store()
        await again.open()
        try:
            assert await again.get_file(ACCT, f.id) == f
            got = await again.get_batch(ACCT, bid)
            assert got == expected
            assert got.errors == errors
            assert await again.unfinished_batches() == []
        finally:
            await again.close()


class TestAdvance:
    """``advance`` walks several moves in one transaction, or none of them."""

    @pytest.mark.asyncio
    async def test_moves_through_the_path_and_stamps_once(self, store: Store) -> None:
        bid = await batch_in(store, S.NEW)
        b = await store.advance(bid, (S.COPYING, S.COPIED, S.VALIDATING))
        assert b.status is S.VALIDATING
        assert (await store.get_batch(None, bid)).status is S.VALIDATING

    @pytest.mark.asyncio
    async def test_a_forbidden_step_changes_nothing(self, store: Store) -> None:
        bid = await batch_in(store, S.NEW)
        with pytest.raises(Conflict):
            await store.advance(bid, (S.COPYING, S.PROCESSING))  # copying cannot process
        assert (await store.get_batch(None, bid)).status is S.NEW


class TestConcurrentWrites:
    """Writes issued together (which SQLite commits as one group) still succeed or fail
    one by one: a failing write leaves no trace and takes none of the others with it."""

    @pytest.mark.asyncio
    async def test_one_failure_among_many_concurrent_writes(self, store: Store) -> None:
        stuck = await batch_in(store, S.COMPLETED)
        fresh = [new_batch(ACCT) for _ in range(30)]
        results = await asyncio.gather(
            *(store.create_batch(b) for b in fresh[:15]),
            store.finish(stuck, S.COMPLETED, files=[new_file(ACCT)]),  # not allowed
            *(store.create_batch(b) for b in fresh[15:]),
            return_exceptions=True,
        )
        assert [type(r) for r in results] == [type(None)] * 15 + [Conflict] + [type(None)] * 15
        for b in fresh:
            assert (await store.get_batch(ACCT, b.id)).status is S.NEW
        assert (await store.get_batch(ACCT, stuck)).status is S.COMPLETED
        assert await all_files(store, ACCT) == []  # the refused finish published nothing


# -- verbs the sections above leave out ----------------------------------------------------


class TestCursorsPastDeletion:
    """``after`` naming an object deleted since pages on from where it stood."""

    @pytest.mark.asyncio
    async def test_files_page_on_from_a_deleted_cursor(self, store: Store) -> None:
        files = [new_file() for _ in range(5)]
        for f in files:
            await store.create_file(f)
        ids = [f.id for f in files]
        await store.delete_file(ACCT, ids[2])
        assert await all_files(store, ACCT, order="asc", after=ids[2]) == ids[3:]
        assert await all_files(store, ACCT, order="desc", after=ids[2]) == ids[:2][::-1]
        await store.delete_file(ACCT, ids[4])
        assert await all_files(store, ACCT, order="asc", after=ids[4]) == []
        # a place is the account's own: another account never had the file
        with pytest.raises(NotFound):
            await store.list_files(OTHER, purpose=None, limit=10, order="asc", after=ids[2])

    @pytest.mark.asyncio
    async def test_batches_page_on_from_a_deleted_cursor(self, store: Store) -> None:
        ids = [await batch_in(store, S.COMPLETED) for _ in range(5)]
        await store.transition(ids[2], S.DELETING)
        await store.delete_batch(ids[2])
        page = await store.list_batches(ACCT, after=ids[2], limit=10)
        assert [b.id for b in page.items] == ids[:2][::-1]
        page = await store.list_batches(ACCT, after=ids[2], limit=10, oldest_first=True)
        assert [b.id for b in page.items] == ids[3:]
        with pytest.raises(NotFound):
            await store.list_batches(OTHER, after=ids[2], limit=10)

    @pytest.mark.asyncio
    async def test_a_deleting_batch_is_a_cursor_but_never_listed(self, store: Store) -> None:
        ids = [await batch_in(store, S.EXPIRED) for _ in range(3)]
        await store.transition(ids[1], S.DELETING)
        page = await store.list_batches(ACCT, after=ids[1], limit=10)
        assert [b.id for b in page.items] == [ids[0]]
        page = await store.list_batches(ACCT, after=None, limit=10)
        assert [b.id for b in page.items] == [ids[2], ids[0]]


class TestListBounds:
    @pytest.mark.asyncio
    async def test_created_bounds_are_inclusive(self, store: Store) -> None:
        made = [new_batch(created_at=T0 + 10 * i, created_ms=(T0 + 10 * i) * 1000 + i)
                for i in range(5)]
        for b in made:
            await store.create_batch(b)
        ids = [b.id for b in made]

        async def listed(**kw: Any) -> list[str]:
            page = await store.list_batches(ACCT, after=None, limit=100, **kw)
            return [b.id for b in page.items]

        assert await listed(created_after=T0 + 10, created_before=T0 + 30) == ids[1:4][::-1]
        assert await listed(created_after=T0 + 11) == ids[2:][::-1]
        assert await listed(created_before=T0 + 9, oldest_first=True) == ids[:1]
        assert await listed(created_after_ms=(T0 + 20) * 1000 + 2) == ids[2:][::-1]
        assert await listed(created_after_ms=(T0 + 20) * 1000 + 3) == ids[3:][::-1]
        assert await listed(created_before_ms=(T0 + 10) * 1000 + 1) == ids[:2][::-1]
        # bounds beyond int64 act as its ends
        assert await listed(created_after=-(2**70), created_before=2**70) == ids[::-1]
        assert await listed(created_after_ms=2**70) == []
        assert await listed(created_before_ms=-(2**70)) == []

    @pytest.mark.asyncio
    async def test_ms_bounds_fall_back_to_whole_seconds(self, store: Store) -> None:
        old = new_batch(created_at=T0, created_ms=None)
        await store.create_batch(old)
        page = await store.list_batches(ACCT, after=None, limit=10, created_after_ms=T0 * 1000)
        assert [b.id for b in page.items] == [old.id]
        assert page.items[0].created_ms is None
        page = await store.list_batches(ACCT, after=None, limit=10,
                                        created_after_ms=T0 * 1000 + 1)
        assert page.items == []

    @pytest.mark.asyncio
    async def test_metadata_json_round_trips(self, store: Store) -> None:
        for flag in (True, False, None):
            b = new_batch(metadata={"b": "1", "a": "2"}, metadata_json=flag)
            await store.create_batch(b)
            got = await store.get_batch(ACCT, b.id)
            assert got.metadata_json is flag
            assert list(got.metadata or {}) == ["b", "a"]  # the client's order


class TestUsage:
    @pytest.mark.asyncio
    async def test_tokens_add_up_and_saturate(self, store: Store) -> None:
        from barge.domain.usage import MAX_TOKENS, Usage

        bid = await batch_in(store, S.VALIDATING)
        await store.start_processing(bid, slices=slices_for(bid, [2, 2]), total=4, model="m")
        await store.record_progress(bid, [
            SliceProgress(0, 10, 1, 0, False, Usage(5, 7, 1, 2)),
            SliceProgress(1, 10, 1, 0, False, Usage(3, 0, 0, 1)),
        ])
        assert (await store.get_batch(ACCT, bid)).usage == Usage(8, 7, 1, 3)
        top = Usage(MAX_TOKENS, MAX_TOKENS, MAX_TOKENS, MAX_TOKENS)
        for _ in range(3):
            await store.record_progress(bid, [SliceProgress(0, 20, 0, 0, False, top)])
        assert (await store.get_batch(ACCT, bid)).usage == top
        # a count outside 0..MAX_TOKENS that reaches the store is clamped, never an error
        other = await batch_in(store, S.VALIDATING)
        await store.start_processing(other, slices=slices_for(other, [1]), total=1, model="m")
        await store.record_progress(other, [
            SliceProgress(0, 5, 1, 0, True, Usage(2**70, -3, 4, 0)),
        ])
        got = await store.get_batch(ACCT, other)
        assert got.usage == Usage(MAX_TOKENS, 0, 4, 0)
        assert (got.completed, got.failed) == (1, 0)

    @pytest.mark.asyncio
    async def test_repeated_slice_in_one_call_applies_in_order(self, store: Store) -> None:
        bid = await batch_in(store, S.VALIDATING)
        await store.start_processing(bid, slices=slices_for(bid, [5]), total=5, model="m")
        await store.record_progress(bid, [SliceProgress(0, 30, 2, 0, False),
                                          SliceProgress(0, 50, 1, 1, True)])
        (s,) = await store.list_slices(bid)
        assert (s.committed_bytes, s.completed, s.failed, s.done) == (50, 3, 1, True)
        b = await store.get_batch(ACCT, bid)
        assert (b.completed, b.failed) == (3, 1)


class TestDeletion:
    @pytest.mark.asyncio
    async def test_deleting_batches_oldest_first(self, store: Store) -> None:
        assert await store.deleting_batches() == []
        a = await batch_in(store, S.DELETING)
        await batch_in(store, S.COMPLETED)
        b = await batch_in(store, S.DELETING, OTHER)
        assert [x.id for x in await store.deleting_batches()] == [a, b]

    @pytest.mark.asyncio
    async def test_delete_batch_removes_it_its_slices_and_result_files(
        self, store: Store
    ) -> None:
        keep_input = new_file()
        await store.create_file(keep_input)
        bid = await batch_in(store, S.VALIDATING, input_file_id=keep_input.id)
        await store.start_processing(bid, slices=slices_for(bid, [1, 1]), total=2, model="m")
        await store.advance(bid, (S.PROCESSED, S.WRITING_RESULTS))
        out = new_file(purpose="batch_output")
        err = new_file(purpose="batch_output")
        await store.finish(bid, S.COMPLETED, files=[out, err], output_file_id=out.id,
                           error_file_id=err.id)
        await store.transition(bid, S.DELETING)
        await store.delete_batch(bid)
        with pytest.raises(NotFound):
            await store.get_batch(None, bid)
        assert await store.list_slices(bid) == []
        assert await store.deleting_batches() == []
        assert await all_files(store, ACCT) == [keep_input.id]
        with pytest.raises(NotFound):
            await store.delete_batch(bid)

    @pytest.mark.asyncio
    async def test_only_a_deleting_batch_can_be_deleted(self, store: Store) -> None:
        bid = await batch_in(store, S.COMPLETED)
        with pytest.raises(Conflict):
            await store.delete_batch(bid)
        assert (await store.get_batch(ACCT, bid)).status is S.COMPLETED

    @pytest.mark.asyncio
    async def test_expired_files_oldest_first(self, store: Store) -> None:
        late = new_file(expires_at=T0 + 50)
        never = new_file(expires_at=None)
        early = new_file(OTHER, expires_at=T0 + 10)
        future = new_file(expires_at=T0 + 1000)
        for f in (late, never, early, future):
            await store.create_file(f)
        assert await store.expired_files(T0 + 100, limit=10) == [early, late]
        assert await store.expired_files(T0 + 50, limit=1) == [early]
        assert await store.expired_files(T0, limit=10) == []

    @pytest.mark.asyncio
    async def test_a_file_id_is_unique(self, store: Store) -> None:
        f = new_file()
        await store.create_file(f)
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do
            await store.create_file(dataclasses.replace(f, filename="other.jsonl"))
        assert await store.get_file(ACCT, f.id) == f


class TestRoles:
    @pytest.mark.asyncio
    async def test_roles_belong_to_an_account(self, store: Store) -> None:
        from barge.domain.permissions import make_role

        reader = make_role("viewer", ["get_files", "get_batch"], ["/v1/chat/completions"])
        other_reader = make_role("viewer", ["get_batches"], ["*"])
        writer = make_role("writer", ["upload_file"], [])
        assert await store.list_roles(None) == []
        await store.create_role(ACCT, writer)
        await store.create_role(ACCT, reader)
        await store.create_role(OTHER, other_reader)  # the same name in another account
        with pytest.raises(Conflict):
            await store.create_role(ACCT, make_role("viewer", [], []))
        assert await store.get_role(ACCT, "viewer") == reader
        assert await store.get_role(OTHER, "viewer") == other_reader
        assert await store.get_role(OTHER, "writer") is None
        assert await store.get_role(ACCT, "nobody") is None
        assert await store.list_roles(ACCT) == [(ACCT, reader), (ACCT, writer)]
        assert await store.list_roles(None) == [
            (ACCT, reader), (ACCT, writer), (OTHER, other_reader),
        ]


class TestTwoStoresAtOnce:
    """Two stores on the same data (two nodes) writing the same batch at the same time."""

    @pytest.mark.asyncio
    async def test_one_move_wins(self, store: Store, make_store: Callable[[], Store]) -> None:
        second = make_store()
        await second.open()
        try:
            for _ in range(5):
                bid = await batch_in(store, S.PROCESSING)
                results = await asyncio.gather(
                    *(s.transition(bid, to) for s in (store, second)
                      for to in (S.PROCESSED, S.CANCEL, S.EXPIRED)),
                    return_exceptions=True,
                )
                won = [r for r in results if isinstance(r, BatchRecord)]
                assert len(won) == 1, results
                assert all(isinstance(r, Conflict) for r in results if r not in won)
                assert (await store.get_batch(None, bid)).status is won[0].status
        finally:
            await second.close()

    @pytest.mark.asyncio
    async def test_progress_from_both_adds_up(
        self, store: Store, make_store: Callable[[], Store]
    ) -> None:
        second = make_store()
        await second.open()
        try:
            bid = await batch_in(store, S.VALIDATING)
            await store.start_processing(bid, slices=slices_for(bid, [50, 50]), total=100,
                                         model="m")
            await asyncio.gather(*(
                s.record_progress(bid, [SliceProgress(no, 10 * i, 1, 0, False)])
                for i in range(20) for no, s in ((0, store), (1, second))
            ))
            b = await store.get_batch(ACCT, bid)
            assert (b.completed, b.failed) == (40, 0)
            assert [s.completed for s in await second.list_slices(bid)] == [20, 20]
        finally:
            await second.close()


# -- leases, fencing, finalisation claims, nodes ---------------------------------------------
# Many nodes share the slices of processing batches. Sleeps are short: a lease of 0.2 s
# has passed after 0.25 s on either store's clock (PostgreSQL's runs on this machine).

SHORT, PAST_SHORT, LONG = 0.2, 0.25, 30.0


async def processing(store: Store, sizes: list[int], account: str = ACCT) -> str:
    """A new batch in ``processing`` with slices of ``sizes`` lines."""
    bid = await batch_in(store, S.VALIDATING, account)
    await store.start_processing(bid, slices=slices_for(bid, sizes), total=sum(sizes),
                                 model="m")
    return bid


def held(leases: list[Lease]) -> list[tuple[str, int]]:
    return [(x.batch_id, x.slice_no) for x in leases]


async def snapshot(store: Store, bid: str) -> tuple[list[Slice], tuple[int, int, Usage]]:
    """What progress changes: the slices, and the batch's counts and usage."""
    b = await store.get_batch(None, bid)
    return await store.list_slices(bid), (b.completed, b.failed, b.usage)


@pytest_asyncio.fixture
async def second(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    """Another store on the same data: another node."""
    s = make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


class TestClaimSlices:
    @pytest.mark.asyncio
    async def test_a_claim_leases_the_slice_as_it_stands(self, store: Store) -> None:
        bid = await processing(store, [3, 2])
        await store.record_progress(bid, [SliceProgress(0, 120, 1, 1, False)])
        leases = await store.claim_slices("node-a", limit=10, lease_seconds=LONG)
        assert held(leases) == [(bid, 0), (bid, 1)]
        first = leases[0]
        assert first.slice == (await store.list_slices(bid))[0]
        assert (first.slice.committed_bytes, first.slice.completed, first.slice.failed) == (
            120, 1, 1)
        assert first.node == "node-a"
        assert first.expires_at > T0
        assert leases[1].token != first.token
        # everything is held now
        assert await store.claim_slices("node-b", limit=10, lease_seconds=LONG) == []
        # a lease changes nothing the single-node engine sees
        assert await store.list_slices(bid) == [x.slice for x in leases]

    @pytest.mark.asyncio
    async def test_oldest_batch_first_then_by_slice_number(self, store: Store) -> None:
        a = await processing(store, [1, 1, 1])
        b = await processing(store, [1, 1], OTHER)
        got = await store.claim_slices("n", limit=4, lease_seconds=LONG)
        assert held(got) == [(a, 0), (a, 1), (a, 2), (b, 0)]
        assert held(await store.claim_slices("n", limit=4, lease_seconds=LONG)) == [(b, 1)]

    @pytest.mark.asyncio
    async def test_nothing_to_claim_and_bad_arguments(self, store: Store) -> None:
        assert await store.claim_slices("n", limit=5, lease_seconds=LONG) == []
        await processing(store, [1])
        assert await store.claim_slices("n", limit=0, lease_seconds=LONG) == []
        with pytest.raises(ValueError):
            await store.claim_slices("n", limit=1, lease_seconds=0)
        assert len(await store.claim_slices("n", limit=1, lease_seconds=LONG)) == 1

    @pytest.mark.asyncio
    async def test_concurrent_claimers_get_disjoint_slices(
        self, store: Store, second: Store
    ) -> None:
        a = await processing(store, [1] * 25)
        b = await processing(store, [1] * 15, OTHER)
        results = await asyncio.gather(*(
            s.claim_slices(f"node-{i}", limit=3, lease_seconds=LONG)
            for i in range(12) for s in (store, second)
        ))
        leases = [x for got in results for x in got]
        assert sorted(held(leases)) == sorted([(a, n) for n in range(25)]
                                              + [(b, n) for n in range(15)])
        assert len({x.token for x in leases}) == len(leases) == 40
        assert await second.claim_slices("late", limit=5, lease_seconds=LONG) == []

    @pytest.mark.asyncio
    async def test_done_slices_and_batches_not_processing_are_never_claimed(
        self, store: Store
    ) -> None:
        open_batch = await processing(store, [1, 1, 1])
        await store.record_progress(open_batch, [SliceProgress(1, 50, 1, 0, True)])
        others = {}
        for end, path in {
            S.CANCEL: [S.CANCEL], S.CANCELLING: [S.CANCEL, S.CANCELLING],
            S.CANCELLED: [S.CANCEL, S.CANCELLING, S.CANCELLED], S.EXPIRED: [S.EXPIRED],
            S.PROCESSED: [S.PROCESSED], S.WRITING_RESULTS: [S.PROCESSED, S.WRITING_RESULTS],
            S.COMPLETED: [S.PROCESSED, S.WRITING_RESULTS, S.COMPLETED],
            S.DELETING: [S.EXPIRED, S.DELETING],
        }.items():
            others[end] = await processing(store, [1, 1])
            await store.advance(others[end], path)
        await batch_in(store, S.VALIDATING)  # no slices yet
        got = await store.claim_slices("n", limit=100, lease_seconds=LONG)
        assert held(got) == [(open_batch, 0), (open_batch, 2)]

    @pytest.mark.asyncio
    async def test_an_expired_lease_is_claimed_again_with_a_higher_token(
        self, store: Store, second: Store
    ) -> None:
        bid = await processing(store, [1, 1])
        (old,) = await store.claim_slices("node-a", limit=1, lease_seconds=SHORT)
        (other,) = await second.claim_slices("node-b", limit=1, lease_seconds=LONG)
        assert held([other]) == [(bid, 1)]  # slice 0 is still held
        assert await second.claim_slices("node-b", limit=1, lease_seconds=LONG) == []
        # a batch cancelled while its slice was held: the lapsed lease frees nothing
        stopped = await processing(store, [1])
        await store.claim_slices("node-a", limit=1, lease_seconds=SHORT)
        await store.request_cancel(ACCT, stopped)
        await asyncio.sleep(PAST_SHORT)
        (new,) = await second.claim_slices("node-b", limit=5, lease_seconds=LONG)
        assert held([new]) == [(bid, 0)]
        assert new.node == "node-b"
        assert new.token > other.token > old.token

    @pytest.mark.asyncio
    async def test_tokens_only_grow(self, store: Store, second: Store) -> None:
        bid = await processing(store, [1] * 6)
        tokens = []
        for s in (store, second, store, second):
            got = await s.claim_slices("n", limit=1, lease_seconds=LONG)
            tokens.append(got[0].token)
            await s.release_leases(got)
        done = await batch_in(store, S.WRITING_RESULTS)
        fin = await second.claim_finalize(done, "n", lease_seconds=LONG)
        assert fin is not None
        tokens.append(fin)
        tokens += [x.token for x in await store.claim_slices("n", limit=2, lease_seconds=LONG)]
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens
        assert bid


class TestFencedProgress:
    @pytest.mark.asyncio
    async def test_progress_under_a_stale_token_changes_nothing(
        self, store: Store, second: Store
    ) -> None:
        bid = await processing(store, [4, 4])
        a0, a1 = await store.claim_slices("node-a", limit=2, lease_seconds=SHORT)
        # while node-a holds them its progress commits
        await store.record_progress(bid, [
            SliceProgress(0, 100, 1, 0, False, Usage(10, 20, 0, 0), token=a0.token),
        ])
        await asyncio.sleep(PAST_SHORT)
        b0, b1 = await second.claim_slices("node-b", limit=2, lease_seconds=LONG)
        assert b0.slice.committed_bytes == 100  # where node-b resumes
        before = await snapshot(store, bid)
        stale = [
            SliceProgress(0, 300, 2, 1, False, Usage(5, 5, 5, 5), token=a0.token),
            SliceProgress(1, 200, 2, 0, True, Usage(1, 1, 1, 1), token=a1.token),
        ]
        with pytest.raises(Fenced):
            await store.record_progress(bid, stale)
        assert await snapshot(second, bid) == before
        # one stale token among current ones: nothing at all is applied
        with pytest.raises(Fenced):
            await second.record_progress(bid, [
                SliceProgress(0, 300, 2, 1, False, token=b0.token),
                SliceProgress(1, 200, 2, 0, True, token=a1.token),
            ])
        assert await snapshot(store, bid) == before
        with pytest.raises(Conflict):  # Fenced is a Conflict
            await store.record_progress(bid, stale[1:])
        # the new holder's progress commits
        await second.record_progress(bid, [
            SliceProgress(0, 300, 2, 1, False, Usage(5, 5, 5, 5), token=b0.token),
            SliceProgress(1, 200, 2, 0, True, Usage(1, 1, 1, 1), token=b1.token),
        ])
        slices, (completed, failed, usage) = await snapshot(store, bid)
        assert [(x.committed_bytes, x.completed, x.failed, x.done) for x in slices] == [
            (300, 3, 1, False), (200, 2, 0, True)]
        assert (completed, failed, usage) == (5, 1, Usage(16, 26, 6, 6))

    @pytest.mark.asyncio
    async def test_a_token_of_another_slice_or_none_at_all_is_fenced(
        self, store: Store
    ) -> None:
        bid = await processing(store, [2, 2])
        x0, x1 = await store.claim_slices("n", limit=2, lease_seconds=LONG)
        before = await snapshot(store, bid)
        for wrong in (x1.token, x0.token + 10**6):
            with pytest.raises(Fenced):
                await store.record_progress(bid, [SliceProgress(0, 9, 1, 0, False,
                                                                token=wrong)])
        with pytest.raises(Fenced):  # a slice never leased holds no token
            other = await processing(store, [1])
            await store.record_progress(other, [SliceProgress(0, 9, 1, 0, False,
                                                              token=x0.token)])
        assert await snapshot(store, bid) == before

    @pytest.mark.asyncio
    async def test_repeated_and_untokened_entries_in_one_call(self, store: Store) -> None:
        """A slice repeated under its token applies in order; an entry without a token
        rides along unfenced, but falls with the call when a token is stale."""
        bid = await processing(store, [5, 2])
        (x,) = await store.claim_slices("n", limit=1, lease_seconds=LONG)
        await store.record_progress(bid, [SliceProgress(0, 30, 2, 0, False, token=x.token),
                                          SliceProgress(1, 10, 1, 0, False),
                                          SliceProgress(0, 50, 1, 1, True, token=x.token)])
        s0, s1 = await store.list_slices(bid)
        assert (s0.committed_bytes, s0.completed, s0.failed, s0.done) == (50, 3, 1, True)
        assert (s1.committed_bytes, s1.completed) == (10, 1)
        before = await snapshot(store, bid)
        for tokens in ((x.token + 1,), (x.token, x.token + 1)):  # stale, or two at once
            with pytest.raises(Fenced):
                await store.record_progress(bid, [
                    SliceProgress(1, 20, 1, 0, False),
                    *(SliceProgress(0, 60, 1, 0, True, token=t) for t in tokens),
                ])
        assert await snapshot(store, bid) == before

    @pytest.mark.asyncio
    async def test_progress_without_tokens_ignores_leases(self, store: Store) -> None:
        """The single-node engine takes no leases; its progress applies as before."""
        bid = await processing(store, [2, 2])
        await store.claim_slices("n", limit=2, lease_seconds=LONG)
        await store.record_progress(bid, [SliceProgress(1, 10, 2, 0, True)])
        b = await store.get_batch(None, bid)
        assert (b.completed, (await store.list_slices(bid))[1].done) == (2, True)


class TestRenewAndRelease:
    @pytest.mark.asyncio
    async def test_renewing_keeps_the_lease(self, store: Store, second: Store) -> None:
        bid = await processing(store, [1, 1])
        leases = await store.claim_slices("a", limit=2, lease_seconds=SHORT)
        await store.record_progress(bid, [SliceProgress(0, 10, 1, 0, True,
                                                        token=leases[0].token)])
        renewed = await store.renew_leases(leases, lease_seconds=LONG)
        assert held(renewed) == held(leases)
        assert [x.token for x in renewed] == [x.token for x in leases]
        assert all(r.expires_at > x.expires_at for r, x in zip(renewed, leases, strict=True))
        assert renewed[0].slice.done and renewed[0].slice.committed_bytes == 10
        await asyncio.sleep(PAST_SHORT)
        assert await second.claim_slices("b", limit=2, lease_seconds=LONG) == []
        assert await store.renew_leases([], lease_seconds=LONG) == []

    @pytest.mark.asyncio
    async def test_renewing_under_a_stale_token_does_nothing(
        self, store: Store, second: Store
    ) -> None:
        bid = await processing(store, [1, 1])
        old = await store.claim_slices("a", limit=2, lease_seconds=SHORT)
        await asyncio.sleep(PAST_SHORT)
        (new0,) = await second.claim_slices("b", limit=1, lease_seconds=SHORT)
        # slice 0 was taken over, slice 1 was not: only slice 1 is still node-a's. The
        # token is the fence, not the clock: node-a's lapsed lease on slice 1 still
        # commits and renews, as nobody else has claimed it.
        await store.record_progress(bid, [SliceProgress(1, 10, 1, 0, False,
                                                        token=old[1].token)])
        assert (await store.list_slices(bid))[1].completed == 1
        renewed = await store.renew_leases(old, lease_seconds=LONG)
        assert held(renewed) == [(bid, 1)]
        # the zombie's renewal did not extend node-b's lease: it lapses on time
        await asyncio.sleep(PAST_SHORT)
        (again,) = await second.claim_slices("c", limit=5, lease_seconds=LONG)
        assert held([again]) == [(bid, 0)] and again.token > new0.token
        assert await second.renew_leases([new0], lease_seconds=LONG) == []

    @pytest.mark.asyncio
    async def test_a_released_slice_is_claimable_at_once(
        self, store: Store, second: Store
    ) -> None:
        bid = await processing(store, [1, 1])
        mine = await store.claim_slices("a", limit=2, lease_seconds=LONG)
        await store.release_leases(mine[:1])
        (taken,) = await second.claim_slices("b", limit=5, lease_seconds=LONG)
        assert held([taken]) == [(bid, 0)] and taken.token > mine[0].token
        # the released lease is over: no progress, no renewal, no second release
        with pytest.raises(Fenced):
            await store.record_progress(bid, [SliceProgress(0, 5, 1, 0, False,
                                                            token=mine[0].token)])
        assert await store.renew_leases(mine[:1], lease_seconds=LONG) == []
        await store.release_leases(mine[:1])
        assert await store.claim_slices("c", limit=5, lease_seconds=LONG) == []
        await second.record_progress(bid, [SliceProgress(0, 5, 1, 0, True, token=taken.token)])
        await store.release_leases([])


class TestFinalizeClaim:
    @pytest.mark.asyncio
    async def test_exactly_one_of_many_wins(self, store: Store, second: Store) -> None:
        bid = await batch_in(store, S.WRITING_RESULTS)
        results = await asyncio.gather(*(
            s.claim_finalize(bid, f"node-{i}", lease_seconds=LONG)
            for i in range(8) for s in (store, second)
        ))
        won = [r for r in results if r is not None]
        assert len(won) == 1, results
        b = await second.finish(bid, S.COMPLETED, files=[], fin_token=won[0])
        assert b.status is S.COMPLETED

    @pytest.mark.asyncio
    async def test_only_while_results_are_written(self, store: Store) -> None:
        # (a processing batch past its expiry is claimed too: test_results_contract.py)
        for status in (S.VALIDATING, S.PROCESSING, S.PROCESSED, S.COMPLETED, S.CANCEL,
                       S.CANCELLED, S.EXPIRED):
            bid = await batch_in(store, status, expires_at=2**40)
            assert await store.claim_finalize(bid, "n", lease_seconds=LONG) is None, status
        assert await store.claim_finalize("batch_nope", "n", lease_seconds=LONG) is None
        cancelling = await batch_in(store, S.CANCELLING)
        assert await store.claim_finalize(cancelling, "n", lease_seconds=LONG) is not None
        with pytest.raises(ValueError):
            await store.claim_finalize(cancelling, "n", lease_seconds=-1)

    @pytest.mark.asyncio
    async def test_finish_under_a_stale_fin_token_is_fenced(
        self, store: Store, second: Store
    ) -> None:
        bid = await batch_in(store, S.WRITING_RESULTS)
        old = await store.claim_finalize(bid, "node-a", lease_seconds=SHORT)
        assert old is not None
        assert await second.claim_finalize(bid, "node-b", lease_seconds=LONG) is None
        lapsed = await batch_in(store, S.WRITING_RESULTS)
        lapsed_token = await store.claim_finalize(lapsed, "node-a", lease_seconds=SHORT)
        await asyncio.sleep(PAST_SHORT)
        # a lapsed claim nobody took over still finishes: its token is current
        assert lapsed_token is not None
        assert (await store.finish(lapsed, S.COMPLETED, files=[],
                                   fin_token=lapsed_token)).status is S.COMPLETED
        # the same token cannot finish twice: the move itself is refused
        with pytest.raises(Conflict) as refused:
            await store.finish(lapsed, S.COMPLETED, files=[], fin_token=lapsed_token)
        assert not isinstance(refused.value, Fenced)
        new = await second.claim_finalize(bid, "node-b", lease_seconds=LONG)
        assert new is not None and new > old
        before = await store.get_batch(None, bid)
        out = new_file(purpose="batch_output")
        with pytest.raises(Fenced):
            await store.finish(bid, S.COMPLETED, files=[out], fin_token=old,
                               output_file_id=out.id, completed=1)
        assert await store.get_batch(None, bid) == before
        with pytest.raises(NotFound):
            await store.get_file(ACCT, out.id)
        b = await second.finish(bid, S.COMPLETED, files=[out], fin_token=new,
                                output_file_id=out.id, completed=1)
        assert (b.status, b.output_file_id, b.completed) == (S.COMPLETED, out.id, 1)
        assert await store.get_file(ACCT, out.id) == out

    @pytest.mark.asyncio
    async def test_finish_with_a_token_never_claimed_is_fenced(self, store: Store) -> None:
        bid = await batch_in(store, S.CANCELLING)
        with pytest.raises(Fenced):
            await store.finish(bid, S.CANCELLED, files=[], fin_token=1)
        assert (await store.get_batch(None, bid)).status is S.CANCELLING
        # without a token, finish is as it always was
        assert (await store.finish(bid, S.CANCELLED, files=[])).status is S.CANCELLED



class TestNodes:
    @pytest.mark.asyncio
    async def test_live_nodes_are_counted(self, store: Store, second: Store) -> None:
        assert await _live(store, "node-a", LONG) == 1
        assert await _live(second, "node-b", LONG) == 2
        assert await _live(store, "node-a", LONG) == 2  # again: still two
        assert await _live(second, "node-c", SHORT) == 3
        await asyncio.sleep(PAST_SHORT)
        assert await _live(store, "node-a", LONG) == 2  # node-c went silent
        await second.leave("node-b")
        assert await _live(store, "node-a", LONG) == 1
        assert await _live(second, "node-c", LONG) == 2  # back again
        await store.leave("node-x")  # never there: nothing to do
        with pytest.raises(ValueError):
            await _live(store, "node-a", 0)

    @pytest.mark.asyncio
    async def test_concurrent_nodes_are_counted(self, store: Store, second: Store) -> None:
        counts = await asyncio.gather(*(
            _live(s, f"node-{i}", LONG) for i in range(10) for s in (store, second)
        ))
        assert max(counts) <= 10 and min(counts) >= 1
        assert await _live(store, "node-0", LONG) == 10


async def _live(store: Store, node: str, ttl: float) -> int:
    """How many nodes are alive, after ``node`` says it is (for ``ttl`` seconds), as
    ``share_budget`` counts them (asking for no slots)."""
    _, live = await store.share_budget(node, ttl=ttl, want=0, budget=0)
    return live
