"""The compact dialect at /batches, over plain HTTP: upload URL, create with handler and
operation, get (with download links), list with cursor/ge/le, cancel, delete; under the
same roles as the OpenAI surface."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from api.support import chat_line, to_jsonl
from barge_process import ADMIN_KEY, BargeProcess
from upstream import UpstreamServer

TERMINAL = {"completed", "validation_failed", "hash_mismatch", "cancelled", "expired"}


@pytest.fixture
def http(barge: BargeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{barge.port}",
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as h:
        yield h


def _upload(http: httpx.Client, data: bytes) -> str:
    r = http.post("/batches/upload_url")
    assert r.status_code == 200, r.text
    link = r.json()
    assert set(link) == {"handler", "url", "validity_ts"}
    with httpx.Client(timeout=30) as anonymous:  # the signed link stands in for the key
        put = anonymous.put(link["url"], content=data)
    assert put.status_code == 200, put.text
    assert put.json()["sha256"] == hashlib.sha256(data).hexdigest()
    handler: str = link["handler"]
    return handler


def _wait(http: httpx.Client, batch: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = http.get(f"/batches/{batch}").json()
        if view["status"] in TERMINAL:
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.05)


def test_whole_loop_with_hash_batch_dict_and_download(http: httpx.Client) -> None:
    data = to_jsonl([chat_line(f"c-{i}") for i in range(4)])
    handler = _upload(http, data)
    digest = hashlib.sha256(data).hexdigest()
    r = http.post("/batches", json={"handler": handler, "operation": "chat/completions",
                                    "hash": digest, "batch_dict": {"team": "a", "n": [1, 2]}})
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["batch"].startswith("batch_") and created["status"] == "new"
    view = _wait(http, created["batch"])
    assert view["status"] == "completed"
    assert view["hash"] == digest
    assert view["batch_dict"] == {"team": "a", "n": [1, 2]}
    assert isinstance(view["created_ts"], float) and isinstance(view["updated_ts"], float)
    assert view["updated_ts"] >= view["created_ts"]
    assert "download" not in view

    linked = http.get(f"/batches/{created['batch']}", params={"download": "true"}).json()
    with httpx.Client() as anonymous:
        body = anonymous.get(linked["download"]["url"]).content
    assert sorted(orjson.loads(x)["custom_id"] for x in body.splitlines()) == [
        f"c-{i}" for i in range(4)
    ]
    assert linked["download"]["validity_ts"] > time.time()
    # The same batch through the OpenAI surface.
    assert http.get(f"/v1/batches/{created['batch']}").json()["status"] == "completed"


def test_hash_mismatch_and_bad_inputs(http: httpx.Client, upstream: UpstreamServer) -> None:
    handler = _upload(http, to_jsonl([chat_line("x")]))
    r = http.post("/batches", json={"handler": handler, "operation": "/v1/chat/completions",
                                    "hash": "0" * 64})
    assert _wait(http, r.json()["batch"])["status"] == "hash_mismatch"
    assert upstream.stats.total == 0

    cases: list[tuple[dict[str, Any], str]] = [
        ({"operation": "/v1/chat/completions"}, "handler"),
        ({"handler": handler, "operation": "/v1/images/generations"}, "operation"),
        ({"handler": "file-" + "0" * 24, "operation": "/v1/chat/completions"}, "handler"),
        ({"handler": handler, "operation": "chat/completions", "hash": "ABC"}, "hash"),
        ({"handler": handler, "operation": "chat/completions", "batch_dict": {"Bad": 1}},
         "batch_dict"),
        ({"handler": handler, "operation": "chat/completions", "batch_dict": {"9x": 1}},
         "batch_dict"),
        ({"handler": handler, "operation": "chat/completions", "batch_dict": [1]},
         "batch_dict"),
    ]
    for body, param in cases:
        r = http.post("/batches", json=body)
        assert r.status_code in (400, 404), (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param, (body, error)
    assert list(http.get("/batches").json()["batches"].values()) == ["hash_mismatch"]


def test_upload_links_are_one_time_and_tamper_proof(http: httpx.Client) -> None:
    link = http.post("/batches/upload_url").json()
    good = link["url"]
    tampered = [
        good.replace(link["handler"], "file-" + "1" * 24),
        good.replace("account=default", "account=other"),
        good.replace("signature=", "signature=0"),
        good.split("&signature=")[0],
    ]
    with httpx.Client() as anonymous:
        for url in tampered:
            r = anonymous.put(url, content=b"x\n")
            assert r.status_code == 403, url
            assert "invalid" in r.json()["error"]["message"]
        assert anonymous.put(good, content=to_jsonl([chat_line("a")])).status_code == 200
        again = anonymous.put(good, content=to_jsonl([chat_line("b")]))
        assert again.status_code == 409  # used once already: its bytes are dropped
        assert set(again.json()["error"]) == {"message", "type", "param", "code"}
    assert http.get(f"/v1/files/{link['handler']}/content").content == to_jsonl([chat_line("a")])


def test_list_with_cursor_ge_le(http: httpx.Client) -> None:
    handler = _upload(http, to_jsonl([chat_line("x")]))
    made = [http.post("/batches", json={"handler": handler, "operation": "chat/completions"})
            .json() for _ in range(5)]
    ids = [m["batch"] for m in made]

    def walk(**query: Any) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            params = {**query, "limit": 2} | ({"cursor": cursor} if cursor else {})
            page = http.get("/batches", params=params).json()
            assert set(page) == {"batches", "cursor"}
            seen += list(page["batches"])
            cursor = page["cursor"]
            if cursor is None:
                return seen

    lo = min(m["created_ts"] for m in made)
    hi = max(m["created_ts"] for m in made)
    assert walk() == ids[::-1]  # newest first
    assert walk(le=hi) == ids[::-1]
    assert walk(ge=lo) == ids  # only ge: counting starts at ge, oldest first
    assert walk(ge=lo, le=hi) == ids[::-1]
    assert walk(ge=hi + 1) == []
    for limit in (0, 1001):
        assert http.get("/batches", params={"limit": limit}).status_code == 400


def test_created_ts_carries_milliseconds(http: httpx.Client) -> None:
    """``created_ts`` is seconds to three decimals, like ``updated_ts``; the OpenAI
    ``created_at`` of the same batch stays whole seconds; ``ge``/``le`` compare at
    millisecond precision, bounds included."""
    handler = _upload(http, to_jsonl([chat_line("x")]))
    made = []
    for _ in range(4):
        made.append(http.post("/batches", json={"handler": handler,
                                                "operation": "chat/completions"}).json())
        time.sleep(0.005)  # distinct milliseconds
    stamps = [m["created_ts"] for m in made]
    assert all(isinstance(t, float) and round(t, 3) == t for t in stamps)
    assert any(t != int(t) for t in stamps), stamps  # four whole seconds: 1 in 10**12
    assert stamps == sorted(stamps) and len(set(stamps)) == 4
    for m in made:
        view = http.get(f"/batches/{m['batch']}").json()
        assert view["created_ts"] == m["created_ts"]
        assert view["updated_ts"] >= view["created_ts"]
        openai_view = http.get(f"/v1/batches/{m['batch']}").json()
        assert openai_view["created_at"] == int(m["created_ts"])
        assert isinstance(openai_view["created_at"], int)
    ids = [m["batch"] for m in made]
    ge = http.get("/batches", params={"ge": stamps[1]}).json()["batches"]
    assert list(ge) == ids[1:]  # only ge: oldest first, the bound itself included
    le = http.get("/batches", params={"le": stamps[2]}).json()["batches"]
    assert [b for b in le if b in ids] == ids[:3][::-1]
    both = http.get("/batches", params={"ge": stamps[1], "le": stamps[2]}).json()["batches"]
    assert list(both) == [ids[2], ids[1]]
    exact = http.get("/batches", params={"ge": f"{stamps[3]:.3f}"}).json()["batches"]
    assert list(exact) == [ids[3]]
    after = http.get("/batches", params={"ge": f"{stamps[3] + 0.001:.3f}"}).json()["batches"]
    assert list(after) == []


def test_cancel_and_delete(http: httpx.Client) -> None:
    handler = _upload(http, to_jsonl([chat_line(f"s-{i}", delay=2) for i in range(3)]))
    batch = http.post("/batches", json={"handler": handler,
                                        "operation": "chat/completions"}).json()["batch"]
    assert http.delete(f"/batches/{batch}").status_code == 409  # not finished
    r = http.post(f"/batches/{batch}/cancel")
    assert r.status_code == 200 and r.json()["status"] in {"cancel", "cancelling", "cancelled"}
    assert _wait(http, batch)["status"] == "cancelled"
    r = http.delete(f"/batches/{batch}")
    assert r.json() == {"batch": batch, "deleted": True}
    assert http.get(f"/batches/{batch}").status_code == 404
    assert batch not in http.get("/batches").json()["batches"]


def test_the_dialect_obeys_roles(http: httpx.Client, barge: BargeProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "barge.cli", "keys", "create", "--data-dir", str(barge.data_dir),
         "--name", "r", "--role", "reader", "--account", "elsewhere"],
        capture_output=True, text=True, check=True,
    )
    reader = {"Authorization": f"Bearer {out.stdout.strip().splitlines()[-1]}"}
    handler = _upload(http, to_jsonl([chat_line("x")]))
    batch = http.post("/batches", json={"handler": handler,
                                        "operation": "chat/completions"}).json()["batch"]
    assert http.post("/batches/upload_url", headers=reader).status_code == 403
    assert http.post("/batches", headers=reader,
                     json={"handler": handler, "operation": "chat/completions"}
                     ).status_code == 403
    assert http.get(f"/batches/{batch}", headers=reader).status_code == 404  # other account
    assert http.get("/batches", headers=reader).json()["batches"] == {}
    assert http.get("/batches", headers={"Authorization": "Bearer nope"}).status_code == 401
