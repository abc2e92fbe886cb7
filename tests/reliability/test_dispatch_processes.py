"""``barge serve --dispatch-processes 2``: a batch whose requests go out through sender
processes, with senders killed mid-batch and the server killed at the end; every
custom_id in the files exactly once, answers as the upstream gave them, no process left."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
from barge_process import BargeProcess
from upstream import UpstreamServer

N = 2000


def _input(n: int) -> bytes:
    lines = []
    for i in range(n):
        body = {"model": "m", "messages": [{"role": "user", "content": str(i)}]}
        if i % 100 == 7:  # a final error, answered the same whoever sends it
            body["x_mock"] = {"status": 400, "message": f"bad {i}"}
        lines.append(orjson.dumps({"custom_id": f"c-{i}", "method": "POST",
                                   "url": "/v1/chat/completions", "body": body}) + b"\n")
    return b"".join(lines)


def _senders(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children
            if b"barge.upstreams.sender" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_batch_through_senders_survives_their_deaths(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    upstream.config.latency = 0.004
    proc = barge_factory(upstream.base_url, "--dispatch-processes", "2",
                         "--upstream-concurrency", "16", "--backoff-base", "0.01")
    assert proc.proc is not None
    first = _senders(proc.proc.pid)
    assert len(first) == 2
    client = proc.client()
    f = client.files.create(file=("in.jsonl", _input(N)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    killed = 0
    deadline = time.monotonic() + 120
    while (b := client.batches.retrieve(batch.id)).status not in (
            "completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, b
        done = b.request_counts.completed + b.request_counts.failed if b.request_counts else 0
        if killed < 2 and done >= N * (killed + 1) // 3:
            os.kill(first[killed], signal.SIGKILL)  # requests in flight there are retried
            killed += 1
        time.sleep(0.02)
    assert killed == 2, "the batch ended before both kills"
    # Requests lost with a sender blame no upstream: it never left rotation.
    assert "out of rotation" not in proc.log()
    assert b.status == "completed", b
    assert b.request_counts is not None
    assert (b.request_counts.completed, b.request_counts.failed) == (N - N // 100, N // 100)
    assert b.output_file_id is not None and b.error_file_id is not None
    out = [orjson.loads(r) for r in client.files.content(b.output_file_id).read().splitlines()]
    err = [orjson.loads(r) for r in client.files.content(b.error_file_id).read().splitlines()]
    ids = Counter(r["custom_id"] for r in out + err)
    assert set(ids) == {f"c-{i}" for i in range(N)} and max(ids.values()) == 1
    for row in out:
        assert row["response"]["status_code"] == 200
        content = row["response"]["body"]["choices"][0]["message"]["content"]
        assert content == f"echo: {row['custom_id'][2:]}"
    assert {r["custom_id"] for r in err} == {f"c-{i}" for i in range(7, N, 100)}
    for row in err:
        assert row["response"]["status_code"] == 400
        assert row["response"]["body"]["error"]["message"] == f"bad {row['custom_id'][2:]}"
    # Two new senders took the dead ones' places, and /metrics says so; the server's end
    # leaves none behind.
    now = _senders(proc.proc.pid)
    assert len(now) == 2 and not set(now) & set(first)
    metrics = httpx.get(f"http://127.0.0.1:{proc.port}/metrics", timeout=10).text
    assert "\nbarge_sender_processes 2.0\n" in metrics
    assert "\nbarge_sender_exits_total 2.0\n" in metrics
    proc.kill()
    deadline = time.monotonic() + 10
    while any(map(_alive, now)):
        assert time.monotonic() < deadline, "a sender outlived the killed server"
        time.sleep(0.05)
