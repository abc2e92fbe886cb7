"""Dispatcher.execute with a real UpstreamClient against the loopback upstream."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
import pytest_asyncio
from upstream import UpstreamServer

from barge.domain.usage import NO_USAGE, Usage
from barge.engine.dispatch import Dispatcher, Result, RetryPolicy
from barge.engine.limiter import AdaptiveLimiter
from barge.upstreams.client import UpstreamClient

CHAT = "/v1/chat/completions"
POLICY = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.05)


def line(custom_id: str = "req-1", content: str = "hi", url: str = CHAT, **mock: Any) -> bytes:
    body: dict[str, Any] = {"model": "gpt-test",
                            "messages": [{"role": "user", "content": content}]}
    mock.setdefault("key", custom_id)
    body["x_mock"] = mock
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def never() -> bool:
    return False


@pytest_asyncio.fixture
async def up() -> AsyncIterator[UpstreamServer]:
    async with UpstreamServer() as server:
        yield server


@pytest_asyncio.fixture
async def client(up: UpstreamServer) -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(up.base_url, api_key=None, timeout=5.0, max_connections=16)
    await c.open()
    yield c
    await c.close()


@pytest.fixture
def dispatcher(client: UpstreamClient) -> Dispatcher:
    return Dispatcher(client, POLICY, AdaptiveLimiter(64))


def parse(result: Result | None) -> dict[str, Any]:
    assert result is not None
    obj = orjson.loads(result.line)
    assert isinstance(obj, dict)
    assert set(obj) == {"id", "custom_id", "response", "error"}
    assert obj["id"].startswith("batch_req_")
    assert b"\n" not in result.line
    return obj


def assert_http_error(obj: dict[str, Any], status: int) -> None:
    """A final HTTP error is the upstream's answer, as in OpenAI's error files: the
    response with its status, request id and body, and ``error: null``."""
    assert obj["error"] is None, obj
    assert set(obj["response"]) == {"status_code", "request_id", "body"}
    assert obj["response"]["status_code"] == status, obj


def assert_error(obj: dict[str, Any], code: str) -> None:
    assert obj["error"] is not None, obj
    assert set(obj["error"]) == {"code", "message"}
    assert obj["error"]["code"] == code, obj
    assert isinstance(obj["error"]["message"], str) and obj["error"]["message"]


@pytest.mark.asyncio
async def test_success_is_an_output_line(dispatcher: Dispatcher, up: UpstreamServer) -> None:
    result = await dispatcher.execute(line("c-1", "hello"), never)
    assert result is not None and result.ok
    obj = parse(result)
    assert obj["custom_id"] == "c-1"
    assert obj["error"] is None
    resp = obj["response"]
    assert set(resp) == {"status_code", "request_id", "body"}
    assert resp["status_code"] == 200
    assert resp["request_id"] == "req_1"  # the upstream's x-request-id
    assert resp["body"]["object"] == "chat.completion"
    assert resp["body"]["choices"][0]["message"]["content"] == "echo: hello"
    assert up.stats.attempts == {"c-1": 1}


@pytest.mark.asyncio
async def test_only_the_body_goes_upstream(dispatcher: Dispatcher, up: UpstreamServer) -> None:
    result = await dispatcher.execute(line("c-1", url="/v1/embeddings"), never)
    assert result is not None and result.ok
    assert up.stats.by_path == {"/v1/embeddings": 1}
    assert parse(result)["response"]["body"]["object"] == "list"


@pytest.mark.asyncio
async def test_400_is_not_retried(dispatcher: Dispatcher, up: UpstreamServer) -> None:
    result = await dispatcher.execute(line("bad", status=400, message="no such model"), never)
    assert result is not None and not result.ok
    obj = parse(result)
    assert obj["custom_id"] == "bad"
    assert_http_error(obj, 400)
    assert obj["response"]["request_id"] == "req_1"
    assert obj["response"]["body"] == {"error": {"message": "no such model",
                                                 "type": "invalid_request_error",
                                                 "param": None, "code": None}}
    assert up.stats.attempts == {"bad": 1}


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [401, 404, 422])
async def test_other_4xx_are_not_retried(
    dispatcher: Dispatcher, up: UpstreamServer, status: int
) -> None:
    result = await dispatcher.execute(line("x", status=status), never)
    obj = parse(result)
    assert_http_error(obj, status)
    assert up.stats.attempts == {"x": 1}


@pytest.mark.asyncio
async def test_500_twice_then_success(dispatcher: Dispatcher, up: UpstreamServer) -> None:
    result = await dispatcher.execute(line("flaky", status=500, fail_times=2), never)
    assert result is not None and result.ok
    obj = parse(result)
    assert obj["response"]["status_code"] == 200
    assert obj["response"]["request_id"] == "req_3"
    assert up.stats.attempts == {"flaky": 3}
    assert up.stats.by_status == {500: 2, 200: 1}


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [408, 409, 429, 502])
async def test_retryable_statuses_are_retried(
    dispatcher: Dispatcher, up: UpstreamServer, status: int
) -> None:
    result = await dispatcher.execute(line("r", status=status, fail_times=1), never)
    assert result is not None and result.ok
    assert up.stats.attempts == {"r": 2}


@pytest.mark.asyncio
async def test_429_retry_after_is_honoured(dispatcher: Dispatcher, up: UpstreamServer) -> None:
    t0 = time.monotonic()
    result = await dispatcher.execute(
        line("rl", status=429, fail_times=1, retry_after="0.2"), never
    )
    elapsed = time.monotonic() - t0
    assert result is not None and result.ok
    assert up.stats.attempts == {"rl": 2}
    assert elapsed >= 0.2  # backoff alone is capped at 0.05 s


@pytest.mark.asyncio
async def test_429_retry_after_ms_is_honoured(dispatcher: Dispatcher, up: UpstreamServer) -> None:
    t0 = time.monotonic()
    result = await dispatcher.execute(
        line("rl", status=429, fail_times=1, retry_after="0", retry_after_ms="250"), never
    )
    assert time.monotonic() - t0 >= 0.25
    assert result is not None and result.ok


@pytest.mark.asyncio
async def test_503_on_every_attempt_gives_up_after_max_attempts(
    dispatcher: Dispatcher, up: UpstreamServer
) -> None:
    result = await dispatcher.execute(line("down", status=503), never)
    assert result is not None and not result.ok
    obj = parse(result)
    assert_http_error(obj, 503)
    assert obj["response"]["request_id"] == "req_3"  # the last attempt's answer
    assert obj["response"]["body"]["error"]["type"] == "server_error"
    assert up.stats.attempts == {"down": 3}


@pytest.mark.asyncio
async def test_max_attempts_one_means_no_retry(client: UpstreamClient, up: UpstreamServer) -> None:
    d = Dispatcher(client, RetryPolicy(1, 0.01, 0.05), AdaptiveLimiter(64))
    obj = parse(await d.execute(line("once", status=500), never))
    assert_http_error(obj, 500)
    assert up.stats.attempts == {"once": 1}


@pytest.mark.asyncio
async def test_garbage_200_is_invalid_upstream_response(
    dispatcher: Dispatcher, up: UpstreamServer
) -> None:
    result = await dispatcher.execute(line("g", garbage=True), never)
    assert result is not None and not result.ok
    obj = parse(result)
    assert_error(obj, "invalid_upstream_response")
    assert obj["response"]["status_code"] == 200
    assert obj["response"]["body"] == "<html>oops"
    assert up.stats.attempts == {"g": 3}


@pytest.mark.asyncio
async def test_empty_200_is_invalid_upstream_response(
    dispatcher: Dispatcher, up: UpstreamServer
) -> None:
    obj = parse(await dispatcher.execute(line("e", empty=True), never))
    assert_error(obj, "invalid_upstream_response")
    assert obj["response"]["status_code"] == 200
    assert obj["response"]["body"] == ""
    assert up.stats.attempts == {"e": 3}


@pytest.mark.asyncio
async def test_close_mid_body_is_connection_error(
    dispatcher: Dispatcher, up: UpstreamServer
) -> None:
    obj = parse(await dispatcher.execute(line("cut", close_mid_body=True), never))
    assert_error(obj, "upstream_connection_error")
    assert obj["response"] is None
    assert up.stats.attempts == {"cut": 3}


@pytest.mark.asyncio
async def test_unreachable_upstream_waits_without_using_attempts() -> None:
    """Connection refused far more often than max_attempts: the request keeps waiting,
    and a batch that stops meanwhile records nothing for it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = UpstreamClient(f"http://127.0.0.1:{port}/v1", api_key=None, timeout=5, max_connections=4)
    await c.open()
    deadline = time.monotonic() + 1.0  # POLICY allows 3 attempts, 0.05 s apart at most
    try:
        result = await Dispatcher(c, POLICY, AdaptiveLimiter(64)).execute(
            line("nobody"), lambda: time.monotonic() > deadline
        )
    finally:
        await c.close()
    assert result is None


@pytest.mark.asyncio
async def test_request_sent_once_the_upstream_comes_back() -> None:
    down = UpstreamServer()
    await down.start()
    await down.stop()
    c = UpstreamClient(down.base_url, api_key=None, timeout=5, max_connections=4)
    await c.open()
    try:
        dispatcher = Dispatcher(c, POLICY, AdaptiveLimiter(64))
        task = asyncio.create_task(dispatcher.execute(line("later"), never))
        await asyncio.sleep(0.5)  # many refused connections: far more than 3 attempts
        assert not task.done()
        await down.start()
        obj = parse(await asyncio.wait_for(task, 10))
    finally:
        await c.close()
        await down.stop()
    assert obj["error"] is None
    assert obj["response"]["status_code"] == 200
    assert down.stats.total == 1


@pytest.mark.asyncio
async def test_timeout_is_upstream_timeout(up: UpstreamServer) -> None:
    c = UpstreamClient(up.base_url, api_key=None, timeout=0.2, max_connections=4)
    await c.open()
    try:
        t0 = time.monotonic()
        dispatcher = Dispatcher(c, POLICY, AdaptiveLimiter(64))
        obj = parse(await dispatcher.execute(line("slow", delay=1), never))
        elapsed = time.monotonic() - t0
    finally:
        await c.close()
    assert_error(obj, "upstream_timeout")
    assert obj["response"] is None
    assert up.stats.attempts == {"slow": 3}
    assert 0.6 <= elapsed < 2.5


@pytest.mark.asyncio
async def test_stopping_during_backoff_returns_none(
    dispatcher: Dispatcher, up: UpstreamServer
) -> None:
    stop = False

    def flip() -> None:
        nonlocal stop
        stop = True

    asyncio.get_running_loop().call_later(0.1, flip)
    # Retry-After 0.3 keeps the dispatcher in its backoff sleep when the flag flips
    result = await dispatcher.execute(line("s", status=503, retry_after="0.3"), lambda: stop)
    assert result is None
    assert up.stats.attempts == {"s": 1}


@pytest.mark.asyncio
async def test_stopping_before_a_retry_returns_none(
    dispatcher: Dispatcher, up: UpstreamServer
) -> None:
    assert await dispatcher.execute(line("s", status=500), lambda: True) is None
    assert up.stats.attempts == {"s": 1}


@pytest.mark.asyncio
async def test_a_final_answer_is_returned_even_when_stopping(
    dispatcher: Dispatcher, up: UpstreamServer
) -> None:
    ok = await dispatcher.execute(line("a"), lambda: True)
    assert ok is not None and ok.ok
    bad = await dispatcher.execute(line("b", status=400), lambda: True)
    assert bad is not None and not bad.ok


@pytest.mark.asyncio
async def test_non_finite_retry_after_does_not_hang_the_request(
    dispatcher: Dispatcher, up: UpstreamServer
) -> None:
    """An upstream (or a proxy in front of it) answering 429 with ``Retry-After: inf``
    must not park the request forever; see test_retry for the parsing side."""
    result = await asyncio.wait_for(
        dispatcher.execute(line("inf", status=429, fail_times=1, retry_after="inf"), never),
        timeout=2.0,
    )
    assert result is not None and result.ok


# ---- hostile upstreams ---------------------------------------------------------------------

def exact(text: str | bytes) -> Any:
    """A JSON text's value with every number exact (ints are exact in the stdlib)."""
    return json.loads(text, parse_float=Decimal)


async def capped(up: UpstreamServer, cap: int) -> UpstreamClient:
    c = UpstreamClient(up.base_url, api_key=None, timeout=10, max_connections=8,
                       max_response_bytes=cap)
    await c.open()
    return c


@pytest.mark.asyncio
@pytest.mark.parametrize("mock", [{"endless": True}, {"gzip_bomb": 64},
                                  {"endless": True, "declared_length": 1 << 40},
                                  {"endless": True, "status": 500}])
async def test_answer_over_the_cap_is_final_and_too_large(up: UpstreamServer,
                                                          mock: dict[str, Any]) -> None:
    c = await capped(up, 256 * 1024)
    try:
        obj = parse(await Dispatcher(c, POLICY, AdaptiveLimiter(64)).execute(
            line("big", **mock), never))
    finally:
        await c.close()
    assert_error(obj, "upstream_response_too_large")
    assert "262144" in obj["error"]["message"]
    assert obj["response"] is None
    assert up.stats.attempts == {"big": 1}  # never retried


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_is_a_final_http_error_never_followed(
    dispatcher: Dispatcher, up: UpstreamServer, status: int
) -> None:
    async with UpstreamServer() as elsewhere:
        obj = parse(await dispatcher.execute(
            line("r", redirect=elsewhere.base_url + "/chat/completions", redirect_status=status),
            never))
        assert elsewhere.stats.total == 0
    assert_http_error(obj, status)
    assert up.stats.attempts == {"r": 1}


BIG_BODY = (
    '{\r\n  "id": "chatcmpl-big",\r\n  "object": "chat.completion",\n'
    '  "big": 123456789012345678901234567890,\n\t"neg": -98765432109876543210,\n'
    '  "u64": 18446744073709551615, "long": 1.0000000000000000000000001,\n'
    '  "tiny": 5e-400, "text": "a\\nb\\r\\u2028\\ud83d\\ude00",\n'
    '  "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}\n}\n'
)


@pytest.mark.asyncio
async def test_success_body_is_kept_verbatim(dispatcher: Dispatcher, up: UpstreamServer) -> None:
    result = await dispatcher.execute(line("big", raw_body=BIG_BODY), never)
    assert result is not None and result.ok
    obj = parse(result)  # one line, valid JSON
    assert b"123456789012345678901234567890" in result.line
    assert exact(result.line)["response"]["body"] == exact(BIG_BODY)
    assert result.usage == Usage(3, 4, 0, 0)
    assert obj["response"]["status_code"] == 200


@pytest.mark.asyncio
async def test_json_orjson_refuses_is_still_json(dispatcher: Dispatcher, up: UpstreamServer
                                                 ) -> None:
    """Valid JSON that orjson will not read (a number past a double's range, an escaped
    lone surrogate) is still the upstream's answer, kept verbatim."""
    for cid, raw in [("huge", '{"x": -1e400, "usage": {"prompt_tokens": 2}}'),
                     ("lone", '{"x": "\\ud800", "usage": {"prompt_tokens": 2}}')]:
        result = await dispatcher.execute(line(cid, raw_body=raw), never)
        assert result is not None and result.ok, result
        assert exact(result.line)["response"]["body"] == exact(raw)
        assert raw.encode() in result.line
        assert result.usage == Usage(2)


@pytest.mark.asyncio
@pytest.mark.parametrize("raw", ['{"x": NaN}', "Infinity", '{"a": 1,}', "\ufeff{}", "{} {}",
                                 '"a\tb"', "", "   "])
async def test_not_json_2xx_is_invalid_upstream_response(
    client: UpstreamClient, up: UpstreamServer, raw: str
) -> None:
    d = Dispatcher(client, RetryPolicy(1, 0.01, 0.05), AdaptiveLimiter(64))
    obj = parse(await d.execute(line("nj", raw_body=raw), never))
    assert_error(obj, "invalid_upstream_response")
    assert obj["response"]["status_code"] == 200
    assert obj["response"]["body"] == raw


@pytest.mark.asyncio
async def test_error_bodies_are_kept_verbatim_or_as_text(
    dispatcher: Dispatcher, up: UpstreamServer
) -> None:
    raw = '{"error": {"message": "no",\n "big": 340282366920938463463374607431768211456}}'
    obj = parse(await dispatcher.execute(line("j", raw_body=raw, status=400), never))
    assert_http_error(obj, 400)
    assert exact(orjson.dumps(obj["response"]["body"])) != exact(raw)  # orjson loses it...
    result = await dispatcher.execute(line("j2", raw_body=raw, status=400), never)
    assert result is not None
    assert exact(result.line)["response"]["body"] == exact(raw)  # ...the line does not
    text = parse(await dispatcher.execute(line("t", raw_body="<h1>bad gateway</h1>",
                                               status=404), never))
    assert_http_error(text, 404)
    assert text["response"]["body"] == "<h1>bad gateway</h1>"


HOSTILE_USAGE: list[tuple[Any, Usage]] = [
    ({"prompt_tokens": 2**64 - 1, "completion_tokens": 5}, Usage(0, 5)),
    ({"prompt_tokens": 2**53 + 1, "completion_tokens": 2**53}, Usage(0, 2**53)),
    ({"prompt_tokens": -1, "completion_tokens": 1.5}, NO_USAGE),
    ({"prompt_tokens": 3.0, "completion_tokens": "4"}, NO_USAGE),
    ({"prompt_tokens": True, "completion_tokens": None}, NO_USAGE),
    ({"prompt_tokens": [1], "completion_tokens": {"n": 1}}, NO_USAGE),
    ({"input_tokens": 6, "output_tokens": 7,
      "input_tokens_details": {"cached_tokens": 2**63},
      "output_tokens_details": {"reasoning_tokens": -2}}, Usage(6, 7)),
    ("lots", NO_USAGE),
    (None, NO_USAGE),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("usage", "expected"), HOSTILE_USAGE)
async def test_hostile_usage_counts_as_zero_and_stays_in_the_body(
    dispatcher: Dispatcher, up: UpstreamServer, usage: Any, expected: Usage
) -> None:
    raw = orjson.dumps({"id": "x", "object": "chat.completion", "usage": usage}).decode()
    result = await dispatcher.execute(line("u", raw_body=raw), never)
    assert result is not None and result.ok
    assert result.usage == expected
    assert exact(result.line)["response"]["body"]["usage"] == exact(raw)["usage"]


@pytest.mark.asyncio
async def test_request_id_that_is_not_utf8_is_written_readably() -> None:
    """A raw loopback upstream whose x-request-id header holds bytes that are not UTF-8
    (aiohttp hands them on as lone surrogates, which no JSON writer takes)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        size = next(int(h.split(b":")[1]) for h in head.split(b"\r\n")
                    if h.lower().startswith(b"content-length:"))
        await reader.readexactly(size)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n"
                     b"x-request-id: r\xff\xfe\xc3\xa9\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = UpstreamClient(f"http://127.0.0.1:{port}/v1", api_key=None, timeout=5,
                       max_connections=2)
    await c.open()
    try:
        result = await Dispatcher(c, POLICY, AdaptiveLimiter(8)).execute(line("h"), never)
    finally:
        await c.close()
        server.close()
        await server.wait_closed()
    assert result is not None and result.ok, result
    assert parse(result)["response"]["request_id"] == "r\ufffd\ufffd\u00e9"


def raw_line(custom_id: str, body_text: str) -> bytes:
    """An input line whose body is given as text (numbers orjson cannot hold exactly)."""
    return (b'{"custom_id": "' + custom_id.encode() + b'", "method": "POST", "url": "'
            + CHAT.encode() + b'", "body": ' + body_text.encode() + b"}")


EXACT_REQUEST = ('{"model": "m", "seed": 123456789012345678901234567890, '
                 '"n": -98765432109876543210, "temperature": 0.12345678901234567890123, '
                 '"top_p": 1E+0, "x_mock": {"echo": true, "key": "e"}, '
                 '"messages": [{"role": "user", "content": "12345678901234567890"}]}')


@pytest.mark.asyncio
async def test_request_body_numbers_reach_the_upstream_unchanged(
    dispatcher: Dispatcher, up: UpstreamServer
) -> None:
    result = await dispatcher.execute(raw_line("e", EXACT_REQUEST), never)
    assert result is not None and result.ok, result
    assert exact(result.line)["response"]["body"]["echo"] == exact(EXACT_REQUEST)
    assert up.stats.attempts == {"e": 1}


@pytest.mark.asyncio
async def test_request_body_text_is_taken_from_the_right_member(
    dispatcher: Dispatcher, up: UpstreamServer
) -> None:
    """The body's own text is found past members that look like it, escaped names and
    whitespace; where the line has no long number the body is sent re-encoded."""
    body = '{"model": "m", "seed": 12345678901234567890123, "x_mock": {"echo": true}}'
    raw = ('{ "custom_id" : "w", "note": {"body": 1}, "x": "\\"body\\": 2",\t"method": "POST",'
           ' "url": "/v1/chat/completions" , "\\u0062ody" :  ' + body + ' }').encode()
    result = await dispatcher.execute(raw, never)
    assert result is not None and result.ok, result
    assert exact(result.line)["response"]["body"]["echo"] == exact(body)
    short = await dispatcher.execute(raw_line("s", '{"model": "m", "seed": 7, '
                                                   '"x_mock": {"echo": true}}'), never)
    assert short is not None and short.ok
    assert parse(short)["response"]["body"]["echo"] == {"model": "m", "seed": 7,
                                                        "x_mock": {"echo": True}}
