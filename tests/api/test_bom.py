"""Acceptance: an input file that starts with a UTF-8 byte-order mark, against a real
``barge serve`` driven by the ``openai`` SDK. The mark is accepted and ignored: the upload
keeps the bytes as sent (size, SHA-256, content), the integrity hash is that of those
bytes, and validation, dispatch and expiry read the first line without it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from api.support import CHAT, chat_line, results, to_jsonl, upload, wait_terminal
from barge_process import BargeProcess
from openai import OpenAI

BOM = b"\xef\xbb\xbf"


@pytest.fixture
def client(shared_barge: BargeProcess, connect: Callable[..., OpenAI]) -> OpenAI:
    return connect(shared_barge)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_bom_file_uploads_as_sent_and_runs_every_line(client: OpenAI, newline: bytes) -> None:
    lines = [chat_line("first"), chat_line("second"), chat_line("third")]
    data = BOM + to_jsonl(lines).replace(b"\n", newline)
    digest = hashlib.sha256(data).hexdigest()
    f = upload(client, data)
    assert f.bytes == len(data)
    assert (f.model_extra or {})["sha256"] == digest  # the bytes as uploaded, BOM included
    assert client.files.content(f.id).content == data

    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                              extra_body={"hash": digest})
    done = wait_terminal(client, b.id)
    assert done.status == "completed", (done.status, done.errors)
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (3, 3)
    out, err = results(client, done)
    assert set(out) == {"first", "second", "third"} and err == {}
    assert out["first"]["response"]["body"]["choices"][0]["message"]["content"] == (
        "echo: prompt first")


def test_bad_first_line_after_a_bom_is_reported_as_line_one(client: OpenAI) -> None:
    data = BOM + b'{"custom_id": "x", "method": "GET"}\n' + to_jsonl([chat_line("ok")])
    b = client.batches.create(input_file_id=upload(client, data).id, endpoint=CHAT,
                              completion_window="24h")
    done = wait_terminal(client, b.id)
    assert done.status == "failed"
    assert done.errors is not None and done.errors.data is not None
    assert [(e.code, e.line) for e in done.errors.data] == [("invalid_method", 1)]


def test_a_bom_alone_is_an_empty_file(client: OpenAI) -> None:
    b = client.batches.create(input_file_id=upload(client, BOM + b"\n").id, endpoint=CHAT,
                              completion_window="24h")
    done = wait_terminal(client, b.id)
    assert done.status == "failed"
    assert done.errors is not None and done.errors.data is not None
    assert [e.code for e in done.errors.data] == ["empty_file"]


def test_expiry_accounts_for_the_first_line_after_a_bom(client: OpenAI) -> None:
    """The window ends while every request is retrying (503, Retry-After 3 s): each line,
    the first one too, goes to the error file once as batch_expired."""
    lines = [chat_line(f"busy-{i}", status=503, retry_after=3) for i in range(4)]
    data = BOM + to_jsonl(lines)
    b = client.batches.create(input_file_id=upload(client, data).id, endpoint=CHAT,
                              completion_window="2s")
    done = wait_terminal(client, b.id)
    assert done.status == "expired", done.status
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.failed) == (4, 4)
    out, err = results(client, done)
    assert out == {} and set(err) == {f"busy-{i}" for i in range(4)}
    assert {e["error"]["code"] for e in err.values()} == {"batch_expired"}
