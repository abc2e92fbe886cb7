"""UpstreamClient.send against the real loopback upstream (tests/upstream.py)."""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from upstream import UpstreamServer, closed_port
from upstream import chat_body as body

from barge.upstreams.client import (
    Reply,
    UpstreamClient,
    UpstreamConnectionError,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnreachable,
    join_url,
)

CHAT = "/v1/chat/completions"


class HeaderUpstream(UpstreamServer):
    """The loopback upstream, remembering the headers of every request it gets."""

    def __init__(self) -> None:
        self.seen_headers: list[dict[str, str]] = []
        super().__init__()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen_headers.append(dict(request.headers))
        return await super()._handle(request)


@pytest_asyncio.fixture
async def up() -> AsyncIterator[UpstreamServer]:
    async with UpstreamServer() as server:
        yield server


async def open_client(base_url: str, *, timeout: float = 5.0,
                      api_key: str | None = None) -> UpstreamClient:
    client = UpstreamClient(base_url, api_key=api_key, timeout=timeout, max_connections=8)
    await client.open()
    return client


@pytest.mark.asyncio
async def test_200_returns_reply_with_body(up: UpstreamServer) -> None:
    client = await open_client(up.base_url)
    try:
        reply = await client.send(CHAT, body("hello"))
    finally:
        await client.close()
    assert isinstance(reply, Reply)
    assert reply.status == 200
    assert reply.headers["x-request-id"] == "req_1"
    assert reply.headers["content-type"].startswith("application/json")
    parsed = orjson.loads(reply.body)
    assert parsed["object"] == "chat.completion"
    assert parsed["choices"][0]["message"]["content"] == "echo: hello"
    assert up.stats.by_path == {"/v1/chat/completions": 1}


@pytest.mark.asyncio
async def test_error_status_is_a_reply_not_an_exception(up: UpstreamServer) -> None:
    client = await open_client(up.base_url)
    try:
        reply = await client.send(CHAT, body(status=503, retry_after="7"))
    finally:
        await client.close()
    assert reply.status == 503
    assert reply.headers["Retry-After"] == "7"
    assert reply.headers["retry-after"] == "7"  # case-insensitive
    assert orjson.loads(reply.body)["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    ("base", "endpoint", "expected"),
    [
        ("http://h:1/v1", "/v1/chat/completions", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1/", "/v1/chat/completions", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1", "/v1/embeddings", "http://h:1/v1/embeddings"),
        ("http://h:1/api/v1", "/v1/responses", "http://h:1/api/v1/responses"),
        ("http://h:1/v1", "/chat/completions", "http://h:1/v1/chat/completions"),
    ],
)
def test_join_url(base: str, endpoint: str, expected: str) -> None:
    assert join_url(base, endpoint) == expected


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "endpoint", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
                 "/v1/moderations"],
)
@pytest.mark.parametrize("trailing_slash", [False, True])
async def test_endpoints_reach_the_right_upstream_path(
    up: UpstreamServer, endpoint: str, trailing_slash: bool
) -> None:
    client = await open_client(up.base_url + ("/" if trailing_slash else ""))
    try:
        payload = {"model": "m", "input": "x", "prompt": "x",
                   "messages": [{"role": "user", "content": "x"}]}
        reply = await client.send(endpoint, orjson.dumps(payload))
    finally:
        await client.close()
    assert reply.status == 200, reply.body
    assert up.stats.by_path == {endpoint: 1}


@pytest.mark.asyncio
async def test_timeout_raises_upstream_timeout(up: UpstreamServer) -> None:
    client = await open_client(up.base_url, timeout=0.2)
    try:
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout) as info:
            await client.send(CHAT, body(delay=1))
        elapsed = time.monotonic() - t0
    finally:
        await client.close()
    assert 0.15 <= elapsed < 0.9
    assert "0.2" in info.value.message


@pytest.mark.asyncio
async def test_slow_body_counts_against_the_timeout(up: UpstreamServer) -> None:
    client = await open_client(up.base_url, timeout=0.2)
    try:
        with pytest.raises(UpstreamTimeout):
            await client.send(CHAT, body(slow_body=1.0))
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_slow_body_within_timeout_is_read_whole(up: UpstreamServer) -> None:
    client = await open_client(up.base_url, timeout=5)
    try:
        reply = await client.send(CHAT, body("slow", slow_body=0.2))
    finally:
        await client.close()
    assert reply.status == 200
    assert orjson.loads(reply.body)["choices"][0]["message"]["content"] == "echo: slow"


@pytest.mark.asyncio
async def test_connection_refused_raises_unreachable() -> None:
    client = await open_client(f"http://127.0.0.1:{closed_port()}/v1", timeout=5)
    try:
        t0 = time.monotonic()
        with pytest.raises(UpstreamUnreachable) as info:
            await client.send(CHAT, body())
    finally:
        await client.close()
    assert time.monotonic() - t0 < 2
    assert isinstance(info.value, UpstreamConnectionError)
    assert "unreachable" in info.value.message


@pytest.mark.asyncio
async def test_close_mid_body_raises_connection_error(up: UpstreamServer) -> None:
    client = await open_client(up.base_url, timeout=5)
    try:
        with pytest.raises(UpstreamConnectionError):
            await client.send(CHAT, body(close_mid_body=True))
        # the pool recovers: the next request on the same client works
        reply = await client.send(CHAT, body("again"))
    finally:
        await client.close()
    assert reply.status == 200


@pytest.mark.asyncio
async def test_upstream_stopping_between_requests(up: UpstreamServer) -> None:
    client = await open_client(up.base_url, timeout=5)
    try:
        assert (await client.send(CHAT, body())).status == 200
        await up.stop()
        with pytest.raises(UpstreamConnectionError):
            await client.send(CHAT, body())
        await up.start()  # same port again
        assert (await client.send(CHAT, body())).status == 200
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_huge_body_is_read_whole(up: UpstreamServer) -> None:
    size = 10 * 1024 * 1024
    client = await open_client(up.base_url, timeout=30)
    try:
        reply = await client.send(CHAT, body(huge_bytes=size))
    finally:
        await client.close()
    assert reply.status == 200
    assert len(reply.body) >= size - 64
    parsed = orjson.loads(reply.body)
    assert len(parsed["x_padding"]) > size - 1024


@pytest.mark.asyncio
async def test_send_on_a_closed_client_raises_connection_error(up: UpstreamServer) -> None:
    client = UpstreamClient(up.base_url, api_key=None, timeout=5, max_connections=1)
    with pytest.raises(UpstreamConnectionError):
        await client.send(CHAT, body())
    await client.open()
    await client.close()
    with pytest.raises(UpstreamConnectionError):
        await client.send(CHAT, body())
    assert up.stats.total == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("api_key", ["sk-upstream-123", None])
async def test_api_key_is_sent_as_bearer(api_key: str | None) -> None:
    up = HeaderUpstream()
    async with up:
        client = await open_client(up.base_url, api_key=api_key)
        try:
            reply = await client.send(CHAT, body())
        finally:
            await client.close()
        assert reply.status == 200
        (headers,) = up.seen_headers
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["content-type"] == "application/json"
    if api_key is None:
        assert "authorization" not in lowered
    else:
        assert lowered["authorization"] == f"Bearer {api_key}"


@pytest.mark.asyncio
async def test_body_bytes_are_sent_unchanged(up: UpstreamServer) -> None:
    raw = body("exact bytes", key="k1")
    client = await open_client(up.base_url)
    try:
        await client.send(CHAT, raw)
    finally:
        await client.close()
    assert up.stats.bodies == {hashlib.sha256(raw).hexdigest(): 1}
    assert up.stats.attempts == {"k1": 1}


@pytest.mark.asyncio
async def test_large_request_body_sends_without_resource_warning(up: UpstreamServer) -> None:
    """aiohttp warns (ResourceWarning, "Sending a large body directly with raw bytes might
    lock the event loop") for raw bytes bodies over 1 MiB; batch lines may be far larger.
    Under this project's filterwarnings=error the warning is an exception that escapes
    send() (it is no UpstreamError), so the engine fails the whole step instead of
    recording a result for the line."""
    raw = body("z" * (2 * 1024 * 1024))
    client = await open_client(up.base_url, timeout=30)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reply = await client.send(CHAT, raw)
    finally:
        await client.close()
    assert reply.status == 200
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# ---- hostile answers: size cap, compression, redirects -------------------------------------

async def open_capped(base_url: str, cap: int, timeout: float = 10.0) -> UpstreamClient:
    client = UpstreamClient(base_url, api_key=None, timeout=timeout, max_connections=8,
                            max_response_bytes=cap)
    await client.open()
    return client


@pytest.mark.asyncio
@pytest.mark.parametrize("mock", [
    {"endless": True},  # chunked, no length
    {"endless": True, "declared_length": 1 << 40},  # a length far over the cap
    {"gzip_bomb": 256},  # a small Content-Length that inflates to 256 MiB
])
async def test_answer_over_the_cap_raises_too_large(up: UpstreamServer, mock: dict[str, Any]
                                                    ) -> None:
    cap = 1 << 20
    client = await open_capped(up.base_url, cap)
    try:
        t0 = time.monotonic()
        with pytest.raises(UpstreamResponseTooLarge) as info:
            await client.send(CHAT, body(**mock))
        assert time.monotonic() - t0 < 5
        assert info.value.status == 200
        assert info.value.request_id == "req_1"
        assert str(cap) in info.value.message
        # the dropped connection does not poison the pool
        again = await client.send(CHAT, body("again"))
    finally:
        await client.close()
    assert again.status == 200
    assert orjson.loads(again.body)["choices"][0]["message"]["content"] == "echo: again"


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["plain", "chunked", "gzip"])
async def test_cap_is_counted_on_the_decoded_body(up: UpstreamServer, mode: str) -> None:
    """The same answer, sent with a Content-Length, chunked, or gzip-encoded: at exactly
    its decoded size it passes whole, one byte less of cap and it is too large."""
    flags = {} if mode == "plain" else {mode: True}
    probe = await open_capped(up.base_url, 1 << 30)
    try:
        size = len((await probe.send(CHAT, body("x" * 5000, key="k", **flags))).body)
    finally:
        await probe.close()
    exact = await open_capped(up.base_url, size)
    try:
        reply = await exact.send(CHAT, body("x" * 5000, key="k", **flags))
        assert len(reply.body) == size
        assert orjson.loads(reply.body)["choices"][0]["message"]["content"] == "echo: " + "x" * 5000
    finally:
        await exact.close()
    short = await open_capped(up.base_url, size - 1)
    try:
        with pytest.raises(UpstreamResponseTooLarge):
            await short.send(CHAT, body("x" * 5000, key="k", **flags))
    finally:
        await short.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_answers_never_followed(up: UpstreamServer, status: int) -> None:
    async with UpstreamServer() as elsewhere:
        client = await open_client(up.base_url)
        try:
            reply = await client.send(
                CHAT, body(redirect=elsewhere.base_url + "/chat/completions",
                           redirect_status=status))
        finally:
            await client.close()
        assert reply.status == status
        assert reply.headers["Location"].startswith(elsewhere.base_url)
        assert elsewhere.stats.total == 0
