"""Acceptance: every response carries a fresh ``x-request-id`` (the SDK's ``_request_id``),
errors, downloads and streamed bodies included; answers a retry cannot change say
``x-should-retry: false``, so the SDK does not send them again."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from api.keys_support import api_key, unique
from api.support import auth_headers, chat_line, root_url, run_batch, upload
from barge_process import ADMIN_KEY, BargeProcess
from openai import OpenAI

Connect = Callable[..., OpenAI]


@pytest.fixture
def http(shared_barge: BargeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=root_url(shared_barge), headers=auth_headers(ADMIN_KEY),
                      timeout=30) as c:
        yield c


def request_id(r: httpx.Response) -> str:
    ids = r.headers.get_list("x-request-id")
    assert len(ids) == 1, (r.status_code, r.headers)
    assert ids[0].startswith("req_") and len(ids[0]) > 20, ids
    return ids[0]


def test_every_kind_of_answer_carries_a_fresh_request_id(
    shared_barge: BargeProcess, connect: Connect, http: httpx.Client
) -> None:
    client = connect(shared_barge)
    ids: list[str] = []

    # Successes, through the SDK: it exposes the header as _request_id.
    f = upload(client, [chat_line("a")])
    assert f._request_id is not None
    ids.append(f._request_id)
    listed = client.files.with_raw_response.list()
    ids.append(request_id(listed.http_response))
    with client.files.with_streaming_response.content(f.id) as streamed:  # a file body
        assert b"".join(streamed.iter_bytes()).startswith(b'{"custom_id"')
        ids.append(request_id(streamed.http_response))

    # Errors, through the SDK and in plain HTTP.
    with pytest.raises(openai.NotFoundError) as not_found:
        client.files.retrieve("file-000000000000000000000000")
    assert not_found.value.request_id is not None
    ids.append(not_found.value.request_id)
    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        connect(shared_barge, api_key="sk-wrong").files.list()
    assert unauthenticated.value.request_id is not None
    ids.append(unauthenticated.value.request_id)
    for r in (
        http.get("/healthz"),
        http.get("/no/such/route"),  # the router's own 404
        http.put("/v1/files"),  # 405
        http.post("/v1/batches", content=b"[1, 2"),  # 400
        http.post("/v1/batches", json={"pad": "x" * (2 * 1024 * 1024)}),  # 413
        http.get("/v1/batches", params={"limit": "lots"}),  # a validation error
    ):
        ids.append(request_id(r))

    # A signed download link: a file streamed without a key.
    done = run_batch(client, [chat_line("d")])
    link = client.batches.retrieve(done.id, extra_query={"download": "true"})
    assert link.model_extra is not None
    download = httpx.get(link.model_extra["download"]["url"], timeout=30)
    assert download.status_code == 200 and b'"custom_id"' in download.content
    ids.append(request_id(download))

    assert len(set(ids)) == len(ids), ids


def test_a_request_id_sent_by_the_client_is_not_echoed(http: httpx.Client) -> None:
    r = http.get("/v1/files", headers={"x-request-id": "mine"})
    assert r.status_code == 200
    assert request_id(r) != "mine"


def test_answers_a_retry_cannot_change_say_so(
    shared_barge: BargeProcess, connect: Connect, http: httpx.Client
) -> None:
    client = connect(shared_barge)
    done = run_batch(client, [chat_line("c")])
    _, reader = api_key(shared_barge, "reader", unique("acct"))
    final = {
        400: http.post("/v1/batches", content=b"not json"),
        401: http.get("/v1/files", headers=auth_headers("sk-wrong")),
        403: http.post("/v1/batches", json={}, headers=auth_headers(reader)),
        404: http.get("/v1/files/file-000000000000000000000000"),
        405: http.put("/v1/files"),
        409: http.post(f"/v1/batches/{done.id}/cancel"),
        413: http.post("/v1/batches", json={"pad": "x" * (2 * 1024 * 1024)}),
    }
    for status, r in final.items():
        assert r.status_code == status, (status, r.text)
        assert r.headers.get_list("x-should-retry") == ["false"], (status, r.headers)
    for r in (http.get("/healthz"), http.get("/v1/files"), http.get(f"/v1/batches/{done.id}")):
        assert r.status_code == 200
        assert "x-should-retry" not in r.headers


def test_the_sdk_does_not_retry_a_409(shared_barge: BargeProcess, connect: Connect) -> None:
    """With its default retries the SDK sends a 409 three times, unless told not to."""
    done = run_batch(connect(shared_barge), [chat_line("r")])
    sent: list[str] = []

    def count(request: httpx.Request) -> None:
        sent.append(f"{request.method} {request.url.path}")

    http_client = httpx.Client(event_hooks={"request": [count]}, timeout=30)
    client = OpenAI(base_url=shared_barge.base_url, api_key=ADMIN_KEY, http_client=http_client)
    try:
        assert client.max_retries == 2  # the SDK's default
        with pytest.raises(openai.ConflictError) as exc:
            client.batches.cancel(done.id)
        assert exc.value.status_code == 409
        assert sent == [f"POST /v1/batches/{done.id}/cancel"]  # sent once, not retried
        assert exc.value.request_id is not None
    finally:
        client.close()
