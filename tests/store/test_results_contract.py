"""The Store contract, continued: result records kept with progress, finalisation claims
on expiry and on cancelling batches, fencing after a finalisation claim, claims on one
batch, and shared secrets. Every store of ``STORE_FACTORIES`` (test_store_contract.py)
runs it, with that module's fixtures (through conftest.py) and helpers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from store.test_store_contract import (
    ACCT,
    LONG,
    OTHER,
    PAST_SHORT,
    SHORT,
    S,
    batch_in,
    held,
    new_file,
    slices_for,
    snapshot,
)

from barge.exceptions import Conflict, Fenced
from barge.store.protocol import ResultGroup, ResultRecord, SliceProgress, Store, StoredResult

FAR = 2**40  # an expiry no test reaches (Unix seconds)


def line(no: int, idx: int, ok: bool = True) -> bytes:
    """A result line; not valid UTF-8, and with a NUL in it: stored as bytes."""
    return b'{"custom_id":"s%d-%d","ok":%s}\x00\xff' % (no, idx, b"true" if ok else b"false")


def records(no: int, indexes: range | list[int], *, fail_every: int = 3) -> tuple[
        ResultRecord, ...]:
    return tuple((i, i % fail_every != 0, line(no, i, i % fail_every != 0)) for i in indexes)


def stored(no: int, recs: tuple[ResultRecord, ...], commit: int = 1) -> list[StoredResult]:
    return [StoredResult(no, i, ok, data, commit) for i, ok, data in recs]


async def sending(store: Store, sizes: list[int], *, expires_at: int = FAR,
                  account: str = ACCT) -> str:
    """A new batch in ``processing`` with slices of ``sizes`` lines, expiring at
    ``expires_at`` (by default, never in a test)."""
    bid = await batch_in(store, S.VALIDATING, account, expires_at=expires_at)
    await store.start_processing(bid, slices=slices_for(bid, sizes), total=sum(sizes),
                                 model="m")
    return bid


async def every_result(store: Store, bid: str, *, limit: int = 1000) -> list[StoredResult]:
    """Every stored result of ``bid``, page by page."""
    out: list[StoredResult] = []
    after: tuple[int, int, int] | None = None
    while True:
        page = await store.slice_results(bid, after=after, limit=limit)
        out += page
        if len(page) < limit:
            return out
        after = (page[-1].slice_no, page[-1].commit_no, page[-1].index)


async def cancelling(store: Store, bid: str) -> None:
    await store.request_cancel(ACCT, bid)
    await store.transition(bid, S.CANCELLING)


# -- result records ------------------------------------------------------------------------


class TestResultRecords:
    @pytest.mark.asyncio
    async def test_records_are_stored_with_the_counts(self, store: Store) -> None:
        bid = await sending(store, [5, 5])
        r0, r1 = records(0, [0, 2, 3]), records(1, [4, 1])
        assert await store.slice_results(bid) == []
        await store.record_progress(bid, [SliceProgress(1, 80, 1, 1, False, records=r1),
                                          SliceProgress(0, 90, 2, 1, False, records=r0)])
        assert await store.slice_results(bid) == [
            *stored(0, r0), StoredResult(1, 1, True, line(1, 1), 1),
            StoredResult(1, 4, True, line(1, 4, True), 1)]
        assert await store.done_indexes(bid, 0) == [0, 2, 3]
        assert await store.done_indexes(bid, 1) == [1, 4]
        b = await store.get_batch(None, bid)
        assert (b.completed, b.failed) == (3, 2)
        # an entry without records stores none; a later one adds to what is there
        r0b = records(0, [1, 4])
        await store.record_progress(bid, [SliceProgress(1, 90, 0, 0, True),
                                          SliceProgress(0, 120, 1, 1, True, records=r0b)])
        assert await store.done_indexes(bid, 0) == [0, 1, 2, 3, 4]
        assert await store.done_indexes(bid, 1) == [1, 4]
        # in the files' order: by slice, then by commit, then by index
        assert [(r.slice_no, r.commit_no, r.index) for r in await store.slice_results(bid)
                ] == [(0, 1, 0), (0, 1, 2), (0, 1, 3), (0, 2, 1), (0, 2, 4), (1, 1, 1),
                      (1, 1, 4)]
        # an empty line is a line
        await store.record_progress(bid, [SliceProgress(1, 90, 0, 1, True,
                                                        records=((0, False, b""),))])
        assert (await store.slice_results(bid, after=(1, 1, 4), limit=1)) == [
            StoredResult(1, 0, False, b"", 3)]

    @pytest.mark.asyncio
    async def test_results_are_per_batch_and_slice(self, store: Store) -> None:
        a = await sending(store, [3, 3])
        b = await sending(store, [3], account=OTHER)
        await store.record_progress(a, [SliceProgress(0, 10, 2, 0, False,
                                                      records=records(0, [0, 1]))])
        await store.record_progress(b, [SliceProgress(0, 10, 1, 0, False,
                                                      records=records(0, [2]))])
        assert [(r.slice_no, r.index) for r in await store.slice_results(a)] == [(0, 0), (0, 1)]
        assert [(r.slice_no, r.index) for r in await store.slice_results(b)] == [(0, 2)]
        assert await store.done_indexes(a, 1) == []
        assert await store.done_indexes("batch_nope", 0) == []
        assert await store.slice_results("batch_nope") == []
        # progress for a batch that does not exist keeps nothing
        await store.record_progress("batch_nope", [SliceProgress(0, 1, 1, 0, False,
                                                                 records=records(0, [0]))])
        assert await store.slice_results("batch_nope") == []

    @pytest.mark.asyncio
    async def test_a_record_stored_again_is_left_out(self, store: Store) -> None:
        """A stored result never changes (a reader who has seen it must not see another),
        nor does its group: a flush sent again after an answer that was lost keeps the
        first."""
        bid = await sending(store, [4])
        await store.record_progress(bid, [
            SliceProgress(0, 10, 1, 0, False, records=((1, True, b"first"),)),
            SliceProgress(0, 20, 0, 1, False, records=((1, False, b"second"),
                                                      (2, True, b"x"), (2, True, b"y"))),
        ])
        first = [StoredResult(0, 1, True, b"first", 1), StoredResult(0, 2, True, b"x", 1)]
        assert await store.slice_results(bid) == first
        await store.record_progress(bid, [SliceProgress(0, 30, 0, 0, False,
                                                        records=((1, True, b"third"),))])
        assert await store.slice_results(bid) == first
        assert await store.result_groups(bid) == [ResultGroup(1, 0, 2, 0, 8, 0)]

    @pytest.mark.asyncio
    async def test_thousands_of_records_in_one_call_and_paging(self, store: Store) -> None:
        bid = await sending(store, [3000, 2000, 1000])
        big = [records(0, range(3000)), records(1, range(0, 2000, 2)),
               records(2, range(999, -1, -1))]  # given in any order
        started = time.monotonic()
        await store.record_progress(bid, [
            SliceProgress(no, 100, len(r), 0, False, records=r) for no, r in enumerate(big)])
        elapsed = time.monotonic() - started
        expected = sorted((r for no, recs in enumerate(big) for r in stored(no, recs)),
                          key=lambda r: (r.slice_no, r.index))  # one commit
        assert len(expected) == 5000
        assert elapsed < 10, elapsed  # one statement, not a round trip per row
        assert await every_result(store, bid) == expected
        assert await every_result(store, bid, limit=7) == expected
        page = await store.slice_results(bid)
        assert page == expected[:1000]  # the default limit
        # the cursor is exclusive and need not name a stored result
        assert await store.slice_results(bid, after=(0, 1, 2999), limit=2) == \
            expected[3000:3002]
        assert await store.slice_results(bid, after=(1, 1, 1), limit=1) == [expected[3001]]
        assert await store.slice_results(bid, after=(0, 1, -1), limit=1) == [expected[0]]
        assert await store.slice_results(bid, after=(0, 0, 5000), limit=1) == [expected[0]]
        assert await store.slice_results(bid, after=(2, 1, 999)) == []
        assert await store.slice_results(bid, after=(7, 0, 0)) == []
        assert await store.slice_results(bid, limit=0) == []
        assert await store.done_indexes(bid, 1) == list(range(0, 2000, 2))
        assert await store.done_indexes(bid, 2) == list(range(1000))
        b = await store.get_batch(None, bid)
        assert b.completed == 5000

    @pytest.mark.asyncio
    async def test_records_are_stored_only_when_not_fenced(
        self, store: Store, second: Store
    ) -> None:
        bid = await sending(store, [4, 4])
        a0, a1 = await store.claim_slices("node-a", limit=2, lease_seconds=SHORT)
        await store.record_progress(bid, [
            SliceProgress(0, 10, 1, 0, False, token=a0.token, records=records(0, [0])),
            SliceProgress(1, 10, 1, 0, False, token=a1.token, records=records(1, [3])),
        ])
        assert [(r.slice_no, r.index) for r in await store.slice_results(bid)] == [
            (0, 0), (1, 3)]
        await asyncio.sleep(PAST_SHORT)
        (b0,) = await second.claim_slices("node-b", limit=1, lease_seconds=LONG)
        assert b0.slice_no == 0
        before = (await snapshot(store, bid), await store.slice_results(bid))
        # a stale token: nothing of the call, records of current leases included
        with pytest.raises(Fenced):
            await store.record_progress(bid, [
                SliceProgress(1, 20, 1, 0, False, token=a1.token, records=records(1, [1])),
                SliceProgress(0, 20, 1, 0, False, token=a0.token, records=records(0, [1])),
            ])
        with pytest.raises(Fenced):
            await second.record_progress(bid, [
                SliceProgress(0, 20, 1, 0, False, token=b0.token, records=records(0, [1])),
                SliceProgress(1, 20, 1, 0, False, records=records(1, [2])),
                SliceProgress(0, 30, 1, 0, False, token=a0.token, records=records(0, [2])),
            ])
        assert (await snapshot(second, bid), await second.slice_results(bid)) == before
        assert await store.done_indexes(bid, 0) == [0]
        # the new holder's records are stored (its resume point: what is done)
        await second.record_progress(bid, [
            SliceProgress(0, 20, 1, 0, False, token=b0.token, records=records(0, [1])),
        ])
        assert await store.done_indexes(bid, 0) == [0, 1]


# -- finishing and deleting remove results -------------------------------------------------


class TestResultsGoWithTheBatch:
    @pytest.mark.asyncio
    async def test_finish_removes_the_batchs_results(self, store: Store) -> None:
        bid = await sending(store, [2, 2])
        other = await sending(store, [2])
        for b in (bid, other):
            await store.record_progress(b, [SliceProgress(0, 10, 2, 0, True,
                                                          records=records(0, [0, 1]))])
        await store.advance(bid, (S.PROCESSED, S.WRITING_RESULTS))
        token = await store.claim_finalize(bid, "node-a", lease_seconds=LONG)
        assert token is not None
        out = new_file(purpose="batch_output")
        # a refused finish keeps them: the move, fenced or not allowed
        with pytest.raises(Fenced):
            await store.finish(bid, S.COMPLETED, files=[out], fin_token=token + 1000)
        with pytest.raises(Conflict):
            await store.finish(bid, S.CANCELLED, files=[out], fin_token=token)
        assert len(await store.slice_results(bid)) == 2
        await store.finish(bid, S.COMPLETED, files=[out], fin_token=token,
                           output_file_id=out.id)
        assert await store.slice_results(bid) == []
        assert await store.done_indexes(bid, 0) == []
        assert len(await store.slice_results(other)) == 2  # another batch's stay
        # without files and without a token too
        await store.finish(other, S.EXPIRED, files=[])
        assert await store.slice_results(other) == []

    @pytest.mark.asyncio
    async def test_delete_batch_removes_its_results(self, store: Store) -> None:
        bid = await sending(store, [2])
        keep = await sending(store, [2])
        for b in (bid, keep):
            await store.record_progress(b, [SliceProgress(0, 10, 1, 0, False,
                                                          records=records(0, [1]))])
        await store.transition(bid, S.EXPIRED)  # a move that keeps them
        assert len(await store.slice_results(bid)) == 1
        await store.transition(bid, S.DELETING)
        await store.delete_batch(bid)
        assert await store.slice_results(bid) == []
        assert len(await store.slice_results(keep)) == 1


# -- claiming one batch's slices -------------------------------------------------------------


class TestClaimOneBatch:
    @pytest.mark.asyncio
    async def test_only_that_batchs_slices(self, store: Store, second: Store) -> None:
        a = await sending(store, [1, 1, 1])
        b = await sending(store, [1, 1, 1], account=OTHER)
        got = await store.claim_slices("n", limit=2, lease_seconds=LONG, batch_id=b)
        assert held(got) == [(b, 0), (b, 1)]
        got = await second.claim_slices("n", limit=5, lease_seconds=LONG, batch_id=b)
        assert held(got) == [(b, 2)]
        assert await store.claim_slices("n", limit=5, lease_seconds=LONG, batch_id=b) == []
        assert await store.claim_slices("n", limit=5, lease_seconds=LONG,
                                        batch_id="batch_nope") == []
        done = await batch_in(store, S.WRITING_RESULTS)
        assert await store.claim_slices("n", limit=5, lease_seconds=LONG,
                                        batch_id=done) == []
        # without batch_id, any batch's
        assert held(await store.claim_slices("n", limit=5, lease_seconds=LONG)) == [
            (a, 0), (a, 1), (a, 2)]

    @pytest.mark.asyncio
    async def test_concurrent_claimers_of_one_batch(self, store: Store, second: Store) -> None:
        bid = await sending(store, [1] * 20)
        other = await sending(store, [1] * 5)
        results = await asyncio.gather(*(
            s.claim_slices(f"node-{i}", limit=3, lease_seconds=LONG, batch_id=bid)
            for i in range(6) for s in (store, second)
        ))
        leases = [x for got in results for x in got]
        assert sorted(held(leases)) == [(bid, n) for n in range(20)]
        assert len({x.token for x in leases}) == 20
        assert held(await store.claim_slices("n", limit=10, lease_seconds=LONG)) == [
            (other, n) for n in range(5)]


# -- claiming the finalisation: expiry, cancelling ------------------------------------------


class TestFinalizeOnExpiry:
    @pytest.mark.asyncio
    async def test_a_processing_batch_is_claimed_once_it_has_expired(
        self, store: Store
    ) -> None:
        live = await sending(store, [1])
        assert await store.claim_finalize(live, "n", lease_seconds=LONG) is None
        expired = await sending(store, [1, 1], expires_at=int(time.time()) - 1)
        await store.claim_slices("node-a", limit=5, lease_seconds=LONG)
        # live leases do not hold an expiry back
        token = await store.claim_finalize(expired, "n", lease_seconds=LONG)
        assert token is not None
        assert await store.claim_finalize(expired, "m", lease_seconds=LONG) is None
        b = await store.finish(expired, S.EXPIRED, files=[], fin_token=token)
        assert b.status is S.EXPIRED
        # a batch that expires while in ``processed`` is not claimed for expiry
        processed = await batch_in(store, S.PROCESSED, expires_at=1)
        assert await store.claim_finalize(processed, "n", lease_seconds=LONG) is None

    @pytest.mark.asyncio
    async def test_exactly_one_of_many_wins(self, store: Store, second: Store) -> None:
        for _ in range(4):
            bid = await sending(store, [1, 1], expires_at=1)
            results = await asyncio.gather(*(
                s.claim_finalize(bid, f"node-{i}", lease_seconds=LONG)
                for i in range(8) for s in (store, second)
            ))
            won = [r for r in results if r is not None]
            assert len(won) == 1, results
            with pytest.raises(Fenced):
                await store.finish(bid, S.EXPIRED, files=[], fin_token=won[0] - 1)
            assert (await second.finish(bid, S.EXPIRED, files=[],
                                        fin_token=won[0])).status is S.EXPIRED

    @pytest.mark.asyncio
    async def test_a_lapsed_claim_is_taken_over(self, store: Store, second: Store) -> None:
        bid = await sending(store, [1], expires_at=1)
        old = await store.claim_finalize(bid, "node-a", lease_seconds=SHORT)
        assert old is not None
        assert await second.claim_finalize(bid, "node-b", lease_seconds=LONG) is None
        await asyncio.sleep(PAST_SHORT)
        results = await asyncio.gather(*(
            s.claim_finalize(bid, f"node-{i}", lease_seconds=LONG)
            for i in range(4) for s in (store, second)
        ))
        won = [r for r in results if r is not None]
        assert len(won) == 1 and won[0] > old, results
        with pytest.raises(Fenced):
            await store.finish(bid, S.EXPIRED, files=[], fin_token=old)
        assert (await store.get_batch(None, bid)).status is S.PROCESSING


class TestFinalizeWhileCancelling:
    @pytest.mark.asyncio
    async def test_waits_for_live_leases_and_wins_once_released(
        self, store: Store, second: Store
    ) -> None:
        bid = await sending(store, [2, 2, 2])
        x0, x1 = await store.claim_slices("node-a", limit=2, lease_seconds=LONG)
        await cancelling(store, bid)
        assert await second.claim_finalize(bid, "node-b", lease_seconds=LONG) is None
        # the holders drain: their flushes still commit while the batch is cancelling
        await store.record_progress(bid, [SliceProgress(0, 10, 1, 0, False, token=x0.token,
                                                        records=records(0, [0]))])
        await store.release_leases([x0])
        assert await second.claim_finalize(bid, "node-b", lease_seconds=LONG) is None
        assert held(await store.renew_leases([x1], lease_seconds=LONG)) == [(bid, 1)]
        await store.release_leases([x1])
        token = await second.claim_finalize(bid, "node-b", lease_seconds=LONG)
        assert token is not None
        assert await store.claim_finalize(bid, "node-a", lease_seconds=LONG) is None
        b = await second.finish(bid, S.CANCELLED, files=[], fin_token=token)
        assert b.status is S.CANCELLED

    @pytest.mark.asyncio
    async def test_a_lapsed_lease_holds_it_back_no_longer(
        self, store: Store, second: Store
    ) -> None:
        bid = await sending(store, [2, 2])
        (x,) = await store.claim_slices("node-a", limit=1, lease_seconds=SHORT)
        await cancelling(store, bid)
        assert await second.claim_finalize(bid, "node-b", lease_seconds=LONG) is None
        await asyncio.sleep(PAST_SHORT)
        token = await second.claim_finalize(bid, "node-b", lease_seconds=LONG)
        assert token is not None
        # the silent holder wakes: nothing of its renews or commits
        assert await store.renew_leases([x], lease_seconds=LONG) == []
        with pytest.raises(Fenced):
            await store.record_progress(bid, [SliceProgress(0, 5, 1, 0, False,
                                                            token=x.token)])

    @pytest.mark.asyncio
    async def test_exactly_one_of_many_wins(self, store: Store, second: Store) -> None:
        for _ in range(3):
            bid = await sending(store, [1, 1])
            leases = await store.claim_slices("node-a", limit=2, lease_seconds=LONG,
                                              batch_id=bid)
            await cancelling(store, bid)
            await store.release_leases(leases)
            results = await asyncio.gather(*(
                s.claim_finalize(bid, f"node-{i}", lease_seconds=LONG)
                for i in range(8) for s in (store, second)
            ))
            assert len([r for r in results if r is not None]) == 1, results

    @pytest.mark.asyncio
    async def test_a_batch_only_asked_to_cancel_is_not_claimed(self, store: Store) -> None:
        bid = await sending(store, [1])
        await store.request_cancel(ACCT, bid)
        assert await store.claim_finalize(bid, "n", lease_seconds=LONG) is None


# -- fencing once finalisation is claimed ----------------------------------------------------


class TestFencedAfterTheFinalizeClaim:
    @pytest.mark.asyncio
    async def test_a_flush_after_the_claim_is_fenced(self, store: Store, second: Store) -> None:
        bid = await sending(store, [3, 3, 3], expires_at=1)
        x0, x1 = await store.claim_slices("node-a", limit=2, lease_seconds=LONG)
        await store.record_progress(bid, [SliceProgress(0, 10, 1, 0, False, token=x0.token,
                                                        records=records(0, [0]))])
        token = await second.claim_finalize(bid, "node-b", lease_seconds=LONG)
        assert token is not None
        before = (await snapshot(store, bid), await store.slice_results(bid))
        for flush in (
            [SliceProgress(0, 20, 1, 0, False, token=x0.token, records=records(0, [1]))],
            [SliceProgress(1, 20, 1, 1, True, token=x1.token, records=records(1, [0, 1]))],
            [SliceProgress(0, 20, 1, 0, False, token=x0.token),
             SliceProgress(1, 20, 1, 0, False, token=x1.token, records=records(1, [2]))],
        ):
            with pytest.raises(Fenced):
                await store.record_progress(bid, flush)
        assert (await snapshot(second, bid), await second.slice_results(bid)) == before
        # its leases are no longer renewed, and its other slices no longer claimed
        assert await store.renew_leases([x0, x1], lease_seconds=LONG) == []
        assert await second.claim_slices("node-c", limit=5, lease_seconds=LONG) == []
        assert await second.claim_slices("node-c", limit=5, lease_seconds=LONG,
                                          batch_id=bid) == []
        # the finaliser reads what was committed before its claim, and ends the batch
        assert [(r.slice_no, r.index) for r in await second.slice_results(bid)] == [(0, 0)]
        assert (await second.finish(bid, S.EXPIRED, files=[],
                                    fin_token=token)).status is S.EXPIRED

    @pytest.mark.asyncio
    async def test_fenced_progress_only_while_the_batch_is_being_sent(
        self, store: Store
    ) -> None:
        # processing and cancel: accepted (cancelling: TestFinalizeWhileCancelling)
        bid = await sending(store, [2, 2, 2])
        x0, x1, x2 = await store.claim_slices("n", limit=3, lease_seconds=LONG)
        await store.record_progress(bid, [SliceProgress(0, 5, 1, 0, False, token=x0.token)])
        await store.request_cancel(ACCT, bid)
        await store.record_progress(bid, [SliceProgress(1, 5, 1, 0, False, token=x1.token,
                                                        records=records(1, [0]))])
        assert (await store.get_batch(None, bid)).completed == 2
        # any other status: refused, even under a current token
        done = await sending(store, [2])
        (y,) = await store.claim_slices("n", limit=1, lease_seconds=LONG, batch_id=done)
        await store.transition(done, S.PROCESSED)
        before = (await snapshot(store, done), await store.slice_results(done))
        with pytest.raises(Fenced):
            await store.record_progress(done, [SliceProgress(0, 5, 1, 0, True, token=y.token,
                                                             records=records(0, [0]))])
        assert (await snapshot(store, done), await store.slice_results(done)) == before
        expired = await sending(store, [2])
        (z,) = await store.claim_slices("n", limit=1, lease_seconds=LONG, batch_id=expired)
        await store.transition(expired, S.EXPIRED)
        with pytest.raises(Fenced):
            await store.record_progress(expired, [SliceProgress(0, 5, 1, 0, True,
                                                                token=z.token)])
        assert x2.slice_no == 2

    @pytest.mark.asyncio
    async def test_no_flush_commits_after_a_concurrent_claim(
        self, store: Store, second: Store
    ) -> None:
        """Flushes racing a claim: whatever the finaliser reads right after winning is
        all there will ever be (a flush either commits before the claim, or is Fenced)."""
        for _ in range(4):
            bid = await sending(store, [10] * 6, expires_at=1)
            leases = await store.claim_slices("node-a", limit=6, lease_seconds=LONG)
            seen: list[Any] = []

            async def claim_and_read(bid: str = bid, seen: list[Any] = seen) -> int | None:
                token = await second.claim_finalize(bid, "node-b", lease_seconds=LONG)
                seen.append((await snapshot(second, bid), await every_result(second, bid)))
                return token

            async def flush(s: Store, no: int, token: int, bid: str = bid) -> bool:
                try:
                    for i in range(3):
                        await s.record_progress(bid, [SliceProgress(
                            no, 10 * (i + 1), 1, 0, False, token=token,
                            records=records(no, [i]))])
                except Fenced:
                    return False
                return True

            token, *_ = await asyncio.gather(
                claim_and_read(),
                *(flush((store, second)[x.slice_no % 2], x.slice_no, x.token)
                  for x in leases),
            )
            assert token is not None
            assert (await snapshot(store, bid), await every_result(store, bid)) == seen[0]
            # counts and records moved together
            (slices, (completed, _, _)), results = seen[0]
            assert completed == len(results) == sum(s.completed for s in slices)


# -- secrets every node shares ----------------------------------------------------------------


class TestSharedSecret:
    @pytest.mark.asyncio
    async def test_the_first_value_is_everyones(self, store: Store, second: Store) -> None:
        assert await store.shared_secret("signing-key", "aaa") == "aaa"
        assert await second.shared_secret("signing-key", "bbb") == "aaa"
        assert await store.shared_secret("signing-key", "ccc") == "aaa"
        assert await second.shared_secret("other", "bbb") == "bbb"
        assert await store.shared_secret("other", "") == "bbb"

    @pytest.mark.asyncio
    async def test_nodes_starting_at_once_agree(self, store: Store, second: Store) -> None:
        for round_ in range(3):
            name = f"key-{round_}"
            got = await asyncio.gather(*(
                s.shared_secret(name, f"candidate-{i}-{j}")
                for i in range(8) for j, s in enumerate((store, second))
            ))
            assert len(set(got)) == 1, got
            assert got[0].startswith("candidate-")
            assert await second.shared_secret(name, "late") == got[0]


class TestSharedBudget:
    """``share_budget``: the slots of one upstream budget, held by live nodes, never add
    up to more than the budget."""

    @pytest.mark.asyncio
    async def test_slots_never_exceed_the_budget(self, store: Store, second: Store) -> None:
        assert await store.share_budget("a", ttl=LONG, want=10, budget=10) == (10, 1)
        # b asks while a holds everything: nothing yet, but it counts as live.
        assert await second.share_budget("b", ttl=LONG, want=5, budget=10) == (0, 2)
        assert await store.share_budget("a", ttl=LONG, want=5, budget=10) == (5, 2)
        assert await second.share_budget("b", ttl=LONG, want=5, budget=10) == (5, 2)
        # a asks for more than is free: it gets what b leaves.
        assert await store.share_budget("a", ttl=LONG, want=8, budget=10) == (5, 2)
        assert await store.share_budget("a", ttl=LONG, want=-3, budget=10) == (0, 2)
        with pytest.raises(ValueError):
            await store.share_budget("a", ttl=0, want=1, budget=10)

    @pytest.mark.asyncio
    async def test_a_silent_node_gives_its_slots_back(self, store: Store,
                                                      second: Store) -> None:
        assert await store.share_budget("a", ttl=SHORT, want=10, budget=10) == (10, 1)
        assert await second.share_budget("b", ttl=LONG, want=10, budget=10) == (0, 2)
        await asyncio.sleep(PAST_SHORT)
        assert await second.share_budget("b", ttl=LONG, want=10, budget=10) == (10, 1)
        await second.leave("b")
        assert await store.share_budget("a", ttl=LONG, want=4, budget=10) == (4, 1)

    @pytest.mark.asyncio
    async def test_concurrent_nodes_never_overcommit(self, store: Store,
                                                     second: Store) -> None:
        got = await asyncio.gather(*(
            s.share_budget(f"n{i}-{j}", ttl=LONG, want=7, budget=20)
            for i in range(6) for j, s in enumerate((store, second))
        ))
        assert sum(slots for slots, _ in got) == 20
        assert all(0 <= slots <= 7 for slots, _ in got)
