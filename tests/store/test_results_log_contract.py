"""The Store contract, continued: the results log that lets clients read a batch's results
while it runs (``result_groups``, ``group_results``; see ARCHITECTURE.md, "Results while
running"). Every store of ``STORE_FACTORIES`` (test_store_contract.py) runs it."""

from __future__ import annotations

import asyncio

import pytest
from store.test_results_contract import FAR, line, records, sending
from store.test_store_contract import ACCT, LONG, S, new_batch, new_file, slices_for

from barge.exceptions import Fenced
from barge.store.protocol import ResultGroup, SliceProgress, Store, StoredResult


def part(no: int, end: int, ok: int, err: int, ok_bytes: int, err_bytes: int,
         start: int) -> SliceProgress:
    """A flush of one machine's part: its records are in the part, not in the store."""
    return SliceProgress(no, end, ok, err, False, ok_bytes=ok_bytes, err_bytes=err_bytes,
                         part_start=start)


async def commits(store: Store, bid: str) -> int | None:
    return (await store.get_batch(None, bid)).result_commits


class TestLog:
    @pytest.mark.asyncio
    async def test_each_commit_logs_a_group_per_slice_it_adds_to(self, store: Store) -> None:
        bid = await sending(store, [5, 5, 5])
        other = await sending(store, [5])
        assert await commits(store, bid) == 0
        assert await store.result_groups(bid) == []
        await store.record_progress(bid, [part(2, 90, 2, 1, 40, 25, 0),
                                          part(0, 60, 1, 0, 30, 0, 0)])
        await store.record_progress(other, [part(0, 30, 1, 0, 20, 0, 0)])
        # a flush that adds no result is a commit all the same, with no group
        await store.record_progress(bid, [SliceProgress(1, 0, 0, 0, True)])
        await store.record_progress(bid, [part(0, 100, 0, 2, 0, 44, 60),
                                          part(1, 10, 1, 0, 9, 0, 0)])
        assert await commits(store, bid) == 3
        assert await commits(store, other) == 1  # numbered per batch
        g = [ResultGroup(1, 0, 1, 0, 30, 0, 0, 60), ResultGroup(1, 2, 2, 1, 40, 25, 0, 90),
             ResultGroup(3, 0, 0, 2, 0, 44, 60, 100), ResultGroup(3, 1, 1, 0, 9, 0, 0, 10)]
        assert await store.result_groups(bid) == g
        assert await store.result_groups(other) == [ResultGroup(1, 0, 1, 0, 20, 0, 0, 30)]
        # from a (commit, slice) on, that one included, in (commit, slice) order
        assert await store.result_groups(bid, after=(1, 2)) == g[1:]
        assert await store.result_groups(bid, after=(1, 3)) == g[2:]
        assert await store.result_groups(bid, after=(2, 0), limit=1) == g[2:3]
        assert await store.result_groups(bid, after=(3, 2)) == []
        assert await store.result_groups(bid, limit=0) == []
        assert await store.result_groups("batch_nope") == []
        # two entries of one slice in one call are one group
        await store.record_progress(bid, [part(1, 20, 1, 0, 7, 0, 10),
                                          part(1, 35, 0, 1, 0, 5, 20)])
        assert await store.result_groups(bid, after=(4, 0)) == [
            ResultGroup(4, 1, 1, 1, 7, 5, 10, 35)]

    @pytest.mark.asyncio
    async def test_records_log_what_was_stored(self, store: Store) -> None:
        bid = await sending(store, [6, 6])
        r0, r1 = records(0, [5, 0, 3, 2]), records(1, [1])  # 0 and 3 fail
        await store.record_progress(bid, [SliceProgress(0, 1, 2, 2, False, records=r0),
                                          SliceProgress(1, 1, 1, 0, False, records=r1)])
        size = {(no, i): len(line(no, i, i % 3 != 0)) + 1 for no, i in
                [(0, 5), (0, 0), (0, 3), (0, 2), (1, 1)]}
        assert await store.result_groups(bid) == [
            ResultGroup(1, 0, 2, 2, size[0, 5] + size[0, 2], size[0, 0] + size[0, 3]),
            ResultGroup(1, 1, 1, 0, size[1, 1], 0)]
        # a group reads as its ok records, then its errors, each by index
        again = records(0, [4, 2])  # 2 is stored already: left out of the log too
        await store.record_progress(bid, [SliceProgress(0, 2, 2, 0, True, records=again)])
        assert await store.result_groups(bid, after=(2, 0)) == [
            ResultGroup(2, 0, 1, 0, len(line(0, 4)) + 1, 0)]
        got = await store.group_results(bid, [(2, 0), (1, 1), (1, 0)])
        assert [(r.commit_no, r.slice_no, r.index, r.ok) for r in got] == [
            (1, 0, 2, True), (1, 0, 5, True), (1, 0, 0, False), (1, 0, 3, False),
            (1, 1, 1, True), (2, 0, 4, True)]
        assert got[0] == StoredResult(0, 2, True, line(0, 2), 1)
        assert await store.group_results(bid, [(1, 7), (9, 0)]) == []
        assert await store.group_results(bid, []) == []

    @pytest.mark.asyncio
    async def test_a_refused_flush_logs_nothing(self, store: Store) -> None:
        bid = await sending(store, [4])
        (lease,) = await store.claim_slices("node-a", limit=1, lease_seconds=LONG)
        await store.record_progress(bid, [SliceProgress(0, 1, 1, 0, False, token=lease.token,
                                                        records=records(0, [1]))])
        await store.advance(bid, (S.PROCESSED, S.WRITING_RESULTS))
        assert await store.claim_finalize(bid, "node-b", lease_seconds=LONG) is not None
        with pytest.raises(Fenced):
            await store.record_progress(bid, [SliceProgress(
                0, 2, 1, 0, False, token=lease.token, records=records(0, [2]))])
        assert await commits(store, bid) == 1
        assert [g.key for g in await store.result_groups(bid)] == [(1, 0)]

    @pytest.mark.asyncio
    async def test_commits_of_many_writers_are_numbered_in_order(
        self, store: Store, second: Store
    ) -> None:
        bid = await sending(store, [50, 50])
        writes = [(store if i % 2 else second).record_progress(
            bid, [SliceProgress(i % 2, 1, 1, 0, False, records=((i // 2, True, b"r%d" % i),))])
            for i in range(40)]
        await asyncio.gather(*writes)
        groups = await store.result_groups(bid, limit=100)
        assert sorted(g.commit_no for g in groups) == list(range(1, 41))
        assert await commits(store, bid) == 40
        stored = await store.group_results(bid, [g.key for g in groups])
        assert len(stored) == 40
        for g, r in zip(groups, stored, strict=True):  # each in the group it was logged in
            assert (r.commit_no, r.slice_no) == g.key


class TestFinishPlacesTheLog:
    @pytest.mark.asyncio
    async def test_offsets_follow_slice_then_commit_and_expired_lines_come_last(
        self, store: Store
    ) -> None:
        bid = await sending(store, [5, 5, 5], expires_at=FAR)
        await store.record_progress(bid, [part(1, 9, 1, 1, 10, 20, 0),
                                          part(0, 9, 2, 0, 30, 0, 0)])  # commit 1
        await store.record_progress(bid, [part(0, 19, 1, 1, 5, 6, 9)])  # commit 2
        await store.record_progress(bid, [part(2, 9, 0, 1, 0, 7, 0)])  # commit 3
        # still running: no group has a place in files yet
        assert {(g.ok_offset, g.err_offset) for g in await store.result_groups(bid)} == {
            (None, None)}
        out = new_file(purpose="batch_output")
        await store.finish(bid, S.EXPIRED, files=[out], output_file_id=out.id,
                           expired=[(0, 1, 50), (1, 3, 60), (2, 0, 0)])
        # (slice, commit): (0,1) (0,2) (0,4x) (1,1) (1,4x) (2,3)
        assert await store.result_groups(bid) == [
            ResultGroup(1, 0, 2, 0, 30, 0, 0, 9, ok_offset=0, err_offset=0),
            ResultGroup(1, 1, 1, 1, 10, 20, 0, 9, ok_offset=35, err_offset=56),
            ResultGroup(2, 0, 1, 1, 5, 6, 9, 19, ok_offset=30, err_offset=0),
            ResultGroup(3, 2, 0, 1, 0, 7, 0, 9, ok_offset=45, err_offset=136),
            ResultGroup(4, 0, 0, 1, 0, 50, ok_offset=35, err_offset=6),
            ResultGroup(4, 1, 0, 3, 0, 60, ok_offset=45, err_offset=76),
        ]
        assert await commits(store, bid) == 3  # the expired lines take the next number
        await store.transition(bid, S.DELETING)
        await store.delete_batch(bid)
        assert await store.result_groups(bid) == []

    @pytest.mark.asyncio
    async def test_stored_results_go_and_the_log_stays(self, store: Store) -> None:
        bid = await sending(store, [3])
        await store.record_progress(bid, [SliceProgress(0, 1, 2, 1, True,
                                                        records=records(0, [0, 1, 2]))])
        await store.advance(bid, (S.PROCESSED, S.WRITING_RESULTS))
        token = await store.claim_finalize(bid, "node-a", lease_seconds=LONG)
        # a finish refused changes nothing of the log
        with pytest.raises(Fenced):
            await store.finish(bid, S.COMPLETED, files=[], expired=[(0, 1, 9)],
                               fin_token=(token or 0) + 1000)
        assert [g.ok_offset for g in await store.result_groups(bid)] == [None]
        await store.finish(bid, S.COMPLETED, files=[], fin_token=token)
        (g,) = await store.result_groups(bid)
        assert (g.key, g.n_ok, g.n_err, g.ok_offset, g.err_offset) == ((1, 0), 2, 1, 0, 0)
        assert await store.group_results(bid, [g.key]) == []

    @pytest.mark.asyncio
    async def test_a_batch_expired_before_processing_logs_its_lines(
        self, store: Store
    ) -> None:
        b = new_batch(ACCT)
        await store.create_batch(b)
        await store.advance(b.id, (S.COPYING, S.COPIED, S.VALIDATING))
        await store.finish(b.id, S.EXPIRED, files=[], expired=[(0, 2, 30), (1, 1, 12)])
        assert await store.result_groups(b.id) == [
            ResultGroup(1, 0, 0, 2, 0, 30, ok_offset=0, err_offset=0),
            ResultGroup(1, 1, 0, 1, 0, 12, ok_offset=0, err_offset=30)]

    @pytest.mark.asyncio
    async def test_a_batch_from_before_the_log_logs_nothing(self, store: Store) -> None:
        b = new_batch(ACCT, result_commits=None)
        await store.create_batch(b)
        await store.advance(b.id, (S.COPYING, S.COPIED, S.VALIDATING))
        await store.start_processing(b.id, slices=slices_for(b.id, [3]), total=3, model="m")
        await store.record_progress(b.id, [part(0, 9, 1, 0, 5, 0, 0)])
        await store.record_progress(b.id, [SliceProgress(0, 1, 1, 0, False,
                                                         records=records(0, [1]))])
        assert await commits(store, b.id) is None
        assert [r.index for r in await store.slice_results(b.id)] == [1]  # still stored
        await store.finish(b.id, S.EXPIRED, files=[], expired=[(0, 1, 9)])
        assert await store.result_groups(b.id) == []
