"""The second reference API's additions on the OpenAI surface: integrity hashes, batch
deletion, and listing by creation time."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from api.support import chat_line, run_batch, to_jsonl, upload, wait_status, wait_terminal
from barge_process import ADMIN_KEY, BargeProcess
from openai import OpenAI
from upstream import UpstreamServer


@pytest.fixture
def client(barge: BargeProcess, connect: Callable[..., OpenAI]) -> OpenAI:
    return connect(barge)


@pytest.fixture
def http(barge: BargeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=barge.base_url,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as h:
        yield h


def _lines(n: int, **mock: object) -> list[dict[str, object]]:
    return [chat_line(f"h-{i}", **mock) for i in range(n)]


# -- integrity hash -----------------------------------------------------------------


def test_matching_hash_runs_and_is_returned(client: OpenAI, http: httpx.Client) -> None:
    data = to_jsonl(_lines(5))
    digest = hashlib.sha256(data).hexdigest()
    f = upload(client, data)
    assert f.model_extra is not None and f.model_extra["sha256"] == digest
    created = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                    completion_window="24h", extra_body={"hash": digest})
    b = wait_terminal(client, created.id)
    assert b.status == "completed"
    assert http.get(f"/batches/{b.id}").json()["hash"] == digest


def test_without_a_hash_the_attribute_is_absent(client: OpenAI, http: httpx.Client) -> None:
    b = run_batch(client, _lines(2))
    assert "hash" not in http.get(f"/batches/{b.id}").json()


def test_hash_mismatch_fails_before_any_request(
    client: OpenAI, http: httpx.Client, upstream: UpstreamServer
) -> None:
    f = upload(client, _lines(5))
    wrong = hashlib.sha256(b"some other file").hexdigest()
    created = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                    completion_window="24h", extra_body={"hash": wrong})
    b = wait_terminal(client, created.id)
    assert b.status == "failed"
    assert b.errors is not None and b.errors.data is not None
    assert [e.code for e in b.errors.data] == ["hash_mismatch"]
    raw = http.get(f"/batches/{b.id}").json()
    assert raw["barge_status"] == "hash_mismatch" and raw["hash"] == wrong
    assert b.failed_at is not None and b.output_file_id is None
    assert upstream.stats.total == 0


@pytest.mark.parametrize("bad", ["a" * 63, "a" * 65, "A" * 64, "g" * 64, " " + "a" * 63, 64])
def test_malformed_hash_is_rejected_and_creates_nothing(client: OpenAI, bad: object) -> None:
    f = upload(client, _lines(1))
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h", extra_body={"hash": bad})
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "hash"
    assert client.batches.list().data == []


# -- deletion -----------------------------------------------------------------------


def test_delete_a_finished_batch_removes_it_and_its_files(
    client: OpenAI, http: httpx.Client, barge: BargeProcess
) -> None:
    b = run_batch(client, [chat_line("ok"), chat_line("bad", status=400)])
    assert b.output_file_id and b.error_file_id
    files_dir = barge.data_dir / "files"
    assert {b.output_file_id, b.error_file_id} <= {p.name for p in files_dir.iterdir()}

    r = http.delete(f"/batches/{b.id}")
    assert r.status_code == 200
    assert r.json() == {"id": b.id, "object": "batch.deleted", "deleted": True}

    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve(b.id)
    for file_id in (b.output_file_id, b.error_file_id):
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(file_id)
    assert {p.name for p in files_dir.iterdir()} == {b.input_file_id}
    assert not (barge.data_dir / "work" / b.id).exists()
    assert [x.id for x in client.batches.list().data] == []
    assert http.delete(f"/batches/{b.id}").status_code == 404
    client.files.delete(b.input_file_id)  # no batch holds it any more


def test_delete_of_an_unfinished_batch_is_409(
    client: OpenAI, http: httpx.Client, upstream: UpstreamServer
) -> None:
    f = upload(client, _lines(3, delay=2))
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    wait_status(client, b.id, {"in_progress"})
    r = http.delete(f"/batches/{b.id}")
    assert r.status_code == 409
    assert r.json()["error"]["param"] == "batch_id"
    with pytest.raises(openai.ConflictError):
        client.files.delete(f.id)  # the running batch still reads its input
    assert client.batches.retrieve(b.id).id == b.id
    client.batches.cancel(b.id)
    assert wait_terminal(client, b.id).status == "cancelled"
    assert http.delete(f"/batches/{b.id}").status_code == 200


# -- listing by creation time ---------------------------------------------------------


def test_list_by_creation_time_combines_with_paging(client: OpenAI) -> None:
    f = upload(client, _lines(1))
    made = [client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h") for _ in range(5)]
    lo, hi = min(b.created_at for b in made), max(b.created_at for b in made)

    def ids(**query: int) -> list[str]:
        page = client.batches.list(limit=2, extra_query=query)
        return [b.id for b in page]  # auto-pagination over every page

    newest_first = [b.id for b in reversed(made)]
    assert ids(created_after=lo, created_before=hi) == newest_first
    assert ids(created_after=lo) == newest_first
    assert ids(created_before=hi) == newest_first
    assert ids(created_after=hi + 1) == []
    assert ids(created_before=lo - 1) == []
    later = int(time.time()) + 3600
    assert ids(created_after=later) == []


# -- updated_at ---------------------------------------------------------------------


def test_updated_at_is_integer_unix_seconds(client: OpenAI, http: httpx.Client) -> None:
    """``updated_at`` is whole Unix seconds like ``created_at``, on every Batch object."""
    f = upload(client, _lines(2))
    before = int(time.time())
    created = client.batches.with_raw_response.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    seen = [created.http_response.json()]
    batch_id = seen[0]["id"]
    wait_terminal(client, batch_id)
    seen.append(http.get(f"/batches/{batch_id}").json())
    seen += http.get("/batches").json()["data"]
    seen.append(http.get(f"/batches/{batch_id}", params={"download": "true"}).json())
    for body in seen:
        assert type(body["updated_at"]) is int, body
        assert type(body["created_at"]) is int, body
        assert before <= body["created_at"] <= body["updated_at"] <= time.time() + 1
    parsed = client.batches.retrieve(batch_id)
    assert type((parsed.model_extra or {})["updated_at"]) is int
