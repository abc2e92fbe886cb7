"""Embeddings coalescing, end to end: the real ``barge serve`` (one coalescing, as
``--upstream`` is by default, and one whose config turns it off) in front of the
loopback upstream's deterministic embeddings, driven by the openai SDK. Lines alike go
in few calls, and each line's answer is what its own call returns, number for number;
a bad input fails only its line; other endpoints are sent one call a line."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from barge_process import BargeProcess
from openai import OpenAI
from openai.types import Batch
from upstream import UpstreamConfig, UpstreamServer, hash_embeddings

EMB = "/v1/embeddings"
DIMS = 6
REJECT = "REJECT-THIS"
pytestmark = pytest.mark.timeout(180)

CONFIG = """
[[upstream]]
name = "plain"
url = "{url}"
models = ["emb-a", "emb-b", "chat-*"]
coalesce = false

[[upstream]]
name = "small"
url = "{url}"
models = ["emb-small"]
coalesce_max_inputs = 8
coalesce_max_tokens = 100000
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer.in_thread(UpstreamConfig(embedding_dims=DIMS,
                                                 reject_input=REJECT)) as up:
        yield up


def _start(tmp: Path, upstream: UpstreamServer, *args: str) -> BargeProcess:
    return BargeProcess(tmp / "data", upstream.base_url, "--backoff-base", "0.01",
                        "--max-attempts", "2", *args).start()


@pytest.fixture(scope="module")
def coalescing(tmp_path_factory: pytest.TempPathFactory,
               upstream: UpstreamServer) -> Iterator[BargeProcess]:
    """Barge with ``--upstream``: coalescing is on."""
    proc = _start(tmp_path_factory.mktemp("on"), upstream)
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory,
          upstream: UpstreamServer) -> Iterator[BargeProcess]:
    """Barge with a config: ``coalesce = false`` for emb-a/emb-b, 8 inputs for emb-small."""
    tmp = tmp_path_factory.mktemp("off")
    config = tmp / "barge.toml"
    config.write_text(CONFIG.format(url=upstream.base_url))
    proc = _start(tmp, upstream, "--config", str(config))
    yield proc
    proc.kill()


def line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": EMB, "body": body}


def mixed_lines() -> list[dict[str, Any]]:
    """300 lines: emb-a with strings, lists of strings and token ids; emb-b in base64
    with ``dimensions``; shuffled."""
    rng = random.Random(14)
    lines = [line(f"s-{i}", model="emb-a", input=f"text {i} " + "w" * rng.randrange(40))
             for i in range(150)]
    lines += [line(f"l-{i}", model="emb-a",
                   input=[f"item {i}.{k} " + "v" * rng.randrange(20)
                          for k in range(rng.randrange(1, 5))]) for i in range(60)]
    lines += [line(f"t-{i}", model="emb-a", input=[rng.randrange(50000) for _ in range(5)])
              for i in range(10)]
    lines += [line(f"b-{i}", model="emb-b", encoding_format="base64", dimensions=DIMS,
                   input=f"base64 {i}") for i in range(80)]
    rng.shuffle(lines)
    return lines


def run(proc: BargeProcess, lines: list[dict[str, Any]], endpoint: str = EMB
        ) -> tuple[Batch, dict[str, bytes], dict[str, bytes]]:
    """Run a batch; its final state, and its output and error lines by custom_id."""
    client: OpenAI = proc.client(timeout=30)
    try:
        data = b"".join(orjson.dumps(x) + b"\n" for x in lines)
        f = client.files.create(file=("in.jsonl", data), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint=endpoint,  # type: ignore[arg-type]
                                  completion_window="24h")
        deadline = time.monotonic() + 120
        while b.status not in ("completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, b
            time.sleep(0.05)
            b = client.batches.retrieve(b.id)
        files = []
        for file_id in (b.output_file_id, b.error_file_id):
            rows = client.files.content(file_id).read().splitlines() if file_id else []
            files.append({orjson.loads(r)["custom_id"]: r for r in rows})
        return b, files[0], files[1]
    finally:
        client.close()


def exact(text: bytes | str) -> Any:
    """A JSON text's value with every number kept as its text, so two values are equal
    only where the upstream wrote the same digits."""
    return json.loads(text, parse_float=lambda s: ("float", s),
                      parse_int=lambda s: ("int", s))


def body_of(row: bytes) -> Any:
    return exact(row)["response"]["body"]


def own_call(body: dict[str, Any]) -> Any:
    """What the upstream answers this body alone, read the same way."""
    return exact(orjson.dumps(hash_embeddings(body, DIMS)))


def test_alike_lines_share_calls_and_each_gets_its_own_answer_exactly(
    coalescing: BargeProcess, plain: BargeProcess, upstream: UpstreamServer,
) -> None:
    lines = mixed_lines()
    inputs = {x["custom_id"]: x["body"]["input"] for x in lines}
    upstream.stats.reset()
    on, out_on, err_on = run(coalescing, lines)
    calls_on = list(upstream.stats.embedding_inputs)
    upstream.stats.reset()
    off, out_off, err_off = run(plain, lines)
    calls_off = list(upstream.stats.embedding_inputs)

    for b in (on, off):
        assert b.status == "completed", b
        assert b.request_counts is not None
        assert (b.request_counts.completed, b.request_counts.failed) == (300, 0)
    assert err_on == err_off == {}
    assert set(out_on) == set(out_off) == set(inputs)
    # Far fewer calls, none over 64 inputs; without coalescing one a line.
    assert len(calls_on) <= 300 // 20, calls_on
    assert max(calls_on) <= 64
    assert sum(calls_on) == sum(calls_off)
    assert len(calls_off) == 300 and upstream.stats.by_path[EMB] == 300
    request_ids: Counter[str] = Counter()
    for custom_id, row in out_on.items():
        got, alone = body_of(row), body_of(out_off[custom_id])
        # Each line's data is its own call's, digit for digit, index 0…n-1.
        assert got["data"] == alone["data"], custom_id
        assert got["data"] == own_call(next(x["body"] for x in lines
                                            if x["custom_id"] == custom_id))["data"]
        n = len(inputs[custom_id]) if isinstance(inputs[custom_id], list) \
            and not custom_id.startswith("t-") else 1
        assert [d["index"] for d in got["data"]] == [("int", str(i)) for i in range(n)]
        assert {k: v for k, v in got.items() if k != "usage"} == \
            {k: v for k, v in alone.items() if k != "usage"}
        usage = orjson.loads(row)["response"]["body"]["usage"]
        assert usage["prompt_tokens"] == usage["total_tokens"] >= 0
        request_ids[orjson.loads(row)["response"]["request_id"]] += 1
    if_base64 = body_of(out_on["b-0"])["data"][0]["embedding"]
    assert isinstance(if_base64, str)  # base64 answers go through the same way
    # The numbers kept their 29 decimals (no double on the way).
    assert len(body_of(out_on["s-0"])["data"][0]["embedding"][0][1].split(".")[1]) == 29
    # Lines of one call share its request id; each line keeps its own line id.
    assert len(request_ids) == len(calls_on)
    assert len({orjson.loads(r)["id"] for r in out_on.values()}) == 300
    # The split usage adds up to what the upstream counted, as uncoalesced.
    assert on.usage is not None and off.usage is not None
    assert on.usage.input_tokens == off.usage.input_tokens > 0
    assert on.usage.total_tokens == off.usage.total_tokens


def test_a_bad_input_fails_only_its_own_line(coalescing: BargeProcess,
                                             upstream: UpstreamServer) -> None:
    lines = [line(f"g-{i}", model="emb-a", input=f"good {i}") for i in range(40)]
    lines[17] = line("g-17", model="emb-a", input=["fine", f"{REJECT} here"])
    upstream.stats.reset()
    b, out, err = run(coalescing, lines)
    assert b.status == "completed", b
    assert b.request_counts is not None
    assert (b.request_counts.completed, b.request_counts.failed) == (39, 1)
    assert set(err) == {"g-17"}
    bad = orjson.loads(err["g-17"])
    assert bad["response"]["status_code"] == 400 and bad["error"] is None
    assert set(out) == {f"g-{i}" for i in range(40)} - {"g-17"}
    for custom_id, row in out.items():
        body = next(x["body"] for x in lines if x["custom_id"] == custom_id)
        assert body_of(row)["data"] == own_call(body)["data"]
    # The call that held it failed, then its lines went one by one.
    calls = upstream.stats.embedding_inputs
    assert max(calls) > 1
    assert upstream.stats.by_status[400] == 2  # the coalesced call and the line's own
    assert upstream.stats.by_status[200] + 2 == len(calls)


def test_coalesce_false_sends_one_call_a_line_and_limits_bound_a_call(
    plain: BargeProcess, upstream: UpstreamServer,
) -> None:
    lines = [line(f"p-{i}", model="emb-a", input=f"plain {i}") for i in range(50)]
    upstream.stats.reset()
    b, out, _ = run(plain, lines)
    assert b.status == "completed" and len(out) == 50
    assert upstream.stats.embedding_inputs == [1] * 50
    # An upstream with coalesce_max_inputs = 8: calls of at most 8 inputs.
    small = [line(f"m-{i}", model="emb-small", input=[f"a {i}", f"b {i}"]) for i in range(40)]
    upstream.stats.reset()
    b, out, _ = run(plain, small)
    assert b.status == "completed" and len(out) == 40
    calls = upstream.stats.embedding_inputs
    assert max(calls) <= 8 and sum(calls) == 80 and len(calls) <= 40 // 3
    for custom_id, row in out.items():
        body = next(x["body"] for x in small if x["custom_id"] == custom_id)
        assert body_of(row)["data"] == own_call(body)["data"]


def test_other_endpoints_are_sent_one_call_a_line(coalescing: BargeProcess,
                                                  upstream: UpstreamServer) -> None:
    chat = [{"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "chat-x", "messages": [{"role": "user", "content": "hi"}]}}
            for i in range(30)]
    # Moderations look like embeddings (a model and an input) but are never coalesced.
    moderations = [{"custom_id": f"o-{i}", "method": "POST", "url": "/v1/moderations",
                    "body": {"model": "omni-moderation-latest", "input": f"text {i}"}}
                   for i in range(30)]
    upstream.stats.reset()
    b, out, err = run(coalescing, chat, "/v1/chat/completions")
    assert b.status == "completed" and len(out) == 30 and not err
    b, out, err = run(coalescing, moderations, "/v1/moderations")
    assert b.status == "completed" and len(out) == 30 and not err
    assert upstream.stats.by_path == {"/v1/chat/completions": 30, "/v1/moderations": 30}
    assert upstream.stats.embedding_inputs == []


def test_an_answer_that_cannot_be_split_sends_the_lines_one_by_one(
    coalescing: BargeProcess, upstream: UpstreamServer,
) -> None:
    lines = [line(f"x-{i}", model="emb-a", input=f"short {i}",
                  x_mock={"short_when_many": True}) for i in range(20)]
    upstream.stats.reset()
    b, out, err = run(coalescing, lines)
    assert b.status == "completed" and not err and len(out) == 20
    for custom_id, row in out.items():
        body = next(x["body"] for x in lines if x["custom_id"] == custom_id)
        assert body_of(row)["data"] == own_call(body)["data"]
    calls = upstream.stats.embedding_inputs
    assert max(calls) > 1 and calls.count(1) == 20


def test_a_coalesced_call_is_retried_as_a_whole(coalescing: BargeProcess,
                                                upstream: UpstreamServer) -> None:
    # Without a key the upstream counts attempts per body: the combined call's first
    # attempt gets a 503, its second the answer.
    lines = [line(f"r-{i}", model="emb-a", input=f"retry {i}",
                  x_mock={"status": 503, "fail_times": 1}) for i in range(30)]
    upstream.stats.reset()
    b, out, err = run(coalescing, lines)
    assert b.status == "completed" and not err and len(out) == 30
    assert upstream.stats.by_status == {503: 1, 200: 1}
    assert upstream.stats.embedding_inputs == [30]
    for custom_id, row in out.items():
        body = next(x["body"] for x in lines if x["custom_id"] == custom_id)
        assert body_of(row)["data"] == own_call(body)["data"]
