"""Acceptance: the Files API through the official SDK (upload, retrieve, content, list,
delete) against a real ``barge serve``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from api.support import (
    all_file_ids,
    chat_line,
    error_of,
    stored_blobs,
    to_jsonl,
    upload,
)
from barge_process import BargeProcess
from openai import OpenAI

Connect = Callable[..., OpenAI]
THIRTY_DAYS = 30 * 86400


def test_upload_returns_a_complete_file_object(connect: Connect, barge: BargeProcess) -> None:
    client = connect(barge)
    data = to_jsonl([chat_line(f"r{i}") for i in range(3)])
    before = int(time.time())
    f = upload(client, data, filename="requests.jsonl")
    after = int(time.time())

    assert f.id.startswith("file-") and len(f.id) > len("file-")
    assert f.object == "file"
    assert f.bytes == len(data)
    assert f.purpose == "batch"
    assert f.status in ("uploaded", "processed")
    assert f.filename == "requests.jsonl"
    assert before - 1 <= f.created_at <= after + 1
    assert f.expires_at is not None
    assert abs(f.expires_at - (f.created_at + THIRTY_DAYS)) <= 2

    again = client.files.retrieve(f.id)
    assert again.model_dump() == f.model_dump()
    assert client.files.content(f.id).content == data


def test_upload_honours_expires_after(connect: Connect, barge: BargeProcess) -> None:
    client = connect(barge)
    f = client.files.create(
        file=("x.jsonl", to_jsonl([chat_line("a")])),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert f.expires_at == f.created_at + 3600

    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(
            file=("x.jsonl", to_jsonl([chat_line("a")])),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 10},
        )
    err = error_of(exc.value, status=400)
    assert err["param"] is not None and "expires_after" in err["param"]
    assert all_file_ids(client) == {f.id}


def test_content_is_returned_byte_for_byte(connect: Connect, barge: BargeProcess) -> None:
    client = connect(barge)
    # Non-ASCII UTF-8, CRLF endings and no final newline must all survive untouched.
    data = to_jsonl([chat_line("é", content="héllo wörld ✓ 日本")]) + b"\r\n" + to_jsonl(
        [chat_line("b")]
    ).rstrip(b"\n")
    f = upload(client, data)
    assert f.bytes == len(data)
    assert client.files.content(f.id).content == data


def test_list_filters_by_purpose_and_orders_by_creation(connect: Connect,
                                                       barge: BargeProcess) -> None:
    client = connect(barge)
    batch_ids = [upload(client, [chat_line(f"r{i}")], filename=f"b{i}.jsonl").id
                 for i in range(3)]
    other = upload(client, b"some user data", filename="notes.txt", purpose="user_data")

    everything = client.files.list()
    assert [f.id for f in everything.data] == [other.id, *reversed(batch_ids)]  # newest first

    batch_only = client.files.list(purpose="batch")
    assert [f.id for f in batch_only.data] == list(reversed(batch_ids))
    assert all(f.purpose == "batch" for f in batch_only.data)
    assert [f.id for f in client.files.list(purpose="user_data").data] == [other.id]
    assert client.files.list(purpose="fine-tune").data == []

    asc = client.files.list(purpose="batch", order="asc")
    assert [f.id for f in asc.data] == batch_ids
    desc = client.files.list(purpose="batch", order="desc")
    assert [f.id for f in desc.data] == list(reversed(batch_ids))


def test_list_limit_after_and_auto_pagination(connect: Connect, barge: BargeProcess) -> None:
    client = connect(barge)
    ids = [upload(client, [chat_line(f"r{i}")]).id for i in range(5)]

    first = client.files.list(limit=2, order="asc")
    assert [f.id for f in first.data] == ids[:2]
    assert first.has_more is True
    body = client.files.with_raw_response.list(limit=2, order="asc").http_response.json()
    assert body["object"] == "list"
    assert (body["first_id"], body["last_id"], body["has_more"]) == (ids[0], ids[1], True)

    second = client.files.list(limit=2, order="asc", after=ids[1])
    assert [f.id for f in second.data] == ids[2:4]
    last = client.files.list(limit=2, order="asc", after=ids[3])
    assert [f.id for f in last.data] == ids[4:]
    assert last.has_more is False

    assert [f.id for f in client.files.list(limit=2, order="desc", after=ids[3])] == [
        ids[2], ids[1], ids[0]]  # auto-paginates the rest, newest first

    # SDK auto-pagination visits every file exactly once, in both orders.
    assert [f.id for f in client.files.list(limit=2, order="asc")] == ids
    assert [f.id for f in client.files.list(limit=1, order="desc")] == list(reversed(ids))


def test_delete_removes_the_file_and_its_bytes(connect: Connect, barge: BargeProcess) -> None:
    client = connect(barge)
    keep = upload(client, [chat_line("keep")])
    gone = upload(client, [chat_line("gone")])
    assert gone.id in stored_blobs(barge.data_dir)["files"]

    deleted = client.files.delete(gone.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (gone.id, "file", True)

    assert all_file_ids(client) == {keep.id}
    assert gone.id not in stored_blobs(barge.data_dir)["files"]
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as exc:
            call(gone.id)
        error_of(exc.value, status=404)
    assert client.files.content(keep.id).content == to_jsonl([chat_line("keep")])


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\evil.jsonl", "evil.jsonl"),
        ("/abs/path/input.jsonl", "input.jsonl"),
        ("nul\x00and\nnewline.jsonl", None),
        ("con.jsonl\x00", None),  # the client percent-encodes the NUL: a label still
    ],
)
def test_filename_is_only_a_label(connect: Connect, barge: BargeProcess, tmp_path: Path, given: str,
                                  stored: str | None) -> None:
    client = connect(barge)
    before = set(tmp_path.rglob("*"))
    data = to_jsonl([chat_line("a")])
    f = upload(client, data, filename=given)
    if stored is not None:
        assert f.filename == stored
    assert "/" not in f.filename and "\\" not in f.filename
    assert all(ch.isprintable() for ch in f.filename)
    assert client.files.content(f.id).content == data

    # The bytes live under the file's id, inside the data dir; nothing else appeared.
    assert f.id in stored_blobs(barge.data_dir)["files"]
    new = set(tmp_path.rglob("*")) - before
    outside = [p for p in new if barge.data_dir not in p.parents and p != barge.log_path]
    assert not outside, outside
    assert not any(p.name in ("passwd", "evil.jsonl") for p in new), new
    assert not (tmp_path / "etc").exists()
