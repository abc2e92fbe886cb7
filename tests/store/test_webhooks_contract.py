"""The Store contract, continued: webhook endpoints and the outbox of batch events — one
delivery per endpoint wanting the event, made in the move that ends the batch (every verb
that can), claims that two stores never share, attempts recorded only under their claim,
deletion stopping what is pending. Every store of ``STORE_FACTORIES``
(test_store_contract.py) runs it, with that module's fixtures (through conftest.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from store.test_store_contract import (
    ACCT,
    OTHER,
    PAST_SHORT,
    SHORT,
    S,
    batch_in,
    new_file,
    processing,
)

from barge.domain.models import LineError
from barge.domain.webhooks import (
    ENDPOINT_DELETED,
    EVENT_TYPES,
    DeliveryStatus,
    WebhookAttempt,
    WebhookClaim,
    WebhookEndpoint,
    new_endpoint_id,
    new_secret,
)
from barge.exceptions import Conflict, NotFound
from barge.store.protocol import Store

LONG_LEASE = 60.0
D = DeliveryStatus


async def endpoint(store: Store, account: str = ACCT, events: tuple[str, ...] = EVENT_TYPES,
                   url: str = "https://hooks.example.com/in") -> WebhookEndpoint:
    e = WebhookEndpoint(id=new_endpoint_id(), account=account, url=url, events=events,
                        secret=new_secret(), created_at=int(time.time()))
    await store.create_webhook_endpoint(e)
    return e


async def claim_all(store: Store, claimer: str = "node-a/1",
                    lease: float = LONG_LEASE) -> list[WebhookClaim]:
    return await store.claim_webhook_deliveries(claimer, limit=100, lease_seconds=lease)


class TestEndpoints:
    @pytest.mark.asyncio
    async def test_create_list_and_delete(self, store: Store) -> None:
        assert await store.list_webhook_endpoints(ACCT) == []
        a = await endpoint(store, events=("batch.completed", "batch.failed"))
        b = await endpoint(store, url="http://other.example.com:8080/x?y=1")
        c = await endpoint(store, OTHER)
        assert await store.list_webhook_endpoints(ACCT) == [a, b]
        assert await store.list_webhook_endpoints(OTHER) == [c]
        assert await store.list_webhook_endpoints(None) == [a, b, c]

        await store.delete_webhook_endpoint(ACCT, a.id)
        assert await store.list_webhook_endpoints(ACCT) == [b]
        with pytest.raises(NotFound):  # gone
            await store.delete_webhook_endpoint(ACCT, a.id)
        with pytest.raises(NotFound):  # another account's
            await store.delete_webhook_endpoint(ACCT, c.id)
        with pytest.raises(NotFound):
            await store.delete_webhook_endpoint(None, "we_nothing")
        await store.delete_webhook_endpoint(None, c.id)  # any account's, for None
        assert await store.list_webhook_endpoints(None) == [b]

    @pytest.mark.asyncio
    async def test_every_store_on_the_data_sees_them(self, store: Store,
                                                     second: Store) -> None:
        a = await endpoint(store)
        assert await second.list_webhook_endpoints(ACCT) == [a]
        await second.delete_webhook_endpoint(ACCT, a.id)
        assert await store.list_webhook_endpoints(None) == []


class TestOutbox:
    @pytest.mark.asyncio
    @pytest.mark.parametrize(("status", "event"), [
        (S.COMPLETED, "batch.completed"), (S.HASH_MISMATCH, "batch.failed"),
        (S.VALIDATION_FAILED, "batch.failed"), (S.EXPIRED, "batch.expired"),
        (S.CANCELLED, "batch.cancelled"),
    ])
    async def test_each_end_makes_one_event_for_each_endpoint_that_wants_it(
        self, store: Store, status: S, event: str
    ) -> None:
        wants = await endpoint(store)
        also = await endpoint(store, events=(event,))
        await endpoint(store, events=tuple(e for e in EVENT_TYPES if e != event))
        await endpoint(store, OTHER)  # another account's
        gone = await endpoint(store)
        await store.delete_webhook_endpoint(ACCT, gone.id)
        before = time.time()
        bid = await batch_in(store, status)

        deliveries = await store.webhook_deliveries(bid)
        assert [d.endpoint_id for d in deliveries] == [wants.id, also.id]
        assert {d.event_id for d in deliveries} == {deliveries[0].event_id}  # one event
        first = deliveries[0]
        assert first.event_id.startswith("evt_")
        assert (first.type, first.batch_id, first.account, first.url) == (
            event, bid, ACCT, wants.url)
        assert (first.status, first.attempts) == (D.PENDING, 0)
        assert first.last_status_code is first.last_error is first.last_attempt_at is None
        assert first.delivered_at is None
        assert int(before) <= first.created_at <= time.time()
        assert first.next_attempt_at is not None and first.next_attempt_at <= time.time() + 1
        assert await store.pending_webhook_deliveries() == 2

    @pytest.mark.asyncio
    async def test_moves_that_end_nothing_make_no_event(self, store: Store) -> None:
        await endpoint(store)
        for status in (S.PROCESSING, S.WRITING_RESULTS, S.CANCELLING):
            bid = await batch_in(store, status)
            assert await store.webhook_deliveries(bid) == []
        bid = await batch_in(store, S.COMPLETED)
        await store.transition(bid, S.DELETING)  # deleting a finished batch tells nothing
        assert len(await store.webhook_deliveries(bid)) == 1
        assert await store.pending_webhook_deliveries() == 1

    @pytest.mark.asyncio
    async def test_a_refused_move_makes_no_event(self, store: Store) -> None:
        await endpoint(store)
        bid = await batch_in(store, S.PROCESSING)
        with pytest.raises(Conflict):
            await store.transition(bid, S.COMPLETED)
        with pytest.raises(Conflict):
            await store.fail_validation(bid, errors=[], total=0)
        assert await store.webhook_deliveries(bid) == []

    @pytest.mark.asyncio
    async def test_finish_fail_validation_and_advance_make_events(self, store: Store) -> None:
        await endpoint(store)
        finished = await batch_in(store, S.WRITING_RESULTS)
        out = new_file(purpose="batch_output")
        await store.finish(finished, S.COMPLETED, files=[out], output_file_id=out.id)
        expired = await processing(store, [2])
        await store.finish(expired, S.EXPIRED, files=[])
        bad = await batch_in(store, S.VALIDATING)
        await store.fail_validation(bad, errors=[LineError("invalid_json_line", "no", 1)],
                                    total=1)
        walked = await batch_in(store, S.CANCEL)
        await store.advance(walked, [S.CANCELLING, S.CANCELLED])
        for bid, event in ((finished, "batch.completed"), (expired, "batch.expired"),
                           (bad, "batch.failed"), (walked, "batch.cancelled")):
            assert [d.type for d in await store.webhook_deliveries(bid)] == [event]

    @pytest.mark.asyncio
    async def test_each_batch_has_its_own_event(self, store: Store) -> None:
        await endpoint(store)
        one, two = await batch_in(store, S.COMPLETED), await batch_in(store, S.COMPLETED)
        (a,), (b,) = await store.webhook_deliveries(one), await store.webhook_deliveries(two)
        assert a.event_id != b.event_id


class TestClaims:
    @pytest.mark.asyncio
    async def test_a_claim_hands_out_what_the_sender_needs_once(self, store: Store) -> None:
        e = await endpoint(store)
        bid = await batch_in(store, S.COMPLETED)
        (claim,) = await claim_all(store)
        (d,) = await store.webhook_deliveries(bid)
        assert (claim.event_id, claim.type, claim.batch_id, claim.endpoint_id, claim.url,
                claim.secret, claim.attempts, claim.created_at, claim.claimer) == (
            d.event_id, "batch.completed", bid, e.id, e.url, e.secret, 0, d.created_at,
            "node-a/1")
        assert await claim_all(store, "node-b/1") == []  # held
        assert await claim_all(store) == []  # also by its own claimer
        assert await store.claim_webhook_deliveries("x", limit=0, lease_seconds=1) == []

    @pytest.mark.asyncio
    async def test_concurrent_claimers_never_share(self, store: Store, second: Store) -> None:
        await endpoint(store)
        await endpoint(store)
        for _ in range(10):
            await batch_in(store, S.COMPLETED)
        got = await asyncio.gather(*(
            s.claim_webhook_deliveries(f"n{i}", limit=3, lease_seconds=LONG_LEASE)
            for i, s in enumerate([store, second] * 5)))
        keys = [(c.event_id, c.endpoint_id) for claims in got for c in claims]
        assert len(keys) == len(set(keys)) == 20
        assert all(len(claims) <= 3 for claims in got)

    @pytest.mark.asyncio
    async def test_limit_and_due_order(self, store: Store) -> None:
        await endpoint(store)
        first = await batch_in(store, S.COMPLETED)
        await batch_in(store, S.COMPLETED)
        (c,) = await store.claim_webhook_deliveries("a", limit=1, lease_seconds=LONG_LEASE)
        assert c.batch_id == first
        assert len(await claim_all(store, "b")) == 1

    @pytest.mark.asyncio
    async def test_an_expired_claim_can_be_taken_over(self, store: Store,
                                                      second: Store) -> None:
        await endpoint(store)
        await batch_in(store, S.COMPLETED)
        (old,) = await claim_all(store, "a", lease=SHORT)
        await asyncio.sleep(PAST_SHORT)
        (new,) = await claim_all(second, "b")
        assert new.event_id == old.event_id and new.claimer == "b"
        # The first claimer's late outcome is not recorded; the second's is.
        assert not await store.record_webhook_attempt(old, WebhookAttempt(True, 200))
        assert await second.record_webhook_attempt(new, WebhookAttempt(True, 204))
        (d,) = await store.webhook_deliveries(new.batch_id)
        assert (d.status, d.attempts, d.last_status_code) == (D.DELIVERED, 1, 204)

    @pytest.mark.asyncio
    async def test_released_claims_are_due_at_once(self, store: Store) -> None:
        await endpoint(store)
        await batch_in(store, S.COMPLETED)
        await batch_in(store, S.CANCELLED)
        assert len(await claim_all(store, "a")) == 2
        await store.release_webhook_claims("someone-else")
        assert await claim_all(store, "b") == []
        await store.release_webhook_claims("a")
        assert len(await claim_all(store, "b")) == 2


class TestAttempts:
    @pytest.mark.asyncio
    async def test_delivered(self, store: Store) -> None:
        await endpoint(store)
        bid = await batch_in(store, S.COMPLETED)
        (claim,) = await claim_all(store)
        before = time.time()
        assert await store.record_webhook_attempt(claim, WebhookAttempt(True, 200))
        (d,) = await store.webhook_deliveries(bid)
        assert (d.status, d.attempts, d.last_status_code, d.last_error) == (
            D.DELIVERED, 1, 200, None)
        assert d.next_attempt_at is None
        assert d.delivered_at is not None and d.last_attempt_at is not None
        assert before - 1 <= d.delivered_at <= time.time() + 1
        assert await store.pending_webhook_deliveries() == 0
        assert await claim_all(store, "b") == []
        # Done: a second outcome for the same claim changes nothing.
        assert not await store.record_webhook_attempt(claim, WebhookAttempt(False, 500, "x", 0))

    @pytest.mark.asyncio
    async def test_failing_is_due_again_after_its_wait(self, store: Store) -> None:
        await endpoint(store)
        bid = await batch_in(store, S.COMPLETED)
        (claim,) = await claim_all(store)
        failed = WebhookAttempt(False, 500, "The endpoint answered HTTP 500.", SHORT * 2)
        assert await store.record_webhook_attempt(claim, failed)
        (d,) = await store.webhook_deliveries(bid)
        assert (d.status, d.attempts, d.last_status_code, d.last_error) == (
            D.FAILING, 1, 500, "The endpoint answered HTTP 500.")
        assert d.next_attempt_at is not None and d.last_attempt_at is not None
        assert d.next_attempt_at - d.last_attempt_at == pytest.approx(SHORT * 2, abs=0.05)
        assert await store.pending_webhook_deliveries() == 1
        assert await claim_all(store, "b") == []  # not due yet
        await asyncio.sleep(SHORT * 2 + 0.1)
        (again,) = await claim_all(store, "b")
        assert (again.event_id, again.attempts) == (claim.event_id, 1)
        timeout = WebhookAttempt(False, None, "No answer within 10 s (timeout).", 0)
        assert await store.record_webhook_attempt(again, timeout)
        (d,) = await store.webhook_deliveries(bid)
        assert (d.status, d.attempts, d.last_status_code) == (D.FAILING, 2, None)
        (third,) = await claim_all(store, "c")
        assert await store.record_webhook_attempt(third, WebhookAttempt(True, 202))
        (d,) = await store.webhook_deliveries(bid)
        assert (d.status, d.attempts, d.last_status_code, d.last_error) == (
            D.DELIVERED, 3, 202, None)

    @pytest.mark.asyncio
    async def test_given_up(self, store: Store) -> None:
        await endpoint(store)
        bid = await batch_in(store, S.EXPIRED)
        (claim,) = await claim_all(store)
        long_error = "refused " * 200
        assert await store.record_webhook_attempt(claim,
                                                  WebhookAttempt(False, None, long_error))
        (d,) = await store.webhook_deliveries(bid)
        assert (d.status, d.attempts, d.next_attempt_at) == (D.GIVEN_UP, 1, None)
        assert d.last_error is not None and d.last_error.startswith("refused refused")
        assert len(d.last_error) <= 500
        assert await store.pending_webhook_deliveries() == 0
        assert await claim_all(store, "b") == []


class TestDeletingAnEndpoint:
    @pytest.mark.asyncio
    async def test_stops_its_open_deliveries_and_keeps_the_others(self, store: Store) -> None:
        doomed = await endpoint(store)
        kept = await endpoint(store)
        done = await batch_in(store, S.COMPLETED)
        for claim in await claim_all(store):
            assert await store.record_webhook_attempt(claim, WebhookAttempt(True, 200))
        open_ = await batch_in(store, S.CANCELLED)
        held = [c for c in await claim_all(store) if c.endpoint_id == doomed.id]
        await store.delete_webhook_endpoint(ACCT, doomed.id)
        # The attempt under way is not recorded; nothing more goes to it.
        assert not await store.record_webhook_attempt(held[0], WebhookAttempt(True, 200))
        by_endpoint = {d.endpoint_id: d for d in await store.webhook_deliveries(open_)}
        assert by_endpoint[doomed.id].status is D.GIVEN_UP
        assert by_endpoint[doomed.id].last_error == ENDPOINT_DELETED
        assert by_endpoint[doomed.id].url == doomed.url  # still named
        assert by_endpoint[kept.id].status is D.PENDING
        assert {d.status for d in await store.webhook_deliveries(done)} == {D.DELIVERED}
        await store.release_webhook_claims("node-a/1")
        assert [c.endpoint_id for c in await claim_all(store, "b")] == [kept.id]


class TestPurge:
    @pytest.mark.asyncio
    async def test_forgets_old_done_deliveries_only(self, store: Store) -> None:
        await endpoint(store)
        done = await batch_in(store, S.COMPLETED)
        (claim,) = await claim_all(store)
        await store.record_webhook_attempt(claim, WebhookAttempt(True, 200))
        pending = await batch_in(store, S.EXPIRED)
        assert await store.purge_webhook_deliveries(older_than=3600) == 0
        assert len(await store.webhook_deliveries(done)) == 1
        # Everything is "old" against a cutoff in the future.
        assert await store.purge_webhook_deliveries(older_than=-60) == 1
        assert await store.webhook_deliveries(done) == []
        assert len(await store.webhook_deliveries(pending)) == 1

    @pytest.mark.asyncio
    async def test_forgets_long_deleted_endpoints_once_nothing_names_them(
        self, store: Store
    ) -> None:
        e = await endpoint(store)
        bid = await batch_in(store, S.COMPLETED)
        await store.delete_webhook_endpoint(ACCT, e.id)
        await store.purge_webhook_deliveries(older_than=-60)  # the given-up delivery
        await store.purge_webhook_deliveries(older_than=-60)  # then the endpoint
        assert await store.webhook_deliveries(bid) == []
        assert await store.list_webhook_endpoints(None) == []

