"""Compact upload links (``POST /batches/upload_url`` then ``PUT url``) under concurrency:
every upload writes its own temporary file, the first upload to finish wins the link, and
a concurrent or later one gets 409 with its bytes dropped. The stored file always equals
exactly one client's bytes, and its SHA-256 is theirs."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from api.support import assert_error_shape, chat_line, stored_blobs, to_jsonl
from barge_process import ADMIN_KEY, BargeProcess

LINKS = 10
PUTS_PER_LINK = 4
CHUNKS = 8


@pytest.fixture
def http(barge: BargeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{barge.port}",
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as h:
        yield h


def _content(link: int, client: int) -> bytes:
    """Distinct bytes per (link, client), big enough to arrive in several chunks."""
    lines = [chat_line(f"l{link}-c{client}-{i}", content="x" * 200) for i in range(200)]
    return to_jsonl(lines)


def _slow(data: bytes, start: threading.Barrier) -> Iterator[bytes]:
    """The body in CHUNKS pieces with pauses, so that the uploads to one link overlap."""
    start.wait(timeout=30)
    step = -(-len(data) // CHUNKS)
    for i in range(0, len(data), step):
        yield data[i:i + step]
        time.sleep(0.02)


def test_concurrent_puts_to_one_link_store_exactly_one_clients_bytes(
    http: httpx.Client, barge: BargeProcess
) -> None:
    links = []
    for _ in range(LINKS):
        r = http.post("/batches/upload_url")
        assert r.status_code == 200, r.text
        links.append(r.json())
    bodies = {(i, c): _content(i, c) for i in range(LINKS) for c in range(PUTS_PER_LINK)}
    start = threading.Barrier(LINKS * PUTS_PER_LINK)

    def put(key: tuple[int, int]) -> tuple[tuple[int, int], int, Any]:
        with httpx.Client(timeout=60) as anonymous:  # the signed link stands in for the key
            r = anonymous.put(links[key[0]]["url"], content=_slow(bodies[key], start))
        return key, r.status_code, r.json()

    with ThreadPoolExecutor(LINKS * PUTS_PER_LINK) as pool:
        outcomes = list(pool.map(put, bodies))

    for i, link in enumerate(links):
        mine = [(key, status, body) for key, status, body in outcomes if key[0] == i]
        won = [(key, body) for key, status, body in mine if status == 200]
        assert len(won) == 1, [(key, status) for key, status, _ in mine]
        (winner, body), = won
        data = bodies[winner]
        digest = hashlib.sha256(data).hexdigest()
        assert body == {"handler": link["handler"], "bytes": len(data), "sha256": digest}
        for _, status, lost in mine:
            if status != 200:
                assert status == 409, lost
                assert_error_shape(lost)
        # The stored bytes are exactly the winner's, and so is the hash on record.
        stored = http.get(f"/v1/files/{link['handler']}/content")
        assert stored.status_code == 200
        assert stored.content == data, f"link {i}: stored bytes are not the winner's"
        record = http.get(f"/v1/files/{link['handler']}").json()
        assert (record["bytes"], record["sha256"]) == (len(data), digest)

    # A later upload through a used link is refused the same way, and changes nothing.
    with httpx.Client(timeout=30) as anonymous:
        late = anonymous.put(links[0]["url"], content=b"late\n")
    assert late.status_code == 409, late.text
    assert_error_shape(late.json())
    first = next(key for key, status, _ in outcomes if key[0] == 0 and status == 200)
    assert http.get(f"/v1/files/{links[0]['handler']}/content").content == bodies[first]
    # No upload left a temporary file behind.
    assert stored_blobs(barge.data_dir)["tmp"] == []


def test_a_refused_upload_leaves_the_link_usable(http: httpx.Client) -> None:
    """An empty body is refused before the link is taken: the link still works."""
    link = http.post("/batches/upload_url").json()
    with httpx.Client(timeout=30) as anonymous:
        empty = anonymous.put(link["url"], content=b"")
        assert empty.status_code == 400
        assert_error_shape(empty.json(), code="empty_file")
        data = to_jsonl([chat_line("ok")])
        good = anonymous.put(link["url"], content=data)
        assert good.status_code == 200, good.text
    assert good.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert http.get(f"/v1/files/{link['handler']}/content").content == data
