"""Acceptance: ``POST /v1/batches/{id}/retry`` against a real ``barge serve``: a new batch
(an OpenAI Batch object the SDK parses) whose input is exactly the original lines without
a line in the output file, byte for byte and in input order."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest
from api.keys_support import api_key, http_error, unique
from api.support import (
    CHAT,
    auth_headers,
    chat_line,
    error_of,
    to_jsonl,
    upload,
    wait_for,
    wait_status,
    wait_terminal,
)
from barge_process import BargeProcess
from openai import OpenAI
from openai.types import Batch
from results_support import custom_ids, file_lines
from upstream import UpstreamServer

Factory = Callable[..., BargeProcess]
Connect = Callable[..., OpenAI]


def retry(client: OpenAI, batch_id: str) -> Batch:
    return client.post(f"/batches/{batch_id}/retry", cast_to=Batch)


def test_the_retry_holds_exactly_the_failed_lines_byte_for_byte(
    connect: Connect, shared_barge: BargeProcess, shared_upstream: UpstreamServer
) -> None:
    client = connect(shared_barge)
    failing = {3, 4, 9, 17, 19}
    lines = [chat_line(f"c-{i}", key=f"retry-{unique('x')}-{i}",
                       **({"status": 400} if i in failing else {})) for i in range(20)]
    # odd spacing, a blank line and no final newline: the lines are kept as they were
    raw = to_jsonl(lines).replace(b'"c-3",', b'"c-3" ,  ').replace(b"\n", b"\n\n", 1)[:-1]
    f = upload(client, raw)
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                              metadata={"job": "nightly"})
    done = wait_terminal(client, b.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.failed == len(failing)

    again = retry(client, b.id)
    assert isinstance(again, Batch) and again.id.startswith("batch_") and again.id != b.id
    assert again.status == "validating"
    assert (again.endpoint, again.completion_window) == (CHAT, "24h")
    assert again.metadata == {"job": "nightly", "retry_of": b.id}
    assert again.input_file_id != f.id
    originals = [line for line in raw.splitlines(keepends=True) if line.strip()]
    expected = b"".join(originals[i] for i in sorted(failing))
    assert client.files.content(again.input_file_id).read() == expected
    info = client.files.retrieve(again.input_file_id)
    assert (info.purpose, info.bytes) == ("batch", len(expected))
    # it runs like any batch (the 400s fail again, here)
    ran = wait_terminal(client, again.id)
    assert ran.status == "completed" and ran.request_counts is not None
    assert ran.request_counts.total == len(failing)
    # a retry of the retry names the retry
    assert retry(client, again.id).metadata == {"job": "nightly", "retry_of": again.id}


def test_a_cancelled_batch_retries_what_failed_and_what_never_ran(
    connect: Connect, barge_factory: Factory, upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "2",
                         "--backoff-base", "0.01")
    client = connect(proc)
    lines = [chat_line("fast-0"), chat_line("bad-1", status=400, key="bad-1")] + [
        chat_line(f"slow-{i}", delay=1.0) for i in range(8)]
    raw = to_jsonl(lines)
    f = upload(client, raw)
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    wait_for(lambda: (x := client.batches.retrieve(b.id)).request_counts is not None
             and x.request_counts.completed + x.request_counts.failed >= 2,
             what="the fast requests to be counted")
    client.batches.cancel(b.id)
    done = wait_status(client, b.id, {"cancelled"})
    succeeded = {c for c, _ in custom_ids(file_lines(client, done)).items()} - {"bad-1"}
    assert "fast-0" in succeeded
    again = retry(client, b.id)
    kept = [line for line in raw.splitlines(keepends=True)
            if custom_ids([line]).most_common(1)[0][0] not in succeeded]
    assert client.files.content(again.input_file_id).read() == b"".join(kept)
    assert b'"bad-1"' in b"".join(kept) and len(kept) >= 2


def test_an_expired_batch_retries_its_expired_requests(
    connect: Connect, barge_factory: Factory, upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "4",
                         "--completion-windows", "24h,2s")
    client = connect(proc)
    lines = [chat_line("fast-0"), chat_line("slow-1", delay=30), chat_line("fast-2"),
             chat_line("slow-3", delay=30)]
    raw = to_jsonl(lines)
    f = upload(client, raw)
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT,
                              completion_window="2s")  # type: ignore[arg-type]
    assert wait_terminal(client, b.id).status == "expired"
    again = retry(client, b.id)
    assert again.completion_window == "2s"
    parts = raw.splitlines(keepends=True)
    assert client.files.content(again.input_file_id).read() == parts[1] + parts[3]


def test_what_cannot_be_retried_is_a_conflict(connect: Connect,
                                              shared_barge: BargeProcess) -> None:
    client = connect(shared_barge)
    f = upload(client, [chat_line(f"ok-{i}") for i in range(3)])
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    assert wait_terminal(client, b.id).status == "completed"
    files_before = {x.id for x in client.files.list()}
    with pytest.raises(openai.ConflictError) as exc:
        retry(client, b.id)
    error_of(exc.value, status=409, code="nothing_to_retry")
    assert {x.id for x in client.files.list()} == files_before  # no file left behind
    assert not list((shared_barge.data_dir / "tmp").glob("*retry*"))

    bad = upload(client, b'{"custom_id": "x", "method": "GET"}\n')
    failed = client.batches.create(input_file_id=bad.id, endpoint=CHAT,
                                   completion_window="24h")
    assert wait_terminal(client, failed.id).status == "failed"
    with pytest.raises(openai.ConflictError) as exc:
        retry(client, failed.id)
    err = error_of(exc.value, status=409, code="no_request_results")
    assert "fix its input file" in err["message"]

    slow = upload(client, [chat_line("s", delay=30)])
    running = client.batches.create(input_file_id=slow.id, endpoint=CHAT,
                                    completion_window="24h")
    with pytest.raises(openai.ConflictError) as exc:
        retry(client, running.id)
    error_of(exc.value, status=409, code="invalid_status")
    client.batches.cancel(running.id)
    with pytest.raises(openai.NotFoundError):
        retry(client, "batch_nope")


def test_retrying_needs_create_batch_and_the_batch(connect: Connect,
                                                   shared_barge: BargeProcess) -> None:
    client = connect(shared_barge)
    f = upload(client, [chat_line("a", status=400, key=unique("perm"))])
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    wait_terminal(client, b.id)
    url = f"{shared_barge.base_url}/batches/{b.id}/retry"
    _, reader = api_key(shared_barge, "reader", "default")
    err = http_error(httpx.post(url, headers=auth_headers(reader)), status=403)
    assert "create_batch" in err["message"]
    _, stranger = api_key(shared_barge, "admin", unique("other"))
    http_error(httpx.post(url, headers=auth_headers(stranger)), status=404)
    _, member = api_key(shared_barge, "member", "default")
    r = httpx.post(url, headers=auth_headers(member))
    assert r.status_code == 200, r.text
    assert r.json()["metadata"] == {"retry_of": b.id}
