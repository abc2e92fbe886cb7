"""Acceptance: batches past the default --max-requests (50,000). A real ``barge serve``
with --max-requests 200000 runs a 100,000-request batch to completed, every custom_id in
the output exactly once, and fails a file of that size whose last line repeats an id,
naming that line."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from barge_process import BargeProcess
from openai import OpenAI
from openai.types import Batch
from upstream import UpstreamConfig, UpstreamServer

N = 100_000
FINAL = ("completed", "failed", "expired", "cancelled")


def lines(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield orjson.dumps({"custom_id": f"req-{i}", "method": "POST",
                            "url": "/v1/chat/completions",
                            "body": {"model": "m", "max_tokens": 4,
                                     "messages": [{"role": "user", "content": f"q {i}"}]}})


@pytest.fixture(scope="module")
def barge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BargeProcess]:
    with UpstreamServer.in_thread(UpstreamConfig(record_bodies=False)) as up:
        proc = BargeProcess(tmp_path_factory.mktemp("large") / "data", up.base_url,
                            "--max-requests", "200000")
        proc.start()
        yield proc
        proc.terminate()


def run(proc: BargeProcess, data: bytes, timeout: float = 90.0) -> tuple[OpenAI, Batch]:
    client = proc.client(timeout=60)
    f = client.files.create(file=("large.jsonl", data), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    deadline = time.monotonic() + timeout
    while b.status not in FINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        b = client.batches.retrieve(b.id)
    return client, b


def test_a_batch_past_the_default_limit_completes_with_every_id_once(
        barge: BargeProcess) -> None:
    client, b = run(barge, b"\n".join(lines(N)) + b"\n")
    assert b.status == "completed", b
    assert b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) \
        == (N, N, 0)
    assert b.output_file_id is not None and b.error_file_id is None
    rows = client.files.content(b.output_file_id).read().splitlines()
    ids = [orjson.loads(r)["custom_id"] for r in rows]
    assert len(ids) == N
    assert set(ids) == {f"req-{i}" for i in range(N)}


def test_a_repeat_on_the_last_line_of_a_large_file_fails_it_at_that_line(
        barge: BargeProcess) -> None:
    data = b"\n".join([*lines(N), next(lines(1))]) + b"\n"
    _, b = run(barge, data)
    assert b.status == "failed", b
    assert b.errors is not None and b.errors.data is not None
    assert [(e.code, e.line) for e in b.errors.data] == [("duplicate_custom_id", N + 1)]
    assert b.errors.data[0].message == "The custom_id 'req-0' appears more than once."
