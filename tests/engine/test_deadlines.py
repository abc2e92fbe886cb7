"""Deadlines and fair share, on a real in-process App against a loopback upstream that
is kept busy: a batch due in an hour overtakes a large one due in a day, and two
accounts' batches progress in proportion to the accounts' weights."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from engine.helpers import fast_settings, simple_input, submit, wait_for_batch
from upstream import UpstreamConfig, UpstreamServer

from barge.app import App
from barge.domain.status import TERMINAL, Status


@pytest.mark.asyncio
async def test_a_1h_batch_submitted_behind_a_large_24h_batch_finishes_first(
    tmp_path: Path,
) -> None:
    async with UpstreamServer(UpstreamConfig(latency=0.02, record_bodies=False)) as up:
        settings = fast_settings(tmp_path / "data", up.base_url, upstream_concurrency=8)
        async with App(settings) as app:
            now = int(time.time())
            big = await submit(app, simple_input(3000, "big"), expires_at=now + 86400)
            while (await app.store.get_batch(None, big)).completed < 200:
                await asyncio.sleep(0.02)  # the large batch has the upstream to itself
            small = await submit(app, simple_input(400, "small"), expires_at=now + 3600,
                                 window="1h")
            while (await app.store.get_batch(None, small)).status is not Status.PROCESSING:
                await asyncio.sleep(0.005)
            big_before = (await app.store.get_batch(None, big)).completed
            small_b = await wait_for_batch(app, small, timeout=30)
            big_then = await app.store.get_batch(None, big)
            big_b = await wait_for_batch(app, big, timeout=60)
    assert small_b.status is Status.COMPLETED and big_b.status is Status.COMPLETED
    assert big_then.status is Status.PROCESSING  # the 1h batch finished first
    # While the 1h batch ran, the 24h batch got few turns: an even split would have
    # given it about as many as the 1h batch's 400 (a 1h batch is 24x as urgent).
    assert big_then.completed - big_before < 400 / 4, (big_before, big_then.completed)


@pytest.mark.asyncio
async def test_two_accounts_progress_in_proportion_to_their_weights(tmp_path: Path) -> None:
    async with UpstreamServer(UpstreamConfig(latency=0.02, record_bodies=False)) as up:
        settings = fast_settings(tmp_path / "data", up.base_url, upstream_concurrency=8)
        async with App(settings) as app:
            await app.store.set_account_weight("heavy", 3)
            assert app.engine is not None
            await app.engine.refresh_weights()
            a = await submit(app, simple_input(2000, "a"), account="heavy", poke=False)
            b = await submit(app, simple_input(2000, "b"), account="light")
            counts = (0, 0)
            while True:  # sample once the heavy account has done about half
                ra = await app.store.get_batch(None, a)
                rb = await app.store.get_batch(None, b)
                counts = (ra.completed, rb.completed)
                if ra.completed >= 1000 or ra.status in TERMINAL:
                    break
                await asyncio.sleep(0.02)
            await wait_for_batch(app, a, timeout=60)
            await wait_for_batch(app, b, timeout=60)
    heavy, light = counts
    assert light > 0
    assert 3 * 0.8 <= heavy / light <= 3 * 1.2, counts
