"""Pacing per-minute budgets: the bucket maths on its own (smooth over any stretch,
corrected by usage, held by rate-limit headers), the router's use of it, and whole
batches against real loopback upstreams, measured where the requests arrive."""

from __future__ import annotations

import itertools
import random
import time
from bisect import bisect_left
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
from multidict import CIMultiDict, CIMultiDictProxy
from upstream import UpstreamConfig, UpstreamServer

from barge.app import App
from barge.domain.status import Status
from barge.engine.dispatch import _for_route
from barge.engine.limiter import Outcome
from barge.engine.pacing import (
    BURST_SECONDS,
    DEFAULT_MAX_TOKENS,
    REQUESTS,
    TOKENS,
    Bucket,
    Pacer,
    estimate_tokens,
    parse_duration,
    rate_limit_holds,
)
from barge.engine.router import Route, Router
from barge.upstreams.client import UpstreamClient
from barge.upstreams.config import UpstreamSpec

CHAT = "/v1/chat/completions"


def most_in_window(times: list[float], window: float,
                   weights: list[float] | None = None) -> float:
    """The most (summed ``weights``, else counted) of ``times`` in any [t, t + window)."""
    order = sorted(range(len(times)), key=times.__getitem__)
    ts = [times[i] for i in order]
    ws = [weights[i] if weights is not None else 1.0 for i in order]
    prefix = [0.0]
    for w in ws:
        prefix.append(prefix[-1] + w)
    best = 0.0
    for i, t in enumerate(ts):
        j = bisect_left(ts, t + window)
        best = max(best, prefix[j] - prefix[i])
    return best


def greedy(bucket: Bucket, costs: list[float], *, used: list[float] | None = None
           ) -> list[float]:
    """Send each request as soon as the bucket lets it (settling ``used`` at once);
    the send times."""
    now = 0.0
    times = []
    for i, cost in enumerate(costs):
        now += bucket.wait(now)
        bucket.take(cost, now)
        if used is not None:
            bucket.adjust(used[i] - cost, now)
        times.append(now)
    return times


# -- the bucket ---------------------------------------------------------------------------

def test_requests_are_paced_over_every_stretch_not_only_the_minute() -> None:
    bucket = Bucket(600)  # 10 a second
    times = greedy(bucket, [1.0] * 1500)
    burst = 1 + 10 * BURST_SECONDS  # one request, plus BURST_SECONDS of the rate
    for window in (0.1, 0.5, 1.0, 10.0, 60.0):
        assert most_in_window(times, window) <= 10 * window + burst, window
    assert most_in_window(times, 1.0) <= 11  # about its share of a second, not 600 at once
    # And the budget is used: 600 in any minute (the burst aside).
    assert most_in_window(times, 60.0) >= 600
    assert times[-1] == pytest.approx((1500 - burst) / 10, abs=0.01)


def test_tokens_of_any_size_hold_their_share_of_any_window() -> None:
    rng = random.Random(7)
    costs = [float(rng.randint(1, 800)) for _ in range(3000)]
    bucket = Bucket(60_000)  # 1,000 tokens a second
    times = greedy(bucket, costs)
    for window in (0.25, 1.0, 5.0, 60.0):
        # At most its share of the window, one request (of any size), and the burst.
        assert most_in_window(times, window, costs) <= 1000 * (window + BURST_SECONDS) + 800
    minute = most_in_window(times, 60.0, costs)
    assert 60_000 * 0.97 <= minute <= 60_000 + 100 + 800


def test_a_request_bigger_than_the_burst_still_goes_and_the_debt_waits() -> None:
    bucket = Bucket(600)  # 10 tokens a second, a burst of 1
    assert bucket.wait(0.0) == 0
    bucket.take(50, 0.0)  # five seconds' worth
    assert bucket.wait(0.0) == pytest.approx(4.9)
    assert bucket.wait(4.9) == 0


def test_usage_corrects_the_estimate_both_ways() -> None:
    # Charged 100 a request, the upstream says 20 were used: the budget goes on what
    # was used, not on the estimate (which would allow only a fifth of it).
    bucket = Bucket(60_000)
    times = greedy(bucket, [100.0] * 4000, used=[20.0] * 4000)
    assert 0.97 <= most_in_window(times, 60.0, [20.0] * 4000) / 60_000 <= 1.01
    # Charged 10, used 50: the difference is taken too, so the budget still holds.
    bucket = Bucket(60_000)
    times = greedy(bucket, [10.0] * 2000, used=[50.0] * 2000)
    assert 0.97 <= most_in_window(times, 60.0, [50.0] * 2000) / 60_000 <= 1.01
    assert most_in_window(times, 1.0, [50.0] * 2000) <= 1000 * (1 + BURST_SECONDS) + 50


def test_a_refund_never_fills_the_bucket_past_its_burst() -> None:
    bucket = Bucket(6000)  # 100 a second, burst 10
    bucket.adjust(-1000, 0.0)
    assert bucket.level == pytest.approx(10)


def test_a_hold_stops_everything_until_the_reset_then_starts_empty() -> None:
    pacer = Pacer(600, None, now=0.0)
    assert not pacer.holding(0.0)
    pacer.hint({REQUESTS: 1.5}, 0.0)
    assert pacer.holding(0.0) and pacer.wait(0.0) == pytest.approx(1.5)
    assert pacer.allowance(1.0) == 0
    assert pacer.wait(1.5) == 0
    pacer.take(0, 1.5)
    assert pacer.wait(1.5) == pytest.approx(0.1)  # no burst saved up while held
    # A hold on a budget without a bucket holds the whole upstream.
    bare = Pacer(now=0.0)
    bare.hint({TOKENS: 2.0}, 10.0)
    assert bare.wait(10.0) == pytest.approx(2.0)
    assert bare.wait(12.0) == 0


def test_a_cluster_node_paces_to_its_part_of_the_budget() -> None:
    bucket = Bucket(600)
    bucket.scale(0.5, 0.0)
    times = greedy(bucket, [1.0] * 200)
    assert times[-1] == pytest.approx((200 - 1.5) / 5, abs=0.01)


# -- rate-limit headers --------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5),
    ("2", 2.0), ("1.5s", 1.5), (" 3s ", 3.0), ("250us", 0.00025), ("0s", 0.0),
])
def test_reset_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "s", "abc", "1x", "-1s", "1s2", "nan", "inf",
                                  "1s 2s", "9" * 100])
def test_unreadable_reset_durations(text: str | None) -> None:
    assert parse_duration(text) is None


def _headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def test_rate_limit_headers_say_which_budget_is_spent() -> None:
    spent = _headers(x_ratelimit_remaining_requests="0", x_ratelimit_reset_requests="1s",
                     x_ratelimit_remaining_tokens="5000", x_ratelimit_reset_tokens="6m0s")
    assert rate_limit_holds(spent, rejected=True, tokens=300) == {REQUESTS: 1.0}
    # A success that spent the last request of the budget: hold before the next 429.
    assert rate_limit_holds(spent, rejected=False) == {REQUESTS: 1.0}
    # Not enough tokens left for this request: its 429 is about tokens.
    few = _headers(x_ratelimit_remaining_requests="40", x_ratelimit_reset_requests="1s",
                   x_ratelimit_remaining_tokens="100", x_ratelimit_reset_tokens="20ms")
    assert rate_limit_holds(few, rejected=True, tokens=300) == {TOKENS: 0.02}
    assert rate_limit_holds(few, rejected=False, tokens=300) == {}  # fine for now
    # A reset without a count, on a 429: that budget is spent.
    assert rate_limit_holds(_headers(x_ratelimit_reset_tokens="2s"), rejected=True) == {
        TOKENS: 2.0}
    # Headers with nothing usable, or none at all: nothing to hold.
    assert rate_limit_holds(_headers(x_ratelimit_remaining_requests="0",
                                     x_ratelimit_reset_requests="soon"), rejected=True) == {}
    assert rate_limit_holds(_headers(), rejected=True) == {}
    # An absurd reset is capped, as Retry-After is.
    assert rate_limit_holds(_headers(x_ratelimit_reset_requests="99h"), rejected=True) == {
        REQUESTS: 600.0}


# -- estimating a request's tokens ---------------------------------------------------------

def test_estimates_of_chat_completions_and_embeddings() -> None:
    chat = {"model": "m", "messages": [{"role": "system", "content": "x" * 10},
                                       {"role": "user", "content": [
                                           {"type": "text", "text": "y" * 7},
                                           {"type": "image_url", "image_url": {"url": "u"}}]}]}
    assert estimate_tokens(CHAT, chat) == 5 + DEFAULT_MAX_TOKENS  # 17 chars, rounded up
    assert estimate_tokens(CHAT, {**chat, "max_tokens": 40}) == 45
    assert estimate_tokens(CHAT, {**chat, "max_completion_tokens": 30, "max_tokens": 40}) == 35
    assert estimate_tokens(CHAT, {**chat, "max_tokens": 40, "n": 3}) == 125
    assert estimate_tokens("/v1/completions", {"prompt": "abcdefgh", "max_tokens": 2}) == 4
    assert estimate_tokens("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 0}) == 3
    assert estimate_tokens("/v1/embeddings", {"input": ["abcd", "abcde"]}) == 3
    assert estimate_tokens("/v1/embeddings", {"input": [[1, 2], [3]]}) == 3
    assert estimate_tokens("/v1/responses", {"input": "abcd", "max_output_tokens": 9}) == 10


@pytest.mark.parametrize("body", [
    None, [], "text", {"messages": "hello"}, {"messages": [None, 3, {"content": None}]},
    {"messages": [{"content": {"nested": [[[["deep"]]]]}}]}, {"max_tokens": True},
    {"max_tokens": -5}, {"max_tokens": "100"}, {"n": 0},
    {"messages": [[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]},
])
def test_estimates_of_odd_bodies_never_fail(body: Any) -> None:
    assert estimate_tokens(CHAT, body) >= 0
    assert estimate_tokens("/v1/embeddings", body) >= 0


# -- the router ------------------------------------------------------------------------------

def _route(name: str, **spec: Any) -> Route:
    client = UpstreamClient("http://127.0.0.1:9/v1", api_key=None, timeout=1.0,
                            max_connections=8)
    return Route(UpstreamSpec(name, "http://127.0.0.1:9/v1", concurrency=8, **spec), client)


@pytest.mark.asyncio
async def test_the_router_has_no_room_while_paced_and_wakes_on_the_refill() -> None:
    router = Router([_route("a", requests_per_minute=600)])
    taken = []
    # Two at once (one request and the burst), then one every 0.1 s.
    for _ in range(6):
        await router.room()
        route, granted = await router.acquire("m")
        taken.append(time.monotonic())
        router.release(route, granted, Outcome.SUCCESS, healthy=True)
        if len(taken) == 2:
            assert not router.has_room()
    gaps = [b - a for a, b in itertools.pairwise(taken)]
    assert gaps[0] < 0.02
    for gap in gaps[1:]:
        assert 0.08 <= gap <= 0.13, gaps  # woken on the refill, not at the next recheck


@pytest.mark.asyncio
async def test_a_paced_replica_is_passed_over_then_the_soonest_is_waited_for() -> None:
    a, b = _route("a", requests_per_minute=60), _route("b", requests_per_minute=120)
    router = Router([a, b])
    started = time.monotonic()
    got = [(await router.acquire("m"))[0].name for _ in range(2)]
    assert sorted(got) == ["a", "b"]  # a paced one passed over for the other
    assert time.monotonic() - started < 0.05
    assert not router.has_room()  # both empty
    route, _ = await router.acquire("m")
    waited = time.monotonic() - started
    assert route is b and 0.35 <= waited <= 0.5  # b refills first (0.4 s), a after 0.9 s


@pytest.mark.asyncio
async def test_one_upstream_without_budgets_has_no_pacer() -> None:
    router = Router([_route("a")])
    assert router.routes[0].pacer is None and not router.counts_tokens
    assert Router([_route("a", tokens_per_minute=1000)]).counts_tokens


def test_priority_goes_in_the_priority_field_only_where_there_is_one() -> None:
    line = {"custom_id": "x", "body": {"model": "m", "messages": []}}
    body = orjson.dumps(line["body"])
    plain, ranked = _route("a"), _route("b", priority_field="priority")
    assert _for_route(plain, body, line, "m", 5) is body
    assert _for_route(ranked, body, line, "m", None) is body
    assert orjson.loads(_for_route(ranked, body, line, "m", 5)) == {
        "model": "m", "messages": [], "priority": 5}
    same = {"custom_id": "x", "body": {"model": "m", "priority": 5}}
    same_body = orjson.dumps(same["body"])
    assert _for_route(ranked, same_body, same, "m", 5) is same_body
    aliased = _route("c", priority_field="prio", model_alias="n")
    assert orjson.loads(_for_route(aliased, body, line, "m", 0)) == {
        "model": "n", "messages": [], "prio": 0}


# -- whole batches, measured at the upstream -------------------------------------------------

def chat_line(custom_id: str, content: str = "hi", **extra: Any) -> bytes:
    mock = extra.pop("x_mock", {})
    body: dict[str, Any] = {"model": "gpt-test",
                            "messages": [{"role": "user", "content": content}],
                            "x_mock": {"key": custom_id, **mock}, **extra}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT,
                         "body": body})


@pytest.mark.asyncio
async def test_requests_per_minute_holds_over_every_second(tmp_path: Path) -> None:
    n = 30
    async with UpstreamServer(UpstreamConfig(latency=0.01)) as up:
        specs = (UpstreamSpec("paced", up.base_url, requests_per_minute=600),)
        settings = fast_settings(tmp_path / "data", up.base_url, upstreams=specs)
        async with App(settings) as app:
            b = await wait_for_batch(app, await submit(
                app, jsonl([chat_line(f"r-{i}") for i in range(n)])), timeout=30)
            out, err = results(app, b)
    assert b.status is Status.COMPLETED
    assert_each_once(out, err, {f"r-{i}" for i in range(n)})
    arrivals = up.stats.arrivals
    assert len(arrivals) == n
    # About 10 in any second, never the minute's 600 at once (one request and the
    # burst over its share, and one for the timers).
    assert most_in_window(arrivals, 1.0) <= 12
    assert most_in_window(arrivals, 0.5) <= 7
    spread = max(arrivals) - min(arrivals)
    assert (n - 2) / 10 * 0.95 <= spread <= (n - 2) / 10 + 1.0  # and the budget is used


@pytest.mark.asyncio
async def test_tokens_per_minute_holds_measured_by_the_usage_reported(tmp_path: Path) -> None:
    # Each request is estimated at 10 + 100 tokens but uses ~23: the usage the upstream
    # reports gives the difference back, so the budget is used, and not exceeded.
    n = 60
    per_second = 500
    async with UpstreamServer(UpstreamConfig(latency=0.005)) as up:
        specs = (UpstreamSpec("paced", up.base_url, tokens_per_minute=per_second * 60),)
        settings = fast_settings(tmp_path / "data", up.base_url, upstreams=specs)
        lines = [chat_line(f"t-{i}", f"{i:04d}" * 10, max_tokens=100) for i in range(n)]
        async with App(settings) as app:
            b = await wait_for_batch(app, await submit(app, jsonl(lines)), timeout=30)
            out, err = results(app, b)
    assert b.status is Status.COMPLETED
    assert_each_once(out, err, {f"t-{i}" for i in range(n)})
    used = {o["custom_id"]: o["response"]["body"]["usage"]["total_tokens"] for o in out}
    keys, arrivals = up.stats.keys, up.stats.arrivals
    assert len(keys) == len(arrivals) == n
    tokens = [float(used[k]) for k in keys]
    total = sum(tokens)
    spread = max(arrivals) - min(arrivals)
    # Any second gets about its share: the burst and one request's estimate over it.
    assert most_in_window(arrivals, 1.0, tokens) <= per_second * (1 + BURST_SECONDS) + 110
    # Over the whole run: the budget holds, and is used (not a fifth of it, as the
    # estimates alone would allow).
    assert total <= per_second * (spread + BURST_SECONDS) + 110
    assert total / spread >= 0.7 * per_second, (total, spread)


@pytest.mark.asyncio
async def test_a_429_with_rate_limit_headers_holds_requests_until_the_reset(
    tmp_path: Path,
) -> None:
    # No budget configured: the upstream's 429 says its request budget is spent for
    # 1 s (and no Retry-After). Barge sends nothing new until then.
    limited = {"status": 429, "fail_times": 1, "headers": {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s"}}
    lines = [chat_line("r-0", x_mock=limited)]
    lines += [chat_line(f"r-{i}", x_mock={"delay": 0.05}) for i in range(1, 20)]
    async with UpstreamServer(UpstreamConfig()) as up:
        settings = fast_settings(tmp_path / "data", up.base_url, max_attempts=3)
        async with App(settings) as app:
            started = time.monotonic()
            b = await wait_for_batch(app, await submit(app, jsonl(lines)), timeout=30)
            took = time.monotonic() - started
            out, err = results(app, b)
    assert b.status is Status.COMPLETED and err == []
    assert_each_once(out, err, {f"r-{i}" for i in range(20)})
    keys, arrivals = up.stats.keys, up.stats.arrivals
    first_429 = arrivals[keys.index("r-0")]
    # Those sent with it came at once; nothing after it until the reset, r-0 included.
    later = [t - first_429 for t in arrivals if t > first_429 + 0.03]
    assert later and min(later) >= 0.9, later[:5]
    assert took >= 0.9
    assert up.stats.attempts["r-0"] == 2


@pytest.mark.asyncio
async def test_priority_field_carries_each_requests_rank(tmp_path: Path) -> None:
    seen: list[Any] = []
    async with UpstreamServer(UpstreamConfig()) as a, UpstreamServer(UpstreamConfig()) as c:
        original = a._behave

        async def spy(request: Any, endpoint: str, body: dict[str, Any], *rest: Any) -> Any:
            seen.append(body.get("priority", "absent"))
            return await original(request, endpoint, body, *rest)

        a._behave = spy  # type: ignore[method-assign]
        specs = (UpstreamSpec("vllm", a.base_url, models=("gpt-test",),
                              priority_field="priority"),
                 UpstreamSpec("other", c.base_url, models=("other",)))
        settings = fast_settings(tmp_path / "data", a.base_url, upstreams=specs)
        async with App(settings) as app:
            lines = [chat_line("p-0"), chat_line("p-1", priority=99)]
            b = await wait_for_batch(app, await submit(app, jsonl(lines)), timeout=20)
            out, _ = results(app, b)
    assert b.status is Status.COMPLETED and len(out) == 2
    # Due in 24 h: its rank is the minutes left (1439 or 1440), whatever the body said.
    assert len(seen) == 2 and all(type(p) is int and 1430 <= p <= 1440 for p in seen), seen


@pytest.mark.asyncio
async def test_without_priority_field_the_body_goes_unchanged(tmp_path: Path) -> None:
    async with UpstreamServer(UpstreamConfig()) as a:
        specs = (UpstreamSpec("plain", a.base_url),)
        settings = fast_settings(tmp_path / "data", a.base_url, upstreams=specs)
        async with App(settings) as app:
            b = await wait_for_batch(app, await submit(
                app, jsonl([chat_line("e-0", x_mock={"echo": True})])), timeout=20)
            out, _ = results(app, b)
    assert b.status is Status.COMPLETED
    echoed = out[0]["response"]["body"]["echo"]
    assert "priority" not in echoed and echoed["model"] == "gpt-test"
