"""Against an upstream that admits only K requests at a time (429 beyond), Barge with a
far higher --upstream-concurrency finds K and stays there without a storm of 429s.
(Completion time against an ideal client that knows K is a benchmark:
bench/saturation.py, recorded in BENCHMARKS.md.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from engine.helpers import (
    assert_each_once,
    fast_settings,
    ids,
    results,
    simple_input,
    submit,
    wait_for_batch,
)
from upstream import UpstreamConfig, UpstreamServer

from barge.app import App
from barge.domain.status import Status

K = 8
N = 800


@pytest.mark.asyncio
async def test_concurrency_adapts_to_an_upstream_that_admits_k(tmp_path: Path) -> None:
    cfg = UpstreamConfig(max_concurrency=K, latency=0.02, record_bodies=False)
    async with UpstreamServer(cfg) as up:
        settings = fast_settings(tmp_path / "data", up.base_url, upstream_concurrency=128,
                                 max_attempts=50, backoff_base=0.02, backoff_max=0.5)
        async with App(settings) as app:
            b = await wait_for_batch(app, await submit(app, simple_input(N)), timeout=60)
            out, err = results(app, b)
            limiter = app.dispatcher.limiter
            final_limit = limiter.limit
    assert b.status is Status.COMPLETED
    assert err == []
    assert_each_once(out, err, ids("req", N))
    assert up.stats.by_status[200] == N
    assert up.stats.max_in_flight == K  # it did drive the upstream to K
    # A fixed limit of 128 would see most requests rejected; adapting keeps it rare.
    assert up.stats.by_status[429] <= N // 10
    assert K - 2 <= final_limit <= K + 2
