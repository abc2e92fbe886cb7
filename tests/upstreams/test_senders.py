"""Sender processes (--dispatch-processes): real ``barge.upstreams.sender`` processes in
front of the real loopback upstream, compared with the in-process client, and attacked
(killed, frozen, abandoned mid-request)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from upstream import UpstreamServer, closed_port
from upstream import chat_body as body

from barge.upstreams.client import (
    Reply,
    SenderLost,
    UpstreamClient,
    UpstreamConnectionError,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from barge.upstreams.senders import SenderPool

CHAT = "/v1/chat/completions"
NUMBERED = re.compile(rb"(?<=chatcmpl-)\d+|(?<=req_)\d+|(?<=\"created\":)\d+")

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def up() -> AsyncIterator[UpstreamServer]:
    async with UpstreamServer() as server:
        yield server


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[SenderPool]:
    senders = SenderPool(2, request_timeout=5.0, grace=0.5)
    await senders.start()
    try:
        yield senders
    finally:
        await senders.stop()


def client_of(base_url: str, senders: SenderPool | None, **kwargs: Any) -> UpstreamClient:
    options: dict[str, Any] = {"api_key": "k", "timeout": 5.0, "max_connections": 8}
    options.update(kwargs)
    return UpstreamClient(base_url, senders=senders, **options)


def same(reply: Reply) -> tuple[int, bytes, list[tuple[str, str]]]:
    """What the engine reads of an answer, but what the upstream numbers or dates (and
    the compressed length, which the numbers change)."""
    moving = {"date"} | ({"content-length"} if "content-encoding" in reply.headers else set())
    headers = [(k, NUMBERED.sub(b"#", v.encode()).decode()) for k, v in reply.headers.items()
               if k.lower() not in moving]
    return reply.status, NUMBERED.sub(b"#", reply.body), headers


def alive(pid: int) -> bool:
    """Running or stopped; not gone and not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_answers_through_senders_are_those_made_in_process(
        up: UpstreamServer, pool: SenderPool) -> None:
    direct = client_of(up.base_url, None)
    remote = client_of(up.base_url, pool)
    await direct.open()
    await remote.open()
    requests = [
        body("plain"),
        body("ünïcode ✓"),
        body(status=400, message="bad thing"),
        body(status=429, retry_after=3, message="slow down",
             headers={"x-ratelimit-remaining-requests": "7", "x-request-id": "req-abc"}),
        body(gzip=True),
        body(chunked=True),
        body(huge_bytes=3_000_000),
        body(raw_body="not json at all \u2603", status=502),
    ]
    try:
        for request in requests:
            ours, theirs = await asyncio.gather(direct.send(CHAT, request),
                                                remote.send(CHAT, request))
            assert same(theirs) == same(ours)
        # Many at once, spread over both senders, each answer back to its own request.
        many = await asyncio.gather(*(remote.send(CHAT, body(f"n{i}")) for i in range(200)))
    finally:
        await direct.close()
        await remote.close()
    contents = [orjson.loads(r.body)["choices"][0]["message"]["content"] for r in many]
    assert contents == [f"echo: n{i}" for i in range(200)]
    assert len(pool.pids) == 2


async def test_failures_come_back_as_the_same_errors(up: UpstreamServer,
                                                     pool: SenderPool) -> None:
    quick = client_of(up.base_url, pool, timeout=0.3)
    capped = client_of(up.base_url, pool, max_response_bytes=1000)
    nowhere = client_of(f"http://127.0.0.1:{closed_port()}/v1", pool)
    with pytest.raises(UpstreamTimeout) as timeout:
        await quick.send(CHAT, body(delay=2))
    assert "0.3" in timeout.value.message
    with pytest.raises(UpstreamResponseTooLarge) as large:
        await capped.send(CHAT, body(huge_bytes=5000))
    assert large.value.status == 200
    assert (large.value.request_id or "").startswith("req_")
    assert "1000 bytes" in large.value.message
    with pytest.raises(UpstreamUnreachable):
        await nowhere.send(CHAT, body())
    with pytest.raises(UpstreamConnectionError) as cut:
        await quick.send(CHAT, body(close_mid_body=True))
    assert not isinstance(cut.value, UpstreamUnreachable)
    # The senders carry on after every one of those.
    assert (await quick.send(CHAT, body())).status == 200


async def test_a_killed_sender_fails_its_requests_and_another_starts(
        up: UpstreamServer) -> None:
    pool = SenderPool(1, request_timeout=10.0)
    await pool.start()
    try:
        client = client_of(up.base_url, pool, timeout=10.0)
        [first] = pool.pids
        slow = [asyncio.ensure_future(client.send(CHAT, body(delay=5))) for _ in range(4)]
        while up.stats.in_flight < 4:
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        os.kill(first, signal.SIGKILL)
        outcomes = await asyncio.gather(*slow, return_exceptions=True)
        assert time.monotonic() - t0 < 3  # at once, not after the upstream's 5 s
        assert all(type(o) is SenderLost for o in outcomes), outcomes
        # The next request waits for the new sender rather than failing.
        reply = await client.send(CHAT, body("after"))
        assert reply.status == 200
        [second] = pool.pids
        assert second != first
    finally:
        await pool.stop()
    assert not alive(second)


async def test_a_frozen_sender_times_out_and_is_replaced(up: UpstreamServer) -> None:
    pool = SenderPool(1, request_timeout=0.5, grace=0.5)
    await pool.start()
    [frozen] = pool.pids
    try:
        client = client_of(up.base_url, pool, timeout=0.5)
        os.kill(frozen, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(SenderLost):
            await client.send(CHAT, body())
        assert time.monotonic() - t0 < 4
        deadline = time.monotonic() + 10
        while not pool.pids or pool.pids == [frozen]:
            assert time.monotonic() < deadline, "no new sender"
            await asyncio.sleep(0.05)
        assert (await client.send(CHAT, body())).status == 200
        assert not alive(frozen)  # killed and reaped, not left stopped
    finally:
        if alive(frozen):
            os.kill(frozen, signal.SIGKILL)
        await pool.stop()


async def test_a_request_given_up_on_is_dropped_at_the_upstream(pool: SenderPool) -> None:
    """A cancelled send (a batch cut off) closes its connection at the sender too, as
    in-process, so the upstream stops working on it."""
    arrived, hung_up = asyncio.Event(), asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await reader.read()  # until the client hangs up
        hung_up.set()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = client_of(f"http://127.0.0.1:{port}/v1", pool, timeout=60.0)
        task = asyncio.ensure_future(client.send(CHAT, body()))
        await asyncio.wait_for(arrived.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(hung_up.wait(), 5)
    finally:
        server.close()


async def test_senders_exit_when_the_engine_goes() -> None:
    """A sender reads the end of its socket when the engine's process is gone (kill -9
    included: the kernel closes its end), and exits instead of lingering."""
    code = ("import asyncio, sys\n"
            "from barge.upstreams.senders import SenderPool\n"
            "async def main():\n"
            "    pool = SenderPool(2, request_timeout=5)\n"
            "    await pool.start()\n"
            "    print(*pool.pids, flush=True)\n"
            "    await asyncio.sleep(60)\n"
            "asyncio.run(main())\n")
    engine = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
    assert engine.stdout is not None
    pids = [int(p) for p in (await asyncio.wait_for(engine.stdout.readline(), 30)).split()]
    assert len(pids) == 2 and all(map(alive, pids))
    engine.kill()
    await engine.wait()
    deadline = time.monotonic() + 10
    while any(map(alive, pids)):
        assert time.monotonic() < deadline, "a sender outlived its engine"
        await asyncio.sleep(0.05)
