"""The engine in-process: a real App (SQLite store, local disk blobs, aiohttp upstream
client, engine) against the loopback upstream. Work is created through the store and the
blobs, not over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from engine.helpers import (
    ACCOUNT,
    assert_each_once,
    assert_file_records,
    fast_settings,
    ids,
    jsonl,
    request_line,
    results,
    simple_input,
    submit,
    wait_for_batch,
)
from upstream import UpstreamConfig, UpstreamServer

from barge.app import App
from barge.domain.ids import new_batch_id
from barge.domain.models import BatchRecord
from barge.domain.status import Status


@pytest.mark.asyncio
async def test_two_thousand_requests_complete_each_once(tmp_path: Path) -> None:
    n = 2000
    async with UpstreamServer() as up:
        settings = fast_settings(tmp_path / "data", up.base_url, upstream_concurrency=64)
        async with App(settings) as app:
            batch_id = await submit(app, simple_input(n))
            b = await wait_for_batch(app, batch_id, timeout=30)
            assert b.status is Status.COMPLETED, b
            out, err = results(app, b)
            await assert_file_records(app, b, out, err)
    assert_each_once(out, err, ids("req", n))
    assert err == [] and b.error_file_id is None
    assert (b.total, b.completed, b.failed) == (n, n, 0)
    assert b.in_progress_at and b.finalizing_at and b.completed_at
    for line in out:
        # every answer belongs to its own request (the mock echoes the content)
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"] == f"echo: {line['custom_id']}"
        assert line["response"]["status_code"] == 200
        assert line["error"] is None
    assert len({x["id"] for x in out}) == n
    assert len({x["response"]["request_id"] for x in out}) == n
    assert up.stats.total == n and set(up.stats.attempts.values()) == {1}
    assert up.stats.max_in_flight <= 64
    assert not (settings.work_dir / batch_id).exists()  # parts cleaned up


@pytest.mark.asyncio
@pytest.mark.parametrize("slice_lines", [1000, 7, 1])
async def test_http_errors_go_to_the_error_file(tmp_path: Path, slice_lines: int) -> None:
    lines, expected = [], set()
    for i in range(300):
        cid = f"r-{i}"
        expected.add(cid)
        if i % 7 == 0:
            lines.append(request_line(cid, status=400, message=f"bad {cid}"))
        elif i % 11 == 0:
            lines.append(request_line(cid, status=500, fail_times=1))  # fine on the retry
        else:
            lines.append(request_line(cid))
        if i % 50 == 0:
            lines.append(b"   ")  # blank lines are skipped, not counted
    async with UpstreamServer() as up:
        settings = fast_settings(tmp_path / "data", up.base_url, slice_lines=slice_lines)
        async with App(settings) as app:
            b = await wait_for_batch(app, await submit(app, jsonl(lines)))
            out, err = results(app, b)
            await assert_file_records(app, b, out, err)
    assert b.status is Status.COMPLETED
    assert_each_once(out, err, expected)
    bad = {f"r-{i}" for i in range(300) if i % 7 == 0}
    assert {x["custom_id"] for x in err} == bad
    for x in err:
        assert x["error"] is None  # an HTTP error is the upstream's answer, as in OpenAI's
        assert x["response"]["status_code"] == 400
        assert x["response"]["body"]["error"]["message"] == f"bad {x['custom_id']}"
    assert (b.total, b.completed, b.failed) == (300, 300 - len(bad), len(bad))
    for cid in bad:
        assert up.stats.attempts[cid] == 1  # 400 is never retried
    retried = {f"r-{i}" for i in range(300) if i % 7 and i % 11 == 0}
    for cid in retried:
        assert up.stats.attempts[cid] == 2


@pytest.mark.asyncio
async def test_small_batch_is_not_starved_by_a_big_one(tmp_path: Path) -> None:
    async with UpstreamServer(UpstreamConfig(latency=0.01)) as up:
        settings = fast_settings(tmp_path / "data", up.base_url, upstream_concurrency=8)
        async with App(settings) as app:
            big = await submit(app, simple_input(3000, "big"), poke=False)
            small = await submit(app, simple_input(20, "small"))
            s = await wait_for_batch(app, small, timeout=30)
            assert s.status is Status.COMPLETED
            b = await app.store.get_batch(None, big)
            assert b.status is Status.PROCESSING, "the small batch should finish first"
            assert b.completed < 3000
            b = await wait_for_batch(app, big, timeout=30)
            assert b.status is Status.COMPLETED
            out, err = results(app, b)
            assert_each_once(out, err, ids("big", 3000))
            s_out, s_err = results(app, s)
            assert_each_once(s_out, s_err, ids("small", 20))
    assert up.stats.max_in_flight <= 8  # the concurrency limit holds across batches
    assert b.completed_at is not None and s.completed_at is not None
    assert s.completed_at <= b.completed_at


@pytest.mark.asyncio
@pytest.mark.parametrize("poke", [True, False], ids=["poked", "store-only"])
async def test_cancel_mid_run_publishes_partial_results(tmp_path: Path, poke: bool) -> None:
    """With the poke the engine stops at once; without it (a cancel recorded by another
    process) the watcher notices within poll_interval."""
    n = 1000
    async with UpstreamServer(UpstreamConfig(latency=0.02)) as up:
        settings = fast_settings(tmp_path / "data", up.base_url, upstream_concurrency=8)
        async with App(settings) as app:
            batch_id = await submit(app, simple_input(n))
            await wait_for_batch(app, batch_id, until=lambda b: b.completed >= 50)
            cancelling = await app.store.request_cancel(ACCOUNT, batch_id)
            assert cancelling.status is Status.CANCEL
            assert app.engine is not None
            if poke:
                app.engine.poke(batch_id, cancel=True)
            b = await wait_for_batch(app, batch_id)
            served_at_end = up.stats.total
            await asyncio.sleep(0.2)
            assert up.stats.total == served_at_end, "requests were sent after the cancel"
            out, err = results(app, b)
            await assert_file_records(app, b, out, err)
    assert b.status is Status.CANCELLED
    assert b.cancelling_at is not None and b.cancelled_at is not None
    assert b.total == n
    assert 50 <= len(out) < n
    assert err == []
    assert (b.completed, b.failed) == (len(out), 0)
    counts = Counter(x["custom_id"] for x in out)
    assert max(counts.values()) == 1 and set(counts) <= ids("req", n)
    assert up.stats.total < n
    # requests in flight at the cancel drain and are recorded: nothing served is lost
    assert set(up.stats.keys) == set(counts)


@pytest.mark.asyncio
async def test_cancel_of_a_batch_with_retries_in_backoff(tmp_path: Path) -> None:
    """Requests sleeping in a long backoff give up at the cancel; nothing is recorded
    for them and the batch still ends cancelled."""
    lines = [request_line(f"ok-{i}") for i in range(20)]
    lines += [request_line(f"busy-{i}", status=503, retry_after="0.5") for i in range(20)]
    async with UpstreamServer() as up:
        settings = fast_settings(tmp_path / "data", up.base_url, max_attempts=50)
        async with App(settings) as app:
            batch_id = await submit(app, jsonl(lines))
            await wait_for_batch(app, batch_id, until=lambda b: b.completed >= 20)
            await app.store.request_cancel(ACCOUNT, batch_id)
            assert app.engine is not None
            app.engine.poke(batch_id, cancel=True)
            b = await wait_for_batch(app, batch_id, timeout=10)
            out, err = results(app, b)
    assert b.status is Status.CANCELLED
    assert {x["custom_id"] for x in out} == {f"ok-{i}" for i in range(20)}
    assert err == []
    assert all(up.stats.attempts[f"busy-{i}"] <= 3 for i in range(20))


@pytest.mark.asyncio
async def test_expiry_mid_run(tmp_path: Path) -> None:
    n = 400
    async with UpstreamServer(UpstreamConfig(latency=0.03)) as up:
        settings = fast_settings(tmp_path / "data", up.base_url, upstream_concurrency=4)
        async with App(settings) as app:
            batch_id = await submit(app, simple_input(n), expires_at=int(time.time()) + 2)
            b = await wait_for_batch(app, batch_id, timeout=20)
            out, err = results(app, b)
            await assert_file_records(app, b, out, err)
    assert b.status is Status.EXPIRED
    assert b.expired_at is not None
    assert_each_once(out, err, ids("req", n))
    assert out, "some requests finish inside the window"
    assert err, "the rest expire"
    for x in err:
        assert x["error"]["code"] == "batch_expired"
        assert x["response"] is None
    assert (b.total, b.completed, b.failed) == (n, len(out), len(err))
    assert len(out) + len(err) == n
    # Every recorded answer was served; what was in flight when the window ended (at
    # most the concurrency) was cut off and expired, never recorded.
    served, recorded = set(up.stats.keys), {x["custom_id"] for x in out}
    assert recorded <= served
    assert len(served - recorded) <= 4


@pytest.mark.asyncio
async def test_expiry_while_requests_are_retrying(tmp_path: Path) -> None:
    """Requests still retrying when the window closes get batch_expired lines."""
    lines = [request_line(f"ok-{i}") for i in range(10)]
    lines += [request_line(f"busy-{i}", status=503, retry_after="0.2") for i in range(10)]
    async with UpstreamServer() as up:
        settings = fast_settings(tmp_path / "data", up.base_url, max_attempts=100)
        async with App(settings) as app:
            batch_id = await submit(app, jsonl(lines), expires_at=int(time.time()) + 2)
            b = await wait_for_batch(app, batch_id, timeout=10)
            out, err = results(app, b)
    assert b.status is Status.EXPIRED
    assert {x["custom_id"] for x in out} == {f"ok-{i}" for i in range(10)}
    assert {x["custom_id"] for x in err} == {f"busy-{i}" for i in range(10)}
    assert {x["error"]["code"] for x in err} == {"batch_expired"}
    assert (b.total, b.completed, b.failed) == (20, 10, 10)


@pytest.mark.asyncio
async def test_cancel_right_after_create(tmp_path: Path) -> None:
    async with (
        UpstreamServer(UpstreamConfig(latency=0.02)) as up,
        App(fast_settings(tmp_path / "data", up.base_url)) as app,
    ):
        batch_id = await submit(app, simple_input(200), poke=False)
        await app.store.request_cancel(ACCOUNT, batch_id)
        assert app.engine is not None
        app.engine.poke(batch_id, cancel=True)
        b = await wait_for_batch(app, batch_id)
        out, err = results(app, b)
    assert b.status is Status.CANCELLED
    assert (b.completed, b.failed) == (len(out), len(err))
    assert_each_once(out, err, {x["custom_id"] for x in out + err})
    assert up.stats.total == len(out) + len(err)


@pytest.mark.asyncio
async def test_expired_before_it_starts(tmp_path: Path) -> None:
    """Past its window before validation: the file is still validated (that is how its
    requests are known), then expired with each request once as batch_expired; nothing
    is sent upstream and the batch never shows as in progress."""
    async with (
        UpstreamServer() as up,
        App(fast_settings(tmp_path / "data", up.base_url, slice_lines=2)) as app,
    ):
        data = jsonl([request_line("req-0"), b"", *[request_line(f"req-{i}")
                                                    for i in range(1, 5)]])
        batch_id = await submit(app, data, expires_at=int(time.time()) - 1)
        b = await wait_for_batch(app, batch_id)
        out, err = results(app, b)
        await assert_file_records(app, b, out, err)
        assert await app.store.list_slices(batch_id) == []
    assert b.status is Status.EXPIRED
    assert b.expired_at is not None and b.in_progress_at is None
    assert up.stats.total == 0
    assert out == [] and b.output_file_id is None
    assert_each_once(out, err, ids("req", 5))
    assert (b.total, b.completed, b.failed) == (5, 0, 5)
    assert b.model == "gpt-test"
    assert {x["error"]["code"] for x in err} == {"batch_expired"}


@pytest.mark.asyncio
async def test_a_bad_file_past_its_window_fails_validation(tmp_path: Path) -> None:
    """The window ended before validation, but a line is bad: validation failure
    stands (it says more than the expiry would), with no result files."""
    async with (
        UpstreamServer() as up,
        App(fast_settings(tmp_path / "data", up.base_url)) as app,
    ):
        data = jsonl([request_line("req-0"), b"{nope"])
        batch_id = await submit(app, data, expires_at=int(time.time()) - 1)
        b = await wait_for_batch(app, batch_id)
    assert b.status is Status.VALIDATION_FAILED
    assert [(e.code, e.line) for e in b.errors] == [("invalid_json_line", 2)]
    assert b.output_file_id is None and b.error_file_id is None
    assert up.stats.total == 0


async def _run_until_partway(settings_kwargs: dict[str, Any], data_dir: Path,
                             up: UpstreamServer, data: bytes, at_least: int) -> str:
    """Start an App, let the batch get ``at_least`` results, stop the App."""
    async with App(fast_settings(data_dir, up.base_url, **settings_kwargs)) as app:
        batch_id = await submit(app, data)
        b = await wait_for_batch(app, batch_id, until=lambda b: b.completed >= at_least)
        assert b.status is Status.PROCESSING and b.completed < b.total
    return batch_id


@pytest.mark.asyncio
async def test_resume_after_a_graceful_stop(tmp_path: Path) -> None:
    n = 600
    data_dir = tmp_path / "data"
    async with UpstreamServer(UpstreamConfig(latency=0.02)) as up:
        kwargs: dict[str, Any] = {"upstream_concurrency": 8, "shutdown_grace": 3.0}
        batch_id = await _run_until_partway(kwargs, data_dir, up, simple_input(n), 100)
        first_run = up.stats.total
        assert first_run < n
        async with App(fast_settings(data_dir, up.base_url, **kwargs)) as app:
            b = await wait_for_batch(app, batch_id, timeout=30)
            out, err = results(app, b)
            await assert_file_records(app, b, out, err)
    assert b.status is Status.COMPLETED
    assert_each_once(out, err, ids("req", n))
    assert (b.total, b.completed, b.failed) == (n, n, 0)
    # in-flight requests had their grace and were recorded: none was sent twice
    assert up.stats.total == n
    assert set(up.stats.attempts.values()) == {1}


@pytest.mark.asyncio
async def test_resume_after_a_hard_stop_and_a_torn_part(tmp_path: Path) -> None:
    """Grace 0 cancels in-flight requests; garbage past the committed length of the parts
    (as a crash mid-write leaves) is cut off; every custom_id still has one result."""
    n = 600
    data_dir = tmp_path / "data"
    async with UpstreamServer(UpstreamConfig(latency=0.02)) as up:
        kwargs: dict[str, Any] = {"upstream_concurrency": 8, "shutdown_grace": 0.0,
                                     "slice_lines": 100}
        data = jsonl([x for i in range(n) for x in
                      ([request_line(f"req-{i}")] + ([b""] if i % 37 == 0 else []))])
        batch_id = await _run_until_partway(kwargs, data_dir, up, data, 150)
        parts = sorted((data_dir / "work" / batch_id).glob("*.part"))
        assert parts
        for part in parts:
            with open(part, "ab") as fh:
                fh.write(b'0 o {"custom_id":"req-0","torn":tr')
        async with App(fast_settings(data_dir, up.base_url, **kwargs)) as app:
            b = await wait_for_batch(app, batch_id, timeout=30)
            out, err = results(app, b)
    assert b.status is Status.COMPLETED
    assert_each_once(out, err, ids("req", n))
    assert (b.total, b.completed, b.failed) == (n, n, 0)
    assert all("torn" not in x for x in out)
    # only requests cut off in flight may have gone upstream twice
    twice = [k for k, v in up.stats.attempts.items() if v > 1]
    assert len(twice) <= 8 and max(up.stats.attempts.values()) <= 2


@pytest.mark.asyncio
async def test_window_ends_while_the_server_is_down(tmp_path: Path) -> None:
    """Stopped partway, restarted after the window: expired, with the results from before
    the stop in the output file and batch_expired lines for the rest, each id once."""
    n = 400
    data_dir = tmp_path / "data"
    expires_at = int(time.time()) + 3
    async with UpstreamServer(UpstreamConfig(latency=0.03)) as up:
        kwargs: dict[str, Any] = {"upstream_concurrency": 4, "shutdown_grace": 3.0}
        async with App(fast_settings(data_dir, up.base_url, **kwargs)) as app:
            batch_id = await submit(app, simple_input(n), expires_at=expires_at)
            await wait_for_batch(app, batch_id, until=lambda b: b.completed >= 30)
        served = set(up.stats.keys)
        await asyncio.sleep(max(0.0, expires_at - time.time() + 0.1))
        async with App(fast_settings(data_dir, up.base_url, **kwargs)) as app:
            b = await wait_for_batch(app, batch_id)
            out, err = results(app, b)
        assert set(up.stats.keys) == served, "nothing is sent once the window has ended"
    assert b.status is Status.EXPIRED
    assert_each_once(out, err, ids("req", n))
    assert {x["custom_id"] for x in out} == served
    assert {x["error"]["code"] for x in err} == {"batch_expired"}
    assert (b.total, b.completed, b.failed) == (n, len(out), len(err))


@pytest.mark.asyncio
async def test_upstream_down_at_start_then_back(tmp_path: Path) -> None:
    up = UpstreamServer()
    await up.start()
    await up.stop()  # the port is known, nothing listens on it
    try:
        settings = fast_settings(tmp_path / "data", up.base_url, max_attempts=40,
                                 backoff_base=0.05, backoff_max=0.1)
        async with App(settings) as app:
            batch_id = await submit(app, simple_input(30))
            await asyncio.sleep(0.5)
            b = await app.store.get_batch(None, batch_id)
            assert b.status is Status.PROCESSING and b.completed == b.failed == 0
            await up.start()
            b = await wait_for_batch(app, batch_id, timeout=15)
            out, err = results(app, b)
    finally:
        await up.stop()
    assert b.status is Status.COMPLETED
    assert err == []
    assert_each_once(out, err, ids("req", 30))


@pytest.mark.asyncio
async def test_upstream_down_for_good_waits_then_expires(tmp_path: Path) -> None:
    """An unreachable upstream does not burn requests into the error file: they wait,
    and only the end of the completion window fails them, as batch_expired."""
    up = UpstreamServer()
    await up.start()
    await up.stop()
    settings = fast_settings(tmp_path / "data", up.base_url, max_attempts=2)
    async with App(settings) as app:
        batch_id = await submit(app, simple_input(10), expires_at=int(time.time()) + 2)
        b = await wait_for_batch(app, batch_id, timeout=15)
        out, err = results(app, b)
    assert b.status is Status.EXPIRED
    assert out == []
    assert_each_once(out, err, ids("req", 10))
    assert {x["error"]["code"] for x in err} == {"batch_expired"}
    assert (b.completed, b.failed) == (0, 10)


@pytest.mark.asyncio
async def test_upstream_rate_limits_are_retried_until_success(tmp_path: Path) -> None:
    cfg = UpstreamConfig(max_concurrency=4, retry_after="0.02", latency=0.01)
    async with UpstreamServer(cfg) as up:
        settings = fast_settings(tmp_path / "data", up.base_url, upstream_concurrency=16,
                                 max_attempts=100)
        async with App(settings) as app:
            b = await wait_for_batch(app, await submit(app, simple_input(100)), timeout=30)
            out, err = results(app, b)
    assert b.status is Status.COMPLETED
    assert err == []
    assert_each_once(out, err, ids("req", 100))
    assert up.stats.by_status[429] > 0  # the limit was really hit
    assert up.stats.by_status[200] == 100


@pytest.mark.asyncio
async def test_several_batches_at_once(tmp_path: Path) -> None:
    async with UpstreamServer(UpstreamConfig(latency=0.005)) as up:
        settings = fast_settings(tmp_path / "data", up.base_url, upstream_concurrency=16,
                                 slice_lines=50)
        async with App(settings) as app:
            batch_ids = [await submit(app, simple_input(120 + k, f"b{k}"), poke=False)
                         for k in range(6)]
            assert app.engine is not None
            app.engine.poke()
            done = [await wait_for_batch(app, i, timeout=30) for i in batch_ids]
            for k, b in enumerate(done):
                assert b.status is Status.COMPLETED
                out, err = results(app, b)
                assert_each_once(out, err, ids(f"b{k}", 120 + k))
                assert (b.total, b.completed, b.failed) == (120 + k, 120 + k, 0)
    assert up.stats.max_in_flight <= 16


@pytest.mark.asyncio
async def test_invalid_input_fails_validation(tmp_path: Path) -> None:
    data = jsonl([request_line("a"), b"{oops", request_line("a"), b"", request_line("b")])
    async with (
        UpstreamServer() as up,
        App(fast_settings(tmp_path / "data", up.base_url)) as app,
    ):
        b = await wait_for_batch(app, await submit(app, data))
    assert b.status is Status.VALIDATION_FAILED
    assert b.failed_at is not None
    assert [(e.code, e.line) for e in b.errors] == [
        ("invalid_json_line", 2), ("duplicate_custom_id", 3)
    ]
    assert b.total == 4
    assert b.output_file_id is None and b.error_file_id is None
    assert up.stats.total == 0


@pytest.mark.asyncio
async def test_missing_input_blob_fails_validation(tmp_path: Path) -> None:
    async with (
        UpstreamServer() as up,
        App(fast_settings(tmp_path / "data", up.base_url)) as app,
    ):
        now = time.time()
        batch_id = new_batch_id()
        await app.store.create_batch(BatchRecord(
            id=batch_id, account=ACCOUNT, endpoint="/v1/chat/completions",
            completion_window="24h", input_file_id="file-0123456789abcdef01234567",
            status=Status.NEW, created_at=int(now), updated_at=now,
            expires_at=int(now) + 3600,
        ))
        b = await wait_for_batch(app, batch_id)
    assert b.status is Status.VALIDATION_FAILED
    assert [e.code for e in b.errors] == ["input_file_missing"]


@pytest.mark.asyncio
# aiohttp advises against raw bytes bodies over 1 MiB (see test_client); that advisory is
# not what this test is about, and under filterwarnings=error it would abort the request
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_ten_megabyte_line_round_trips(tmp_path: Path) -> None:
    content = "y" * (10 * 1024 * 1024)
    async with (
        UpstreamServer() as up,
        App(fast_settings(tmp_path / "data", up.base_url)) as app,
    ):
        b = await wait_for_batch(app, await submit(app, jsonl([
            request_line("big", content=content), request_line("small")])))
        out, err = results(app, b)
    assert b.status is Status.COMPLETED
    assert_each_once(out, err, {"big", "small"})
    by_id = {x["custom_id"]: x for x in out}
    echoed = by_id["big"]["response"]["body"]["choices"][0]["message"]["content"]
    assert echoed == "echo: " + content
