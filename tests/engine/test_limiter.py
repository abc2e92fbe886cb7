"""The adaptive limit on its own: slow start, additive increase, one cut per round."""

from __future__ import annotations

import asyncio

import pytest

from barge.engine.limiter import BACKOFF_FACTOR, AdaptiveLimiter, Outcome


async def _fill(limiter: AdaptiveLimiter, n: int) -> list[int]:
    return [await limiter.acquire() for _ in range(n)]


@pytest.mark.asyncio
async def test_slow_start_adds_one_per_success_up_to_the_maximum() -> None:
    limiter = AdaptiveLimiter(10, initial=2)
    assert limiter.limit == 2
    for expected in (3, 4, 5):
        limiter.release(await limiter.acquire(), Outcome.SUCCESS)
        assert limiter.limit == expected
    for _ in range(20):
        limiter.release(await limiter.acquire(), Outcome.SUCCESS)
    assert limiter.limit == 10


@pytest.mark.asyncio
async def test_overload_cuts_to_a_fraction_of_what_was_in_flight_once_per_round() -> None:
    limiter = AdaptiveLimiter(100, initial=20)
    rounds = await _fill(limiter, 20)
    limiter.release(rounds.pop(), Outcome.OVERLOAD)  # 20 in flight when it came
    assert limiter.limit == int(20 * BACKOFF_FACTOR)
    # The other requests of that round were sent before the cut: no further cuts.
    for r in rounds[:5]:
        limiter.release(r, Outcome.OVERLOAD)
    assert limiter.limit == int(20 * BACKOFF_FACTOR)
    assert limiter.cuts == 1


@pytest.mark.asyncio
async def test_after_a_cut_growth_is_additive_and_cautious_near_the_ceiling() -> None:
    limiter = AdaptiveLimiter(100, initial=10)
    limiter.release((await _fill(limiter, 10))[0], Outcome.OVERLOAD)
    for _ in range(9):
        limiter.release(0, Outcome.SUCCESS)  # drain the rest of the round
    assert limiter.limit == 9
    successes = 0
    while limiter.limit < 10:
        limiter.release(await limiter.acquire(), Outcome.SUCCESS)
        successes += 1
    # One step below the old ceiling takes CAUTION x limit successes, not one.
    assert successes > 9 * 2


@pytest.mark.asyncio
async def test_the_limit_never_drops_below_one() -> None:
    limiter = AdaptiveLimiter(5, initial=1)
    for _ in range(5):
        limiter.release(await limiter.acquire(), Outcome.OVERLOAD)
    assert limiter.limit == 1


@pytest.mark.asyncio
async def test_acquire_waits_at_the_limit_and_release_lets_one_in() -> None:
    limiter = AdaptiveLimiter(2, initial=2)
    held = await _fill(limiter, 2)
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    limiter.release(held[0], Outcome.IGNORE)
    await asyncio.wait_for(waiter, 1)
    assert limiter.in_flight == 2


@pytest.mark.asyncio
async def test_a_cancelled_waiter_does_not_take_a_slot() -> None:
    limiter = AdaptiveLimiter(1, initial=1)
    held = await limiter.acquire()
    cancelled = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    cancelled.cancel()
    limiter.release(held, Outcome.IGNORE)
    await asyncio.wait_for(second, 1)
    assert limiter.in_flight == 1


@pytest.mark.asyncio
async def test_room_waits_until_a_request_would_get_a_slot_at_once() -> None:
    limiter = AdaptiveLimiter(2, initial=2)
    assert limiter.has_room()
    await limiter.room()  # returns at once
    held = await _fill(limiter, 2)
    assert not limiter.has_room()
    room = asyncio.create_task(limiter.room())
    queued = asyncio.create_task(limiter.acquire())  # a retry waiting for a slot
    await asyncio.sleep(0.02)
    limiter.release(held[0], Outcome.IGNORE)
    await asyncio.wait_for(queued, 1)  # the slot went to the request that waited for it
    await asyncio.sleep(0.02)
    assert not room.done()
    limiter.release(held[1], Outcome.IGNORE)
    await asyncio.wait_for(room, 1)
    assert limiter.has_room()


@pytest.mark.asyncio
async def test_a_cancelled_acquire_leaves_room_for_waiters() -> None:
    limiter = AdaptiveLimiter(1, initial=1)
    held = await limiter.acquire()
    waiting = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    room = asyncio.create_task(limiter.room())
    await asyncio.sleep(0.01)
    limiter.release(held, Outcome.IGNORE)  # the slot goes to ``waiting`` ...
    waiting.cancel()  # ... which leaves before it takes it
    await asyncio.gather(waiting, return_exceptions=True)
    await asyncio.wait_for(room, 1)
    assert limiter.in_flight == 0
