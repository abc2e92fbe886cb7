"""Self-test of the loopback mock upstream (tests/upstream.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from multidict import CIMultiDict
from upstream import UpstreamConfig, UpstreamServer  # tests/ is on sys.path (rootdir-less layout)

CHAT = "/chat/completions"


def chat(content: str = "hi", model: str = "gpt-test", **mock: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if mock:
        body["x_mock"] = mock
    return body


@pytest_asyncio.fixture
async def up() -> AsyncIterator[UpstreamServer]:
    async with UpstreamServer() as server:
        yield server


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def post(
    http: aiohttp.ClientSession, up: UpstreamServer, body: dict[str, Any], path: str = CHAT
) -> tuple[int, CIMultiDict[str], bytes]:
    async with http.post(up.base_url + path, json=body) as r:
        return r.status, r.headers.copy(), await r.read()


@pytest.mark.asyncio
async def test_default_chat_and_embeddings(up: UpstreamServer, http: aiohttp.ClientSession) -> None:
    assert up.base_url == f"http://127.0.0.1:{up.port}/v1"
    status, headers, raw = await post(http, up, chat("hello", model="m-1"))
    assert status == 200 and headers["x-request-id"] == "req_1"
    body = json.loads(raw)
    assert body["object"] == "chat.completion" and body["model"] == "m-1"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello"}
    assert body["usage"]["total_tokens"] > 0
    status, headers, raw = await post(
        http, up, {"model": "e", "input": "x"}, path="/embeddings")
    assert status == 200 and headers["x-request-id"] == "req_2"
    emb = json.loads(raw)
    assert emb["object"] == "list" and emb["data"][0]["embedding"] == [0.1, 0.2, 0.3]
    for path in ("/completions", "/responses", "/moderations"):
        status, _, raw = await post(http, up, {"model": "x", "input": "a", "prompt": "b"}, path)
        assert status == 200 and isinstance(json.loads(raw), dict)
    assert up.stats.total == 5 and up.stats.by_path["/v1/embeddings"] == 1
    assert up.stats.by_status[200] == 5


@pytest.mark.asyncio
async def test_fail_times_then_success(up: UpstreamServer, http: aiohttp.ClientSession) -> None:
    body = chat(key="line-7", status=500, fail_times=2)
    statuses = [(await post(http, up, body))[0] for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert up.stats.attempts["line-7"] == 3 and up.stats.keys == ["line-7"] * 3
    # without a key, attempts are counted per exact raw body
    keyless = chat("other", status=503, fail_times=1)
    assert [(await post(http, up, keyless))[0] for _ in range(2)] == [503, 200]
    assert sorted(up.stats.bodies.values()) == [2, 3]


@pytest.mark.asyncio
async def test_error_body_and_retry(up: UpstreamServer, http: aiohttp.ClientSession) -> None:
    status, headers, raw = await post(
        http, up, chat(status=429, retry_after="2", retry_after_ms="1500"))
    assert status == 429
    assert headers["Retry-After"] == "2" and headers["retry-after-ms"] == "1500"
    err = json.loads(raw)["error"]
    assert err["type"] == "rate_limit_error" and err["param"] is None and "message" in err


@pytest.mark.asyncio
async def test_garbage_empty_huge(up: UpstreamServer, http: aiohttp.ClientSession) -> None:
    status, _, raw = await post(http, up, chat(garbage=True))
    assert status == 200 and raw == b"<html>oops"
    status, _, raw = await post(http, up, chat(empty=True))
    assert status == 200 and raw == b""
    status, _, raw = await post(http, up, chat(huge_bytes=200_000))
    assert status == 200 and 190_000 < len(raw) < 210_000
    assert json.loads(raw)["object"] == "chat.completion"


@pytest.mark.asyncio
async def test_max_concurrency_rejects(up: UpstreamServer, http: aiohttp.ClientSession) -> None:
    up.config.max_concurrency = 2
    up.config.retry_after = "1"
    results = await asyncio.gather(*(post(http, up, chat(delay=0.4)) for _ in range(5)))
    statuses = sorted(s for s, _, _ in results)
    assert statuses == [200, 200, 429, 429, 429]
    assert all(h["Retry-After"] == "1" for s, h, _ in results if s == 429)
    assert up.stats.max_in_flight == 2


@pytest.mark.asyncio
async def test_capacity_queues(up: UpstreamServer, http: aiohttp.ClientSession) -> None:
    up.config.capacity = 2
    up.config.latency = 0.1
    results = await asyncio.gather(*(post(http, up, chat()) for _ in range(6)))
    assert [s for s, _, _ in results] == [200] * 6
    assert up.stats.max_in_flight == 2 and up.stats.max_queued >= 1


@pytest.mark.asyncio
async def test_fail_all_status(up: UpstreamServer, http: aiohttp.ClientSession) -> None:
    up.config.fail_all_status = 502
    assert (await post(http, up, chat()))[0] == 502
    up.config.fail_all_status = None
    assert (await post(http, up, chat()))[0] == 200


@pytest.mark.asyncio
async def test_close_mid_body(up: UpstreamServer, http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(http, up, chat(close_mid_body=True))
    # the server keeps serving afterwards
    assert (await post(http, up, chat()))[0] == 200


@pytest.mark.asyncio
async def test_slow_body(up: UpstreamServer, http: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    status, _, raw = await post(http, up, chat(slow_body=0.3))
    assert status == 200 and json.loads(raw)["object"] == "chat.completion"
    assert loop.time() - t0 >= 0.25


def _sync_post(url: str, body: dict[str, Any]) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.close()
        return int(e.code)


def test_in_thread_stop_and_restart() -> None:
    with UpstreamServer.in_thread(UpstreamConfig(fail_all_status=None)) as up:
        url = up.base_url + CHAT
        assert _sync_post(url, chat()) == 200
        up.config.fail_all_status = 500
        assert _sync_post(url, chat()) == 500
        up.config.fail_all_status = None
        up.stop_blocking()
        with pytest.raises(urllib.error.URLError):
            _sync_post(url, chat())
        up.start_blocking()
        assert up.base_url + CHAT == url and _sync_post(url, chat()) == 200
        assert up.stats.total == 3


def test_subprocess_mode() -> None:
    script = Path(__file__).with_name("upstream.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--max-concurrency", "4", "--latency", "0"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "LISTENING"
        assert _sync_post(f"http://127.0.0.1:{int(line[1])}/v1{CHAT}", chat()) == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
