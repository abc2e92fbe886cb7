"""Acceptance: ``GET /v1/batches/{id}/results`` against a real ``barge serve``, read through
the openai SDK's raw HTTP while batches run, get cancelled and expire: every result at
most once, in pages, and after the end exactly the lines of the output and error files."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest
from api.keys_support import api_key, http_error, unique
from api.support import (
    CHAT,
    auth_headers,
    chat_line,
    upload,
    wait_for,
    wait_status,
    wait_terminal,
)
from barge_process import BargeProcess
from openai import OpenAI
from results_support import (
    NEXT,
    assert_at_most_once,
    assert_same_lines,
    custom_ids,
    file_lines,
    page,
    read_to_end,
)
from upstream import UpstreamServer

Factory = Callable[..., BargeProcess]
Connect = Callable[..., OpenAI]


def _mixed(n: int, delay: float = 0.0) -> list[dict[str, object]]:
    """Lines of which every fifth fails for good (a 400), the rest succeed."""
    return [chat_line(f"r-{i}", key=f"r-{i}", delay=delay,
                      **({"status": 400} if i % 5 == 0 else {})) for i in range(n)]


def test_pages_while_running_read_each_result_once_and_end_as_the_files(
    connect: Connect, barge_factory: Factory, upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "4",
                         "--backoff-base", "0.01")
    client = connect(proc)
    n = 240
    f = upload(client, _mixed(n, delay=0.02))
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")

    # Nothing recorded yet: an empty page, and the cursor to come back with.
    first, cursor = page(client, b.id)
    if not first:
        assert cursor == "0.0.0"
        assert page(client, b.id, cursor) == ([], cursor)  # echoed as given
    got = list(first)
    pages_while_running = 0
    while cursor != "":
        lines, cursor = page(client, b.id, cursor, limit=7)
        assert len(lines) <= 7
        got += lines
        assert_at_most_once(got)
        if lines and client.batches.retrieve(b.id).status == "in_progress":
            pages_while_running += 1
        if not lines:
            time.sleep(0.02)
    assert pages_while_running >= 3  # it was read while it ran, not only at the end
    done = client.batches.retrieve(b.id)
    assert done.status == "completed"
    files = file_lines(client, done)
    assert_same_lines(got, files)
    assert len(custom_ids(got)) == n
    # From the start again, now from the files, in one page or in many: the same bytes.
    assert read_to_end(client, b.id, limit=10_000) == read_to_end(client, b.id, limit=13)
    assert_same_lines(read_to_end(client, b.id), files)
    # One order, the commit order: a cursor reads on identically from anywhere.
    whole = read_to_end(client, b.id, limit=10_000)
    lines, cursor = page(client, b.id, limit=100)
    assert lines == whole[:100]
    assert read_to_end(client, b.id, cursor, limit=31) == whole[100:]
    # All that is left fits in the page: it says so with an empty cursor.
    assert page(client, b.id, limit=10_000) == (whole, "")


def test_latest_follows_a_running_batch_from_now_on(
    connect: Connect, barge_factory: Factory, upstream: UpstreamServer
) -> None:
    """``after=latest`` gives no results, only a cursor past all committed so far: read
    from it, a running batch's results from then on, which are exactly the last of its
    whole commit order. Once ended, it is the end."""
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "2",
                         "--backoff-base", "0.01")
    client = connect(proc)
    n = 40
    f = upload(client, [chat_line(f"r-{i}", key=f"r-{i}", delay=0.05) for i in range(n)])
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    wait_for(lambda: page(client, b.id)[0], what="a first result")
    lines, now = page(client, b.id, "latest", limit=1)
    assert lines == [] and now not in ("", "0.0.0"), now
    assert client.batches.retrieve(b.id).status == "in_progress"
    since = read_to_end(client, b.id, now)
    assert_at_most_once(since)
    whole = read_to_end(client, b.id, limit=10_000)
    assert 0 < len(since) < n
    assert since == whole[-len(since):]  # the tail of the commit order, from that moment
    assert page(client, b.id, "latest") == ([], "")  # ended: nothing more will come


def test_an_expired_batch_reads_its_batch_expired_lines_too(
    connect: Connect, barge_factory: Factory, upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "4",
                         "--backoff-base", "0.01", "--completion-windows", "24h,2s")
    client = connect(proc)
    fast = [chat_line(f"fast-{i}", key=f"fast-{i}") for i in range(6)]
    slow = [chat_line(f"slow-{i}", key=f"slow-{i}", delay=30) for i in range(8)]
    f = upload(client, fast + slow)
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT,
                              completion_window="2s")  # type: ignore[arg-type]
    # read while it runs: only the fast ones can come
    early = wait_for(lambda: page(client, b.id)[0], what="the fast results")
    cursor = page(client, b.id, limit=len(early))[1]
    assert {k.split("-")[0] for k in custom_ids(early)} == {"fast"}
    done = wait_terminal(client, b.id)
    assert done.status == "expired", done
    rest = read_to_end(client, b.id, cursor)
    got = early + rest
    assert_same_lines(got, file_lines(client, done))
    ids = custom_ids(got)
    assert set(ids) == {f"fast-{i}" for i in range(6)} | {f"slow-{i}" for i in range(8)}
    expired = [line for line in got if b'"batch_expired"' in line]
    assert len(expired) == 8
    # the expired lines come last, after every result that was recorded
    assert all(b'"batch_expired"' in line for line in got[-8:])
    lines, last = page(client, b.id, limit=10_000)
    assert (len(lines), last) == (14, "")


def test_a_cancelled_batch_reads_only_what_ran(
    connect: Connect, barge_factory: Factory, upstream: UpstreamServer
) -> None:
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "2",
                         "--backoff-base", "0.01")
    client = connect(proc)
    lines = [chat_line("fast-0"), chat_line("fast-1", status=400, key="fast-1")] + [
        chat_line(f"slow-{i}", delay=1.0) for i in range(10)]
    f = upload(client, lines)
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    early, cursor = wait_for(lambda: (p := page(client, b.id))[0] and p,
                             what="a first result")
    client.batches.cancel(b.id)
    done = wait_status(client, b.id, {"cancelled"})
    got = early + read_to_end(client, b.id, cursor)
    files = file_lines(client, done)
    assert_same_lines(got, files)
    assert done.request_counts is not None
    assert len(got) == done.request_counts.completed + done.request_counts.failed < 12
    assert not any(b'"batch_expired"' in line for line in got)


def test_cursors_and_limits_are_checked(connect: Connect,
                                        shared_barge: BargeProcess) -> None:
    client = connect(shared_barge)
    f = upload(client, _mixed(10))
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    wait_terminal(client, b.id)
    url = f"{shared_barge.base_url}/batches/{b.id}/results"
    headers = auth_headers("sk-test-admin")
    for bad in ("x", "1.2", "1.2.3.4", "-1.0.0", "1.0.x", "9" * 19 + ".0.0", "1.0.99",
                "7.7.1", "Latest", "latest.0"):
        r = httpx.get(url, params={"after": bad}, headers=headers)
        http_error(r, status=400, param="after", code="invalid_cursor")
    for limit in ("0", "10001", "many"):
        r = httpx.get(url, params={"limit": limit}, headers=headers)
        http_error(r, status=400, param="limit")
    # a cursor past every result of an ended batch: nothing, and the end
    lines, end = page(client, b.id, "99.0.0")
    assert (lines, end) == ([], "")
    with pytest.raises(openai.NotFoundError):
        client.get("/batches/batch_nope/results", cast_to=httpx.Response)


def test_a_batch_that_failed_validation_has_no_results(connect: Connect,
                                                       shared_barge: BargeProcess) -> None:
    client = connect(shared_barge)
    f = upload(client, b'{"custom_id": "a", "method": "GET"}\n')
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    assert wait_terminal(client, b.id).status == "failed"
    assert page(client, b.id) == ([], "")


def test_anyone_who_may_read_the_batch_may_read_its_results(
    connect: Connect, shared_barge: BargeProcess
) -> None:
    client = connect(shared_barge)
    f = upload(client, _mixed(3))
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    wait_terminal(client, b.id)
    url = f"{shared_barge.base_url}/batches/{b.id}/results"
    _, reader = api_key(shared_barge, "reader", "default")
    r = httpx.get(url, headers=auth_headers(reader))
    assert r.status_code == 200 and len(r.content.splitlines()) == 3
    assert r.headers[NEXT] == ""
    _, stranger = api_key(shared_barge, "admin", unique("other"))
    http_error(httpx.get(url, headers=auth_headers(stranger)), status=404)
    http_error(httpx.get(url), status=401)
