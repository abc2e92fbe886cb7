"""Cursor pagination survives deletion: ``after=`` naming a batch or file that has since
been deleted pages on from where it stood, so a list-and-delete loop through the SDK's
auto-pagination deletes everything (on /v1/batches and /v1/files, both orders)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from api.support import CHAT, chat_line, error_of, upload, wait_terminal
from barge_process import ADMIN_KEY, BargeProcess
from openai import OpenAI

Connect = Callable[..., OpenAI]
N = 7


@pytest.fixture
def client(barge: BargeProcess, connect: Connect) -> OpenAI:
    return connect(barge)


@pytest.fixture
def http(barge: BargeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=barge.base_url,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as h:
        yield h


def _files(client: OpenAI, n: int = N) -> list[str]:
    return [upload(client, [chat_line(f"r{i}")], filename=f"f{i}.jsonl").id for i in range(n)]


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_list_and_delete_loop_deletes_every_file(client: OpenAI, order: str) -> None:
    made = _files(client)
    deleted = []
    for f in client.files.list(limit=2, order=order, purpose="batch"):  # type: ignore[arg-type]
        client.files.delete(f.id)
        deleted.append(f.id)
    assert deleted == (made[::-1] if order == "desc" else made)
    assert list(client.files.list(purpose="batch")) == []


def test_list_and_delete_loop_deletes_every_batch(client: OpenAI, http: httpx.Client) -> None:
    f = upload(client, [chat_line("x")])
    made = [client.batches.create(input_file_id=f.id, endpoint=CHAT,
                                  completion_window="24h").id for _ in range(N)]
    for b in made:
        assert wait_terminal(client, b).status == "completed"
    deleted = []
    for b in client.batches.list(limit=2):
        r = http.delete(f"/batches/{b.id}")
        assert r.status_code == 200, r.text
        deleted.append(b.id)
    assert deleted == made[::-1]
    assert list(client.batches.list()) == []


def test_after_a_deleted_object_pages_on_from_its_position(
    client: OpenAI, http: httpx.Client
) -> None:
    files = _files(client, 5)  # oldest first
    client.files.delete(files[2])
    desc = client.files.list(after=files[2], purpose="batch", order="desc")
    assert [f.id for f in desc.data] == files[:2][::-1]
    asc = client.files.list(after=files[2], purpose="batch", order="asc")
    assert [f.id for f in asc.data] == files[3:]

    f = upload(client, [chat_line("x")])
    batches = [client.batches.create(input_file_id=f.id, endpoint=CHAT,
                                     completion_window="24h").id for _ in range(4)]
    wait_terminal(client, batches[1])
    assert http.delete(f"/batches/{batches[1]}").status_code == 200
    page = client.batches.list(after=batches[1])
    assert [b.id for b in page.data] == [batches[0]]
    compact = httpx.get(f"http://127.0.0.1:{client.base_url.port}/batches",
                        params={"cursor": batches[1]},
                        headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert list(compact["batches"]) == [batches[0]]

    # A cursor that never named an object of this account is still unknown.
    for bad in ("file-" + "0" * 24, "nope"):
        with pytest.raises(openai.NotFoundError) as e:
            client.files.list(after=bad)
        error_of(e.value, status=404, param="after")
        with pytest.raises(openai.NotFoundError) as e:
            client.batches.list(after=bad.replace("file-", "batch_"))
        error_of(e.value, status=404, param="after")
    for b in batches[:1] + batches[2:]:
        wait_terminal(client, b)
