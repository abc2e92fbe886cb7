"""Reading a batch's results while it runs (``GET /v1/batches/{id}/results``), for the
acceptance, reliability and cluster tests: a page through the openai SDK's raw HTTP, all
pages until the end, and the checks every reader must pass."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import orjson
from openai import OpenAI
from openai.types import Batch

NEXT = "barge-next-after"


def page(client: OpenAI, batch_id: str, after: str | None = None,
         limit: int | None = None) -> tuple[list[bytes], str]:
    """One page, through the SDK's own HTTP (its key, base URL and headers): the lines,
    each as the files hold it (newline included), and the next cursor."""
    params: dict[str, object] = {}
    if after is not None:
        params["after"] = after
    if limit is not None:
        params["limit"] = limit
    r = client.get(f"/batches/{batch_id}/results", cast_to=httpx.Response,
                   options={"params": params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(("application/jsonl", "application/x-ndjson"))
    body = r.content
    assert body == b"" or body.endswith(b"\n"), body[-100:]
    return body.splitlines(keepends=True), r.headers[NEXT]


def read_to_end(client: OpenAI, batch_id: str, after: str | None = None,
                limit: int | None = None, timeout: float = 60.0) -> list[bytes]:
    """Every line from ``after`` on, page after page, until the cursor is empty (the
    batch has ended and nothing is left)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        lines, after = page(client, batch_id, after, limit)
        got += lines
        if after == "":
            return got
        assert time.monotonic() < deadline, f"no end after {timeout}s; {len(got)} lines"
        if not lines:
            time.sleep(0.05)


def custom_ids(lines: list[bytes]) -> Counter[str]:
    return Counter(orjson.loads(line)["custom_id"] for line in lines)


def assert_at_most_once(lines: list[bytes]) -> None:
    twice = [c for c, n in custom_ids(lines).items() if n > 1]
    assert not twice, f"custom_ids read twice: {twice[:10]}"


def file_lines(client: OpenAI, batch: Batch) -> list[bytes]:
    """The lines of the batch's output and error files, newlines included."""
    out: list[bytes] = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id is not None:
            out += client.files.content(file_id).read().splitlines(keepends=True)
    return out


def assert_same_lines(got: list[bytes], files: list[bytes]) -> None:
    """The same lines, byte for byte, as multisets."""
    assert len(got) == len(files), (len(got), len(files))
    assert Counter(got) == Counter(files)
