"""Routing across several real loopback upstreams: by model, replicas sharing the load by
what each can take, a replica that goes down mid-batch and comes back, aliases. Each
upstream counts what it receives; nothing is mocked on Barge's side."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from engine.helpers import (
    assert_each_once,
    fast_settings,
    jsonl,
    results,
    submit,
    wait_for_batch,
)
from upstream import UpstreamConfig, UpstreamServer

from barge.app import App
from barge.domain.status import Status
from barge.upstreams.config import UpstreamSpec


def line(custom_id: str, model: str) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}],
                            "x_mock": {"key": custom_id}}
    return orjson.dumps({"custom_id": custom_id, "method": "POST",
                         "url": "/v1/chat/completions", "body": body})


def mixed(n_m: int, n_n: int) -> bytes:
    lines = [line(f"m-{i}", "llama-3.1-8b") for i in range(n_m)]
    lines += [line(f"n-{i}", "qwen-7b") for i in range(n_n)]
    return jsonl(lines)


def received(up: UpstreamServer) -> Counter[str]:
    return Counter(up.stats.keys)


@pytest.mark.asyncio
async def test_requests_go_to_upstreams_serving_their_model_in_proportion_to_capacity(
    tmp_path: Path,
) -> None:
    # Two replicas of one model, the second able to take twice as many at once (beyond
    # that each answers 429), and one upstream of another model.
    async with UpstreamServer(UpstreamConfig(max_concurrency=6, latency=0.03)) as a, \
            UpstreamServer(UpstreamConfig(max_concurrency=12, latency=0.03)) as b, \
            UpstreamServer(UpstreamConfig(latency=0.01)) as c:
        specs = (
            UpstreamSpec("gpu-a", a.base_url, models=("llama-*",), concurrency=32),
            UpstreamSpec("gpu-b", b.base_url, models=("llama-3.1-8b",), concurrency=32),
            UpstreamSpec("cpu-c", c.base_url, models=("qwen-*",), concurrency=8),
        )
        settings = fast_settings(tmp_path / "data", a.base_url, upstreams=specs,
                                 max_attempts=20)
        async with App(settings) as app:
            batch_id = await submit(app, mixed(1500, 200))
            b_ = await wait_for_batch(app, batch_id, timeout=60)
            out, err = results(app, b_)
    assert b_.status is Status.COMPLETED
    assert err == []
    assert_each_once(out, err, {f"m-{i}" for i in range(1500)} | {f"n-{i}" for i in range(200)})
    got_a, got_b, got_c = received(a), received(b), received(c)
    # Every request reached an upstream that serves its model.
    assert all(k.startswith("m-") for k in got_a | got_b)
    assert all(k.startswith("n-") for k in got_c)
    assert {k for k in got_c} == {f"n-{i}" for i in range(200)}
    # The replicas' shares follow their capacity (2:1), measured in answers served.
    served_a = a.stats.by_status[200]
    served_b = b.stats.by_status[200]
    assert served_a + served_b == 1500
    assert 1.3 < served_b / served_a < 3.5, (served_a, served_b)
    # No upstream ever saw more than its concurrency.
    assert c.stats.max_in_flight <= 8


@pytest.mark.asyncio
async def test_a_replica_down_mid_batch_its_requests_finish_elsewhere(tmp_path: Path) -> None:
    async with UpstreamServer(UpstreamConfig(latency=0.02)) as a, \
            UpstreamServer(UpstreamConfig(latency=0.02)) as b, \
            UpstreamServer(UpstreamConfig(latency=0.02)) as c:
        specs = (
            UpstreamSpec("a", a.base_url, models=("llama-*",), concurrency=8),
            UpstreamSpec("b", b.base_url, models=("llama-*",), concurrency=8),
            UpstreamSpec("c", c.base_url, models=("qwen-*",), concurrency=4),
        )
        settings = fast_settings(tmp_path / "data", a.base_url, upstreams=specs,
                                 max_attempts=2, backoff_max=0.5)
        async with App(settings) as app:
            batch_id = await submit(app, mixed(1200, 200))
            while a.stats.total < 150:
                await asyncio.sleep(0.01)
            await a.stop()  # replica a goes down mid-batch: refused connections
            b_before = b.stats.total
            await asyncio.sleep(1.0)
            assert not app.router.routes[0].limiter.in_flight  # nothing left on it
            assert app.router.routes[0].breaker.opened  # out of rotation
            b_during = b.stats.total - b_before
            await a.start()  # and comes back
            b_ = await wait_for_batch(app, batch_id, timeout=60)
            out, err = results(app, b_)
            back_in_rotation = not app.router.routes[0].breaker.opened
    assert b_.status is Status.COMPLETED
    assert err == []  # with 2 attempts each: the refusals used none of them
    assert_each_once(out, err, {f"m-{i}" for i in range(1200)} | {f"n-{i}" for i in range(200)})
    assert set(received(c)) == {f"n-{i}" for i in range(200)}  # the other model, untouched
    assert c.stats.max_in_flight <= 4
    assert b_during > 100  # the other replica took the work while a was down
    assert a.stats.by_status[200] + b.stats.by_status[200] == 1200
    assert a.stats.max_in_flight <= 8 and b.stats.max_in_flight <= 8
    assert back_in_rotation


@pytest.mark.asyncio
async def test_model_alias_rewrites_the_model_on_the_way_out(tmp_path: Path) -> None:
    seen: list[str] = []
    async with UpstreamServer(UpstreamConfig()) as a:
        original = a._behave

        async def spy(request: Any, endpoint: str, body: dict[str, Any], *rest: Any) -> Any:
            seen.append(body["model"])
            return await original(request, endpoint, body, *rest)

        a._behave = spy  # type: ignore[method-assign]
        specs = (UpstreamSpec("local", a.base_url, models=("gpt-4o-mini", "llama-*"),
                              model_alias={"gpt-4o-mini": "llama-3.1-8b"}),)
        settings = fast_settings(tmp_path / "data", a.base_url, upstreams=specs)
        async with App(settings) as app:
            data = jsonl([line("x-0", "gpt-4o-mini"), line("x-1", "llama-3.1-70b")])
            b_ = await wait_for_batch(app, await submit(app, data), timeout=20)
            out, _ = results(app, b_)
    assert b_.status is Status.COMPLETED
    assert sorted(seen) == ["llama-3.1-70b", "llama-3.1-8b"]
    assert {o["custom_id"] for o in out} == {"x-0", "x-1"}


@pytest.mark.asyncio
async def test_a_replica_that_answers_500_leaves_the_rotation(tmp_path: Path) -> None:
    async with UpstreamServer(UpstreamConfig(fail_all_status=500)) as bad, \
            UpstreamServer(UpstreamConfig(latency=0.01)) as good:
        specs = (
            UpstreamSpec("bad", bad.base_url, concurrency=8),
            UpstreamSpec("good", good.base_url, concurrency=8),
        )
        settings = fast_settings(tmp_path / "data", good.base_url, upstreams=specs,
                                 max_attempts=5, backoff_max=2.0)
        async with App(settings) as app:
            b_ = await wait_for_batch(app, await submit(app, mixed(600, 0)), timeout=60)
            out, err = results(app, b_)
            out_of_rotation = app.router.routes[0].breaker.opened
    assert b_.status is Status.COMPLETED
    assert err == []  # retried on the good replica, every one
    assert_each_once(out, err, {f"m-{i}" for i in range(600)})
    assert out_of_rotation
    # Five failures took it out; after that only its half-open probes reached it.
    assert bad.stats.total < 40, bad.stats.total
    assert good.stats.by_status[200] == 600
