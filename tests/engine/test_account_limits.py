"""Per-account limits (``max_in_flight``, ``tokens_per_minute``), on a real in-process
App against a loopback upstream, measured at the upstream: a limited account never has
more requests there at once, or more tokens a minute, than its limits allow, while
another account's batch proceeds at full speed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from engine.helpers import CHAT, fast_settings, jsonl, simple_input, submit, wait_for_batch
from upstream import UpstreamConfig, UpstreamServer

from barge.app import App
from barge.domain.status import Status
from barge.store.protocol import AccountSettings


@pytest.mark.asyncio
async def test_max_in_flight_caps_the_account_but_not_the_others(tmp_path: Path) -> None:
    async with UpstreamServer(UpstreamConfig(latency=0.03, record_bodies=False)) as up:
        settings = fast_settings(tmp_path / "data", up.base_url, upstream_concurrency=8)
        async with App(settings) as app:
            await app.store.set_account_settings("capped", AccountSettings(max_in_flight=2))
            assert app.engine is not None
            await app.engine.refresh_weights()
            capped = await submit(app, simple_input(300, "capped"), account="capped")
            while (await app.store.get_batch(None, capped)).completed < 40:
                await asyncio.sleep(0.02)
            # Alone, with 8 workers and room for 8 upstream: never more than 2 at once.
            assert up.stats.max_in_flight == 2, up.stats.max_in_flight
            free = await submit(app, simple_input(300, "free"), account="free")
            free_b = await wait_for_batch(app, free, timeout=30)
            capped_then = await app.store.get_batch(None, capped)
            # The other account had the rest of the workers.
            assert up.stats.max_in_flight > 2, up.stats.max_in_flight
            capped_b = await wait_for_batch(app, capped, timeout=60)
    assert free_b.status is Status.COMPLETED and capped_b.status is Status.COMPLETED
    assert capped_then.status is Status.PROCESSING, capped_then.completed


def _metered(n: int) -> bytes:
    """Requests estimated at 50 tokens (2 of prompt, up to 48 generated) whose answers
    say they used 100: the account's bucket is corrected by the usage."""
    usage = {"prompt_tokens": 2, "completion_tokens": 98, "total_tokens": 100}
    return jsonl([orjson.dumps({
        "custom_id": f"tpm-{i}", "method": "POST", "url": CHAT,
        "body": {"model": "gpt-test", "max_tokens": 48,
                 "messages": [{"role": "user", "content": f"t{i:04d}"}],
                 "x_mock": {"key": f"tpm-{i}", "usage": usage}},
    }) for i in range(n)])


@pytest.mark.asyncio
async def test_tokens_per_minute_paces_the_account_at_the_upstream(tmp_path: Path) -> None:
    async with UpstreamServer(UpstreamConfig(latency=0.01, record_bodies=False)) as up:
        settings = fast_settings(tmp_path / "data", up.base_url, upstream_concurrency=8)
        async with App(settings) as app:
            # 12000 tokens a minute: 200 a second, so 2 requests of 100 tokens a second.
            await app.store.set_account_settings(
                "metered", AccountSettings(tokens_per_minute=12_000))
            assert app.engine is not None
            await app.engine.refresh_weights()
            metered = await submit(app, _metered(9), account="metered")
            while (await app.store.get_batch(None, metered)).completed < 1:
                await asyncio.sleep(0.02)
            started = time.monotonic()
            free = await submit(app, simple_input(200, "free"), account="free")
            free_b = await wait_for_batch(app, free, timeout=30)
            free_took = time.monotonic() - started
            metered_b = await wait_for_batch(app, metered, timeout=30)
    assert free_b.status is Status.COMPLETED and metered_b.status is Status.COMPLETED
    arrivals = [t for t, key in zip(up.stats.arrivals, up.stats.keys, strict=True)
                if key.startswith("tpm-")]
    assert len(arrivals) == 9
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert 1.5 <= rate <= 2.5, (rate, arrivals)
    assert free_took < (arrivals[-1] - arrivals[0]) / 2, free_took  # not held back
