"""Odd but valid input never makes a 500: batches created with OpenAI ``metadata`` seen
through the compact dialect, and out-of-range or malformed list parameters on both
dialects. Every answer is a 2xx or a 4xx in the OpenAI error shape, and a refused call
changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from api.support import CHAT, assert_error_shape, chat_line, upload, wait_terminal
from barge_process import ADMIN_KEY, BargeProcess
from openai import OpenAI

Connect = Callable[..., OpenAI]

ODD = [
    "", " ", "abc", "true", "null", "[]", "-", "+", "--1", "0x10", "1_000", "١٢٣",
    "0", "-0", "1", "-1", "+1", " 5 ", "007",
    "0.5", "1.5", "-1.5", "1.0", "1e3", "1E3", "-1e3", "1e-3", ".5", "5.",
    "1e308", "1e309", "-1e309", "inf", "-inf", "Infinity", "-Infinity", "nan", "NaN",
    str(2**31), str(2**53 + 1), str(2**63 - 1), str(2**63), str(2**64), str(-2**63 - 1),
    str(10**30), str(-10**30), "9" * 400, "1" + "0" * 5000, "1." + "9" * 400,
    "2024-01-01", "1796200922.123", "1796200922.1234567",
    "batch_" + "0" * 24, "file-" + "f" * 24, "x" * 3000, "\u00e9\u00e8", "%00", "'; --",
]


@pytest.fixture
def http(shared_barge: BargeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{shared_barge.port}",
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as h:
        yield h


def _checked(r: httpx.Response) -> Any:
    assert r.status_code < 500, (r.request.url, r.status_code, r.text)
    body = r.json()
    if r.status_code >= 400:
        assert 400 <= r.status_code < 500
        assert_error_shape(body)
    return body


def test_openai_metadata_through_the_compact_dialect(
    http: httpx.Client, shared_barge: BargeProcess, connect: Connect
) -> None:
    client = connect(shared_barge)
    f = upload(client, [chat_line("a", delay=2), chat_line("b", delay=2)])
    metadata = {"job": "demo", "n": "1", "flag": "true", "quoted": 'say "hi"', "empty": "",
                "Key With Spaces": "{not json"}
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                              metadata=metadata)

    view = _checked(http.get(f"/batches/{b.id}"))
    assert view["batch_dict"] == metadata  # OpenAI metadata values are strings
    cancelled = http.post(f"/batches/{b.id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] in {"cancel", "cancelling", "cancelled"}
    assert cancelled.json()["batch_dict"] == metadata
    assert b.id in _checked(http.get("/batches"))["batches"]
    assert _checked(http.get(f"/batches/{b.id}", params={"download": "true"}))["batch"] == b.id
    assert wait_terminal(client, b.id).status == "cancelled"
    assert _checked(http.get(f"/batches/{b.id}"))["status"] == "cancelled"
    assert client.batches.retrieve(b.id).metadata == metadata

    # And the other way: batch_dict values are JSON, kept as JSON text in metadata.
    made = http.post("/batches", json={"handler": f.id, "operation": "chat/completions",
                                       "batch_dict": {"n": 1, "s": "1", "l": [1, "a"]}})
    assert made.status_code == 200, made.text
    assert made.json()["batch_dict"] == {"n": 1, "s": "1", "l": [1, "a"]}
    assert client.batches.retrieve(made.json()["batch"]).metadata == {
        "n": "1", "s": '"1"', "l": '[1,"a"]'}
    http.post(f"/batches/{made.json()['batch']}/cancel")


def test_list_parameters_never_make_a_500(http: httpx.Client, shared_barge: BargeProcess,
                                          connect: Connect) -> None:
    client = connect(shared_barge)
    f = upload(client, [chat_line("x")])
    for _ in range(3):
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")

    def state() -> tuple[Any, Any, Any]:
        return (http.get("/v1/batches", params={"limit": 100}).json()["data"],
                http.get("/v1/files").json()["data"],
                http.get("/batches").json())

    for b in client.batches.list(limit=100):
        wait_terminal(client, b.id)
    before = state()

    routes: dict[str, list[str]] = {
        "/v1/batches": ["limit", "after", "created_after", "created_before"],
        "/v1/files": ["limit", "order", "after", "purpose"],
        "/batches": ["limit", "cursor", "ge", "le"],
    }
    answered: dict[int, int] = {}
    for path, params in routes.items():
        for param in params:
            for value in ODD:
                r = http.get(path, params={param: value})
                body = _checked(r)
                answered[r.status_code] = answered.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    assert ("batches" in body) if path == "/batches" else (
                        body["object"] == "list")
        # Pairs of bounds, in and out of order, odd and plain.
        bounds = {"/v1/batches": ("created_after", "created_before"),
                  "/batches": ("ge", "le")}.get(path)
        if bounds is not None:
            for lo in ("0", "1e309", str(2**64), "1.5", "-1", "nan"):
                for hi in ("0", "1e309", str(2**64), "1.5", "-1", "nan"):
                    _checked(http.get(path, params={bounds[0]: lo, bounds[1]: hi,
                                                    "limit": "1"}))
    assert set(answered) <= {200, 400, 404}, answered
    for batch_id in before[2]["batches"]:
        _checked(http.get(f"/batches/{batch_id}", params={"download": "maybe"}))
        for value in ODD[:20]:
            _checked(http.get(f"/v1/batches/{batch_id}", params={"download": value}))
    assert state() == before  # a refused call changes nothing


@pytest.mark.parametrize("value", ["1e309", "inf", str(2**64), str(10**30), "1e20"])
def test_huge_bounds_are_bounds(http: httpx.Client, shared_barge: BargeProcess,
                                connect: Connect, value: str) -> None:
    """A huge upper bound lets everything through; a huge lower bound lets nothing."""
    client = connect(shared_barge)
    f = upload(client, [chat_line("x")])
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    if value in ("1e309", "inf", "1e20"):  # not integers: the OpenAI bounds refuse them
        assert http.get("/v1/batches", params={"created_before": value}).status_code == 400
    else:
        page = _checked(http.get("/v1/batches", params={"created_before": value}))
        assert b.id in [x["id"] for x in page["data"]]
        assert _checked(http.get("/v1/batches", params={"created_after": value}))["data"] == []
    if value == "inf":
        assert http.get("/batches", params={"le": value}).status_code == 400
    else:
        assert b.id in _checked(http.get("/batches", params={"le": value}))["batches"]
        assert _checked(http.get("/batches", params={"ge": value}))["batches"] == {}
    wait_terminal(client, b.id)
