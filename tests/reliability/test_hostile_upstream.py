"""A hostile upstream against the real ``barge serve``, driven by the ``openai`` SDK.

Endless answers and gzip bombs stop at ``--max-response-bytes`` with memory bounded,
absurd ``usage`` values never wedge a batch, upstream bodies reach the output file with
every value unchanged, redirects are never followed, and error-file lines have OpenAI's
shape (an HTTP error is the upstream's ``response`` with ``error: null``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from barge_process import BargeProcess
from openai import OpenAI
from openai.types import Batch
from upstream import UpstreamConfig, UpstreamServer, gzip_bomb

CHAT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
MIB = 1024 * 1024


def chat(custom_id: str, **mock: Any) -> dict[str, Any]:
    mock.setdefault("key", custom_id)
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": "m", "messages": [{"role": "user", "content": custom_id}],
                     "x_mock": mock}}


def run_batch(client: OpenAI, lines: list[dict[str, Any] | bytes], timeout: float = 30.0,
              watch: Callable[[], None] | None = None) -> Batch:
    data = b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + timeout
    while b.status not in TERMINAL:
        assert time.monotonic() < deadline, f"batch did not finish: {b}"
        if watch is not None:
            watch()
        time.sleep(0.05)
        b = client.batches.retrieve(b.id)
    return b


def raw_lines(client: OpenAI, file_id: str | None) -> list[bytes]:
    if file_id is None:
        return []
    return [x for x in client.files.content(file_id).content.split(b"\n") if x]


def by_id(client: OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """Lines by custom_id, numbers exact (the stdlib keeps big ints; Decimal the floats)."""
    rows = [json.loads(x, parse_float=Decimal) for x in raw_lines(client, file_id)]
    out = {r["custom_id"]: r for r in rows}
    assert len(out) == len(rows), "a custom_id is written twice"
    return out


def kib(pid: int, field: str) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture
def far(upstream: UpstreamServer) -> Iterator[UpstreamServer]:
    """Another host a hostile upstream redirects to: it must never be reached."""
    with UpstreamServer.in_thread(UpstreamConfig()) as other:
        yield other


# ---- 2: unbounded answers ------------------------------------------------------------------

RSS_LIMIT_KIB = 400 * 1024


def test_endless_answers_and_gzip_bombs_stop_at_the_cap_with_memory_bounded(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    """Four endless bodies and four 1 GiB gzip bombs (a MiB on the wire, sent with that
    small Content-Length) in flight at once: each stops at 16 MiB, fails its request
    as upstream_response_too_large without a retry, and the process stays under 400 MB."""
    gzip_bomb(1024)  # build it before the flood, off the upstream's serving loop
    proc = barge_factory(upstream.base_url, "--max-response-bytes", str(16 * MIB),
                         "--upstream-concurrency", "16", "--upstream-timeout", "60",
                         "--backoff-base", "0.01")
    assert proc.proc is not None
    pid = proc.proc.pid

    def watch() -> None:  # stop a runaway before it takes the machine down
        rss = kib(pid, "VmRSS")
        if rss > RSS_LIMIT_KIB:
            proc.kill()
            pytest.fail(f"barge grew to {rss // 1024} MiB RSS (limit 400 MB)")

    stop = threading.Event()
    overrun: list[int] = []

    def sampler() -> None:
        while not stop.is_set():
            try:
                if kib(pid, "VmRSS") > RSS_LIMIT_KIB:
                    overrun.append(kib(pid, "VmRSS"))
                    proc.kill()
                    return
            except (FileNotFoundError, ProcessLookupError, AssertionError):
                return
            time.sleep(0.01)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    # Twelve quick answers first: the adaptive limit grows from 4 past the 8 floods.
    warm = [chat(f"ok-{i}") for i in range(12)]
    floods = ([chat(f"endless-{i}", endless=True, gather=8) for i in range(4)]
              + [chat(f"bomb-{i}", gzip_bomb=1024, gather=8) for i in range(4)])
    fine = [chat("fine-gzip", gzip=True), chat("fine-chunked", chunked=True),
            chat("fine-big", huge_bytes=8 * MIB)]
    t0 = time.monotonic()
    try:
        b = run_batch(proc.client(), warm + floods + fine, timeout=60, watch=watch)
    except Exception:
        if not overrun:
            raise
    finally:
        stop.set()
        thread.join(5)
    elapsed = time.monotonic() - t0
    assert not overrun, f"barge grew to {overrun[0] // 1024} MiB RSS (limit 400 MB); killed"
    peak = kib(pid, "VmHWM")
    print(f"peak RSS {peak // 1024} MiB, {elapsed:.1f} s")
    assert peak < RSS_LIMIT_KIB, f"peak RSS {peak // 1024} MiB"
    assert upstream.stats.max_in_flight >= 8  # the floods were served at the same time

    client = proc.client()
    assert b.status == "completed", b
    assert b.request_counts is not None
    assert (b.request_counts.completed, b.request_counts.failed) == (15, 8)
    out, err = by_id(client, b.output_file_id), by_id(client, b.error_file_id)
    assert set(err) == {x["custom_id"] for x in floods}
    for cid, row in err.items():
        assert row["response"] is None, row
        assert row["error"]["code"] == "upstream_response_too_large", row
        assert str(16 * MIB) in row["error"]["message"]
        assert upstream.stats.attempts[cid] == 1  # never retried
    assert set(out) == {x["custom_id"] for x in warm + fine}
    assert out["fine-gzip"]["response"]["body"]["object"] == "chat.completion"
    assert out["fine-chunked"]["response"]["body"]["object"] == "chat.completion"
    assert len(out["fine-big"]["response"]["body"]["x_padding"]) > 8 * MIB - 1024
    assert elapsed < 20, elapsed


# ---- 3: usage that does not fit ------------------------------------------------------------

def usage_body(usage: str) -> str:
    return ('{"id": "chatcmpl-u", "object": "chat.completion", "choices": [], '
            f'"usage": {usage}}}')


HOSTILE_USAGE = [
    '{"prompt_tokens": 18446744073709551615, "completion_tokens": 1}',  # 2^64 - 1
    '{"prompt_tokens": 1180591620717411303424, "completion_tokens": 1}',  # 2^70
    '{"prompt_tokens": 9007199254740993, "completion_tokens": 1}',  # 2^53 + 1
    '{"prompt_tokens": -5, "completion_tokens": -18446744073709551615}',
    '{"prompt_tokens": 1.5, "completion_tokens": 2.0, "total_tokens": 1e400}',
    '{"prompt_tokens": "7", "completion_tokens": true}',
    '{"prompt_tokens": null, "completion_tokens": [3], '
    '"prompt_tokens_details": {"cached_tokens": 99999999999999999999}}',
    '"lots"',
    '[1, 2]',
]


def test_usage_that_does_not_fit_never_stops_a_batch(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--backoff-base", "0.01")
    client = proc.client()
    lines = [chat(f"bad-{i}", raw_body=usage_body(u)) for i, u in enumerate(HOSTILE_USAGE)]
    lines += [chat(f"sane-{i}", raw_body=usage_body(
        f'{{"prompt_tokens": {10 + i}, "completion_tokens": {i}, '
        f'"prompt_tokens_details": {{"cached_tokens": 1}}, '
        f'"completion_tokens_details": {{"reasoning_tokens": 2}}}}')) for i in range(5)]
    b = run_batch(client, lines)
    assert b.status == "completed", b
    assert b.request_counts is not None
    assert (b.request_counts.completed, b.request_counts.failed) == (len(lines), 0)
    assert b.usage is not None
    # only the sane values count; the absurd ones are ignored for the totals...
    assert b.usage.input_tokens == sum(10 + i for i in range(5)) + 0
    # ...except each bad line's lone sane "completion_tokens": 1
    assert b.usage.output_tokens == sum(range(5)) + 3
    assert b.usage.input_tokens_details.cached_tokens == 5
    assert b.usage.output_tokens_details.reasoning_tokens == 10
    # ...and the output file keeps every value verbatim
    out = by_id(client, b.output_file_id)
    for i, u in enumerate(HOSTILE_USAGE):
        assert out[f"bad-{i}"]["response"]["body"]["usage"] == json.loads(
            u, parse_float=Decimal)


def test_usage_sums_saturate_instead_of_overflowing(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    """Many answers each reporting the most one answer may (2^53): their sum would pass
    SQLite's int64; it stays at 2^53 and the batch completes."""
    top = 2**53
    proc = barge_factory(upstream.base_url, "--backoff-base", "0.01")
    client = proc.client()
    lines = [chat(f"top-{i}", raw_body=usage_body(
        f'{{"prompt_tokens": {top}, "completion_tokens": {top}, '
        f'"prompt_tokens_details": {{"cached_tokens": {top}}}}}')) for i in range(1100)]
    lines.append(chat("small", raw_body=usage_body('{"prompt_tokens": 1, "completion_tokens": 7}')))
    b = run_batch(client, lines)
    assert b.status == "completed", b
    assert b.request_counts is not None and b.request_counts.completed == 1101
    assert b.usage is not None
    assert (b.usage.input_tokens, b.usage.output_tokens) == (top, top)
    assert b.usage.input_tokens_details.cached_tokens == top
    assert b.usage.total_tokens == 2 * top


# ---- 5: numbers unchanged on the way through -----------------------------------------------

EXACT_BODY = (
    '{\r\n  "id": "chatcmpl-exact",\r\n  "object": "chat.completion",\n'
    '  "choices": [{"index": 0, "message": {"role": "assistant",\n'
    '               "content": "line one\\nline two \\u2028 \\ud83d\\ude00"}}],\n'
    '\t"big": 123456789012345678901234567890,\n'
    '  "neg": -98765432109876543210123,\n'
    '  "u64": 18446744073709551615, "i64": -9223372036854775809,\n'
    '  "precise": 3.14159265358979323846264338327950288,\n'
    '  "huge": 1e400, "tiny": 4.9e-330, "exp": 1E+2, "zero": -0.0,\n'
    '  "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}\r\n}\r\n'
)


def test_upstream_bodies_reach_the_output_file_unchanged(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--backoff-base", "0.01")
    client = proc.client()
    err_raw = '{"error": {"message": "nope",\n "limit": 340282366920938463463374607431768211456}}'
    # a request body with the same kind of numbers, which the upstream echoes
    sent = ('{"model": "m", "seed": 123456789012345678901234567890, "temperature": '
            '0.300000000000000000000001, "messages": [{"role": "user", "content": "hi"}], '
            '"x_mock": {"echo": true, "key": "echo"}}')
    echo = ('{"custom_id": "echo", "method": "POST", "url": "/v1/chat/completions", '
            f'"body": {sent}}}').encode()
    b = run_batch(client, [chat("exact", raw_body=EXACT_BODY),
                           chat("err", raw_body=err_raw, status=400), echo])
    assert b.status == "completed", b
    out = by_id(client, b.output_file_id)
    assert set(out) == {"exact", "echo"}
    assert out["echo"]["response"]["body"]["echo"] == json.loads(sent, parse_float=Decimal)
    (line,) = [x for x in raw_lines(client, b.output_file_id) if b'"exact"' in x]
    assert b"123456789012345678901234567890" in line and b"1e400" in line
    row = json.loads(line, parse_float=Decimal)
    assert row["response"]["body"] == json.loads(EXACT_BODY, parse_float=Decimal)
    assert row["response"]["body"]["big"] == 123456789012345678901234567890
    assert row["response"]["body"]["precise"] == Decimal("3.14159265358979323846264338327950288")
    assert b.usage is not None and (b.usage.input_tokens, b.usage.output_tokens) == (11, 22)
    err = by_id(client, b.error_file_id)["err"]
    assert err["response"]["body"] == json.loads(err_raw)
    assert err["error"] is None


# ---- 13: redirects -------------------------------------------------------------------------

def test_redirects_are_never_followed(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer, far: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--backoff-base", "0.01")
    client = proc.client()
    target = far.base_url + "/chat/completions"
    statuses = [301, 302, 303, 307, 308]
    b = run_batch(client, [chat(f"r-{s}", redirect=target, redirect_status=s)
                           for s in statuses] + [chat("ok")])
    assert far.stats.total == 0  # nothing ever reached the other host
    assert b.status == "completed", b
    assert b.request_counts is not None
    assert (b.request_counts.completed, b.request_counts.failed) == (1, 5)
    err = by_id(client, b.error_file_id)
    for s in statuses:
        row = err[f"r-{s}"]
        assert row["response"]["status_code"] == s
        assert row["error"] is None
        assert upstream.stats.attempts[f"r-{s}"] == 1  # final, not retried


# ---- 18: error-file lines in OpenAI's shape ------------------------------------------------

def test_error_lines_carry_the_upstream_answer_or_an_error_never_both(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--backoff-base", "0.01", "--max-attempts", "2",
                         "--upstream-timeout", "0.5", "--max-response-bytes", str(MIB))
    client = proc.client()
    b = run_batch(client, [
        chat("ok"),
        chat("bad-request", status=400, message="no such model"),
        chat("not-found", status=404),
        chat("server-error", status=500),
        chat("html-error", status=502, raw_body="<h1>Bad Gateway</h1>"),
        chat("garbage", garbage=True),
        chat("slow", delay=2),
        chat("flood", endless=True),
    ])
    assert b.status == "completed", b
    err = by_id(client, b.error_file_id)
    assert set(err) == {"bad-request", "not-found", "server-error", "html-error", "garbage",
                        "slow", "flood"}
    for row in err.values():
        assert set(row) == {"id", "custom_id", "response", "error"}
        assert row["id"].startswith("batch_req_")
    # the upstream answered with an HTTP error: its response, error null
    for cid, status in (("bad-request", 400), ("not-found", 404), ("server-error", 500),
                        ("html-error", 502)):
        row = err[cid]
        assert row["error"] is None, row
        assert set(row["response"]) == {"status_code", "request_id", "body"}
        assert row["response"]["status_code"] == status
        assert row["response"]["request_id"].startswith("req_")
    assert err["bad-request"]["response"]["body"]["error"]["message"] == "no such model"
    assert err["server-error"]["response"]["body"]["error"]["type"] == "server_error"
    assert err["html-error"]["response"]["body"] == "<h1>Bad Gateway</h1>"
    # no usable answer: an error, no response
    for cid, code in (("slow", "upstream_timeout"), ("flood", "upstream_response_too_large")):
        assert err[cid]["response"] is None, err[cid]
        assert err[cid]["error"]["code"] == code
        assert err[cid]["error"]["message"]
    # an answer Barge refused: the response it got, and why it refused it
    g = err["garbage"]
    assert g["response"]["status_code"] == 200 and g["response"]["body"] == "<html>oops"
    assert g["error"]["code"] == "invalid_upstream_response"
    deadline = time.monotonic() + 5
    while upstream.stats.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)  # let the last slow answer end before the upstream stops
