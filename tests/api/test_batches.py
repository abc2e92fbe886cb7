"""Acceptance: the Batch API end to end through the official SDK, against a real
``barge serve`` in front of the loopback upstream: upload → create → poll → download,
mixed results, every endpoint, list pagination, cancel, invalid files, limits, expiry."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from api.support import (
    CHAT,
    MODEL,
    all_batch_ids,
    chat_body,
    chat_line,
    error_of,
    request_line,
    results,
    run_batch,
    to_jsonl,
    upload,
    wait_for,
    wait_status,
    wait_terminal,
)
from barge_process import BargeProcess
from openai import OpenAI
from upstream import UpstreamServer

Factory = Callable[..., BargeProcess]
Connect = Callable[..., OpenAI]


def test_happy_path_upload_create_poll_download(connect: Connect,
    barge: BargeProcess, upstream: UpstreamServer
) -> None:
    client = connect(barge)
    n = 25
    lines = [chat_line(f"req-{i}", content=f"question {i}") for i in range(n)]
    f = upload(client, lines)
    metadata = {"project": "acceptance", "owner": "tests"}

    created = client.batches.create(input_file_id=f.id, endpoint=CHAT,
                                    completion_window="24h", metadata=metadata)
    assert created.id.startswith("batch_")
    assert created.object == "batch"
    assert created.status == "validating"
    assert (created.endpoint, created.input_file_id) == (CHAT, f.id)
    assert created.completion_window == "24h"
    assert created.metadata == metadata
    assert abs(created.expires_at - (created.created_at + 86400)) <= 1  # type: ignore[operator]
    assert created.output_file_id is None and created.error_file_id is None

    b = wait_terminal(client, created.id)
    assert b.status == "completed", b
    assert b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (
        n, n, 0)
    assert b.errors is None
    assert b.error_file_id is None
    assert b.metadata == metadata
    assert b.model == MODEL
    assert b.in_progress_at is not None and b.finalizing_at is not None
    assert b.completed_at is not None
    assert b.created_at <= b.in_progress_at <= b.finalizing_at <= b.completed_at
    assert b.failed_at is None and b.expired_at is None
    assert b.cancelling_at is None and b.cancelled_at is None

    out = client.files.retrieve(b.output_file_id)  # type: ignore[arg-type]
    assert out.purpose == "batch_output"
    assert out.id.startswith("file-")
    raw = client.files.content(out.id).content
    assert out.bytes == len(raw)

    ok, errors = results(client, b)
    assert errors == {}
    assert set(ok) == {f"req-{i}" for i in range(n)}
    for i in range(n):
        line = ok[f"req-{i}"]
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        resp = line["response"]
        assert resp["status_code"] == 200
        assert resp["request_id"]
        assert resp["body"]["object"] == "chat.completion"
        assert resp["body"]["model"] == MODEL
        assert resp["body"]["choices"][0]["message"]["content"] == f"echo: question {i}"

    assert upstream.stats.total == n
    assert upstream.stats.by_path[CHAT] == n
    assert client.batches.retrieve(b.id).model_dump() == b.model_dump()
    # The output file is listed among the caller's files, with its own purpose.
    assert [x.id for x in client.files.list(purpose="batch_output")] == [out.id]


def test_mixed_results_go_to_output_and_error_files(connect: Connect,
    barge: BargeProcess, upstream: UpstreamServer
) -> None:
    client = connect(barge)
    lines = [
        chat_line("ok-0"), chat_line("ok-1"), chat_line("ok-2"),
        chat_line("bad-0", status=400, key="bad-0"),
        chat_line("bad-1", status=422, key="bad-1"),
        chat_line("flaky-0", status=500, fail_times=1, key="flaky-0"),
        chat_line("flaky-1", status=503, fail_times=1, key="flaky-1"),
        chat_line("limited-0", status=429, fail_times=2, key="limited-0"),
        chat_line("garbage-0", garbage=True, key="garbage-0"),
    ]
    b = run_batch(client, lines)
    assert b.status == "completed", b
    ok, errors = results(client, b)

    assert set(ok) == {"ok-0", "ok-1", "ok-2", "flaky-0", "flaky-1", "limited-0"}
    assert set(errors) == {"bad-0", "bad-1", "garbage-0"}
    assert set(ok) | set(errors) == {line["custom_id"] for line in lines}
    assert b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (
        9, 6, 3)

    for cid in ok:
        assert ok[cid]["response"]["status_code"] == 200
        assert ok[cid]["error"] is None

    for cid, status in (("bad-0", 400), ("bad-1", 422)):
        e = errors[cid]
        assert e["error"] is None  # OpenAI's shape: the upstream's answer, error null
        assert e["response"]["status_code"] == status
        assert e["response"]["body"]["error"]["type"]  # the upstream's error body, kept
        assert upstream.stats.attempts[cid] == 1  # 4xx is final: never retried

    g = errors["garbage-0"]
    assert g["error"]["code"] == "invalid_upstream_response"
    assert g["response"]["status_code"] == 200
    assert "oops" in g["response"]["body"]
    assert upstream.stats.attempts["garbage-0"] > 1  # retried before giving up

    assert upstream.stats.attempts["flaky-0"] == 2
    assert upstream.stats.attempts["flaky-1"] == 2
    assert upstream.stats.attempts["limited-0"] == 3
    assert b.output_file_id is not None and b.error_file_id is not None
    err_file = client.files.retrieve(b.error_file_id)
    assert err_file.purpose == "batch_output"


ENDPOINT_BODIES: dict[str, Callable[[int], dict[str, Any]]] = {
    "/v1/embeddings": lambda i: {"model": "emb-test", "input": [f"text {i}", "more"]},
    "/v1/completions": lambda i: {"model": "cmpl-test", "prompt": f"prompt {i}"},
    "/v1/responses": lambda i: {"model": "resp-test", "input": f"input {i}"},
    "/v1/moderations": lambda i: {"model": "omni-moderation-latest", "input": f"text {i}"},
    CHAT: lambda i: chat_body(f"chat {i}"),
}


def _check_body(endpoint: str, i: int, body: dict[str, Any]) -> None:
    if endpoint == "/v1/embeddings":
        assert body["object"] == "list"
        assert [d["object"] for d in body["data"]] == ["embedding", "embedding"]
    elif endpoint == "/v1/completions":
        assert body["choices"][0]["text"] == f"echo: prompt {i}"
    elif endpoint == "/v1/responses":
        assert body["object"] == "response"
        assert body["output"][0]["content"][0]["text"] == f"echo: input {i}"
    elif endpoint == "/v1/moderations":
        assert body["results"][0]["flagged"] is False
    else:
        assert body["choices"][0]["message"]["content"] == f"echo: chat {i}"


@pytest.mark.parametrize("endpoint", list(ENDPOINT_BODIES))
def test_every_endpoint_runs_end_to_end(connect: Connect,
    barge: BargeProcess, upstream: UpstreamServer, endpoint: str
) -> None:
    client = connect(barge)
    n = 4
    lines = [request_line(f"{endpoint}-{i}", ENDPOINT_BODIES[endpoint](i), url=endpoint)
             for i in range(n)]
    b = run_batch(client, lines, endpoint=endpoint)
    assert b.status == "completed", b
    assert b.endpoint == endpoint
    assert b.request_counts is not None
    assert (b.request_counts.completed, b.request_counts.failed) == (n, 0)
    ok, errors = results(client, b)
    assert errors == {}
    for i in range(n):
        line = ok[f"{endpoint}-{i}"]
        assert line["response"]["status_code"] == 200
        _check_body(endpoint, i, line["response"]["body"])
    # Sent to base + the part after /v1; the four alike embeddings lines in one call.
    assert upstream.stats.by_path == {endpoint: 1 if endpoint == "/v1/embeddings" else n}


def test_list_batches_paginates_newest_first(connect: Connect, barge: BargeProcess) -> None:
    client = connect(barge)
    f = upload(client, [chat_line("a")])
    created = [
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                              metadata={"n": str(i)}).id
        for i in range(7)
    ]
    newest_first = list(reversed(created))

    page = client.batches.list(limit=3)
    assert [b.id for b in page.data] == newest_first[:3]
    assert page.has_more is True
    body = client.batches.with_raw_response.list(limit=3).http_response.json()
    assert body["object"] == "list"
    assert (body["first_id"], body["last_id"], body["has_more"]) == (
        newest_first[0], newest_first[2], True)

    page2 = client.batches.list(limit=3, after=newest_first[2])
    assert [b.id for b in page2.data] == newest_first[3:6]
    page3 = client.batches.list(limit=3, after=newest_first[5])
    assert [b.id for b in page3.data] == newest_first[6:]
    assert page3.has_more is False
    empty = client.batches.with_raw_response.list(after=newest_first[6]).http_response.json()
    assert empty["data"] == [] and empty["has_more"] is False

    # Auto-pagination: every batch exactly once, newest first.
    seen = [b.id for b in client.batches.list(limit=3)]
    assert seen == newest_first
    # The default page size (20) holds them all.
    default = client.batches.list()
    assert [b.id for b in default.data] == newest_first and default.has_more is False
    assert [b.metadata for b in default.data] == [{"n": str(i)} for i in reversed(range(7))]
    for b in created:
        assert wait_terminal(client, b).status == "completed"


def test_cancel_keeps_partial_results_and_sends_nothing_more(connect: Connect,
    barge_factory: Factory, upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "2",
                         "--backoff-base", "0.01")
    client = connect(proc)
    n = 12
    lines = [chat_line("fast-0"), chat_line("fast-1")] + [
        chat_line(f"slow-{i}", delay=1.0) for i in range(n - 2)
    ]
    f = upload(client, lines)
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")

    # request_counts advance while the batch runs: the fast ones are recorded first.
    running = wait_for(
        lambda: (x := client.batches.retrieve(b.id)).request_counts is not None
        and x.request_counts.completed >= 2 and x,
        what="the two fast requests to be counted",
    )
    assert running.status == "in_progress"  # type: ignore[union-attr]
    assert running.request_counts.completed < n  # type: ignore[union-attr]

    cancelling = client.batches.cancel(b.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    assert client.batches.cancel(b.id).status == "cancelling"  # asking twice is harmless

    done = wait_status(client, b.id, {"cancelled", "completed", "failed", "expired"})
    assert done.status == "cancelled", done
    assert done.cancelled_at is not None and done.cancelling_at is not None
    assert done.cancelled_at >= done.cancelling_at
    assert done.completed_at is None

    ok, errors = results(client, done)
    assert {"fast-0", "fast-1"} <= set(ok)
    sent = upstream.stats.total
    assert upstream.stats.max_in_flight <= 2  # --upstream-concurrency 2
    assert sent <= 2 + 2  # the fast ones plus at most the two in flight at the cancel
    assert sent < n
    assert len(ok) + len(errors) <= sent  # nothing recorded that was never sent
    assert all(r["response"]["status_code"] == 200 for r in ok.values())
    assert done.request_counts is not None
    assert done.request_counts.total == n
    assert done.request_counts.completed == len(ok)
    assert done.request_counts.failed == len(errors)

    # Cancelling a finished batch is a conflict.
    with pytest.raises(openai.ConflictError) as exc:
        client.batches.cancel(b.id)
    error_of(exc.value, status=409)
    assert upstream.stats.total == sent  # still nothing more sent


def test_cancel_of_a_completed_batch_is_409(connect: Connect, barge: BargeProcess) -> None:
    client = connect(barge)
    b = run_batch(client, [chat_line("a"), chat_line("b")])
    assert b.status == "completed"
    with pytest.raises(openai.ConflictError) as exc:
        client.batches.cancel(b.id)
    error_of(exc.value, status=409)
    after = client.batches.retrieve(b.id)
    assert after.status == "completed" and after.cancelling_at is None


def test_delete_of_a_running_batchs_input_is_refused(connect: Connect,
    barge: BargeProcess, upstream: UpstreamServer
) -> None:
    client = connect(barge)
    f = upload(client, [chat_line("slow", delay=1.0)])
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.ConflictError) as exc:
        client.files.delete(f.id)
    error_of(exc.value, status=409)
    assert client.files.retrieve(f.id).id == f.id
    assert wait_terminal(client, b.id).status == "completed"
    assert client.files.delete(f.id).deleted is True


BAD_LINES: list[tuple[bytes, str]] = [
    (b"{not json", "invalid_json_line"),
    (to_jsonl([{"method": "POST", "url": CHAT, "body": chat_body()}]).strip(),
     "missing_custom_id"),
    (to_jsonl([chat_line("good-1")]).strip(), "duplicate_custom_id"),
    (to_jsonl([{**chat_line("get"), "method": "GET"}]).strip(), "invalid_method"),
    (to_jsonl([request_line("wrong-url", chat_body(), url="/v1/embeddings")]).strip(),
     "invalid_url"),
    (to_jsonl([{**chat_line("str-body"), "body": "not an object"}]).strip(), "invalid_body"),
    (to_jsonl([request_line("no-model", {"messages": []})]).strip(), "missing_model"),
]


def test_invalid_file_fails_with_every_bad_line_and_sends_nothing(connect: Connect,
    barge: BargeProcess, upstream: UpstreamServer
) -> None:
    client = connect(barge)
    good = [to_jsonl([chat_line("good-1")]).strip(), to_jsonl([chat_line("good-2")]).strip()]
    data = to_jsonl([*good, *(raw for raw, _ in BAD_LINES), to_jsonl([chat_line("good-3")])
                     .strip()])
    f = upload(client, data)
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    done = wait_terminal(client, b.id)

    assert done.status == "failed", done
    assert done.failed_at is not None
    assert done.in_progress_at is None and done.completed_at is None
    assert done.output_file_id is None and done.error_file_id is None
    assert done.errors is not None and done.errors.data is not None
    found = {(e.code, e.line) for e in done.errors.data}
    expected = {(code, i + 3) for i, (_, code) in enumerate(BAD_LINES)}  # 1-based lines
    assert found == expected
    assert all(e.message for e in done.errors.data)
    assert upstream.stats.total == 0  # not a single request was sent


def test_whitespace_only_file_fails_as_empty(connect: Connect,
    barge: BargeProcess, upstream: UpstreamServer
) -> None:
    client = connect(barge)
    f = upload(client, b"\n   \n\n")
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    done = wait_terminal(client, b.id)
    assert done.status == "failed"
    assert done.errors is not None and done.errors.data is not None
    assert [e.code for e in done.errors.data] == ["empty_file"]
    assert upstream.stats.total == 0


def test_max_requests_limit(connect: Connect, barge_factory: Factory,
                            upstream: UpstreamServer) -> None:
    proc = barge_factory(upstream.base_url, "--max-requests", "5", "--backoff-base", "0.01")
    client = connect(proc)

    too_many = run_batch(client, [chat_line(f"r{i}") for i in range(6)])
    assert too_many.status == "failed"
    assert too_many.errors is not None and too_many.errors.data is not None
    codes = [(e.code, e.line) for e in too_many.errors.data]
    assert codes == [("too_many_requests", 6)]
    assert upstream.stats.total == 0

    at_limit = run_batch(client, [chat_line(f"r{i}") for i in range(5)])
    assert at_limit.status == "completed"
    assert at_limit.request_counts is not None and at_limit.request_counts.completed == 5


def test_expired_batch_reports_unfinished_requests(connect: Connect,
    barge_factory: Factory, upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--completion-windows", "24h,2s",
                         "--upstream-concurrency", "1", "--backoff-base", "0.01")
    client = connect(proc)
    lines = [chat_line("fast-0"), chat_line("fast-1")] + [
        chat_line(f"slow-{i}", delay=3.0) for i in range(4)
    ]
    f = upload(client, lines)
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT,
                              completion_window="2s")  # type: ignore[arg-type]
    assert b.completion_window == "2s"
    assert b.expires_at is not None and b.expires_at - b.created_at == 2

    done = wait_terminal(client, b.id, timeout=20)
    assert done.status == "expired", done
    assert done.expired_at is not None and done.expired_at >= b.expires_at
    assert done.completed_at is None

    ok, errors = results(client, done)
    assert set(ok) | set(errors) == {line["custom_id"] for line in lines}
    assert {"fast-0", "fast-1"} <= set(ok)
    assert "slow-3" in errors
    assert all(e["error"]["code"] == "batch_expired" for e in errors.values())
    assert all(e["error"]["message"] for e in errors.values())
    assert done.request_counts is not None
    counts = done.request_counts
    assert counts.total == len(lines) == counts.completed + counts.failed
    assert (counts.completed, counts.failed) == (len(ok), len(errors))
    assert upstream.stats.total < len(lines)  # the expired ones were never sent


def test_ten_megabyte_single_line_runs(connect: Connect, barge: BargeProcess,
                                       upstream: UpstreamServer) -> None:
    client = connect(barge)
    content = "x" * (10 * 1024 * 1024)
    data = to_jsonl([chat_line("big", content=content)])
    assert len(data) > 10 * 1024 * 1024
    f = upload(client, data)
    assert f.bytes == len(data)
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    done = wait_terminal(client, b.id)
    assert done.status == "completed", done
    ok, errors = results(client, done)
    assert errors == {}
    reply = ok["big"]["response"]["body"]["choices"][0]["message"]["content"]
    assert reply == "echo: " + content
    assert upstream.stats.total == 1


def test_rejected_create_leaves_no_batch(connect: Connect, barge: BargeProcess) -> None:
    client = connect(barge)
    f = upload(client, [chat_line("a")])
    ok = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="48h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                              metadata={f"k{i}": "v" for i in range(17)})
    assert all_batch_ids(client) == {ok.id}
    wait_terminal(client, ok.id)


def test_timestamps_are_recent(connect: Connect, barge: BargeProcess) -> None:
    client = connect(barge)
    start = int(time.time())
    b = run_batch(client, [chat_line("a")])
    end = int(time.time())
    for stamp in (b.created_at, b.in_progress_at, b.finalizing_at, b.completed_at):
        assert stamp is not None and start - 1 <= stamp <= end + 1


def test_output_expires_after_sets_the_result_files_expiry(connect: Connect,
                                                           barge: BargeProcess) -> None:
    client = connect(barge)
    f = upload(client, [chat_line("ok"), chat_line("bad", status=400)])
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                              output_expires_after={"anchor": "created_at", "seconds": 7200})
    done = wait_terminal(client, b.id)
    assert done.status == "completed"
    for file_id in (done.output_file_id, done.error_file_id):
        assert file_id is not None
        out = client.files.retrieve(file_id)
        assert out.expires_at is not None
        assert out.expires_at == out.created_at + 7200
